"""Where the cycles of one exit go: the traced window's guest-side round trip split into KVM's time,
QEMU's time and the rest (the hardware VM exit and VM entry, plus what tracing adds).

The host side comes from exitlat.verify.trace.kvmtrace's timeline (ExitCounter(timeline=True)): in the traced
window the instance's trace clock is the TSC (x86-tsc) and every kvm_exit of the vCPU thread is
paired with its kvm_entry; a trip to QEMU in between is timed from the return of KVM_RUN
(syscalls:sys_exit_ioctl) to its next call (sys_enter_ioctl with cmd KVM_RUN). Per exit, in host
TSC ticks:

    host = kvm_entry - kvm_exit        qemu = sys_enter_ioctl(KVM_RUN) - sys_exit_ioctl
    kvm  = host - qemu                 kvm_run = (kvm_entry - kvm_userspace_exit) - qemu

`kvm` is everything the host kernel did between the two tracepoints (the exit handler and, for a
userspace exit, KVM_RUN's return and re-entry: `kvm_run`). The guest side is the traced window's
own samples (same guest code as the timed window, same iterations as the host saw). With TSC
scaling off, guest and host TSC tick at the same rate (checked: the host's TSC frequency against
the guest's tsc_khz) and the guest's TSC offset cancels in differences, so the units agree. What
is left,

    remainder = median(guest round trip) - median(kvm) - median(qemu),

is the VM exit and VM entry themselves, the host instructions between them and the tracepoints,
the guest's timer reads, and the part of the tracing cost that falls outside the host intervals.
The tracing overhead (traced median - timed median, document.tracing_overhead) is given beside it
so the reader can judge how much of the remainder tracing may be; `remainder_net` also removes the
same-mode timer baseline (the guest code around the exit, measured untraced).

Medians do not add (the median of a sum is not the sum of the medians); with the narrow, unimodal
distributions of a pinned core the difference is far below the spread. Nothing is guessed: a case
whose events cannot be paired exactly (lost events, unparsed lines, a missing tracepoint, a
non-TSC trace clock, TSC rates that differ beyond the kHz rounding, fewer pairs than iterations,
host components larger than the guest round trip) is "not decomposed" with the first reason.

What tracing leaves inside the intervals (`probes`): the host intervals are measured with
tracing on, and every tracepoint or kprobe that fires between kvm_exit and kvm_entry is charged
to KVM (or, between sys_exit_ioctl and sys_enter_ioctl, to QEMU). The traced window arms only
what the case needs (the fastpath kprobes only where the instruction has a fastpath handler:
exitlat/run/vm.py), and `probes` says what was armed, how many events fired inside each
interval (the streamed ones counted per interval by the timeline; the handler tracepoints,
kvm_hv_timer_state and kprobe hits from the window's counts, per iteration: they fire only inside
an exit's handler), and an estimate of their cost: the tracing overhead (traced median - timed
median) divided by all events per iteration, times the events inside. A kretprobe costs more
than a tracepoint, so the estimate is an average, not a bound.

An in-KVM case's exits that left the kernel (a kvm_userspace_exit inside the interval: a signal,
an exit the loop did not cause) are not KVM's handler time: they are kept out of the KVM
distribution and counted apart (`left_kernel`).

`decompose()` is a pure function: the pairing result and the samples in, one dict out (stored in
the bundle per case, in its traced window: `verification_window.decomposition`; `of_case()` reads
it back).
"""

from __future__ import annotations

import numpy as np

from exitlat.instructions import TABLE
from exitlat.verify.rules import ONE_TOLERANCE, STRAY_EVENTS, ZERO_TOLERANCE, expected_reasons

from .summary import percentile, as_cycles

STATUS_OK = "ok"
STATUS_NOT = "not decomposed"
# Guest and host TSC must tick at the same rate. Both are printed in kHz (host: tsc_freq_khz or
# the boot message's MHz with 3 decimals; guest: its kernel's tsc_khz, from kvmclock): 1 kHz of
# rounding, plus 0.01 % for the guest's kvmclock-derived value. TSC scaling changes the rate by
# far more (a guest asked for 2.0 GHz on a 2.1 GHz host: 5 %).
TSC_KHZ_SLACK = 1.0
TSC_RATE_TOLERANCE = 0.0001
HOST_METHOD = "kvm_exit -> kvm_entry (trace clock x86-tsc)"
QEMU_METHOD = "sys_exit_ioctl -> sys_enter_ioctl(KVM_RUN) of the vCPU thread"
KVM_RUN_METHOD = "kvm_userspace_exit -> kvm_entry, minus the QEMU time"
NOT_TIMINGS = "these are NOT VM-exit timings"

