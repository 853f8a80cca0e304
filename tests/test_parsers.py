"""The trace parsers on what kernels really print: hist keys as unsigned 64-bit numbers, kvm_entry
without rip (kernels before 5.10), and events of a thread the instance's filter should have
dropped (which fail the window instead of being ignored)."""

import numpy as np
import pytest

from exitlat.stats.decompose import STATUS_NOT, decompose
from exitlat.verify.trace.counts import CountAccumulator
from exitlat.verify.trace.histparse import add_hists
from exitlat.verify.trace.kvmtrace import ExitCounter
from exitlat.verify.trace.timeline import TSC_CLOCK, Timeline
from exitlat.verify.trace.traceparse import KVM_ENTRY_WITHOUT_RIP, parse_trace_line, parse_trace_text

U64 = 1 << 64


def hist(lines):
    body = "\n".join(lines)
    return (f"# event histogram\n#\n# trigger info: hist:keys=... [active]\n#\n\n{body}\n\n"
            f"Totals:\n    Hits: 1\n    Entries: {len(lines)}\n    Dropped: 0\n")


def userspace_hist(errno: int, reason: int = 2, hits: int = 7, pid: int = 4012):
    acc = CountAccumulator()
    add_hists({"kvm_userspace_exit": hist(
        [f"{{ common_pid: {pid:10d}, reason: {reason:10d}, errno: {errno:10d} }} hitcount: {hits:10d}"])},
        acc, {4012})
    return acc.freeze("hist")


# ---- hist: errno as the kernel prints it ------------------------------------------------------

def test_hist_errno_minus_eintr_printed_unsigned_is_a_restart_not_the_stale_reason():
    """A KVM_RUN interrupted by a signal (errno -4) keeps the previous exit's reason (here IO):
    hist prints the errno as u64 18446744073709551612, which must read as a restart."""
    c = userspace_hist(U64 - 4)
    assert c.userspace == {"restart": 7} and c.unparsed == 0


def test_hist_other_negative_errno_is_an_error_not_the_stale_reason():
    c = userspace_hist(U64 - 14)                                  # -EFAULT
    assert c.userspace == {"error": 7} and c.unparsed == 0
    assert userspace_hist(0).userspace == {"IO": 7}


@pytest.mark.parametrize("errno", [5, (1 << 32) - 4, U64 - (1 << 40)])
def test_hist_errno_no_int_prints_as_is_unparsed(errno):
    c = userspace_hist(errno)
    assert c.userspace == {} and c.unparsed == 1 and "kvm_userspace_exit" in c.unparsed_lines[0]


# ---- hist: entries of other threads -----------------------------------------------------------

def test_hist_entry_of_another_thread_fails():
    acc = CountAccumulator()
    add_hists({"kvm_exit": hist([
        "{ common_pid:       4012, exit_reason:         10, isa:          1 } hitcount:      11000",
        "{ common_pid:       4013, exit_reason:         30, isa:          1 } hitcount:          5"])},
        acc, {4012})
    c = acc.freeze("hist")
    assert c.exits == {"CPUID": 11000}
    assert c.unparsed == 1 and "thread 4013, not a vCPU thread" in c.unparsed_lines[0]


def test_hist_snapshot_checks_the_threads(tmp_path):
    """The hist backend's snapshot() passes the counter's threads to the parser."""
    inst = tmp_path / "inst"
    (inst / "events/kvm/kvm_exit").mkdir(parents=True)
    (inst / "events/kvm/kvm_exit/hist").write_text(hist([
        "{ common_pid: 7, exit_reason: 10, isa: 1 } hitcount: 9",
        "{ common_pid: 8, exit_reason: 10, isa: 1 } hitcount: 3"]))
    c = ExitCounter([7])
    c.instance, c.backend, c._events = inst, "hist", ["kvm_exit"]
    try:
        snap = c.snapshot()
    finally:
        c.instance = None
    assert snap.exits == {"CPUID": 9} and snap.unparsed == 1


# ---- trace_pipe: events of other threads ------------------------------------------------------

EXIT_OF = " CPU 0/KVM-{pid} [003] d..1.  812.001001: kvm_exit: vcpu 0 reason CPUID rip 0x401a2b info1 0x0 info2 0x0"


def test_stream_event_of_another_thread_fails():
    acc = CountAccumulator()
    for pid in (4012, 4012, 999):
        parse_trace_line(EXIT_OF.format(pid=pid), acc, pids={4012})
    c = acc.freeze("stream")
    assert c.exits == {"CPUID": 2}
    assert c.unparsed == 1 and c.unparsed_lines[0].startswith("event of thread 999, not a vCPU thread")


def test_stream_marker_of_another_thread_is_ours_not_foreign():
    acc = CountAccumulator()
    assert parse_trace_line(" python3-1 [000] ...1.  1.0: tracing_mark_write: exitlat-sync-1-0", acc,
                            pids={4012}) == "exitlat-sync-1-0"
    assert acc.freeze("stream").unparsed == 0


def test_timeline_syscall_of_another_thread_fails():
    tl = Timeline()
    counts = parse_trace_text(" qemu-9 [001] ..... 150: sys_ioctl(fd: 3, cmd: ae80, arg: 0)\n",
                              pids={7}, timeline=tl)
    assert counts.unparsed == 1 and tl.freeze().unparsed == 1 and "thread 9" in counts.unparsed_lines[0]


# ---- trace_pipe: kvm_entry without rip (kernels before 5.10) -----------------------------------

OLD_KERNEL = """\
 CPU 0/KVM-7 [003] d..1. 100: kvm_exit: reason CPUID rip 0xffffffff8103ea32 info 0 0
 CPU 0/KVM-7 [003] ..... 400: kvm_entry: vcpu 0
 CPU 0/KVM-7 [003] d..1. 500: kvm_exit: reason CPUID rip 0xffffffff8103ea32 info 0 0
 CPU 0/KVM-7 [003] ..... 800: kvm_entry: vcpu 0
"""


def test_kvm_entry_without_rip_counts_but_does_not_decompose():
    tl = Timeline(TSC_CLOCK)
    counts = parse_trace_text(OLD_KERNEL, pids={7}, timeline=tl)
    p = tl.freeze()
    assert counts.unparsed == 0 and counts.exits == {"CPUID": 2}    # the verification has its counts
    assert p.paired == 0 and p.events.get("kvm_entry without rip") == 2
    assert KVM_ENTRY_WITHOUT_RIP in p.missing
    out = decompose(p, np.full(2, 1000, dtype=np.uint64), instruction="cpuid", expected_path="kvm",
                    vendor="intel", host_tsc_hz=2_000_000_000, guest_tsc_khz=2_000_000)
    assert out["status"] == STATUS_NOT and "kvm_entry (prints no rip" in out["reason"]


def test_kvm_entry_with_garbage_is_still_unparsed():
    tl = Timeline()
    counts = parse_trace_text(" CPU 0/KVM-7 [003] ..... 400: kvm_entry: vcpu zero\n", pids={7}, timeline=tl)
    assert counts.unparsed == 1
