"""Unit tests of the trace-line parser, the hist parser, ExitCounts and verify_case (no KVM needed)."""

import os
from pathlib import Path

import pytest

from exitlat.errors import ExitlatError
from exitlat.verify.trace import kprobes
from exitlat.verify.trace.counts import MAX_UNPARSED_LINES, CountAccumulator, ExitCounts
from exitlat.verify.trace.exitreasons import (SVM_EXIT_REASONS, SVM_PRINT_NAMES, decode_exit_reason,
                                              decode_userspace_reason)
from exitlat.verify.trace.histparse import add_hists, parse_hist
from exitlat.verify.trace.instances import remove_stale_instances
from exitlat.verify.trace.kprobes import FASTPATH_SYMBOLS, fastpath_symbols
from exitlat.verify.trace.kvmtrace import ExitCounter
from exitlat.verify.trace.traceparse import parse_trace_line, parse_trace_text
from exitlat.verify.trace.tracefs import tracing_available

FIXTURES = Path(__file__).parent / "fixtures" / "trace"

# Captured on this project's dev host (kernel 6.18, kvm_pvm) from the micro-VM: 3 OUTs to 0xe9, HLT,
# a sync marker, 2 CPUIDs, HLT. PVM emulates these instructions, so there is no kvm_exit line.
CAPTURED = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 11/11   #P:2
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
         python3-5776    [000] .....  3406.404475: kvm_pio: pio_write at 0xe9 size 1 count 1 val 0x42 
         python3-5776    [000] .....  3406.404482: kvm_userspace_exit: reason KVM_EXIT_IO (2)
         python3-5776    [000] .....  3406.404510: kvm_pio: pio_write at 0xe9 size 1 count 1 val 0x42 
         python3-5776    [000] .....  3406.404512: kvm_userspace_exit: reason KVM_EXIT_IO (2)
         python3-5776    [000] .....  3406.404527: kvm_pio: pio_write at 0xe9 size 1 count 1 val 0x42 
         python3-5776    [000] .....  3406.404529: kvm_userspace_exit: reason KVM_EXIT_IO (2)
         python3-5776    [000] .....  3406.404547: kvm_userspace_exit: reason KVM_EXIT_HLT (5)
         python3-5776    [000] ...1.  3406.404636: tracing_mark_write: exitlat-sync-1234-0
         python3-5776    [000] .....  3406.404683: kvm_cpuid: func 0 idx 0 rax 0 rbx 0 rcx 0 rdx 0, cpuid entry not found
         python3-5776    [000] .....  3406.404688: kvm_cpuid: func 0 idx 0 rax 0 rbx 0 rcx 0 rdx 0, cpuid entry not found
         python3-5776    [000] .....  3406.404693: kvm_userspace_exit: reason KVM_EXIT_HLT (5)
"""

# kvm_exit lines as this kernel's print fmt writes them (events/kvm/kvm_exit/format), VMX and SVM,
# plus the pre-5.x form ("reason X rip 0x.. info a b"), a VMX failed entry and an unknown reason.
KVM_EXIT_LINES = """\
 qemu-system-x86-4012  [003] d..1.  812.001001: kvm_exit: vcpu 0 reason CPUID rip 0xffffffff8103ea32 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001002: kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0x401a2c info1 0x0000000000e90000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001003: kvm_exit: vcpu 0 reason EXTERNAL_INTERRUPT rip 0x401a2c info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x800000ec error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001004: kvm_exit: vcpu 0 reason cpuid rip 0xffffffff8103ea32 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001005: kvm_exit: vcpu 0 reason msr rip 0xffffffff8103ea32 info1 0x0000000000000001 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001006: kvm_exit: vcpu 0 reason hypercall rip 0xffffffff8103ea32 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001007: kvm_exit: vcpu 0 reason 0xd rip 0x401a2c info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001008: kvm_exit: vcpu 0 reason INVALID_STATE FAILED_VMENTRY rip 0xfff0 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000
 qemu-system-x86-4012  [003] d..1.  812.001009: kvm_exit: reason MSR_READ rip 0xffffffff8105b3c8 info 0 0
 qemu-system-x86-4012  [003] .....  812.001010: kvm_msr: msr_read 3b = 0x0
 qemu-system-x86-4012  [003] .....  812.001011: kvm_msr: msr_write 6e0 = 0x1234
 qemu-system-x86-4012  [003] .....  812.001012: kvm_hypercall: nr 0x0 a0 0x0 a1 0x0 a2 0x0 a3 0x0
 qemu-system-x86-4012  [003] .....  812.001013: kvm_userspace_exit: reason restart (4)
 qemu-system-x86-4012  [003] .....  812.001014: kvm_pio: pio_read at 0x3fd size 1 count 1 val 0x60 
 qemu-system-x86-9999  [001] .....  812.001015: kvm_userspace_exit: reason KVM_EXIT_MMIO (6)