FIELDS = ("status", "reason", "clock", "exits", "method", "tsc", "guest_round_trip_cycles",
          "host_cycles", "kvm_cycles", "qemu_cycles", "kvm_run_cycles", "remainder_cycles",
          "baseline", "remainder_net_cycles", "tracing_overhead_cycles", "pairing", "note",
          "left_kernel", "probes")


def dist(values) -> dict | None:
    """{median, p99, n} of non-negative cycle counts (the percentiles of exitlat.stats.summary)."""
    a = np.sort(as_cycles(np.asarray(values, dtype=np.int64)))
    if a.size == 0:
        return None
    return {"median": percentile(a, 50), "p99": percentile(a, 99), "n": int(a.size)}


def _empty(clock=None) -> dict:
    out = dict.fromkeys(FIELDS)
    out.update(status=STATUS_NOT, clock=clock)
    return out


def _tsc_check(host_tsc_hz, guest_tsc_khz) -> tuple[dict, str | None]:
    tsc = {"host_khz": None if not host_tsc_hz else float(host_tsc_hz) / 1000.0,
           "guest_khz": None if not guest_tsc_khz else float(guest_tsc_khz),
           "relative_difference": None, "tolerance": TSC_RATE_TOLERANCE,
           "slack_khz": TSC_KHZ_SLACK}
    if not tsc["host_khz"] or not tsc["guest_khz"]:
        which = " and ".join(w for w, v in (("host", tsc["host_khz"]), ("guest", tsc["guest_khz"]))
                             if not v)
        return tsc, (f"the {which} TSC frequency is unknown: cannot check that guest and host "
                     "TSC tick at the same rate")
    rel = tsc["host_khz"] / tsc["guest_khz"] - 1.0
    tsc["relative_difference"] = round(rel, 9)
    diff = abs(tsc["host_khz"] - tsc["guest_khz"])
    if diff > TSC_KHZ_SLACK + TSC_RATE_TOLERANCE * tsc["guest_khz"]:
        return tsc, (f"TSC scaling: host TSC {tsc['host_khz']:.0f} kHz and guest TSC "
                     f"{tsc['guest_khz']:.0f} kHz differ by {diff:.0f} kHz, more than kHz rounding "
                     f"explains ({TSC_KHZ_SLACK:.0f} kHz + {TSC_RATE_TOLERANCE:.2%}): host ticks "
                     "are not guest ticks")
    return tsc, None


def _pairing_problem(paired) -> str | None:
    """The first reason the timeline cannot be trusted at all, or None."""
    ev = paired.events or {}
    if paired.clock != "x86-tsc":
        why = f"; {paired.note}" if paired.note else ""
        return (f"trace clock is {paired.clock or 'unknown'}, not x86-tsc: host timestamps are not "
                f"TSC cycles{why}")
    if paired.non_tsc:
        return (f"{paired.non_tsc} event lines carry seconds.microseconds timestamps, not TSC "
                "counts")
    if paired.lost:
        return f"{paired.lost} trace events were lost: exits cannot all be paired"
    if paired.unparsed:
        return f"{paired.unparsed} trace lines did not parse"
    missing = [m for m in paired.missing if m.split(" ")[0] in ("kvm_exit", "kvm_entry")]
    if missing:
        return f"tracepoint missing on this kernel: {', '.join(missing)}"
    if not ev.get("kvm_exit"):
        return ("no kvm_exit events: this KVM does not trace its exits (a software KVM such as "
                "PVM, or KVM emulating the guest's code)")
    if not ev.get("kvm_entry"):
        return "no kvm_entry events: the exits cannot be paired with their re-entries"
    if paired.unpaired_exits:
        return (f"{paired.unpaired_exits} kvm_exit events had no kvm_entry before the next exit")
    if paired.backwards:
        return f"{paired.backwards} exits re-entered before they exited (timestamps went backwards)"
    return None


