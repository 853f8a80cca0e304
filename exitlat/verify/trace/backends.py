"""How a counter takes its counts: two backends behind one interface, both working in the
counter's private tracefs instance.

* ``hist``: in-kernel aggregation with hist triggers (``hist:keys=...``), cheap for millions of
  exits. `snapshot()` reads the ``hist`` files: the counts are updated synchronously as each event
  fires, so they are consistent by construction.
* ``stream``: where the kernel has no hist triggers. Each event gets a filter on ``common_pid``,
  a reader thread streams the instance's ``trace_pipe`` and aggregates in Python (tracepipe.py).
  `snapshot()` writes a unique marker to the instance's ``trace_marker`` and waits until the reader
  has seen it, so every event the vCPU produced before the call is counted. Lost events
  (ring-buffer overrun, ``[LOST n EVENTS]`` lines) are counted and reported in `ExitCounts.lost`,
  never hidden.

"auto" (`choose_backend`) takes hist triggers where the kernel has them. In timeline mode either
backend is joined by the trace_pipe reader for the timeline's events (kvmtrace.ExitCounter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from exitlat.errors import ExitlatError

from .counts import CountAccumulator, ExitCounts
from .histparse import PROBE_HIST_PREFIX, add_hists
from .kprobes import probe_dir
from .tracefs import event_fields, write_control
from .tracepipe import TracePipe


@dataclass(frozen=True)
class TraceTarget:
    """What a backend works on: one counter's instance, as it stands (ExitCounter makes one for
    each call)."""

    instance: Path
    tracefs: Path | None
    pid_filter: str                # "common_pid == <tid> || ..."
    events: tuple[str, ...]        # the counted kvm events this kernel has (tracefs.EVENTS)
    probes: tuple[str, ...]        # symbols with a working return probe (kprobes.py)
    pipe: TracePipe                # the instance's trace_pipe reader (started or not)


class Backend:
    """The operations ExitCounter needs from a backend."""

    name: ClassVar[str] = ""
    # Its counts come through trace_pipe: ExitCounter pauses and sizes the instance's buffers
    # before start() and starts the reader after it.
    streams: ClassVar[bool] = False

    def __init__(self):
        # the kvm events start() enabled in the instance (the timeline does not enable them again)
        self.enabled: tuple[str, ...] = ()

    def start(self, t: TraceTarget) -> list[tuple[str, str]]:
        """Set the instance up for counting. Returns the probes that could not be set up, with
        why: [(symbol, why)] (not fatal: ExitCounter notes them)."""
        raise NotImplementedError

    def snapshot(self, t: TraceTarget, timeout: float) -> ExitCounts:
        """Cumulative counts, including every event the traced threads produced before the call
        (`probed` and `probe_note` are ExitCounter's to add)."""
        raise NotImplementedError


class HistBackend(Backend):
    name = "hist"
    # hist keys per event after common_pid (those this kernel's event format has)
    KEYS = {
        "kvm_exit": ["exit_reason", "isa"],
        "kvm_userspace_exit": ["reason", "errno"],
        "kvm_pio": ["rw", "port"],
        "kvm_cpuid": [],
        "kvm_msr": ["write"],
        "kvm_hypercall": [],
        "kvm_hv_timer_state": ["hv_timer_in_use"],
    }

    def start(self, t: TraceTarget) -> list[tuple[str, str]]:
        for ev in t.events:
            have = event_fields(t.tracefs, ev)
            keys = ["common_pid"] + [k for k in self.KEYS[ev] if k in have]
            spec = f"hist:keys={','.join(keys)}:vals=hitcount:size=2048"
            write_control(t.instance / "events/kvm" / ev / "trigger", f"{spec} if {t.pid_filter}",
                          f"set a hist trigger on kvm:{ev}")
        dropped = []
        for sym in t.probes:
            spec = "hist:keys=common_pid,ret:vals=hitcount:size=256"
            try:
                write_control(probe_dir(t.instance, sym) / "trigger", f"{spec} if {t.pid_filter}",
                              f"set a hist trigger on the {sym} probe")
            except ExitlatError as e:
                dropped.append((sym, str(e)))
        return dropped

    def snapshot(self, t: TraceTarget, timeout: float) -> ExitCounts:
        if t.pipe.started:                 # timeline mode: its events are in trace_pipe
            t.pipe.sync(timeout)
        acc = CountAccumulator()
        add_hists(self._read_hists(t), acc, t.pipe.pids)     # another thread's entry fails
        return acc.freeze(self.name)

    @staticmethod
    def _read_hists(t: TraceTarget) -> dict[str, str]:
        out = {}
        paths = {ev: t.instance / "events/kvm" / ev / "hist" for ev in t.events}
        paths.update({PROBE_HIST_PREFIX + s: probe_dir(t.instance, s) / "hist" for s in t.probes})
        for ev, path in paths.items():
            try:
                out[ev] = path.read_text()
            except OSError as e:
                raise ExitlatError(f"tracefs: cannot read the {ev} hist ({e.strerror or e})") from None
        return out


class StreamBackend(Backend):
    name = "stream"
    streams = True

    def start(self, t: TraceTarget) -> list[tuple[str, str]]:
        for ev in t.events:
            write_control(t.instance / "events/kvm" / ev / "filter", t.pid_filter,
                          f"filter kvm:{ev} on the vCPU threads")
            write_control(t.instance / "events/kvm" / ev / "enable", "1", f"enable kvm:{ev}")
        self.enabled = t.events
        dropped = []
        for sym in t.probes:
            try:
                write_control(probe_dir(t.instance, sym) / "filter", t.pid_filter,
                              f"filter the {sym} probe")
                write_control(probe_dir(t.instance, sym) / "enable", "1", f"enable the {sym} probe")
            except ExitlatError as e:
                dropped.append((sym, str(e)))
        return dropped

    def snapshot(self, t: TraceTarget, timeout: float) -> ExitCounts:
        t.pipe.sync(timeout)
        lost_stats = t.pipe.overrun()
        snap = t.pipe.counts(self.name)
        # "[LOST n EVENTS]" lines and the overrun counter describe the same losses; take the
        # larger so nothing is counted twice or hidden.
        return replace(snap, lost=max(snap.lost, lost_stats))


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (HistBackend, StreamBackend)}


def choose_backend(want: str, hist_triggers: bool) -> str:
    """The backend for ExitCounter(backend=want) on a kernel with or without hist triggers:
    "auto" takes hist triggers where there are some."""
    if want == "hist" and not hist_triggers:
        raise ExitlatError("this kernel has no hist triggers (CONFIG_HIST_TRIGGERS); use the streaming backend")
    return "hist" if (want == "hist" or (want == "auto" and hist_triggers)) else "stream"