CPU:3 [LOST 1234 EVENTS]
"""

# Hist output in the kernel's format (lkml "tracefs: CAST" thread / Documentation/trace/histogram.rst).
HIST_DOC = """\
# event histogram
#
# trigger info: hist:keys=common_pid:vals=hitcount:sort=hitcount:size=2048 [active]
#

{ common_pid:       1428 } hitcount:          2
{ common_pid:       1427 } hitcount:          2
{ common_pid:      13684 } hitcount:          2
{ common_pid: bash            [     18116], id: sys_setpgid                   [109] } hitcount:          1

Totals:
    Hits: 7
    Entries: 4
    Dropped: 3
"""


def hist(lines, dropped=0):
    body = "\n".join(lines)
    return (f"# event histogram\n#\n# trigger info: hist:keys=... [active]\n#\n\n{body}\n\n"
            f"Totals:\n    Hits: 1\n    Entries: {len(lines)}\n    Dropped: {dropped}\n")


def test_captured_text_counts_exactly():
    c = parse_trace_text(CAPTURED)
    assert c.userspace == {"IO": 3, "HLT": 2}
    assert c.pio == {(0xE9, "out"): 3}
    assert c.handled == {"cpuid": 2}
    assert c.exits == {} and c.lost == 0


def test_marker_line_is_returned_and_pid_filter():
    acc = CountAccumulator()
    lines = CAPTURED.splitlines()
    marks = [parse_trace_line(line, acc, pids={5776}) for line in lines]
    assert "exitlat-sync-1234-0" in marks
    other = CountAccumulator()
    for line in lines:
        parse_trace_line(line, other, pids={1})
    assert other.userspace == {} and other.pio == {}


def test_kvm_exit_lines_vmx_svm_unknown_and_lost():
    c = parse_trace_text(KVM_EXIT_LINES, pids={4012})
    assert c.exits == {"CPUID": 2, "IO_INSTRUCTION": 1, "EXTERNAL_INTERRUPT": 1, "MSR": 1, "VMMCALL": 1,
                       "13": 1, "INVALID_STATE|FAILED_VMENTRY": 1, "MSR_READ": 1}
    assert c.unparsed == 1 and "thread 9999" in c.unparsed_lines[0]   # another thread: filter broken
    assert c.handled == {"msr_read": 1, "msr_write": 1, "hypercall": 1}
    assert c.userspace == {"restart": 1}           # the MMIO line is another thread's: not counted
    assert c.pio == {(0x3FD, "in"): 1}
    assert c.lost == 1234


def test_decoders():
    assert decode_exit_reason(10, 1) == "CPUID"
    assert decode_exit_reason(0x72, 2) == "CPUID"
    assert decode_exit_reason(0x7B, 2) == "IO_INSTRUCTION"
    assert decode_exit_reason(0x81, 2) == "VMMCALL"
    assert decode_exit_reason(30, 1) == "IO_INSTRUCTION"
    assert decode_exit_reason(0x80000021, 1) == "INVALID_STATE|FAILED_VMENTRY"
    assert decode_exit_reason(13, None) == "13"          # PVM: its own vectors stay numbers
    assert decode_exit_reason(999, 1) == "999"
    assert decode_userspace_reason(2) == "IO"
    assert decode_userspace_reason(0, -4) == "restart"
    assert decode_userspace_reason(0, -14) == "error"


def test_parse_hist_doc_text():
    entries, dropped = parse_hist(HIST_DOC)
    assert dropped == 3
    assert entries[0] == ({"common_pid": 1428}, 2)
    assert entries[3] == ({"common_pid": 18116, "id": 109}, 1)
    assert sum(h for _k, h in entries) == 7


def test_hist_to_counts():
    acc = CountAccumulator()
    add_hists({
        "kvm_exit": hist(["{ common_pid:       4012, exit_reason:         10, isa:          1 } hitcount:      11000",
                          "{ common_pid:       4012, exit_reason:          1, isa:          1 } hitcount:         17",
                          "{ common_pid:       4013, exit_reason:         10, isa:          1 } hitcount:          5"]),
        "kvm_userspace_exit": hist(["{ common_pid:       4012, reason:          2, errno:          0 } hitcount:        40",
                                    "{ common_pid:       4012, reason:          0, errno:         -4 } hitcount:         2"]),
        "kvm_pio": hist(["{ common_pid:       4012, rw:          1, port:        233 } hitcount:         3",
                         "{ common_pid:       4012, rw:          0, port:       1021 } hitcount:        37"], dropped=1),
        "kvm_cpuid": hist(["{ common_pid:       4012 } hitcount:      11000"]),
        "kvm_msr": hist(["{ common_pid:       4012, write:          1 } hitcount:          4"]),
    }, acc)
    c = acc.freeze("hist")
    assert c.exits == {"CPUID": 11005, "EXTERNAL_INTERRUPT": 17}
    assert c.userspace == {"IO": 40, "restart": 2}
    assert c.pio == {(0xE9, "out"): 3, (0x3FD, "in"): 37}
    assert c.handled == {"cpuid": 11000, "msr_write": 4}
    assert c.lost == 1


def test_exitcounts_sub_and_dict():
    a = ExitCounts({"CPUID": 10, "HLT": 1}, {"IO": 5}, {(0xE9, "out"): 5}, {"cpuid": 10}, 2, "stream")
    b = ExitCounts({"CPUID": 4, "HLT": 1}, {"IO": 1}, {}, {"cpuid": 4}, 2, "stream")
    d = a - b
    assert d.exits == {"CPUID": 6} and d.userspace == {"IO": 4} and d.pio == {(0xE9, "out"): 5}
    assert d.handled == {"cpuid": 6} and d.lost == 0 and d.total_exits == 6
    assert d.to_dict()["pio"] == {"0xe9/out": 5}


def test_hist_snapshot_from_prepared_instance(tmp_path):
    """The hist backend's snapshot() reads <instance>/events/kvm/<ev>/hist."""
    inst = tmp_path / "inst"
    for ev, text in {"kvm_exit": hist(["{ common_pid: 7, exit_reason: 10, isa: 1 } hitcount: 9"]),
                     "kvm_userspace_exit": hist([])}.items():
        (inst / "events/kvm" / ev).mkdir(parents=True)
        (inst / "events/kvm" / ev / "hist").write_text(text)
    c = ExitCounter([7])
    c.instance, c.backend, c._events = inst, "hist", ["kvm_exit", "kvm_userspace_exit"]
    snap = c.snapshot()
    assert snap.exits == {"CPUID": 9} and snap.backend == "hist"
    c.instance = None