def _select(paired, reasons, port, io="out") -> tuple[str, np.ndarray, np.ndarray, np.ndarray, int]:
    """The exits of the case: (label, host, qemu, user, n paired), merged over kinds; `io` the
    direction of its port I/O."""
    from exitlat.verify.trace.timeline import exit_kind

    if port is not None:
        wanted = [exit_kind(r, (port, io)) for r in reasons]
    else:
        wanted = [k for k in paired.kinds if k.split(" ")[0] in reasons]
    kinds = [paired.kinds[k] for k in wanted if k in paired.kinds]
    label = ", ".join(wanted) if wanted else ", ".join(reasons)

    def cat(name):
        parts = [np.asarray(k[name], dtype=np.int64) for k in kinds]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    return label, cat("host"), cat("qemu"), cat("user"), sum(int(k["n"]) for k in kinds)


def _inside(paired, label: str) -> dict:
    """Streamed events inside the selected kinds' intervals, over all their exits."""
    out: dict = {}
    for k in label.split(", "):
        for ev, c in ((paired.kinds.get(k) or {}).get("inside") or {}).items():
            out[ev] = out.get(ev, 0) + int(c)
    return out


# The window's counted events, by where they fire (ExitCounts field -> tracepoint name).
_HANDLED_EVENT = {"cpuid": "kvm_cpuid", "msr_read": "kvm_msr", "msr_write": "kvm_msr",
                  "hypercall": "kvm_hypercall"}


def _counted(counts, instruction: str) -> tuple[dict, dict, dict, list, str]:
    """From the window's ExitCounts (or its to_dict()): (every event hit by name, the in-handler
    ones that fire inside the case's own exits, the in-handler ones that fire inside other exits
    of the window (the guest's own timer writes, ...), the kprobes armed, the probe note).
    Inside the case's exits: its handler's tracepoint (kvm_cpuid; kvm_msr of its direction;
    kvm_hypercall), and for wrmsr_tsc_deadline kvm_hv_timer_state and the fastpath kretprobe."""
    from exitlat.verify.rules import HANDLER

    from exitlat.verify.trace.counts import HANDLED_SUFFIX

    if counts is None:
        return {}, {}, {}, [], ""
    get = (lambda f: counts.get(f) or {}) if isinstance(counts, dict) else \
        (lambda f: getattr(counts, f, None) or {})
    all_: dict = {"kvm_exit": sum(get("exits").values()),
                  "kvm_userspace_exit": sum(get("userspace").values()),
                  "kvm_pio": sum(get("pio").values())}
    own: dict = {}
    other: dict = {}
    timer_write = instruction == "wrmsr_tsc_deadline"

    def put(ev: str, c: int, mine: bool) -> None:
        if c:
            d = own if mine else other
            d[ev] = d.get(ev, 0) + int(c)
            all_[ev] = all_.get(ev, 0) + int(c)

    for k, c in get("handled").items():
        put(_HANDLED_EVENT.get(k, f"kvm_{k}"), c, k == HANDLER.get(instruction))
    put("kvm_hv_timer_state", sum(int(c) for c in get("hv_timer").values()), timer_write)
    for sym, c in get("probes").items():
        if not sym.endswith(HANDLED_SUFFIX):
            put(f"{sym} (kretprobe)", c, timer_write)
    probed = get("probed") if isinstance(counts, dict) else getattr(counts, "probed", ())
    note = (counts.get("probe_note") if isinstance(counts, dict)
            else getattr(counts, "probe_note", "")) or ""
    return all_, own, other, list(probed or ()), note


def _probe_cost(paired, counts, instruction: str, label: str, n_exits: int, n_iter: int,
                overhead) -> dict:
    """What was armed in the traced window, how many events fired inside each interval of the
    case's exits, and what they may cost (module docstring)."""
    all_, own, other, kprobes, note = _counted(counts, instruction)
    ev = dict(paired.events or {})
    for name in ("kvm_entry", "sys_exit_ioctl", "sys_enter_ioctl"):
        if ev.get(name):
            all_[name] = int(ev[name])
    inside = {e: round(c / n_exits, 4) for e, c in sorted(_inside(paired, label).items())}
    if counts is not None:
        inside.update({e: round(c / n_iter, 4) for e, c in sorted(own.items())})
    per_iter = sum(all_.values()) / n_iter if all_ else None
    inside_total = sum(inside.values())
    diff = (overhead or {}).get("difference") if isinstance(overhead, dict) else overhead
    per_event = (float(diff) / per_iter if diff is not None and per_iter and float(diff) > 0
                 else None)
    return {"kprobes_armed": kprobes, "kprobe_note": note or None,
            "tracepoints_fired": sorted(e for e in all_ if "(kretprobe)" not in e and all_[e]),
            "inside_per_exit": inside, "inside_total": round(inside_total, 4),
            "elsewhere_per_iteration": {e: round(c / n_iter, 4) for e, c in sorted(other.items())},
            "boundary": "kvm_exit and kvm_entry open and close each interval: the part of their "
                        "cost after kvm_exit's timestamp and before kvm_entry's falls inside",
            "events_per_iteration": None if per_iter is None else round(per_iter, 4),
            "cost_per_event_cycles": None if per_event is None else round(per_event, 1),
            "inside_cost_cycles": (None if per_event is None
                                   else round(per_event * inside_total, 1)),
            "counts": "window counts" if counts is not None else
                      "no window counts: handler tracepoints and kprobes inside are not known"}


