"""The two windows of every case (docs/verification.md).

* The **timed window** produces the samples. No tracepoint, hist trigger or kprobe of exitlat is
  enabled while it runs; KVM's binary statistics (QMP `query-stats`, counters KVM keeps anyway)
  are read before and after it and are its only check. `tracing_state()` reads tracefs before and
  after the window, so a kvm tracepoint that someone else left enabled is caught, not silently
  measured.
* The **traced window** runs the same guest code again, with its own iterations, while the host
  counts every exit of the vCPU thread (exitlat.verify.trace.kvmtrace). Its samples give the tracing overhead
  (traced median vs. timed median), never the case's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .guestio import TRACED_SUFFIX


def traced_key(case_key: str) -> str:
    return case_key + TRACED_SUFFIX


def is_traced_key(key: str) -> bool:
    return key.endswith(TRACED_SUFFIX)


def case_of(key: str) -> str:
    return key[: -len(TRACED_SUFFIX)] if is_traced_key(key) else key


def tracing_state(tracefs: Path | None = None) -> list[str] | None:
    """Every kvm tracepoint, kvm hist trigger and kprobe event enabled right now, in the top-level
    trace buffer or any instance ("instances/x: kvm/kvm_exit"); [] when none; None when tracefs
    cannot be read (then nobody can say the window was free of tracing)."""
    from exitlat.verify.trace.tracefs import find_tracefs

    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    if root is None or not (root / "events").is_dir():
        return None
    buffers = [("", root)] + [(f"instances/{d.name}: ", d)
                              for d in sorted((root / "instances").glob("*")) if d.is_dir()]
    found = []
    try:
        for label, buf in buffers:
            for group in ("kvm", "kprobes"):
                for ev in sorted((buf / "events" / group).glob("*")):
                    if not (ev / "enable").is_file():
                        continue
                    if (ev / "enable").read_text().strip() not in ("0", ""):
                        found.append(f"{label}{group}/{ev.name}")
                    trig = ev / "trigger"
                    if trig.is_file() and any(line.strip() and not line.startswith("#")
                                              for line in trig.read_text().splitlines()):
                        found.append(f"{label}{group}/{ev.name} (trigger)")
            # kprobe events live in their own groups (p:group/name ...)
            for ev in sorted((buf / "events").glob("exitlat_*/*")):
                if (ev / "enable").is_file() and (ev / "enable").read_text().strip() not in ("0", ""):
                    found.append(f"{label}{ev.parent.name}/{ev.name}")
    except OSError:
        return None
    return found


@dataclass
class TimedWindow:
    """What the host saw of one timed window: KVM stats deltas and the tracing state around it."""
    kvm_stats: dict | None = None
    tracing_before: list[str] | None = None
    tracing_after: list[str] | None = None

    @property
    def enabled(self) -> list[str]:
        return sorted(set(self.tracing_before or []) | set(self.tracing_after or []))

    @property
    def tracing(self) -> str:
        """"off" (proven), "on" (something was enabled) or "unknown" (tracefs unreadable)."""
        if self.tracing_before is None or self.tracing_after is None:
            return "unknown"
        return "on" if self.enabled else "off"

    def tracing_problem(self) -> str | None:
        """None when the window provably ran with no kvm tracing enabled, else why not."""
        if self.tracing == "unknown":
            return "tracefs could not be read: the window's freedom from tracing is unverified"
        if self.tracing == "on":
            return "kvm tracing was enabled during the timed window: " + ", ".join(self.enabled[:5])
        return None

    def to_dict(self) -> dict:
        return {"tracing": self.tracing, "tracing_enabled": self.enabled, "kvm_stats": self.kvm_stats}


@dataclass
class TracedWindow:
    """One traced (verification) window: the exit counts and KVM stats of the same iterations."""
    counts: object = None                 # exitlat.verify.trace.counts.ExitCounts
    kvm_stats: dict | None = None
    backend: str | None = None
    kprobes: list = field(default_factory=list)
    error: str | None = None
