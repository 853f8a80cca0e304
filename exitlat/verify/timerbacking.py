"""Which timer backed case 5's TSC-deadline writes: the VMX preemption timer or an hrtimer.

A WRMSR to IA32_TSC_DEADLINE makes KVM (re)start the guest's LAPIC timer (arch/x86/kvm/lapic.c,
kvm_set_lapic_tscdeadline_msr -> start_apic_timer -> restart_apic_timer; from the irq-off fastpath
too, handle_fastpath_set_msr_irqoff). KVM first tries the VMX preemption timer (start_hv_timer ->
vmx_set_hv_timer), which refuses a deadline more than 2^(32 + the CPU's preemption timer rate)
cycles ahead (-ERANGE); then, or where it cannot use one at all (SVM has none;
kvm_intel.preemption_timer=N; MWAIT passed through or posted timer interrupts), it arms an hrtimer
(start_sw_timer). Both paths end in the tracepoint kvm_hv_timer_state(vcpu_id, hv_timer_in_use):
1 from start_hv_timer, 0 from start_sw_timer. So the traced window's counts of it
(ExitCounts.hv_timer: "in_use", "not_in_use") say which timer backed the loop's writes, one event
per write. The guest's own timer (re)starts add a few events of either kind between batches,
and a write while a timer interrupt is pending starts nothing: hence the tolerances below.

Where no event tells (the kernel lacks the tracepoint, a bundle written before it was counted,
the guest's LAPIC timer not in TSC-deadline mode), the answer is "unknown: <why>", except where
the host's facts settle it: an AMD/Hygon host, or kvm_intel.preemption_timer=N.
"""

from __future__ import annotations

PREEMPTION_TIMER = "preemption timer (hv_timer)"
HRTIMER = "hrtimer (software)"
HRTIMER_SVM = "hrtimer (no preemption timer on SVM)"
UNKNOWN = "unknown"

# The loop's writes are ≈1 event per iteration: at least this fraction of n must be of one kind ...
WRITES_FRACTION = 0.98
# ... and the other kind at most this fraction of n (the guest's own timer, idle switches).
OTHER_FRACTION = 0.05


def _param(params: dict | None, name: str) -> str | None:
    v = (params or {}).get(name)
    return None if v is None else str(v).strip()


def timer_backing(counts, vendor: str, host_params: dict | None = None,
                  n: int | None = None) -> dict:
    """{"timer": one of PREEMPTION_TIMER, HRTIMER, HRTIMER_SVM or "unknown: <why>",
    "evidence": how it is known, "hv_timer": the counts, "n": the iterations,
    "preemption_timer_param": kvm_intel.preemption_timer or None}.

    counts: the traced window's ExitCounts (or its to_dict()), None when there is none;
    vendor: "intel", "amd" or "unknown" (how the host names exits); host_params: the bundle's
    host.kvm.parameters ("kvm_intel.preemption_timer", ...); n: the window's iterations, each one
    WRMSR IA32_TSC_DEADLINE."""
    hv = {}
    if counts is not None:
        hv = dict(counts.get("hv_timer") or {}) if isinstance(counts, dict) else dict(counts.hv_timer)
    in_use, sw = int(hv.get("in_use", 0)), int(hv.get("not_in_use", 0))
    param = _param(host_params, "kvm_intel.preemption_timer")
    out = {"timer": UNKNOWN, "evidence": "", "hv_timer": {"in_use": in_use, "not_in_use": sw},
           "n": n, "preemption_timer_param": param}

    def say(timer: str, evidence: str) -> dict:
        out["timer"], out["evidence"] = timer, evidence
        return out

    counted = f"kvm_hv_timer_state: {in_use} in use, {sw} not in use, for {n} writes"
    if vendor == "amd":
        if in_use:
            return say(f"{UNKNOWN}: {in_use} kvm_hv_timer_state events say a preemption timer was "
                       "in use on an SVM host, which has none", counted)
        return say(HRTIMER_SVM, "SVM has no preemption timer: KVM arms an hrtimer for every "
                   "deadline" + (f" ({counted})" if sw else ""))
    if param is not None and param.upper() in ("N", "0"):
        if in_use:
            return say(f"{UNKNOWN}: kvm_intel.preemption_timer={param} but {in_use} "
                       "kvm_hv_timer_state events say the preemption timer was in use", counted)
        return say(HRTIMER, f"kvm_intel.preemption_timer={param}: KVM cannot use the preemption "
                   "timer" + (f" ({counted})" if sw else ""))
    if not n or n <= 0:
        return say(f"{UNKNOWN}: no iteration count to weigh the timer events against", counted)
    if counts is None:
        return say(f"{UNKNOWN}: no traced window counts", "")
    if not in_use and not sw:
        return say(f"{UNKNOWN}: no kvm_hv_timer_state events counted (a kernel without the "
                   "tracepoint, a window recorded before it was counted, or a guest LAPIC timer "
                   "not in TSC-deadline mode)", counted)
    if in_use >= WRITES_FRACTION * n and sw <= OTHER_FRACTION * n:
        return say(PREEMPTION_TIMER, counted)
    if sw >= WRITES_FRACTION * n and in_use <= OTHER_FRACTION * n:
        return say(HRTIMER, counted + (" (the deadline is beyond what the preemption timer "
                                       "accepts, or KVM cannot use it for this VM)"))
    return say(f"{UNKNOWN}: the timer events do not show one timer for ≈1 write per iteration "
               f"(need ≥ {WRITES_FRACTION:.0%} of n of one kind and ≤ {OTHER_FRACTION:.0%} of "
               "the other)", counted)