@pytest.mark.parametrize("tids", [[], [0], ["x"], None])
def test_bad_tids(tids):
    with pytest.raises(ExitlatError):
        ExitCounter(tids)


def test_missing_tracefs_is_one_line_error(tmp_path):
    ok, why = tracing_available(tmp_path)
    assert not ok and "\n" not in why
    with pytest.raises(ExitlatError, match="cannot trace"):
        ExitCounter([1], tracefs=tmp_path).start()
    with pytest.raises(ExitlatError):
        ExitCounter([1], backend="bpf")



# ---- fixtures: every line of every capture must parse ---------------------------------------


def _fixture_files():
    return sorted(FIXTURES.glob("*.txt"))


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: p.name)
def test_fixture_parses_completely(path):
    import json

    c = parse_trace_text(path.read_text())
    assert c.unparsed == 0, f"{path.name}: {c.unparsed_lines}"
    expect = path.with_name(path.name[:-len(".txt")] + ".expect.json")
    if expect.exists():
        got = c.to_dict()
        want = {k: v for k, v in json.loads(expect.read_text()).items() if k in got}
        assert {k: got[k] for k in want} == want


def test_fixture_dir_is_not_empty():
    assert len(_fixture_files()) >= 3


# ---- unparsed lines (stream) ------------------------------------------------------------------

