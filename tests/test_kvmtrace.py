"""Unit tests of the trace-line parser, the hist parser, ExitCounts and verify_case (no KVM needed)."""

from pathlib import Path

import pytest

from exitlat.errors import ExitlatError
from exitlat.kvmtrace import (ExitCounter, ExitCounts, _Acc, _acc_from_hists, decode_exit_reason,
                              decode_userspace_reason, parse_hist, parse_trace_line, parse_trace_text,
                              tracing_available)
from exitlat.verify import verify_case

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
    acc = _Acc()
    lines = CAPTURED.splitlines()
    marks = [parse_trace_line(line, acc, pids={5776}) for line in lines]
    assert "exitlat-sync-1234-0" in marks
    other = _Acc()
    for line in lines:
        parse_trace_line(line, other, pids={1})
    assert other.userspace == {} and other.pio == {}


def test_kvm_exit_lines_vmx_svm_unknown_and_lost():
    c = parse_trace_text(KVM_EXIT_LINES, pids={4012})
    assert c.exits == {"CPUID": 2, "IO_INSTRUCTION": 1, "EXTERNAL_INTERRUPT": 1, "MSR": 1, "VMMCALL": 1,
                       "13": 1, "INVALID_STATE|FAILED_VMENTRY": 1, "MSR_READ": 1}
    assert c.handled == {"msr_read": 1, "msr_write": 1, "hypercall": 1}
    assert c.userspace == {"restart": 1}           # the MMIO line is another pid
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
    acc = _Acc()
    _acc_from_hists({
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


# ---- verify_case -------------------------------------------------------------------------------

N = 11000


def win(exits=None, user=None, pio=None, handled=None, lost=0):
    return ExitCounts(exits or {}, user or {}, pio or {}, handled or {}, lost, "test")


def test_kvm_case_passes_with_strays():
    w = win({"CPUID": N, "EXTERNAL_INTERRUPT": 30, "IO_INSTRUCTION": 150},
            {"IO": 150}, {(0x3F8, "out"): 100, (0x3FD, "in"): 50}, {"cpuid": N})
    r = verify_case(w, N, "kvm", "cpuid", None, "intel")
    assert r["status"] == "passed", r["detail"]
    assert r["expected_reason_per_iter"] == 1.0 and r["stray_console_io"] == 150
    assert r["userspace_exits_per_iter"] == round(150 / N, 6)


def test_kvm_case_fails_when_exits_go_to_userspace():
    w = win({"VMCALL": N}, {"HYPERCALL": N}, {}, {})
    r = verify_case(w, N, "kvm", "vmcall", None, "intel")
    assert r["status"] == "failed" and "userspace" in r["detail"]


def test_kvm_case_fails_without_expected_reason():
    w = win({"EXTERNAL_INTERRUPT": 40}, {}, {}, {})
    r = verify_case(w, N, "kvm", "cpuid", None, "intel")
    assert r["status"] == "failed" and "CPUID" in r["detail"]


def test_amd_names_and_unknown_vendor():
    w = win({"MSR": N}, {}, {}, {"msr_read": N})
    assert verify_case(w, N, "kvm", "rdmsr", None, "amd")["status"] == "passed"
    assert verify_case(win({"VMMCALL": N}), N, "kvm", "vmcall", None, "unknown")["status"] == "passed"
    assert verify_case(win({"MSR_READ": N}), N, "kvm", "rdmsr", None, "amd")["status"] == "failed"


def test_qemu_case():
    good = win({"IO_INSTRUCTION": N + 80}, {"IO": N + 80}, {(0xE9, "out"): N, (0x3F8, "out"): 80})
    r = verify_case(good, N, "qemu", "outb", 0xE9, "intel")
    assert r["status"] == "passed", r["detail"]
    assert r["port_exits_per_iter"] == 1.0
    # handled in the kernel (no userspace exit): fails
    inkernel = win({"IO_INSTRUCTION": N}, {}, {(0xE9, "out"): N})
    assert verify_case(inkernel, N, "qemu", "outb", 0xE9, "intel")["status"] == "failed"
    # wrong port: fails
    assert verify_case(good, N, "qemu", "outb", 0x80, "intel")["status"] == "failed"


def test_lost_events_fail():
    w = win({"CPUID": N}, {}, {}, {}, lost=5)
    r = verify_case(w, N, "kvm", "cpuid", None, "intel")
    assert r["status"] == "failed" and "lost" in r["detail"]


def test_pvm_fallback_uses_handler_events():
    w = win({"13": N + 20}, {"HLT": 1}, {}, {"cpuid": N})
    r = verify_case(w, N, "kvm", "cpuid", None, "unknown")
    assert r["status"] == "passed" and r["expected_reason_per_iter"] is None
    assert "not decodable" in r["detail"]
    assert verify_case(win({}, {"HLT": 1}, {}, {}), N, "kvm", "cpuid", None, "unknown")["status"] == "failed"


def test_fastpath_note_and_bad_input():
    r = verify_case(win({"MSR_WRITE": N}, {}, {}, {"msr_write": N}), N, "kvm_fastpath",
                    "wrmsr_tsc_deadline", None, "intel")
    assert r["status"] == "passed" and "fastpath" in r["detail"]
    for args in [(0, "kvm", "cpuid", None, "intel"), (N, "guest", "cpuid", None, "intel"),
                 (N, "kvm", "nop", None, "intel"), (N, "qemu", "cpuid", None, "intel"),
                 (N, "qemu", "outb", None, "intel"), (N, "kvm", "cpuid", None, "arm"),
                 (N, "qemu", "outb", 70000, "intel")]:
        with pytest.raises(ExitlatError):
            verify_case(win(), *args)
    with pytest.raises(ExitlatError):
        verify_case({"CPUID": 1}, N, "kvm", "cpuid", None, "intel")