def decompose(paired, guest_samples, *, instruction: str, expected_path: str, vendor: str,
              port: int | None = None, host_tsc_hz=None, guest_tsc_khz=None,
              tracing_overhead: dict | None = None, baseline: dict | None = None,
              emulated: str | None = None, unavailable: str | None = None,
              counts=None, exit_reason: str | None = None) -> dict:
    """One case's decomposition (module docstring).

    paired:        exitlat.verify.trace.timeline.PairedExits of the traced window, or None (then `unavailable` says why).
    guest_samples: the traced window's valid guest samples (cycles).
    instruction, expected_path, vendor, port: the case (port: port I/O kinds, whichever path).
    host_tsc_hz, guest_tsc_khz: the host's TSC rate (bundle host.tsc.hz) and the guest's
                   (guest.tsc_khz), to check that guest and host cycles are the same unit.
    tracing_overhead: document.tracing_overhead() of the case (traced vs timed median).
    baseline:      {"key", "median"} of the same-mode timer baseline, or None.
    emulated:      the host's `emulated` note (the selftest's emulated AMD-V host): the result is
                   computed the same way and labelled as meaningless.
    counts:        the traced window's ExitCounts (or to_dict()): the events it counted and the
                   kprobes it armed, for `probes`; None leaves the in-handler events unknown.
    """
    out = _empty(paired.clock if paired is not None else None)
    out["method"] = {"host": HOST_METHOD, "qemu": QEMU_METHOD if expected_path == "qemu" else None,
                     "kvm_run": KVM_RUN_METHOD if expected_path == "qemu" else None}
    if tracing_overhead:
        out["tracing_overhead_cycles"] = float(tracing_overhead["difference"])
    if baseline and baseline.get("median") is not None:
        out["baseline"] = {"key": baseline.get("key"), "median": float(baseline["median"])}
    if emulated:
        out["note"] = f"{emulated} — {NOT_TIMINGS}"
    g = as_cycles(np.asarray(guest_samples if guest_samples is not None else [], dtype=np.uint64))
    g = g[g != 0]
    out["guest_round_trip_cycles"] = dist(g) if g.size else None

    def refuse(reason: str) -> dict:
        out["status"], out["reason"] = STATUS_NOT, reason
        return out

    if expected_path == "none":
        return refuse("no exit to decompose: the instruction did not exit (path none); its round "
                      "trip is its own cost in the guest")
    if TABLE[instruction].exits != 1:
        return refuse(f"{TABLE[instruction].exits} exits per iteration: one guest sample holds "
                      "several host round trips, which this pairing does not split")
    if TABLE[instruction].second:
        return refuse(f"two exits per iteration ({TABLE[instruction].second_why} after the "
                      "first): one guest sample holds both round trips, which this pairing does "
                      "not split")
    if paired is None:
        return refuse(unavailable or "no traced window")
    out["pairing"] = paired.summary()
    problem = _pairing_problem(paired)
    if problem:
        return refuse(problem)
    if not g.size:
        return refuse("the traced window has no guest samples")
    out["tsc"], problem = _tsc_check(host_tsc_hz, guest_tsc_khz)
    if problem:
        return refuse(problem)

    reasons = (exit_reason,) if exit_reason else expected_reasons(instruction, vendor)
    label, host, qemu, user, n_paired = _select(paired, reasons,
                                                port if TABLE[instruction].io else None,
                                                TABLE[instruction].io or "out")
    out["exits"] = label
    n = int(g.size)
    lo, hi = (1 - ONE_TOLERANCE) * n, (1 + ONE_TOLERANCE) * n + STRAY_EVENTS
    if not lo <= n_paired <= hi:
        return refuse(f"{n_paired} paired {label} exits for {n} guest samples (need "
                      f"{lo:.0f}–{hi:.0f})")
    if expected_path == "qemu":
        if not paired.syscalls:
            return refuse("no syscalls:sys_enter_ioctl/sys_exit_ioctl events "
                          "(CONFIG_FTRACE_SYSCALLS): QEMU's time cannot be told from KVM_RUN's "
                          "return and re-entry")
        stayed = int(np.count_nonzero(user < 0))
        if stayed:
            return refuse(f"{stayed} {label} exits did not go to user space")
        broken = int(np.count_nonzero(qemu < 0))
        if broken:
            return refuse(f"{broken} {label} exits went to user space without a complete "
                          "sys_exit_ioctl -> sys_enter_ioctl(KVM_RUN) pair")
        kvm = host - qemu
        kvm_run = user - qemu
        if (kvm < 0).any() or (kvm_run < 0).any():
            return refuse("QEMU's time exceeds an exit's host time: the events are out of order")
        out["qemu_cycles"] = dist(qemu)
        out["kvm_run_cycles"] = dist(kvm_run)
    else:
        # An exit whose interval holds a kvm_userspace_exit left the kernel: its interval is
        # KVM_RUN's return and re-entry and QEMU, not KVM's handler. Kept apart, counted.
        went = user >= 0
        left = int(np.count_nonzero(went))
        if left > ZERO_TOLERANCE * n + STRAY_EVENTS:
            return refuse(f"{left} {label} exits went to user space: not an in-KVM path")
        out["left_kernel"] = {"n": left, "host_cycles": dist(host[went]) if left else None,
                              "note": "exits of the case that went to user space inside their "
                                      "interval: not in host/kvm cycles"}
        host = host[~went]
        kvm = host
        if left:
            note = f"{left} {label} exits that left the kernel kept apart (left_kernel)"
            out["note"] = f"{out['note']}; {note}" if out["note"] else note
    if not kvm.size:
        return refuse(f"no paired {label} exits")
    out["probes"] = _probe_cost(paired, counts, instruction, label, n_paired, n, tracing_overhead)
    out["host_cycles"] = dist(host)
    out["kvm_cycles"] = dist(kvm)
    gmed = out["guest_round_trip_cycles"]["median"]
    parts = out["kvm_cycles"]["median"] + (out["qemu_cycles"]["median"] if out["qemu_cycles"] else 0)
    if parts > gmed:
        what = "KVM + QEMU" if out["qemu_cycles"] else "KVM"
        for k in ("host_cycles", "kvm_cycles", "qemu_cycles", "kvm_run_cycles"):
            out[k] = None
        return refuse(f"the host-side median ({what} {parts:,.0f} cycles) exceeds the guest round "
                      f"trip ({gmed:,.0f}): host and guest cycles do not match")
    out["remainder_cycles"] = float(gmed - parts)
    if out["baseline"]:
        out["remainder_net_cycles"] = out["remainder_cycles"] - out["baseline"]["median"]
    out["status"], out["reason"] = STATUS_OK, None
    return out