GOOD_EXIT = (" CPU 0/KVM-4012 [003] d..1.  812.001001: kvm_exit: vcpu 0 reason CPUID rip 0x401a2b "
             "info1 0x0 info2 0x0 intr_info 0x00000000 error_code 0x00000000")


@pytest.mark.parametrize("line", [
    "this is not a trace line",
    GOOD_EXIT.replace("reason CPUID", "reason FROBNICATE"),          # unknown reason text
    GOOD_EXIT.replace("reason CPUID", "reason GP excpX"),
    GOOD_EXIT.replace("reason CPUID rip", "reason CPUID BOGUS_FLAG rip"),
    GOOD_EXIT.replace("vcpu 0 reason CPUID rip 0x401a2b", "vcpu 0 cause CPUID"),   # no reason field
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_userspace_exit: reason (2)",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_userspace_exit: reason KVM_EXIT_IO",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_userspace_exit: reason NOT_A_NAME (2)",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_pio: pio_write to 0xe9",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_msr: msr_frob 6e0 = 0x1",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_cpuid: something else",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_hypercall: a0 0x0",
    " CPU 0/KVM-4012 [003] .....  812.1: kvm_entry: vcpu 0, rip 0x401a2b",          # not ours
    " CPU 0/KVM-4012 [003] .....  812.1: handle_fastpath_wrmsr: (svm_vcpu_run+0x5/0x8 <- handle_fastpath_wrmsr)",
    " CPU 0/KVM-4012 [003] .....  812.1: handle_fastpath_wrmsr: (svm_vcpu_run+0x5/0x8 <- handle_fastpath_wrmsr) ret=x",
    "CPU:3 [LOST many EVENTS]",
])
def test_unparsed_stream_line_is_counted(line):
    acc = CountAccumulator()
    assert parse_trace_line(line, acc, pids={4012}) is None
    c = acc.freeze("stream")
    assert c.unparsed == 1 and c.unparsed_lines == (line,)
    assert c.exits == {} and c.userspace == {} and c.pio == {} and c.handled == {} and c.probes == {}


def test_good_lines_are_not_unparsed_and_blank_lines_ignored():
    acc = CountAccumulator()
    for line in (GOOD_EXIT, "", "   ", "CPU:1 [LOST 3 EVENTS]",
                 " <...>-1 [000] ...1.  1.0: tracing_mark_write: hello"):
        parse_trace_line(line, acc, pids={4012})
    c = acc.freeze("stream")
    assert c.unparsed == 0 and c.exits == {"CPUID": 1} and c.lost == 3


def test_unparsed_lines_kept_per_window():
    acc = CountAccumulator()
    for i in range(7):
        parse_trace_line(f"garbage {i}", acc)
    a = acc.freeze("stream")
    assert a.unparsed == 7 and a.unparsed_lines == tuple(f"garbage {i}" for i in range(MAX_UNPARSED_LINES))
    for i in range(7, 9):
        parse_trace_line(f"garbage {i}", acc)
    b = acc.freeze("stream")
    w = b - a
    assert w.unparsed == 2 and w.unparsed_lines == ("garbage 7", "garbage 8")
    assert (b - b).unparsed == 0 and (b - b).unparsed_lines == ()
    assert w.to_dict()["unparsed"] == 2 and w.to_dict()["unparsed_lines"] == ["garbage 7", "garbage 8"]


