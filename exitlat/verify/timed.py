"""The checks of a timed (untraced) window and of a timer-only baseline, from KVM's binary stats
alone (rules and tolerances: exitlat.verify.rules)."""

from __future__ import annotations

from exitlat.instructions import KVM_PATHS, PATH_NONE

from .rules import (ASYNC_STATS, CONSOLE_SLACK, IDLE_STATS, ONE_TOLERANCE, STATS_STRAY_EVENTS,
                    STATUS_FAILED, STATUS_PASSED, STATUS_UNVERIFIED, STRAY_EVENTS, TABLE, ZERO_TOLERANCE, Bounds,
                    check_n, check_path, check_stats, emulation_detail, other_path_fraction,
                    per_iteration, side_allowance, stats_tolerances, stats_verdict)


def verify_timed_window(stats: dict | None, iterations_total: int, expected_path: str,
                        instruction: str, console_io: int | None = None,
                        second_exit: str | None = None) -> dict:
    """Verdict for a timed (untraced) window from the delta of KVM's binary stats over it.

    `console_io`: the console's I/O exits in one window, as the same boot's baselines measured
    them (console_io_estimate); None: unknown, bounded by STATS_STRAY_EVENTS instead.

    Returns {"status", "detail", "exits_per_iter", "io_exits_per_iter", "hypercalls_per_iter",
    "iterations_total", "evidence", "stats" (the deltas used), "background", "other_path_max",
    "tolerances"}."""
    n = check_n(iterations_total)
    check_path(expected_path, instruction)
    check_stats(stats)
    own = TABLE[instruction].kvm_stat          # the stat that counts this instruction's exits
    needed = ["exits", "io_exits"] + ([own] if own not in ("exits", "io_exits") else [])
    head = f"({expected_path}, {instruction}, n={n}, KVM stats)"
    result = {"status": STATUS_UNVERIFIED, "detail": "", "exits_per_iter": None,
              "io_exits_per_iter": None, "hypercalls_per_iter": None, "iterations_total": n,
              "evidence": "kvm stats", "stats": None, "background": None, "other_path_max": None,
              "tolerances": stats_tolerances()}
    missing = _missing(stats, needed)
    if missing:
        result["detail"] = f"unverified {head}: {missing}"
        return result
    second_problem = ""
    if second_exit:     # n of its second exits are its own, not background
        from .second_exit import STAT_OF, stats_without_second

        key = STAT_OF.get(second_exit)
        if key:         # KVM counts them: ≈1 per iteration at least
            seen = stats.get(key, 0) if isinstance(stats.get(key), int) else 0
            if seen < (1 - ONE_TOLERANCE) * n:
                second_problem = (f"expected ≈1 {key[:-1]} (its second exit) per iteration, saw "
                                  f"{seen / n:.3f} ({seen} in {n})")
            stats = stats_without_second(stats, second_exit, min(seen, n))
        else:           # no stat of its own (the preemption timer): the traced window counts them
            stats = stats_without_second(stats, second_exit, n)
    used = {k: stats[k] for k in needed}
    result["stats"] = used
    result["exits_per_iter"] = per_iteration(used["exits"], n)
    result["io_exits_per_iter"] = per_iteration(used["io_exits"], n)
    if "hypercalls" in used:
        result["hypercalls_per_iter"] = per_iteration(used["hypercalls"], n)
    bg = _background(stats, console_io)
    result["background"] = bg
    side = bg["allowance"]
    emulated = emulation_detail(stats, ZERO_TOLERANCE * n + STATS_STRAY_EVENTS)
    if emulated:
        result["stats"]["insn_emulation"] = stats["insn_emulation"]
    problems: list[str] = [second_problem] if second_problem else []
    # exits the loop's instructions caused: everything but interrupts, idle and I/O
    sync = used["exits"] - bg["interrupts"] - bg["idle"] - used["io_exits"]
    port_io = used["io_exits"] - bg["console_io"]

    # the interrupts' side exits may widen these (rules.Bounds); the console's estimate has a
    # slack of its own and no background
    loop = Bounds(n, side - STRAY_EVENTS, symmetric=True)
    console = Bounds(n, 0, fixed=bg["console_allowance"], symmetric=True)

    def about_one(count: int, what: str, b: Bounds) -> None:
        if not b.one(count):
            problems.append(f"expected ≈1 {what} per iteration, saw {count / n:.3f} ({count:.0f} in {n})")

    def about_zero(count: int, what: str, b: Bounds) -> None:
        if not b.zero(count):
            problems.append(f"expected ≈0 {what} per iteration, saw {count / n:.3f} ({count} in {n})")

    ins = TABLE[instruction]
    if expected_path == PATH_NONE:
        # A kind KVM intercepts again after any other exit (mov_dr) may take one exit per exit
        # of the background (interrupts, idle, the console's I/O).
        rearmed = bg["interrupts"] + bg["idle"] + bg["console_io"] if ins.rearm else 0
        none = Bounds(n, side - STRAY_EVENTS + rearmed, symmetric=True)
        about_zero(sync, "exits (besides interrupts, idle and I/O): it must not exit", none)
        about_zero(port_io, "io_exits beyond the console's", console)
        loop = none
        deviating = max(sync, 0) + max(port_io, 0) + bg["interrupts"]
        summary = (f"no exit: {sync / n:.3f} exits/iter besides interrupts, idle and I/O, "
                   f"{used['io_exits'] / n:.3f} io_exits/iter")
    elif (expected_path in KVM_PATHS or ins.mmio) and not ins.io:
        # MMIO: KVM's stats count the fault exit alike whether QEMU or an ioeventfd completed
        # the write (the traced window's userspace exits tell those apart)
        about_one(sync / ins.exits, f"{'pair of exits' if ins.exits == 2 else 'exit'} "
                  "(besides interrupts, idle and I/O)", loop)
        about_zero(port_io, "io_exits beyond the console's", console)
        if own not in ("exits", "io_exits"):
            about_one(used[own], own, loop)
        deviating = abs(sync / ins.exits - n) + max(port_io, 0) + bg["interrupts"]
        summary = f"{used['exits'] / n:.3f} exits/iter, {used['io_exits'] / n:.3f} io_exits/iter"
        if "hypercalls" in used:
            summary += f", {used['hypercalls'] / n:.3f} hypercalls/iter"
    else:
        # port I/O: KVM's stats count its exits alike whether QEMU or an in-kernel device
        # answered (the traced window's userspace exits tell those apart)
        about_one(port_io, "io_exit beyond the console's", console)
        about_zero(sync, f"exits besides the {'IN' if ins.io == 'in' else 'OUT'}'s I/O exit", loop)
        deviating = abs(port_io - n) + max(sync, 0) + bg["interrupts"]
        summary = f"{used['io_exits'] / n:.3f} io_exits/iter, {used['exits'] / n:.3f} exits/iter"
    result["other_path_max"] = other_path_fraction(deviating, n)
    small = console.gate("the console's I/O") or loop.gate("exits the loop did not cause")
    if problems and emulated:
        # PVM-like software KVM: the counters do not describe emulated code, so a mismatch proves
        # nothing either way. (Where they match, as on SVM without nrips, whose instruction skips
        # alone go through the emulator, the exits are real and the window passes.)
        result["detail"] = f"unverified {head}: {'; '.join(problems)}; {emulated}"
        return result
    if problems:
        result["status"] = STATUS_FAILED
        result["detail"] = f"failed {head}: " + "; ".join(problems)
        return result
    result["status"] = STATUS_UNVERIFIED if small else STATUS_PASSED
    result["detail"] = (f"unverified {head}: {small} ({summary})" if small
                        else f"passed {head}: {summary}")
    if emulated:
        result["detail"] += f" (insn_emulation {stats['insn_emulation']}: instruction skips emulated)"
    return result


