"""The receiving vCPU of a two-vCPU kind (ipi, ipi_halt): its own exits, counted by a tracing
instance on its thread alone, against what each IPI must cost it (the table's `receiver` reason:
a HLT exit when it was halted, an external-interrupt exit when it ran; none with posted
interrupts or AVIC). The sender's window is verify_case's, as for any kind.

The receiver's background is its own: a timer tick or a wake-up lands as one more exit of an
interrupt or idle reason, and re-arms the guest's timer (one MSR write: a side exit). So the
side exits it counted are the allowance for extra exits of the receiver's reason, as the
interrupts a sender's window counts are for its side exits; a check resting on them obeys
BACKGROUND_LIMIT (Bounds.gate)."""

from __future__ import annotations

from exitlat.instructions import PATH_KVM, PATH_NONE, TABLE

from .rules import (ASYNC_REASONS, CONSOLE_PORTS, IDLE_REASONS, SIDE_REASONS, STATUS_FAILED,
                    STATUS_PASSED, STATUS_UNVERIFIED, Bounds, per_iteration, stats_verdict)
from .trace.exitreasons import DECODABLE_EXIT_NAMES


def verify_receiver(window, n: int, receiver_path: str, instruction: str, vendor: str) -> dict:
    """Verdict of the receiving vCPU's traced window (an ExitCounts of its thread, the same
    iterations as the sender's): {"status", "detail", "expected_reason", "per_iter", ...}."""
    reasons = TABLE[instruction].receiver_reasons(vendor)
    base = lambda r: r.split("|")[0]      # noqa: E731  (hist keys may carry "|isa")
    count = sum(c for r, c in window.exits.items() if base(r) in reasons)
    side = sum(c for r, c in window.exits.items() if base(r) in SIDE_REASONS)
    background = sum(c for r, c in window.exits.items()
                     if base(r) in (ASYNC_REASONS | IDLE_REASONS) and base(r) not in reasons)
    # the serial console's port I/O, as in the sender's window: background wherever it lands
    console = sum(c for (port, _d), c in window.pio.items() if port in CONSOLE_PORTS)
    console_exits = min(window.exits.get("IO_INSTRUCTION", 0), console)
    other = window.total_exits - count - side - background - console_exits
    userspace = window.total_userspace - min(window.userspace.get("IO", 0), console)
    decodable = any(base(k) in DECODABLE_EXIT_NAMES for k in window.exits)
    b = Bounds(n, side)
    problems, unproven = [], []
    if window.lost:
        problems.append(f"{window.lost} trace events were lost, counts are incomplete")
    if window.unparsed:
        problems.append(f"{window.unparsed} trace lines could not be parsed, counts are incomplete")
    if receiver_path == PATH_KVM and not window.total_exits:
        unproven.append("no kvm_exit events of the receiver: no evidence of its path")
    else:
        problems += _count_problems(b, count, n, receiver_path,
                                    f"{'/'.join(reasons)} exits of the receiver")
    if not b.zero_fixed_only(max(other, 0)):
        problems.append(f"expected ≈0 other synchronous exits of the receiver per iteration, saw "
                        f"{other / n:.3f} ({other} in {n})")
    if not b.zero_fixed_only(userspace):
        problems.append(f"expected ≈0 userspace exits of the receiver per iteration, saw "
                        f"{userspace / n:.3f} ({userspace} in {n})")
    if not decodable and window.total_exits:
        unproven.append("the receiver's exit reasons could not be decoded")
    gate = b.gate(f"the receiver's {'/'.join(reasons)} exits")
    if gate:
        unproven.append(gate)
    said = (f"{'/'.join(reasons)} {count / n:.3f}/iter, side {side / n:.3f}, "
            f"other {other / n:.3f}, userspace {userspace / n:.3f}")
    if problems:
        status, detail = STATUS_FAILED, "failed: " + "; ".join(problems)
    elif unproven:
        status, detail = STATUS_UNVERIFIED, "unverified: " + "; ".join(unproven)
    else:
        status, detail = STATUS_PASSED, f"passed: {said}"
    return {"status": status, "detail": detail, "expected_path": receiver_path,
            "expected_reason": "/".join(reasons),
            "expected_reason_per_iter": per_iteration(count, n),
            "side_exits_per_iter": per_iteration(side, n),
            "other_exits_per_iter": per_iteration(other, n),
            "userspace_exits_per_iter": per_iteration(userspace, n),
            "console_pio": console,
            "exit_reasons": dict(sorted(window.exits.items())),
            "lost_events": window.lost, "unparsed": window.unparsed}


