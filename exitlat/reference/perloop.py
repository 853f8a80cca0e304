"""What each vmexit.flat test's loop really exits with, from its traced VM run.

A traced run boots vmexit.flat with one test and counts every exit of its vCPU thread from the
first instruction to the test's result line; a baseline run boots it with no test (the same boot,
setup and exit path). The difference is the test's loops. Its iterations are the count of the
reason its name promises (one per iteration by construction); vmexit.flat doubles its iteration
count from 64 until a round lasts 2^30 cycles, so the iterations of a clean count are
64·(2^k − 1). Every other reason is divided by the same number: for `vmcall` on a kernel after
kvm-unit-tests 542ecfdb that is 2 CPUID + 1 VMCALL/VMMCALL."""

from __future__ import annotations

EXTRA_NEGLIGIBLE = 0.05   # extra exits per iteration below which a test is taken as its name says
CONSOLE_PORTS = range(0x3F8, 0x400)   # COM1: vmexit.flat prints its result line there, after the loop
FIRST_ROUND = 64          # vmexit.flat's first round: iterations = 32, doubled before it runs


def doubling_rounds(n: int) -> int | None:
    """k when n = 64·(2^k − 1), the iterations of vmexit.flat's k doubling rounds; else None."""
    if n <= 0 or n % FIRST_ROUND:
        return None
    m = n // FIRST_ROUND + 1
    return m.bit_length() - 1 if m & (m - 1) == 0 else None


def background_reasons() -> frozenset:
    """Exits no loop causes: interrupts and idle wake-ups (the verifier's own lists)."""
    from exitlat.verify.rules import ASYNC_REASONS, IDLE_REASONS

    return ASYNC_REASONS | IDLE_REASONS


def console_io(pio: dict) -> int:
    """Port I/O exits on the serial console (ExitCounts.pio, keys '0x3f8/out')."""
    return sum(int(n) for key, n in (pio or {}).items()
               if int(str(key).split("/")[0], 16) in CONSOLE_PORTS)


def per_iteration(test_exits: dict, baseline_exits: dict, named: str, console: int = 0,
                  named_per_iteration: int = 1) -> dict:
    """From cumulative exits by reason of a test's run and the baseline's: the iterations (the
    named reason's count), exits per iteration by reason, and whether the loop is what its name
    says. `console`: the test run's serial-port I/O exits beyond the baseline's (its result line,
    printed after the loop), taken out of IO_INSTRUCTION. Interrupts and idle exits are shown but
    are background, not the loop's. Fails closed: no named exit, or a negative difference, is
    `measured: false` with why."""
    delta = {r: int(test_exits.get(r, 0)) - int(baseline_exits.get(r, 0))
             for r in sorted(set(test_exits) | set(baseline_exits))}
    if console > 0 and named != "IO_INSTRUCTION" and delta.get("IO_INSTRUCTION", 0) >= console:
        delta["IO_INSTRUCTION"] -= console
    out = {"named_reason": named, "iterations": None, "doubling_rounds": None,
           "exits_by_reason": {r: v for r, v in delta.items() if v}, "console_io": console,
           "per_iteration": {}, "extra_per_iteration": None, "background_per_iteration": None,
           "as_named": False, "measured": False, "detail": ""}
    n = delta.get(named, 0) // max(1, named_per_iteration)    # a toggle: two writes per iteration
    if n <= 0:
        out["detail"] = f"no {named} exits beyond the baseline's: the loop's iterations are unknown"
        return out
    below = {r: v for r, v in delta.items() if v < 0 and -v > max(2, 0.01 * n)}
    if below:
        out["detail"] = ("fewer exits than the baseline run: "
                         + ", ".join(f"{r} {v}" for r, v in below.items()))
        return out
    per = {r: round(v / n, 4) for r, v in delta.items() if v > 0}
    background = background_reasons()
    extra = round(sum(v for r, v in per.items() if r != named and r not in background), 4)
    out.update(iterations=n, doubling_rounds=doubling_rounds(n), per_iteration=per,
               extra_per_iteration=extra,
               background_per_iteration=round(sum(v for r, v in per.items() if r in background), 4),
               measured=True, as_named=extra < EXTRA_NEGLIGIBLE)
    rounds = (f"{n} iterations = 64·(2^{out['doubling_rounds']} − 1)" if out["doubling_rounds"]
              else f"{n} iterations (not vmexit.flat's 64·(2^k − 1): other {named} exits mixed in)")
    out["detail"] = f"{rounds}; per iteration: {describe(per, named)}"
    return out


def describe(per: dict, named: str) -> str:
    """'1 VMMCALL + 2.00 CPUID' (the named reason first, then the others by count)."""
    parts = [f"{per.get(named, 1):g} {named}"] + [
        f"{v:.2f} {r}" for r, v in sorted(per.items(), key=lambda x: -x[1]) if r != named and v >= 0.005]
    return " + ".join(parts)


def corrected_value(value: float, per: dict, named: str, clean_costs: dict) -> tuple[float | None, str]:
    """The test's figure less its extra exits, each costed at the figure of a clean test of the same
    reason (e.g. vmcall − 2 × cpuid); (None, why) when an extra reason has no clean figure."""
    extra = {r: v for r, v in per.items() if r != named and v >= EXTRA_NEGLIGIBLE
             and r not in background_reasons()}
    missing = [r for r in extra if r not in clean_costs]
    if missing:
        return None, f"no clean vmexit.flat figure for {', '.join(missing)} exits"
    corr = value - sum(v * clean_costs[r][1] for r, v in extra.items())
    how = " − ".join([f"{value:g}"] + [f"{v:.2f} × {clean_costs[r][1]:g} ({clean_costs[r][0]})"
                                       for r, v in extra.items()])
    return corr, f"{how} = {corr:.0f}"
