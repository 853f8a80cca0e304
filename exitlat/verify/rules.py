"""Did each exit take the path the case claims? Verdicts from host-side counts; fail closed.

Three checks, one per kind of window (status values: STATUS_PASSED, STATUS_FAILED,
STATUS_UNVERIFIED; the caller adds "skipped"/"not_applicable"). What a check cannot parse, count
or prove is "failed" or "unverified", never "passed".

`verify_case(window, iterations_total, expected_path, instruction, port, vendor, kvm_stats=None)`
judges a *traced* window: an `exitlat.verify.kvmtrace.ExitCounts` (the difference of two snapshots around
the loop) against what `iterations_total` iterations (warm-up included) must produce:

* a KVM-handled case ("kvm", "kvm_fastpath"): ≈1 exit of the expected reason per iteration
  (cpuid→CPUID, rdmsr→MSR_READ, wrmsr_tsc_deadline→MSR_WRITE, vmcall→VMCALL/VMMCALL; on AMD
  MSR reads and writes share one reason, "MSR") and ≈0 userspace exits per iteration;
* a QEMU case ("qemu", instruction "outb"): ≈1 kvm_pio write on `port` per iteration and ≈1
  userspace exit (KVM_EXIT_IO) per iteration;
* any lost trace event, and any trace line or hist entry that did not parse
  (`ExitCounts.unparsed`), fails the window: the counts would not be complete;
* "kvm_fastpath" (WRMSR IA32_TSC_DEADLINE) must also be *proven* to take KVM's irq-off fastpath:
  the return probe on the fastpath handler (kvmtrace.FASTPATH_SYMBOLS) must report ≈1 call per
  iteration that returned something other than EXIT_FASTPATH_NONE; ≈0 such returns fails ("took
  the full handler, not the fastpath"). Where no handler could be probed (no kprobe events,
  symbol absent), a window that passes everything else is "unverified" with the detail
  "passed (tier unverified: <why>)";
* with `kvm_stats` (KVM's binary stats, QMP query-stats, delta over the same traced window) the
  stats and the trace must agree within AGREE_TOLERANCE·n + STATS_STRAY_EVENTS: `exits` vs all
  kvm_exit events, `io_exits` vs IO_INSTRUCTION exits, `hypercalls` vs VMCALL/VMMCALL exits. A
  disagreement fails with both numbers. Not compared (the detail says why; the trace's own checks
  still decide): a stat the dict lacks, kvm_exit reasons that do not decode as VMX/SVM, and a
  window where KVM's instruction emulator ran (`insn_emulation` above ≈0 per iteration), since
  KVM's exit counters then count neither the instructions nor their I/O.

`verify_timed_window(stats, iterations_total, expected_path, instruction)` judges a *timed*
(untraced) window from KVM's stats alone: KVM-handled cases need `exits` ≈1 and `io_exits` ≈0
per iteration (vmcall also `hypercalls` ≈1), the QEMU case `io_exits` ≈1. `verify_baseline(stats,
iterations_total)` needs `exits` ≈0 per iteration: the proof that the timer itself does not exit.
No stats (None, or a needed counter missing) → "unverified"; a timed window where KVM's
instruction emulator ran (`insn_emulation` above ≈0 per iteration) → "unverified" too.

Tolerances (n = iterations_total):

* "≈1 per iteration": (1 - ONE_TOLERANCE)·n ≤ count ≤ (1 + ONE_TOLERANCE)·n + allowance.
* "≈0 per iteration": count ≤ ZERO_TOLERANCE·n + allowance.
* allowance, trace checks: STRAY_EVENTS (64), for events the loop did not cause (timer
  interrupts, kicks). Userspace IO exits that port I/O on *other* ports explains (the serial
  console of the handshake, which lands inside the window) are subtracted before the ≈0 test and
  allowed above the ≈1 bound; the detail says how many.
* allowance, stats checks: STATS_STRAY_EVENTS (512). Stats cannot separate the console by port:
  the guest prints its "done" line (~100 bytes, a few IO exits per byte) before the host reads
  the stats, the host's "go" arrives inside the window, and on an emulated (nested) host timer
  interrupts add tens of exits. The same allowance bounds the stats-vs-trace disagreement (the
  two are read a few milliseconds apart).
* With the selftest's n = 1000 + 100 warm-up the allowances dominate the ≈0 tests (a baseline
  passes with up to ~0.48 exits per iteration there); they resolve 0 from 1 per iteration from
  n ≈ 1000 and sub-per-iteration rates only with n in the 10^5 range.

When the host's kvm_exit reasons cannot be decoded (PVM reports its own exit vectors; KVM's
instruction emulator emits no kvm_exit at all), the KVM-handled test falls back to KVM's handler
tracepoints (kvm_cpuid, kvm_msr, kvm_hypercall: ≈1 per iteration) plus the userspace count, and
the detail line says so.
"""