def of_case(entry: dict) -> dict | None:
    """The decomposition a bundle's case entry carries: in its traced window
    (`verification_window.decomposition`), None when there is none (TCG, --no-verify, a bundle
    written before decompositions existed)."""
    vw = entry.get("verification_window")
    return vw.get("decomposition") if isinstance(vw, dict) else None


def components(d: dict) -> list[tuple[str, float]]:
    """The stacked parts of one decomposition (status ok), bottom to top, in cycles; they add up
    to the traced window's guest median (for plots and tables)."""
    if not d or d.get("status") != STATUS_OK:
        return []
    parts = []
    rem = d["remainder_cycles"]
    if d.get("baseline") and d.get("remainder_net_cycles") is not None \
            and 0 <= d["baseline"]["median"] <= rem:
        parts.append(("guest code (same-mode baseline)", d["baseline"]["median"]))
        parts.append(("VM exit + entry, tracing", d["remainder_net_cycles"]))
    else:
        parts.append(("VM exit + entry, guest code, tracing", rem))
    if d.get("kvm_run_cycles"):
        kvm_run = d["kvm_run_cycles"]["median"]
        handler = d["kvm_cycles"]["median"] - kvm_run
        if handler >= 0:
            parts.append(("KVM handler", handler))
            parts.append(("KVM_RUN return + re-entry", kvm_run))
        else:
            parts.append(("KVM", d["kvm_cycles"]["median"]))
    else:
        parts.append(("KVM", d["kvm_cycles"]["median"]))
    if d.get("qemu_cycles"):
        parts.append(("QEMU", d["qemu_cycles"]["median"]))
    return parts
