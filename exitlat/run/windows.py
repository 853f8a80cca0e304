"""The two windows of every case (docs/verification.md).

* The **timed window** produces the samples. No tracepoint, hist trigger or kprobe of exitlat is
  enabled while it runs; KVM's binary statistics (QMP `query-stats`, counters KVM keeps anyway)
  are read before and after it and are its only check. `tracing_state()` reads tracefs before and
  after the window, so any tracing that someone else left enabled (an event of any group, in any
  instance, a tracer, a hooked function, a probe that fired) is caught, not silently measured;
  what tracefs cannot show is named in the bundle (`tracing_limits`).
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


def tracing_state(tracefs: Path | None = None):
    """Everything that traces the host right now, whoever enabled it: every enabled event of any
    group in the top-level buffer or any instance ("instances/x: syscalls/sys_enter_ioctl"), its
    triggers, a tracer other than nop, function commands, functions hooked by ftrace or BPF
    trampolines, armed kprobes (exitlat.verify.trace.tracingstate). [] when nothing is; None when
    tracefs cannot be read (then nobody can say the window was free of tracing).

    The list is a TracingState: it also carries what was read (`checked`), what no file shows
    (`limits`) and the probe events' hit counts (compared by TimedWindow)."""
    from exitlat.verify.trace.tracefs import find_tracefs
    from exitlat.verify.trace.tracingstate import check_tracing

    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    if root is None:
        return None
    return check_tracing(root)


def _union(*lists) -> list:
    out: list = []
    for items in lists:
        out += [x for x in items or () if x not in out]
    return out


@dataclass
class TimedWindow:
    """What the host saw of one timed window: KVM stats deltas and the tracing state around it."""
    kvm_stats: dict | None = None
    tracing_before: list[str] | None = None
    tracing_after: list[str] | None = None
    receiver_kvm_stats: dict | None = None    # a two-vCPU kind's receiving vCPU, the same window

    @property
    def enabled(self) -> list[str]:
        """What was enabled before or after the window, and the probes that fired in between."""
        from exitlat.verify.trace.tracingstate import probes_fired

        fired = probes_fired(self.tracing_before, self.tracing_after)
        return sorted(set(self.tracing_before or []) | set(self.tracing_after or []) | set(fired))

    @property
    def tracing(self) -> str:
        """"off" (proven), "on" (something was enabled) or "unknown" (tracefs unreadable)."""
        if self.tracing_before is None or self.tracing_after is None:
            return "unknown"
        return "on" if self.enabled else "off"

    def tracing_problem(self) -> str | None:
        """None when the window provably ran with no tracing enabled, else why not."""
        if self.tracing == "unknown":
            return "tracefs could not be read: the window's freedom from tracing is unverified"
        if self.tracing == "on":
            more = f" (+{len(self.enabled) - 5} more)" if len(self.enabled) > 5 else ""
            return ("tracing was enabled during the timed window: " + ", ".join(self.enabled[:5])
                    + more)
        return None

    def to_dict(self) -> dict:
        """`tracing_checked`: what tracing_state() read; `tracing_limits`: what it cannot see."""
        b, a = self.tracing_before, self.tracing_after
        return {"tracing": self.tracing, "tracing_enabled": self.enabled,
                "tracing_checked": _union(getattr(b, "checked", ()), getattr(a, "checked", ())),
                "tracing_limits": _union(getattr(b, "limits", ()), getattr(a, "limits", ())),
                "kvm_stats": self.kvm_stats,
                **({"receiver_kvm_stats": self.receiver_kvm_stats}
                   if self.receiver_kvm_stats is not None else {})}


@dataclass
class TracedWindow:
    """One traced (verification) window: the exit counts and KVM stats of the same iterations."""
    counts: object = None                 # exitlat.verify.trace.counts.ExitCounts
    kvm_stats: dict | None = None
    backend: str | None = None
    kprobes: list = field(default_factory=list)
    error: str | None = None
    receiver_counts: object = None        # a two-vCPU kind: the receiving vCPU's ExitCounts
    receiver_kvm_stats: dict | None = None