def verify_baseline(stats: dict | None, iterations_total: int) -> dict:
    """Verdict for a baseline window (timer only, NOP, getppid, module call without instruction,
    kernel timer with IRQs off): ≈0 exits per iteration besides interrupts, idle and the console's
    I/O proves the timer itself does not exit.

    Returns {"status", "detail", "exits_per_iter", "other_exits_per_iter", "iterations_total",
    "evidence", "stats", "background", "other_path_max", "tolerances"}."""
    n = check_n(iterations_total)
    check_stats(stats)
    result = {"status": STATUS_UNVERIFIED, "detail": "", "exits_per_iter": None,
              "iterations_total": n, "evidence": "kvm stats", "stats": None, "background": None,
              "other_path_max": None, "tolerances": stats_tolerances()}
    head = f"(baseline, n={n}, KVM stats)"
    missing = _missing(stats, ["exits"])
    if missing:
        result["detail"] = f"unverified {head}: {missing}"
        return result
    exits = stats["exits"]
    # The console's I/O (the "done" line, the host's "go") lands in every window and goes to
    # userspace: it is reported, and the cases subtract it (console_io_estimate). Every other
    # exit, interrupts and idle aside, counts against the timer.
    io = stats.get("io_exits", 0) if isinstance(stats.get("io_exits"), int) else 0
    bg = _background(stats, None)
    other = exits - io - bg["interrupts"] - bg["idle"]
    result["stats"] = {"exits": exits, "io_exits": io}
    result["background"] = bg
    result["exits_per_iter"] = per_iteration(exits, n)
    result["other_exits_per_iter"] = per_iteration(other, n)
    result["other_path_max"] = other_path_fraction(max(other, 0) + bg["interrupts"], n)
    b = Bounds(n, bg["allowance"] - STRAY_EVENTS)
    problems = []
    if not b.zero(other):
        problems.append(f"expected ≈0 exits per iteration besides interrupts, idle and I/O (the "
                        f"timer must not exit), saw {other / n:.3f} ({other} in {n})")
    if io > ZERO_TOLERANCE * n + STATS_STRAY_EVENTS:
        problems.append(f"expected ≈0 I/O exits per iteration beyond the console's, saw "
                        f"{io / n:.3f} ({io} in {n})")
    small = b.gate("exits the timer did not cause")
    summary = (f"{other / n:.3f} other exits/iter ({other} in {n}), {io} console I/O exits, "
               f"{bg['interrupts']} interrupt and {bg['idle']} idle exits")
    result["status"], result["detail"] = stats_verdict(problems, small, head, summary)
    return result