def test_cat_trace_header_is_skipped_but_not_in_stream():
    assert parse_trace_text("# tracer: nop\n#\n" + GOOD_EXIT + "\n").unparsed == 0
    acc = CountAccumulator()
    parse_trace_line("# tracer: nop", acc)
    assert acc.unparsed == 1


def test_probe_lines_entry_and_return():
    text = "\n".join([
        " CPU 0/KVM-1 [001] d..1.  1.0: handle_fastpath_wrmsr: (vmx_vcpu_run+0x3b2/0x9e0 [kvm_intel] <- handle_fastpath_wrmsr) ret=1",
        " CPU 0/KVM-1 [001] d..1.  1.1: handle_fastpath_wrmsr: (vmx_vcpu_run+0x3b2/0x9e0 [kvm_intel] <- handle_fastpath_wrmsr) ret=0x2",
        " CPU 0/KVM-1 [001] d..1.  1.2: handle_fastpath_wrmsr: (vmx_vcpu_run+0x3b2/0x9e0 [kvm_intel] <- handle_fastpath_wrmsr) ret=0",
        " CPU 0/KVM-1 [001] d..1.  1.3: do_sys_openat2: (do_sys_openat2+0x0/0x150)",
    ])
    c = parse_trace_text(text)
    assert c.unparsed == 0
    assert c.probes == {"handle_fastpath_wrmsr": 3, "handle_fastpath_wrmsr:handled": 2, "do_sys_openat2": 1}


# ---- SVM names and userspace reasons ----------------------------------------------------------

def test_svm_print_names_all_decode_and_match_codes():
    for code, canonical in SVM_EXIT_REASONS.items():
        assert decode_exit_reason(code, 2) == canonical
    assert SVM_PRINT_NAMES["io"] == "IO_INSTRUCTION" and SVM_PRINT_NAMES["GP excp"] == "GP_EXCP"
    assert SVM_PRINT_NAMES["idle-halt"] == "IDLE_HALT" and SVM_PRINT_NAMES["buslock"] == "BUS_LOCK"
    for name, canonical in SVM_PRINT_NAMES.items():
        c = parse_trace_text(GOOD_EXIT.replace("reason CPUID", f"reason {name}"))
        assert c.unparsed == 0 and c.exits == {canonical: 1}, name


def test_userspace_reason_numbers_beyond_the_print_table():
    assert decode_userspace_reason(39) == "MEMORY_FAULT" and decode_userspace_reason(34) == "XEN"
    line = " CPU 0/KVM-1 [001] .....  1.0: kvm_userspace_exit: reason 0x27 (39)"
    assert parse_trace_text(line).userspace == {"MEMORY_FAULT": 1}


# ---- unparsed hist entries --------------------------------------------------------------------

@pytest.mark.parametrize("event,line", [
    ("kvm_exit", "{ common_pid:       4012, exit_reason: bogus, isa: 1 } hitcount:  5"),   # non-integer reason
    ("kvm_exit", "{ common_pid:       4012, isa: 1 } hitcount:  5"),                      # no reason
    ("kvm_exit", "{ common_pid: 4012, exit_reason: 10 } hitcount: lots"),                 # looks like an entry
    ("kvm_exit", "{ common_pid: 4012 exit_reason 10 } hitcount: 5"),
    ("kvm_pio", "{ common_pid: 4012, rw: 1 } hitcount: 5"),                               # no port
    ("kvm_userspace_exit", "{ common_pid: 4012, reason: IO } hitcount: 5"),
    ("kvm_msr", "{ common_pid: 4012 } hitcount: 5"),                                      # no write key
    ("kvm_mystery", "{ common_pid: 4012 } hitcount: 5"),                                  # not ours
    ("probe/handle_fastpath_wrmsr", "{ common_pid: 4012, ret: fast } hitcount: 5"),
])
def test_unparsed_hist_entry_is_counted(event, line):
    acc = CountAccumulator()
    add_hists({event: hist([line])}, acc)
    c = acc.freeze("hist")
    assert c.unparsed == 1 and event in c.unparsed_lines[0]
    assert c.exits == {} and c.userspace == {} and c.pio == {} and c.handled == {} and c.probes == {}


