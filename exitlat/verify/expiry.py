"""A timer kind's expiry exit (tscdeadline): one exit per iteration whose reason is otherwise an
interrupt's (EXTERNAL_INTERRUPT: KVM's hrtimer kicking the vCPU) or the VMX preemption timer's,
both background for every other kind. Up to one per iteration is taken out of the window before
it is judged, so the rest of the verifier sees the WRMSR's path and the true background; the
count taken must itself be ≈1 per iteration (checked by the caller against its Bounds)."""

from __future__ import annotations

from dataclasses import replace

from .trace.counts import ExitCounts


def split_expiry(window: ExitCounts, reason: str, n: int) -> tuple[ExitCounts, int]:
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


def stats_without_expiry(stats: dict | None, reason: str, count: int) -> dict | None:
    """KVM's stats less `count` expiry exits: `exits` always, `irq_exits` too where the expiry is
    an external interrupt (KVM counts those there)."""
    if not stats:
        return stats
    out = dict(stats)
    for key in ("exits", "irq_exits") if reason == "EXTERNAL_INTERRUPT" else ("exits",):
        if isinstance(out.get(key), int):
            out[key] = max(out[key] - count, 0)
    return out
