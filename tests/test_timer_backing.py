"""Case 5's WRMSR IA32_TSC_DEADLINE: which timer backs the deadlines the guest arms
(exitlat/verify/timerbacking.py, from the traced window's kvm:kvm_hv_timer_state counts), and the
guest's loop itself under TCG (a deadline re-armed in every iteration never fires in a batch, and
the guest's own timer works afterwards)."""

import re
from pathlib import Path

import pytest

from exitlat.run.guestio import GuestPlan
from exitlat.verify.timerbacking import (HRTIMER, HRTIMER_SVM, PREEMPTION_TIMER, timer_backing)
from exitlat.verify.trace.backends import HistBackend
from exitlat.verify.trace.counts import CountAccumulator, ExitCounts
from exitlat.verify.trace.histparse import add_hists
from exitlat.verify.trace.traceparse import parse_trace_text
from exitlat.verify.trace.tracefs import EVENTS
from exitlat.verify.traced import verify_case

MODULE = Path(__file__).resolve().parents[1] / "guest" / "module" / "exitlat_mod.c"
N = 10_000


# ---- the guest arms a deadline that the VMX preemption timer accepts --------------------------

def test_the_module_arms_a_realistic_deadline_relative_to_each_iteration():
    """vmx_set_hv_timer() refuses deltas of 2^(32 + rate) cycles or more (rate >= 0), so the
    deadline must be below 2^32 cycles ahead (2^40 made every write an hrtimer), and re-armed
    from each iteration's own t0 (a fixed deadline per batch can pass under emulation)."""
    src = MODULE.read_text()
    m = re.search(r"#define EL_DEADLINE_AHEAD\s+\(1ULL << (\d+)\)", src)
    assert m, "EL_DEADLINE_AHEAD not found"
    ahead = 1 << int(m.group(1))
    assert ahead < 1 << 32
    assert ahead >= 1 << 28            # still >= 67 ms at 4 GHz: never reached by one slow exit
    row = re.search(r"X\(EXITLAT_I_WRMSR_TSC_DEADLINE.*?\)\)", src, re.S).group(0)
    assert "EL_WINDOW_T0 + ahead" in row
    assert "w.ahead = EL_DEADLINE_AHEAD;" in src and "1ULL << 40" not in src


# ---- counting kvm:kvm_hv_timer_state -----------------------------------------------------------

def _line(pid, ts, in_use):
    # TP_printk("vcpu_id %x hv_timer %x") (arch/x86/kvm/trace.h, 4.10 - 6.18)
    return f" CPU 0/KVM-{pid} [003] d..1. {ts}: kvm_hv_timer_state: vcpu_id 0 hv_timer {in_use:x}"


def test_stream_lines_are_counted_by_timer():
    text = "\n".join([_line(7, 100, 1), _line(7, 200, 1), _line(7, 300, 0)])
    c = parse_trace_text(text, pids={7})
    assert c.unparsed == 0 and c.hv_timer == {"in_use": 2, "not_in_use": 1}
    bad = parse_trace_text(" CPU 0/KVM-7 [003] d..1. 1: kvm_hv_timer_state: vcpu_id 0 hv_timer\n")
    assert bad.unparsed == 1 and bad.hv_timer == {}


def test_hist_entries_are_counted_by_timer():
    acc = CountAccumulator()
    add_hists({"kvm_hv_timer_state":
               "{ common_pid:       4012, hv_timer_in_use:          1 } hitcount:      10007\n"
               "{ common_pid:       4012, hv_timer_in_use:          0 } hitcount:          3\n"
               "{ common_pid:       4012 } hitcount:          3\n"}, acc)
    c = acc.freeze("hist")
    assert c.hv_timer == {"in_use": 10007, "not_in_use": 3}
    assert c.unparsed == 1                      # an entry without the field fails closed


def test_the_event_is_counted_and_the_hist_key_is_its_field():
    assert "kvm_hv_timer_state" in EVENTS
    assert HistBackend.KEYS["kvm_hv_timer_state"] == ["hv_timer_in_use"]


def test_window_subtraction_and_bundle_round_trip_keep_the_counts():
    later = ExitCounts({"MSR_WRITE": 12}, hv_timer={"in_use": 12, "not_in_use": 1})
    earlier = ExitCounts({"MSR_WRITE": 2}, hv_timer={"in_use": 2})
    w = later - earlier
    assert w.hv_timer == {"in_use": 10, "not_in_use": 1}
    d = w.to_dict()
    assert d["hv_timer"] == {"in_use": 10, "not_in_use": 1}
    assert ExitCounts.from_dict(d).hv_timer == w.hv_timer
    old = {k: v for k, v in d.items() if k != "hv_timer"}    # a bundle from before the field
    assert ExitCounts.from_dict(old).hv_timer == {}


# ---- which timer backed the writes -------------------------------------------------------------

def _w(in_use=0, sw=0):
    return ExitCounts({"MSR_WRITE": N}, hv_timer={k: v for k, v in
                                                  (("in_use", in_use), ("not_in_use", sw)) if v})


