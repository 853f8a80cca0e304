"""Which published percentiles may hold iterations that took another path.

A passing verdict still allows some iterations of a window to have taken another path or to have
been disturbed (an extra exit, an interrupt, a userspace exit). The verifier states, in every
verdict, the largest fraction of the window's iterations that may have done so: `other_path_max`
(docs/verification.md). The percentile pX is the value below which X % of the iterations lie, so
its tail holds the slowest 1 − X/100 of them. When that tail fraction is not above other_path_max,
every iteration in the tail may be one of the others: pX is not proven to be the case's path, and
it is marked (†) with a footnote saying how much of the window may be other-path iterations.

A verdict without the key (a bundle made before the verifier measured it), or with None under
KVM, leaves the fraction unknown: no mark, but a warning that the tails are not covered by any
stated bound. Under TCG there are no exits, so nothing applies."""

MARK = "†"
# the tail fraction of each percentile a report, page or comparison publishes
TAILS = {"median": 0.5, "p90": 0.10, "p99": 0.01, "p99_9": 0.001}
NAMES = {"median": "median", "p90": "p90", "p99": "p99", "p99_9": "p99.9"}


def fraction(e: dict) -> float | None:
    """A case entry's other_path_max (its verification verdict), or None when not recorded."""
    v = (e.get("verification") or {}).get("other_path_max")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def unknown(e: dict, accel: str | None) -> bool:
    """True for a KVM case entry with samples whose verdict states no other-path fraction."""
    status = (e.get("verification") or {}).get("status")
    return (accel == "kvm" and "case" in e and e.get("stats") is not None
            and status != "not_applicable" and fraction(e) is None)


def pooled(entries: list[dict]) -> float | None:
    """The largest fraction over a case's VM runs (those that state one), or None."""
    known = [f for f in (fraction(e) for e in entries) if f is not None]
    return max(known) if known else None


def covered(opm: float | None, keys=tuple(TAILS)) -> list[str]:
    """Of the percentiles `keys`, those whose tail fraction is not above opm (to be marked)."""
    if opm is None:
        return []
    return [k for k in keys if TAILS[k] <= opm * (1 + 1e-12)]


def pct(f: float) -> str:
    return f"{100 * f:.3g} %"


def footnote(keys: list[str], opm: float) -> str:
    """'p99, p99.9: may include up to 1.2 % other-path iterations'."""
    return f"{', '.join(NAMES[k] for k in keys)}: may include up to {pct(opm)} other-path iterations"


def mark(text: str, key: str, opm: float | None) -> str:
    """text with the mark when percentile `key` is covered by opm."""
    return text + MARK if key in covered(opm, (key,)) else text