from __future__ import annotations

from exitlat.errors import ExitlatError
from exitlat.instructions import KVM_PATHS, PATHS, TABLE  # noqa: F401  (re-exported)
from .kvmtrace import DECODABLE_EXIT_NAMES, FASTPATH_SYMBOLS, HANDLED_SUFFIX, ExitCounts

STATUS_PASSED = "passed"
STATUS_FAILED = "failed"
STATUS_UNVERIFIED = "unverified"

ONE_TOLERANCE = 0.02        # ±2 % of n for "about one per iteration"
ZERO_TOLERANCE = 0.02       # at most 2 % of n for "about zero per iteration"
STRAY_EVENTS = 64           # trace checks: absolute allowance for events the loop did not cause
STATS_STRAY_EVENTS = 512    # stats checks: console I/O and timer exits cannot be told apart by port
AGREE_TOLERANCE = 0.02      # stats vs. trace: |stat - trace| ≤ AGREE_TOLERANCE·n + STATS_STRAY_EVENTS

INSTRUCTIONS = tuple(TABLE)
VENDORS = ("intel", "amd", "unknown")
_HANDLER = {name: i.handler for name, i in TABLE.items() if i.handler}
_VENDOR_IDS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}


def exit_vendor(cpu_vendor: str | None) -> str:
    """Which exit-reason names a host produces, from its CPUID vendor string (/proc/cpuinfo
    vendor_id): "intel" (VMX), "amd" (SVM: AMD and Hygon, whose KVM is kvm_amd) or "unknown"."""
    return _VENDOR_IDS.get((cpu_vendor or "").strip(), "unknown")


def expected_reasons(instruction: str, vendor: str) -> tuple[str, ...]:
    """kvm_exit reason names one iteration of `instruction` produces on `vendor`'s host."""
    return TABLE[instruction].reasons(vendor)


def _per(count: int, n: int) -> float:
    return round(count / n, 6)


def _check_n(iterations_total) -> int:
    if isinstance(iterations_total, bool) or not isinstance(iterations_total, int) or iterations_total <= 0:
        raise ExitlatError(f"iterations_total must be a positive integer, got {iterations_total!r}")
    return iterations_total


def _check_path(expected_path: str, instruction: str) -> None:
    if expected_path not in PATHS:
        raise ExitlatError(f"unknown expected path {expected_path!r} ({', '.join(PATHS)})")
    if instruction not in INSTRUCTIONS:
        raise ExitlatError(f"unknown instruction {instruction!r} ({', '.join(INSTRUCTIONS)})")
    if expected_path == "qemu" and instruction != "outb":
        raise ExitlatError(f"a QEMU-path case runs outb, not {instruction}")


def _check_stats(stats) -> None:
    if stats is not None and (not isinstance(stats, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in stats.values())):
        raise ExitlatError(f"KVM stats must be a dict name -> integer delta, got {stats!r}")


def _bounds(n: int, allowance: int) -> tuple[float, float, float]:
    """(lo, hi) of "≈1 per iteration" and the maximum of "≈0 per iteration"."""
    return ((1 - ONE_TOLERANCE) * n, (1 + ONE_TOLERANCE) * n + allowance,
            ZERO_TOLERANCE * n + allowance)


def _stats_tolerances() -> dict:
    return {"one": ONE_TOLERANCE, "zero": ZERO_TOLERANCE, "stray": STATS_STRAY_EVENTS}


# ---------------------------------------------------------------------------------------------
# Timed windows and baselines: KVM's binary stats only