# KVM stats that count exits of a named kind (interrupts, idle, I/O, windows); what `exits` holds
# beyond them is synchronous (MSR writes, ...): on the receiver, its timer's re-arms
NAMED_EXIT_STATS = frozenset({"irq_exits", "halt_exits", "io_exits", "mmio_exits",
                              "irq_window_exits", "nmi_window_exits"})


def verify_receiver_timed(stats: dict | None, n: int, receiver_path: str, instruction: str,
                          vendor: str) -> dict:
    """Verdict of the receiving vCPU in the timed window, from its KVM binary stats alone (nothing
    traced it): the stat of its reason (halt_exits for a HLT, irq_exits for an external
    interrupt) ≈1 per iteration, or ≈0 where the host rule says none. KVM's counters cannot tell
    the receiver's ticks from the IPIs' exits, so its other exits (re-arms, ticks: `exits` less
    that stat) cannot be told apart by reason. A tick adds one exit of the receiver's reason
    (woken from HLT, or interrupted while it ran) and re-arms its timer: a synchronous exit KVM
    counts in `exits` alone. So the exits no named stat counts are the allowance upwards, under
    BACKGROUND_LIMIT; downwards only the fixed one (an IPI that costs the receiver less than its
    reason took another path: it ran when it should have halted, or was never reached)."""
    from .second_exit import STAT_OF

    reasons = TABLE[instruction].receiver_reasons(vendor)
    keys = list(dict.fromkeys(STAT_OF.get(r) for r in reasons))   # no sort: None may be there
    head = f"receiver ({receiver_path}, n={n}, KVM stats)"
    out = {"status": STATUS_UNVERIFIED, "expected_path": receiver_path,
           "expected_reason": "/".join(reasons), "stat": "/".join(k or "?" for k in keys),
           "expected_reason_per_iter": None, "other_exits_per_iter": None}
    if None in keys or len(keys) != 1:
        out["detail"] = f"unverified {head}: KVM keeps no stat of {'/'.join(reasons)} exits"
        return out
    key = keys[0]
    missing = [k for k in ("exits", key) if not isinstance((stats or {}).get(k), int)]
    if stats is None or missing:
        out["detail"] = (f"unverified {head}: " + ("the receiving vCPU's KVM stats were not read"
                         if stats is None else f"no {', '.join(missing)} in its KVM stats"))
        return out
    count, other = stats[key], max(stats["exits"] - stats[key], 0)
    named = sum(v for k, v in stats.items() if k in NAMED_EXIT_STATS and isinstance(v, int))
    side = max(stats["exits"] - named - (0 if key in NAMED_EXIT_STATS else count), 0)
    out["expected_reason_per_iter"] = per_iteration(count, n)
    out["other_exits_per_iter"] = per_iteration(other, n)
    out["side_exits_per_iter"] = per_iteration(side, n)
    b = Bounds(n, side)
    problems = _count_problems(b, count, n, receiver_path, key[:-1])
    gate = "" if problems else b.gate(f"the receiver's {key}")
    said = f"{key} {count / n:.3f}/iter, other exits {other / n:.3f}/iter (side {side / n:.3f})"
    out["status"], out["detail"] = stats_verdict(problems, gate, head, said)
    return out


def _count_problems(b: Bounds, count: int, n: int, receiver_path: str, what: str) -> list[str]:
    """The receiver's count of its reason against its path: ≈1 per iteration (kvm), ≈0 (none)."""
    if receiver_path == PATH_KVM:
        ok, want, why = b.one(count), "≈1", ""
    elif receiver_path == PATH_NONE:
        ok, want, why = b.zero(count), "≈0", " (no exit on this host)"
    else:
        return [f"unknown receiver path {receiver_path!r}"]
    return [] if ok else [f"expected {want} {what} per iteration{why}, saw {count / n:.3f} "
                          f"({count} in {n})"]