def test_hist_good_entries_have_no_unparsed_and_probe_returns():
    acc = CountAccumulator()
    add_hists({
        "kvm_exit": hist(["{ common_pid:       4012, exit_reason:         10, isa:          1 } hitcount:      11000"]),
        "probe/handle_fastpath_set_msr_irqoff": hist([
            "{ common_pid:       4012, ret:          1 } hitcount:       1090",
            "{ common_pid:       4012, ret:          0 } hitcount:         10"]),
    }, acc)
    c = acc.freeze("hist")
    assert c.unparsed == 0 and c.exits == {"CPUID": 11000}
    assert c.probes == {"handle_fastpath_set_msr_irqoff": 1100, "handle_fastpath_set_msr_irqoff:handled": 1090}
    entries, _ = parse_hist(HIST_DOC, unparsed := [])
    assert unparsed == [] and len(entries) == 4


# ---- from_dict --------------------------------------------------------------------------------

def test_from_dict_round_trip_through_json():
    import json

    a = ExitCounts({"CPUID": 10, "INVALID_STATE|FAILED_VMENTRY": 1}, {"IO": 5, "restart": 1},
                   {(0xE9, "out"): 5, (0x3FD, "in"): 2}, {"cpuid": 10}, 2, "stream", 3,
                   ("bad 1", "bad 2"), {"handle_fastpath_wrmsr": 7, "handle_fastpath_wrmsr:handled": 6},
                   ("handle_fastpath_wrmsr",), "handle_fastpath_set_msr_irqoff is not in /proc/kallsyms")
    b = ExitCounts.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b == a and b.to_dict() == a.to_dict()


def test_from_dict_fails_closed_and_rejects_garbage():
    legacy = {"exits": {"CPUID": 1}, "userspace": {}, "pio": {"0xe9/out": 1}, "handled": {},
              "lost": 0, "backend": "hist"}
    c = ExitCounts.from_dict(legacy)
    assert c.pio == {(0xE9, "out"): 1} and c.unparsed == 1 and "unparsed" in c.unparsed_lines[0]
    for bad in ({"exits": {}}, dict(legacy, pio={"e9-out": 1}), dict(legacy, exits={"CPUID": "1"}), []):
        with pytest.raises(ExitlatError):
            ExitCounts.from_dict(bad)


# ---- kprobes on a fake tracefs ----------------------------------------------------------------

def _fake_root(tmp_path, kprobe_events=True):
    root = tmp_path / "tracing"
    (root / "instances").mkdir(parents=True)
    if kprobe_events:
        (root / "kprobe_events").write_text("")
    return root


def _kallsyms(tmp_path, *lines):
    p = tmp_path / "kallsyms"
    p.write_text("".join(line + "\n" for line in lines))
    return p


def test_fastpath_symbols_per_kernel(tmp_path):
    k61 = _kallsyms(tmp_path, "ffffffffc0a1b2c0 T handle_fastpath_set_msr_irqoff\t[kvm]",
                    "ffffffffc0c00000 t handle_fastpath_preemption_timer\t[kvm_intel]")
    assert fastpath_symbols(tmp_path, kallsyms=k61) == ["handle_fastpath_set_msr_irqoff"]
    k618 = _kallsyms(tmp_path, "ffffffff812ad5a0 t __handle_fastpath_wrmsr",
                     "ffffffff812ad720 T handle_fastpath_wrmsr", "ffffffff812ad760 T handle_fastpath_wrmsr_imm")
    assert fastpath_symbols(tmp_path, kallsyms=k618) == ["handle_fastpath_wrmsr"]
    assert fastpath_symbols(tmp_path, kallsyms=_kallsyms(tmp_path, "ffffffff81000000 T _stext")) == []