def verify_timed_window(stats: dict | None, iterations_total: int, expected_path: str,
                        instruction: str) -> dict:
    """Verdict for a timed (untraced) window from the delta of KVM's binary stats over it.

    Returns {"status", "detail", "exits_per_iter", "io_exits_per_iter", "hypercalls_per_iter",
    "iterations_total", "evidence", "stats" (the deltas used), "tolerances"}."""
    n = _check_n(iterations_total)
    _check_path(expected_path, instruction)
    _check_stats(stats)
    own = TABLE[instruction].kvm_stat          # the stat that counts this instruction's exits
    needed = ["exits", "io_exits"] + ([own] if own not in ("exits", "io_exits") else [])
    head = f"({expected_path}, {instruction}, n={n}, KVM stats)"
    result = {"status": STATUS_UNVERIFIED, "detail": "", "exits_per_iter": None,
              "io_exits_per_iter": None, "hypercalls_per_iter": None, "iterations_total": n,
              "evidence": "kvm stats", "stats": None, "tolerances": _stats_tolerances()}
    missing = _missing(stats, needed)
    if missing:
        result["detail"] = f"unverified {head}: {missing}"
        return result
    used = {k: stats[k] for k in needed}
    result["stats"] = used
    result["exits_per_iter"] = _per(used["exits"], n)
    result["io_exits_per_iter"] = _per(used["io_exits"], n)
    if "hypercalls" in used:
        result["hypercalls_per_iter"] = _per(used["hypercalls"], n)
    lo, hi, zero_max = _bounds(n, STATS_STRAY_EVENTS)
    emulated = _emulated(stats, zero_max)
    if emulated:
        result["stats"]["insn_emulation"] = stats["insn_emulation"]
    problems: list[str] = []

    def about_one(name: str) -> None:
        if not lo <= used[name] <= hi:
            problems.append(f"expected ≈1 {name} per iteration, saw {used[name] / n:.3f} "
                            f"({used[name]} in {n})")

    def about_zero(name: str) -> None:
        if used[name] > zero_max:
            problems.append(f"expected ≈0 {name} per iteration, saw {used[name] / n:.3f} "
                            f"({used[name]} in {n})")

    if expected_path in KVM_PATHS:
        about_one("exits")
        about_zero("io_exits")
        if own not in ("exits", "io_exits"):
            about_one(own)
        summary = f"{used['exits'] / n:.3f} exits/iter, {used['io_exits'] / n:.3f} io_exits/iter"
        if "hypercalls" in used:
            summary += f", {used['hypercalls'] / n:.3f} hypercalls/iter"
    else:
        about_one("io_exits")
        summary = f"{used['io_exits'] / n:.3f} io_exits/iter, {used['exits'] / n:.3f} exits/iter"
    if problems and emulated:
        # PVM-like software KVM: the counters do not describe emulated code, so a mismatch proves
        # nothing either way. (Where they match, as on SVM without nrips, whose instruction skips
        # alone go through the emulator, the exits are real and the window passes.)
        result["detail"] = f"unverified {head}: {'; '.join(problems)}; {emulated}"
        return result
    result["status"] = STATUS_FAILED if problems else STATUS_PASSED
    result["detail"] = f"{result['status']} {head}: " + ("; ".join(problems) if problems else summary)
    if emulated and not problems:
        result["detail"] += f" (insn_emulation {stats['insn_emulation']}: instruction skips emulated)"
    return result


