"""A kind's second exit (the table's `second`): one more exit every iteration takes after its
first, of a reason that is background for every other kind: a timer's expiry (tscdeadline:
EXTERNAL_INTERRUPT, KVM's hrtimer kicking the vCPU, or the VMX preemption timer's), the interrupt
window of an interrupt left pending (INTERRUPT_WINDOW / VINTR), a HLT that finds it pending. Up to
one per iteration is taken out of the window before it is judged, so the rest of the verifier
sees the first exit's path and the true background; the count taken must itself be at least ≈1
per iteration (the caller checks it)."""

from __future__ import annotations

from dataclasses import replace

from .trace.counts import ExitCounts


def split_second(window: ExitCounts, reason: str, n: int) -> tuple[ExitCounts, int]:
    """(the window without up to n exits of `reason`, how many it had). Hist keys may carry a
    suffix ("REASON|isa"): those count as the reason."""
    keys = [k for k in window.exits if k.split("|")[0] == reason]
    seen = sum(window.exits[k] for k in keys)
    left, exits = min(seen, n), dict(window.exits)
    for k in keys:
        took = min(exits[k], left)
        exits[k] -= took
        left -= took
        if not exits[k]:
            del exits[k]
    return replace(window, exits=exits), seen


# The KVM binary stat that counts a second exit's reason besides `exits` (None: only `exits`).
STAT_OF = {"EXTERNAL_INTERRUPT": "irq_exits", "HLT": "halt_exits",
           "INTERRUPT_WINDOW": "irq_window_exits", "VINTR": "irq_window_exits"}


def stats_without_second(stats: dict | None, reason: str, count: int) -> dict | None:
    """KVM's stats less `count` second exits: `exits` always, and the stat of the reason's own
    where KVM keeps one (STAT_OF)."""
    if not stats:
        return stats
    out = dict(stats)
    for key in ("exits", STAT_OF.get(reason)):
        if key is None:
            continue
        if isinstance(out.get(key), int):
            out[key] = max(out[key] - count, 0)
    return out
