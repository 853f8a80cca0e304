"""The checks of a timed (untraced) window and of a timer-only baseline, from KVM's binary stats
alone (rules and tolerances: exitlat.verify.rules)."""

from __future__ import annotations

from exitlat.instructions import KVM_PATHS

from .rules import (STATS_STRAY_EVENTS, STATUS_FAILED, STATUS_PASSED, STATUS_UNVERIFIED,
                    STRAY_EVENTS, TABLE, bounds, check_n, check_path, check_stats, emulation_detail,
                    per_iteration, stats_tolerances)


def verify_timed_window(stats: dict | None, iterations_total: int, expected_path: str,
                        instruction: str) -> dict:
    """Verdict for a timed (untraced) window from the delta of KVM's binary stats over it.

    Returns {"status", "detail", "exits_per_iter", "io_exits_per_iter", "hypercalls_per_iter",
    "iterations_total", "evidence", "stats" (the deltas used), "tolerances"}."""
    n = check_n(iterations_total)
    check_path(expected_path, instruction)
    check_stats(stats)
    own = TABLE[instruction].kvm_stat          # the stat that counts this instruction's exits
    needed = ["exits", "io_exits"] + ([own] if own not in ("exits", "io_exits") else [])
    head = f"({expected_path}, {instruction}, n={n}, KVM stats)"
    result = {"status": STATUS_UNVERIFIED, "detail": "", "exits_per_iter": None,
              "io_exits_per_iter": None, "hypercalls_per_iter": None, "iterations_total": n,
              "evidence": "kvm stats", "stats": None, "tolerances": stats_tolerances()}
    missing = _missing(stats, needed)
    if missing:
        result["detail"] = f"unverified {head}: {missing}"
        return result
    used = {k: stats[k] for k in needed}
    result["stats"] = used
    result["exits_per_iter"] = per_iteration(used["exits"], n)
    result["io_exits_per_iter"] = per_iteration(used["io_exits"], n)
    if "hypercalls" in used:
        result["hypercalls_per_iter"] = per_iteration(used["hypercalls"], n)
    lo, hi, zero_max = bounds(n, STATS_STRAY_EVENTS)
    emulated = emulation_detail(stats, zero_max)
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
    n = check_n(iterations_total)
    check_stats(stats)
    result = {"status": STATUS_UNVERIFIED, "detail": "", "exits_per_iter": None,
              "iterations_total": n, "evidence": "kvm stats", "stats": None,
              "tolerances": stats_tolerances()}
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
    result["exits_per_iter"] = per_iteration(exits, n)
    result["other_exits_per_iter"] = per_iteration(other, n)
    _lo, _hi, zero_max = bounds(n, STATS_STRAY_EVENTS)
    _lo, _hi, other_max = bounds(n, STRAY_EVENTS)
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


def _missing(stats: dict | None, needed: list[str]) -> str:
    """Why these stats cannot be checked ('' when they can)."""
    if stats is None:
        return ("no KVM stats for this window (QMP query-stats not offered by this kernel or "
                "QEMU, or not read)")
    absent = [k for k in needed if k not in stats]
    if absent:
        return f"KVM stats lack {', '.join(absent)}"
    return ""