def verify_baseline(stats: dict | None, iterations_total: int) -> dict:
    """Verdict for a baseline window (timer only, NOP, getppid, module call without instruction,
    kernel timer with IRQs off): `exits` ≈0 per iteration proves the timer itself does not exit.

    Returns {"status", "detail", "exits_per_iter", "iterations_total", "evidence", "stats",
    "tolerances"}."""
    n = _check_n(iterations_total)
    _check_stats(stats)
    result = {"status": STATUS_UNVERIFIED, "detail": "", "exits_per_iter": None,
              "iterations_total": n, "evidence": "kvm stats", "stats": None,
              "tolerances": _stats_tolerances()}
    head = f"(baseline, n={n}, KVM stats)"
    missing = _missing(stats, ["exits"])
    if missing:
        result["detail"] = f"unverified {head}: {missing}"
        return result
    exits = stats["exits"]
    # The console's I/O (the "done" line, the host's "go") lands in every window and goes to
    # userspace: io_exits get the stats allowance. Every other exit must stay within the tight
    # trace allowance, so a timer that exits even once in a dozen iterations fails.
    io = stats.get("io_exits", 0) if isinstance(stats.get("io_exits"), int) else 0
    other = exits - io
    result["stats"] = {"exits": exits, "io_exits": io}
    result["exits_per_iter"] = _per(exits, n)
    result["other_exits_per_iter"] = _per(other, n)
    _lo, _hi, zero_max = _bounds(n, STATS_STRAY_EVENTS)
    _lo, _hi, other_max = _bounds(n, STRAY_EVENTS)
    problems = []
    if other > other_max:
        problems.append(f"expected ≈0 non-I/O exits per iteration (the timer must not exit), saw "
                        f"{other / n:.3f} ({other} in {n})")
    if io > zero_max:
        problems.append(f"expected ≈0 I/O exits per iteration beyond the console's, saw "
                        f"{io / n:.3f} ({io} in {n})")
    result["status"] = STATUS_FAILED if problems else STATUS_PASSED
    result["detail"] = (f"failed {head}: " + "; ".join(problems) if problems else
                        f"passed {head}: {other / n:.3f} non-I/O exits/iter ({other} in {n}), "
                        f"{io} console I/O exits")
    return result


def _emulated(stats: dict, zero_max: float) -> str:
    """Why the exit counters cannot describe the path ('' when they can): KVM's instruction
    emulator ran the loop (software KVM such as PVM emulates guest code; exits and io_exits then
    count neither the instructions nor their I/O)."""
    emu = stats.get("insn_emulation", 0)
    if emu > zero_max:
        return (f"KVM's instruction emulator ran {emu} instructions in the window (insn_emulation; "
                "software KVM or emulated code): its exit counters do not describe the path")
    return ""


def _missing(stats: dict | None, needed: list[str]) -> str:
    """Why these stats cannot be checked ('' when they can)."""
    if stats is None:
        return ("no KVM stats for this window (QMP query-stats not offered by this kernel or "
                "QEMU, or not read)")
    absent = [k for k in needed if k not in stats]
    if absent:
        return f"KVM stats lack {', '.join(absent)}"
    return ""


# ---------------------------------------------------------------------------------------------
# Traced windows