def test_probe_setup_creates_return_probe_and_notes_missing(tmp_path, monkeypatch):
    root = _fake_root(tmp_path)
    group = kprobes.probe_group()
    (root / "events" / group / "handle_fastpath_wrmsr").mkdir(parents=True)   # the kernel makes it
    monkeypatch.setattr(kprobes, "KALLSYMS", _kallsyms(tmp_path, "ffffffff812ad720 T handle_fastpath_wrmsr"))
    c = ExitCounter([7], tracefs=root, kprobes=list(FASTPATH_SYMBOLS))
    c.tracefs = root
    c._setup_probes()
    assert c.kprobes_active == ["handle_fastpath_wrmsr"]
    assert "handle_fastpath_set_msr_irqoff is not in" in c.probe_note
    assert (root / "kprobe_events").read_text() == \
        f"r:{group}/handle_fastpath_wrmsr handle_fastpath_wrmsr ret=$retval:u32\n"
    assert c._probes_held == [("handle_fastpath_wrmsr", "kprobe_events")]
    for sym, events_file in c._probes_held:
        kprobes.release_probe(root, events_file, sym)
    assert (root / "kprobe_events").read_text().endswith(f"-:{group}/handle_fastpath_wrmsr\n")
    assert kprobes._probe_refs == {}


def test_probe_on_a_module_symbol_names_the_module(tmp_path, monkeypatch):
    root = _fake_root(tmp_path)
    sym = "handle_fastpath_set_msr_irqoff"
    (root / "events" / kprobes.probe_group() / sym).mkdir(parents=True)
    monkeypatch.setattr(kprobes, "KALLSYMS", _kallsyms(tmp_path, f"ffffffffc0a1b2c0 T {sym}\t[kvm]"))
    c = ExitCounter([7], tracefs=root, kprobes=[sym])
    c.tracefs = root
    c._setup_probes()
    assert c.kprobes_active == [sym] and c.probe_note == ""
    assert (root / "kprobe_events").read_text() == \
        f"r:{kprobes.probe_group()}/{sym} kvm:{sym} ret=$retval:u32\n"
    kprobes.release_probe(root, "kprobe_events", sym)


def test_probe_setup_without_kprobe_events(tmp_path, monkeypatch):
    root = _fake_root(tmp_path, kprobe_events=False)
    c = ExitCounter([7], tracefs=root, kprobes=["handle_fastpath_wrmsr"])
    c.tracefs = root
    c._setup_probes()
    assert c.kprobes_active == [] and "kprobe events not available" in c.probe_note
    c = ExitCounter([7], tracefs=root, kprobes=[])
    c.tracefs = root
    c._setup_probes()
    assert c.kprobes_active == [] and "no fastpath handler symbol" in c.probe_note
    with pytest.raises(ExitlatError):
        ExitCounter([7], kprobes=["bad name; rm"])


def test_stale_probes_of_dead_pids_are_removed(tmp_path):
    root = _fake_root(tmp_path)
    dead = 2 ** 22 + 12345                        # above pid_max's default: never a live pid
    assert not Path(f"/proc/{dead}").exists()
    ev = root / "instances" / "other" / "events" / f"exitlat_{dead}" / "handle_fastpath_wrmsr"
    ev.mkdir(parents=True)
    (ev / "enable").write_text("1")
    mine = f"r:exitlat_{os.getpid()}/handle_fastpath_wrmsr handle_fastpath_wrmsr ret=$retval:u32"
    (root / "kprobe_events").write_text(
        f"r:exitlat_{dead}/handle_fastpath_wrmsr handle_fastpath_wrmsr ret=$retval:u32\n{mine}\n")
    removed = remove_stale_instances(root)
    assert removed == [f"kprobe exitlat_{dead}/handle_fastpath_wrmsr"]
    assert mine in (root / "kprobe_events").read_text()           # a live pid's probe stays
    assert (ev / "enable").read_text() == "0"
    assert (root / "kprobe_events").read_text().endswith(f"-:exitlat_{dead}/handle_fastpath_wrmsr\n")