def console_io_estimate(baseline_stats: list[dict | None]) -> int | None:
    """The console's I/O exits in one window of a boot: the median io_exits of its baselines
    (windows with no exiting instruction, the same handshake and lines); None without any."""
    ios = sorted(s["io_exits"] for s in baseline_stats
                 if isinstance(s, dict) and isinstance(s.get("io_exits"), int))
    return ios[len(ios) // 2] if ios else None


def _background(stats: dict, console_io: int | None) -> dict:
    """What KVM's own counters say the loop did not cause: interrupts (irq_exits and the window
    exits), idle (halt_exits), and the console's I/O with the allowance of its estimate."""
    def total(names) -> int:
        return sum(stats[k] for k in names if isinstance(stats.get(k), int))

    interrupts, idle = total(ASYNC_STATS), total(IDLE_STATS)
    if console_io is None:
        est, allow = 0, float(STATS_STRAY_EVENTS)
    else:
        est, allow = console_io, CONSOLE_SLACK * console_io + STRAY_EVENTS
    return {"interrupts": interrupts, "idle": idle, "console_io": est,
            "console_allowance": round(allow, 1), "console_source":
                "same boot" if console_io is not None else "unknown: fixed bound",
            "allowance": side_allowance(interrupts, idle)}


def _missing(stats: dict | None, needed: list[str]) -> str:
    """Why these stats cannot be checked ('' when they can)."""
    if stats is None:
        return ("no KVM stats for this window (QMP query-stats not offered by this kernel or "
                "QEMU, or not read)")
    absent = [k for k in needed if k not in stats]
    if absent:
        return f"KVM stats lack {', '.join(absent)}"
    return ""