def verify_case(window: ExitCounts, iterations_total: int, expected_path: str, instruction: str,
                port: int | None, vendor: str, *, kvm_stats: dict | None = None) -> dict:
    """Verdict for one traced case window. See the module docstring for the rules and tolerances.

    Returns {"status" (passed/failed/unverified), "detail" (one line), "expected_reason",
    "expected_reason_per_iter" (None when not decodable), "userspace_exits_per_iter",
    "port_exits_per_iter", "exit_reasons", "userspace_reasons", "handled", "pio",
    "stray_console_io", "lost_events", "unparsed", "unparsed_lines", "probes", "fastpath"
    (kvm_fastpath: {"symbols", "calls", "handled", "handled_per_iter"} or {"unverified": why};
    else None), "stats_agreement" ({stat: {"stats", "trace", "trace_source", "ok"}} or None),
    "kvm_stats", "iterations_total", "tracing_backend", "evidence", "tolerances"}."""
    if not isinstance(window, ExitCounts):
        raise ExitlatError(f"verify_case needs an ExitCounts window, got {type(window).__name__}")
    n = _check_n(iterations_total)
    _check_path(expected_path, instruction)
    if vendor not in VENDORS:
        raise ExitlatError(f"unknown vendor {vendor!r} (intel, amd, unknown)")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF):
        raise ExitlatError(f"port must be 0..0xffff, got {port!r}")
    if instruction == "outb" and port is None:
        raise ExitlatError("an outb case needs its port to be verified")
    _check_stats(kvm_stats)

    lo, hi, zero_max = _bounds(n, STRAY_EVENTS)
    reasons = expected_reasons(instruction, vendor)
    reason_count = sum(window.exits.get(r, 0) for r in reasons)
    decodable = any(k.split("|")[0] in DECODABLE_EXIT_NAMES for k in window.exits)
    userspace = window.total_userspace
    user_io = window.userspace.get("IO", 0)
    port_out = window.pio_count(port, "out") if port is not None else 0
    pio_other = sum(c for (p, _d), c in window.pio.items() if p != port)
    stray_io = min(max(user_io - (port_out if expected_path == "qemu" else 0), 0), pio_other)

    result = {
        "status": STATUS_FAILED,
        "expected_reason": "/".join(reasons),
        "expected_reason_per_iter": _per(reason_count, n) if decodable else None,
        "userspace_exits_per_iter": _per(userspace, n),
        "port_exits_per_iter": _per(port_out, n) if port is not None else None,
        "exit_reasons": dict(sorted(window.exits.items())),
        "userspace_reasons": dict(sorted(window.userspace.items())),
        "handled": dict(sorted(window.handled.items())),
        "pio": {f"{p:#x}/{d}": c for (p, d), c in sorted(window.pio.items())},
        "stray_console_io": stray_io,
        "lost_events": window.lost,
        "unparsed": window.unparsed,
        "unparsed_lines": list(window.unparsed_lines),
        "probes": dict(sorted(window.probes.items())),
        "fastpath": None,
        "stats_agreement": None,
        "kvm_stats": kvm_stats,
        "iterations_total": n,
        "tracing_backend": window.backend or None,
        "evidence": None,
        "tolerances": {"one": ONE_TOLERANCE, "zero": ZERO_TOLERANCE, "stray": STRAY_EVENTS,
                       "stats_stray": STATS_STRAY_EVENTS, "agree": AGREE_TOLERANCE},
        "detail": "",
    }
    problems: list[str] = []
    notes: list[str] = []
    if window.lost:
        problems.append(f"{window.lost} trace events were lost, counts are incomplete")
    if window.unparsed:
        first = window.unparsed_lines[0] if window.unparsed_lines else "(line not kept)"
        problems.append(f"{window.unparsed} trace lines could not be parsed, counts are "
                        f"incomplete (first: {first.strip()!r})")

    def about_one(count: int, what: str) -> None:
        if not lo <= count <= hi:
            problems.append(f"expected ≈1 {what} per iteration, saw {count / n:.3f} ({count} in {n})")

    if expected_path in KVM_PATHS:
        if decodable:
            result["evidence"] = "kvm_exit reason"
            count, what = reason_count, f"{'/'.join(reasons)} exit"
        else:
            handler = _HANDLER.get(instruction)
            if handler is None:            # outb expected in KVM: only port I/O can tell
                count, what = port_out, f"kvm_pio write on {port:#x}"
            else:
                count, what = window.handled.get(handler, 0), f"kvm_{handler.split('_')[0]} handler event"
            result["evidence"] = f"handler tracepoint ({what}); exit reason not decodable here"
            notes.append(f"kvm_exit reasons not decodable on this host ({_fmt_reasons(window.exits)}): "
                         f"proved with {what}s and userspace counts instead")
        about_one(count, what)
        unexplained = userspace - stray_io
        if unexplained > zero_max:
            problems.append(f"expected ≈0 userspace exits per iteration, saw {unexplained / n:.3f} "
                            f"({unexplained} in {n}: {_fmt_reasons(window.userspace)})")
        summary = (f"{count / n:.3f} {'/'.join(reasons) if decodable else what}/iter, "
                   f"{unexplained / n:.3f} userspace exits/iter")
    else:
        result["evidence"] = "kvm_pio + kvm_userspace_exit"
        about_one(port_out, f"kvm_pio write on {port:#x}")
        if user_io < lo:
            problems.append(f"expected ≈1 userspace exit (KVM_EXIT_IO) per iteration, saw "
                            f"{user_io / n:.3f} ({user_io} in {n})")
        if userspace - stray_io > hi:
            problems.append(f"expected ≈1 userspace exit per iteration, saw {(userspace - stray_io) / n:.3f} "
                            f"({_fmt_reasons(window.userspace)})")
        summary = f"{port_out / n:.3f} OUTs to {port:#x}/iter, {user_io / n:.3f} userspace IO exits/iter"
    if stray_io:
        notes.append(f"{stray_io} userspace IO exits explained by port I/O on other ports (console)")

    tier_unverified = ""
    if expected_path == "kvm_fastpath":
        tier_unverified = _fastpath_tier(window, n, lo, hi, result, problems, notes)
    unproven: list[str] = []
    if kvm_stats is not None:
        _stats_agree(window, kvm_stats, n, decodable, result, problems, notes, unproven)
    else:
        notes.append("no KVM stats to cross-check the trace")

    if problems:
        status, head = STATUS_FAILED, "failed"
    elif tier_unverified:
        status, head = STATUS_UNVERIFIED, f"passed (tier unverified: {tier_unverified})"
    elif unproven:
        status, head = STATUS_UNVERIFIED, f"passed (unverified: {'; '.join(unproven)})"
    else:
        status, head = STATUS_PASSED, "passed"
    result["status"] = status
    body = "; ".join(problems) if problems else summary
    result["detail"] = f"{head} ({expected_path}, {instruction}, n={n}): {body}" + \
        ("" if not notes else " [" + "; ".join(notes) + "]")
    return result