def test_hist_snapshot_carries_probes(tmp_path):
    inst = tmp_path / "inst"
    sym = "handle_fastpath_wrmsr"
    (inst / "events/kvm/kvm_exit").mkdir(parents=True)
    (inst / "events/kvm/kvm_exit/hist").write_text(hist(["{ common_pid: 7, exit_reason: 32, isa: 1 } hitcount: 9"]))
    pdir = inst / "events" / kprobes.probe_group() / sym
    pdir.mkdir(parents=True)
    pdir.joinpath("hist").write_text(hist(["{ common_pid: 7, ret: 1 } hitcount: 9"]))
    c = ExitCounter([7])
    c.instance, c.backend, c._events, c.kprobes_active = inst, "hist", ["kvm_exit"], [sym]
    snap = c.snapshot()
    assert snap.exits == {"MSR_WRITE": 9} and snap.probes == {sym: 9, sym + ":handled": 9}
    assert snap.probed == (sym,) and (snap - snap).probed == (sym,)
    c.instance = None


# ---- the two backends' setup, on a fake instance ----------------------------------------------

def test_backends_set_up_their_events_and_note_a_probe_they_cannot(tmp_path):
    from exitlat.verify.trace.backends import (HistBackend, StreamBackend, TraceTarget,
                                               choose_backend)
    from exitlat.verify.trace.tracefs import EVENTS
    from exitlat.verify.trace.tracepipe import TracePipe

    root, inst = tmp_path / "tracing", tmp_path / "tracing" / "instances" / "x"
    fields = {"kvm_exit": ["exit_reason", "isa"], "kvm_userspace_exit": ["reason"], "kvm_pio": ["rw", "port"],
              "kvm_msr": ["write"]}
    for ev in EVENTS:
        (root / "events/kvm" / ev).mkdir(parents=True)
        (root / "events/kvm" / ev / "format").write_text("".join(
            f"\tfield:unsigned int {f};\toffset:8;\tsize:4;\tsigned:0;\n" for f in ["common_pid"] + fields.get(ev, [])))
        (inst / "events/kvm" / ev).mkdir(parents=True)
    sym = "handle_fastpath_wrmsr"                  # no event directory: its setup fails
    t = TraceTarget(inst, root, "common_pid == 7", EVENTS, (sym,), TracePipe([7]))

    hist = HistBackend()
    dropped = hist.start(t)
    assert [s for s, _why in dropped] == [sym] and "hist trigger on the" in dropped[0][1]
    trigger = {ev: (inst / "events/kvm" / ev / "trigger").read_text() for ev in EVENTS}
    assert trigger["kvm_exit"] == "hist:keys=common_pid,exit_reason,isa:vals=hitcount:size=2048 if common_pid == 7"
    assert trigger["kvm_userspace_exit"].startswith("hist:keys=common_pid,reason:")      # no errno here
    assert trigger["kvm_cpuid"].startswith("hist:keys=common_pid:vals=hitcount")
    assert hist.enabled == () and not any((inst / "events/kvm" / ev / "enable").exists() for ev in EVENTS)

    stream = StreamBackend()
    dropped = stream.start(t)
    assert [s for s, _why in dropped] == [sym]
    for ev in EVENTS:
        assert (inst / "events/kvm" / ev / "filter").read_text() == "common_pid == 7"
        assert (inst / "events/kvm" / ev / "enable").read_text() == "1"
    assert stream.enabled == EVENTS and stream.streams and not hist.streams

    assert choose_backend("auto", True) == "hist" and choose_backend("auto", False) == "stream"
    assert choose_backend("stream", True) == "stream"
    with pytest.raises(ExitlatError, match="no hist triggers"):
        choose_backend("hist", False)