@pytest.mark.parametrize("counts, vendor, params, timer", [
    (_w(N + 12, 3), "intel", {"kvm_intel.preemption_timer": "Y"}, PREEMPTION_TIMER),
    (_w(N + 12, 3), "unknown", None, PREEMPTION_TIMER),       # only VMX has one: the events say so
    # the 2^40 deadline of old: every write falls back to an hrtimer, the guest's own ticks do not
    (_w(40, N + 10), "intel", {"kvm_intel.preemption_timer": "Y"}, HRTIMER),
    (_w(0, N), "amd", None, HRTIMER_SVM),
    (_w(), "amd", None, HRTIMER_SVM),                          # SVM: known without the events
    (_w(), "intel", {"kvm_intel.preemption_timer": "N"}, HRTIMER),
    (_w(0, N), "intel", {"kvm_intel.preemption_timer": "N"}, HRTIMER),
])
def test_timer_backing_decides(counts, vendor, params, timer):
    got = timer_backing(counts, vendor, params, N)
    assert got["timer"] == timer, got
    assert got["evidence"]
    assert timer_backing(counts.to_dict(), vendor, params, N)["timer"] == timer


@pytest.mark.parametrize("counts, vendor, params, why", [
    (_w(), "intel", {"kvm_intel.preemption_timer": "Y"}, "no kvm_hv_timer_state events"),
    (None, "intel", None, "no traced window counts"),
    (_w(N // 2, N // 2), "intel", None, "do not show one timer"),       # half and half
    (_w(N // 2, 10), "intel", None, "do not show one timer"),           # too few events
    (_w(N, 0), "amd", None, "SVM host"),                                # contradictions
    (_w(N, 0), "intel", {"kvm_intel.preemption_timer": "N"}, "preemption_timer=N"),
])
def test_timer_backing_unknown_says_why(counts, vendor, params, why):
    got = timer_backing(counts, vendor, params, N)
    assert got["timer"].startswith("unknown: ") and why in got["timer"], got


def test_traced_verdict_carries_the_timer_backing():
    """verify_case puts the timer into the wrmsr_tsc_deadline verdict (and its detail); other
    instructions have none."""
    w = ExitCounts({"MSR_WRITE": N}, handled={"msr_write": N},
                   probes={"handle_fastpath_set_msr_irqoff": N,
                           "handle_fastpath_set_msr_irqoff:handled": N},
                   probed=("handle_fastpath_set_msr_irqoff",),
                   hv_timer={"in_use": N + 5})
    r = verify_case(w, N, "kvm_fastpath", "wrmsr_tsc_deadline", None, "intel",
                    kvm_params={"kvm_intel.preemption_timer": "Y"})
    assert r["timer_backing"]["timer"] == PREEMPTION_TIMER
    assert "deadline timer: preemption timer (hv_timer)" in r["detail"]
    w40 = ExitCounts(w.exits, handled=w.handled, probes=w.probes, probed=w.probed,
                     hv_timer={"not_in_use": N, "in_use": 4})
    r = verify_case(w40, N, "kvm_fastpath", "wrmsr_tsc_deadline", None, "intel")
    assert r["timer_backing"]["timer"] == HRTIMER          # the fastpath ran, on an hrtimer
    r = verify_case(ExitCounts({"CPUID": N}, handled={"cpuid": N}), N, "kvm", "cpuid", None, "intel")
    assert "timer_backing" not in r


def _run(folder, plan: GuestPlan, accel: str):
    from exitlat.cases import case_specs
    from exitlat.build.pins import load_pins
    from exitlat.progress import Progress
    from exitlat.run.plan import BenchOptions, RunPlan
    from exitlat.run.vm import VmRun

    o = BenchOptions(cases=plan.cases, iterations=plan.iterations, warmup=plan.warmup,
                     instr=plan.instr, accel=accel, container=False, debugcon="file", verify=False)
    run = RunPlan(o, accel, 1, "unknown", tuple(case_specs(plan.cases, plan.instr)),
                  plan.verify_iterations, plan).with_build(folder, load_pins().base)
    return VmRun(run, Progress()).run()


def _build():
    from exitlat.build.stages import find_build

    folder = find_build()
    if folder is None:
        pytest.skip("no build folder (invoke build)")
    return folder


@pytest.mark.slow
def test_tsc_deadline_loop_is_refused_cleanly_under_tcg():
    """QEMU's TCG has no TSC-deadline timer: the module refuses the instruction with a structured
    error (no oops, no hang), so the loop itself can only run on a KVM vCPU (next test)."""
    r = _run(_build(), GuestPlan(cases=[5], instr="wrmsr_tsc_deadline", iterations=10, warmup=0,
                                 baselines=False), "tcg")
    assert r.status == "incomplete"
    message = " ".join(e.get("message", "") for e in r.errors)
    assert "refused wrmsr_tsc_deadline" in message and "CPUID.1:ECX.TSC_DEADLINE" in message