def _fastpath_tier(window: ExitCounts, n: int, lo: float, hi: float, result: dict,
                   problems: list, notes: list) -> str:
    """The irq-off fastpath check; returns why the tier is unverified ('' when it was checked)."""
    syms = [s for s in FASTPATH_SYMBOLS if s in window.probed]
    if not syms:
        why = window.probe_note or "no fastpath handler was probed"
        result["fastpath"] = {"unverified": why}
        return why
    calls = sum(window.probes.get(s, 0) for s in syms)
    handled = sum(window.probes.get(s + HANDLED_SUFFIX, 0) for s in syms)
    result["fastpath"] = {"symbols": syms, "calls": calls, "handled": handled,
                          "handled_per_iter": _per(handled, n)}
    name = "/".join(syms)
    if not lo <= handled <= hi:
        if handled < lo:
            problems.append(f"took the full handler, not the fastpath: {name} handled "
                            f"{handled / n:.3f} per iteration ({handled} in {n}; {calls} calls, "
                            f"{calls - handled} returned EXIT_FASTPATH_NONE)")
        else:
            problems.append(f"expected ≈1 fastpath-handled WRMSR per iteration, saw "
                            f"{handled / n:.3f} ({handled} in {n})")
    else:
        notes.append(f"fastpath proven: {name} handled {handled / n:.3f}/iter")
    return ""


def _stats_agree(window: ExitCounts, stats: dict, n: int, decodable: bool, result: dict,
                 problems: list, notes: list, unverified: list) -> None:
    """KVM's own counters and the trace must count the same exits."""
    limit = AGREE_TOLERANCE * n + STATS_STRAY_EVENTS
    emulated = _emulated(stats, ZERO_TOLERANCE * n + STATS_STRAY_EVENTS)
    if decodable:
        pairs = {"exits": (window.total_exits, "kvm_exit events"),
                 "io_exits": (window.exits.get("IO_INSTRUCTION", 0), "IO_INSTRUCTION exits"),
                 "hypercalls": (window.exits.get("VMCALL", 0) + window.exits.get("VMMCALL", 0),
                                "VMCALL/VMMCALL exits")}
    else:
        # No VMX/SVM exit reasons: software KVM (PVM) or emulation, where KVM's exit counters
        # do not count what the handler tracepoints count (measured: PVM emulates a micro-VM's
        # 5000 OUTs with io_exits = 0). Nothing to compare.
        notes.append("KVM stats not compared with the trace: kvm_exit reasons not decodable")
        return
    agreement, absent = {}, []
    for stat, (trace, source) in pairs.items():
        if stat not in stats:
            absent.append(stat)
            continue
        ok = abs(stats[stat] - trace) <= limit
        agreement[stat] = {"stats": stats[stat], "trace": trace, "trace_source": source, "ok": ok}
        if not ok and emulated:
            notes.append(f"KVM stats and trace disagree on {stat} ({stats[stat]} vs {trace} "
                         f"{source}), explained by emulation: {emulated}")
            unverified.append(f"{stat}: stats and trace disagree under emulation")
        elif not ok:
            problems.append(f"KVM stats and trace disagree: {stat} = {stats[stat]} but {trace} "
                            f"{source} (tolerance ±{limit:.0f})")
    if absent:
        notes.append(f"KVM stats lack {', '.join(absent)}: not compared")
    result["stats_agreement"] = agreement


def _fmt_reasons(d: dict) -> str:
    if not d:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:6])
