"""Host-side counting of KVM exits for one or more vCPU threads (tracefs).

`ExitCounter(tids)` counts, for the given host thread ids only:

* ``kvm:kvm_exit`` by exit reason (decoded to a name for VMX and SVM, kept as a number otherwise),
* ``kvm:kvm_userspace_exit`` by ``KVM_EXIT_*`` reason (the round trips to the VMM, e.g. QEMU),
* ``kvm:kvm_pio`` by (port, direction),
* KVM's in-kernel handler tracepoints ``kvm_cpuid``, ``kvm_msr`` (read/write) and
  ``kvm_hypercall``: they prove that KVM itself handled an instruction, whatever exit mechanism
  brought it there (on PVM, or when KVM emulates, there is no ``kvm_exit`` event at all),
* ``kvm:kvm_hv_timer_state`` by the timer KVM armed for the guest's LAPIC timer (the VMX preemption
  timer or an hrtimer), where the kernel has it: which timer backs case 5's TSC-deadline writes
  (exitlat/verify/timerbacking.py),
* optionally (``kprobes=``) return probes on KVM's WRMSR fastpath handler, counted per symbol:
  ``probes["<sym>"]`` = calls, ``probes["<sym>:handled"]`` = calls that returned something other
  than EXIT_FASTPATH_NONE, i.e. that the irq-off fastpath really handled (see FASTPATH_SYMBOLS).

Two backends behind one interface, both in a private tracefs instance ``instances/exitlat-<pid>-<n>``
(the global buffer's settings are never touched; the instance is removed by `stop()`, also on
errors and Ctrl-C). ExitCounter chooses the backend, owns the instance, the probes and the
timeline, and leaves the counting to the backend. The rest lives beside it, in exitlat/verify/trace/:

  backends.py     hist triggers or streaming trace_pipe: how each backend counts
  tracepipe.py    the trace_pipe reader thread, its sync markers and loss counters
  traceparse.py   trace_pipe lines into counts, failing closed on what does not parse
  histparse.py    hist files into counts
  exitreasons.py  VMX/SVM exit reasons and KVM_EXIT_* names, numeric and printed
  counts.py       ExitCounts (a snapshot; later - earlier is a window) and its accumulator
  timeline.py     timeline mode: each kvm_exit paired with its kvm_entry, and why it is done so
  kprobes.py      the return probes on KVM's fastpath handler, per kernel version
  tracefs.py      finding tracefs, its control files, trace clocks
  instances.py    the private instances: creation, teardown, what a killed run left behind

See docs/verification.md.
"""

from __future__ import annotations

import atexit
import weakref
from dataclasses import replace
from pathlib import Path

from exitlat.errors import ExitlatError

from . import kprobes as _kprobes       # KALLSYMS looked up when used: tests point it elsewhere
from .backends import BACKENDS, Backend, TraceTarget, choose_backend
from .counts import ExitCounts
from .instances import create_instance, remove_stale_instances, teardown_instance
from .kprobes import FASTPATH_SYMBOLS, SYMBOL_NAME, acquire_probe, kernel_symbols, kprobes_available, release_probe
from .timeline import (DEFAULT_MAX_KEPT, KVM_RUN_IOCTL, TIMELINE_KVM_EVENTS, TIMELINE_SYSCALL_EVENTS,
                       TSC_CLOCK, PairedExits, Timeline)
from .tracefs import (EVENTS, find_tracefs, has_hist_triggers, set_trace_clock, tracing_available,
                      write_control)
from .tracepipe import DEFAULT_BUFFER_KB, SYNC_TIMEOUT_S, TracePipe, pause_and_size_buffers

_instances: "weakref.WeakSet[ExitCounter]" = weakref.WeakSet()


@atexit.register
def _cleanup_at_exit() -> None:
    for c in list(_instances):
        try:
            c.stop()
        except Exception:
            pass


class ExitCounter:
    """Count KVM exits of the given host threads (vCPU tids). See the module docstring.

    backend: "auto" (hist triggers if the kernel has them, else streaming), "hist" or "stream"
         (backends.py).
    buffer_kb: per-CPU ring buffer of the private instance (streaming backend).
    cpu: the core the vCPU is pinned to; its buffer alone gets buffer_kb (the others keep the
         default), so a long case can have a large buffer without one per CPU of the host.
    kprobes: kernel functions to count calls and fastpath outcomes of (a return probe each,
         "r:exitlat_<pid>/<sym> <sym> ret=$retval:u32", in the global kprobe_events, enabled only
         in the private instance with the same common_pid filter), e.g. fastpath_symbols().
         A symbol that cannot be probed is not an error: `kprobes_active` lists those that work,
         `probe_note` says why the others do not, and both travel in every snapshot.
    timeline: also pair each exit's kvm_exit with its kvm_entry, with timestamps (see Timeline):
         the instance's trace clock is set to x86-tsc where the kernel has it (`clock`,
         `clock_note`), kvm_entry and syscalls:sys_{enter,exit}_ioctl are enabled as well, and
         `timeline()` returns the PairedExits so far. With the hist backend the counts still come
         from the hist triggers; the timeline's events go through trace_pipe and the same reader
         thread, so a loss there spoils the timeline, never the counts.
    max_kept: durations kept per kind of exit in the timeline (a uniform sample beyond).
    """

    def __init__(self, tids: list[int], tracefs: Path | None = None, *, backend: str = "auto",
                 buffer_kb: int = DEFAULT_BUFFER_KB, cpu: int | None = None,
                 kprobes=None, timeline: bool = False, max_kept: int = DEFAULT_MAX_KEPT):
        try:
            self.tids = sorted({int(t) for t in tids})
        except (TypeError, ValueError):
            raise ExitlatError(f"vCPU thread ids must be integers, got {tids!r}") from None
        if not self.tids or any(t <= 0 for t in self.tids):
            raise ExitlatError(f"need at least one positive vCPU thread id, got {tids!r}")
        if backend not in ("auto", *BACKENDS):
            raise ExitlatError(f"unknown tracing backend {backend!r} (auto, hist, stream)")
        if isinstance(kprobes, str):
            kprobes = [kprobes]
        self.kprobes = list(dict.fromkeys(kprobes or ()))
        bad = [s for s in self.kprobes if not isinstance(s, str) or not SYMBOL_NAME.fullmatch(s)]
        if bad:
            raise ExitlatError(f"kprobes must be kernel function names, got {bad!r}")
        self._kprobes_requested = kprobes is not None
        self._tracefs_arg = Path(tracefs) if tracefs else None
        self._want = backend
        self.buffer_kb = int(buffer_kb)
        self.cpu = cpu
        self._backend: Backend | None = None
        self.tracefs: Path | None = None
        self.instance: Path | None = None
        self._events: list[str] = []
        self._pipe = TracePipe(self.tids)
        self.kprobes_active: list[str] = []
        self.probe_note = ""
        self._probes_held: list[str] = []
        self.timeline_wanted = bool(timeline)
        self.max_kept = int(max_kept)
        self.clock = ""                    # the instance's trace clock (timeline mode)
        self.clock_note = ""
        self._timeline: Timeline | None = None
        self._timeline_dirs: list[tuple[Path, str]] = []    # (event dir in the instance, filter)

    @property
    def backend(self) -> str:
        """The backend's name ("hist" or "stream"; "" before start()). Assigning a name selects
        that backend (start() does; a test can, to drive a prepared instance)."""
        return self._backend.name if self._backend is not None else ""

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = BACKENDS[name]() if name else None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "ExitCounter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.instance is not None

    def start(self) -> None:
        if self.instance is not None:
            return
        ok, why = tracing_available(self._tracefs_arg)
        if not ok:
            raise ExitlatError(f"cannot trace KVM exits: {why}")
        root = self._tracefs_arg or find_tracefs()
        self.tracefs = root
        self.backend = choose_backend(self._want, has_hist_triggers(root))
        self._events = [e for e in EVENTS if (root / "events/kvm" / e).is_dir()]
        remove_stale_instances(root)
        self.instance = create_instance(root)
        _instances.add(self)
        try:
            if self.timeline_wanted:
                self._setup_timeline()
            self._setup_probes()
            # trace_pipe is read for a streaming backend's counts and for the timeline's events
            reads_pipe = self._backend.streams or self._timeline is not None
            if reads_pipe:                 # tracing off and buffers sized before any event is enabled
                pause_and_size_buffers(self.instance, self.buffer_kb, self.cpu)
            for sym, why in self._backend.start(self._trace_target()):
                self._drop_probe(sym, why)
            if reads_pipe:
                self._start_streaming(skip=self._backend.enabled)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop counting, remove the tracefs instance and this counter's kprobes (idempotent)."""
        inst, self.instance = self.instance, None
        if inst is None:
            return
        self._pipe.stopping.set()
        try:
            write_control(inst / "tracing_on", "0", "stop tracing")
        except ExitlatError:
            pass
        self._pipe.join()
        teardown_instance(inst)
        held, self._probes_held = self._probes_held, []
        for sym, events_file in held:
            release_probe(self.tracefs, events_file, sym)
        _instances.discard(self)

    def _pid_filter(self) -> str:
        return " || ".join(f"common_pid == {t}" for t in self.tids)

    def _trace_target(self) -> TraceTarget:
        """What the backend works on, as it stands now."""
        return TraceTarget(self.instance, self.tracefs, self._pid_filter(), tuple(self._events),
                           tuple(self.kprobes_active), self._pipe)

    # -- kprobes ---------------------------------------------------------------------------
    def _setup_probes(self) -> None:
        """Create the requested return probes; what cannot be probed is noted, not fatal."""
        assert self.tracefs is not None
        self.kprobes_active, notes = [], []
        if not self.kprobes:
            self.probe_note = ("no kprobes requested" if not self._kprobes_requested else
                               "no fastpath handler symbol on this kernel "
                               f"(none of {', '.join(FASTPATH_SYMBOLS)})")
            return
        ok, why = self._probes_possible()
        if not ok:
            self.probe_note = why
            return
        have = self._symbols_present()
        for sym in self.kprobes:
            if sym not in have:
                notes.append(f"{sym} is not in {_kprobes.KALLSYMS} on this kernel")
                continue
            events_file, target = self._probe_target(sym, have[sym])
            problem = acquire_probe(self.tracefs, events_file, sym, target)
            if problem:
                notes.append(problem)
                continue
            self._probes_held.append((sym, events_file))
            self.kprobes_active.append(sym)
        self.probe_note = "; ".join(notes)

    # The three steps a test can redirect (e.g. to uprobe_events on a kernel without kprobes).
    def _probes_possible(self) -> tuple[bool, str]:
        return kprobes_available(self.tracefs)

    def _symbols_present(self) -> dict:
        return kernel_symbols(self.kprobes, self.tracefs)

    def _probe_target(self, sym: str, module: str) -> tuple[str, str]:
        return "kprobe_events", f"{module}:{sym}" if module else sym

    def _drop_probe(self, sym: str, why: str) -> None:
        self.kprobes_active.remove(sym)
        self.probe_note = "; ".join(filter(None, [self.probe_note, why]))

    # -- public ----------------------------------------------------------------------------
    def snapshot(self, timeout: float = SYNC_TIMEOUT_S) -> ExitCounts:
        """Cumulative counts, including every event the traced threads produced before the call."""
        if self.instance is None:
            raise ExitlatError("ExitCounter.snapshot() before start() (or after stop())")
        snap = self._backend.snapshot(self._trace_target(), timeout)
        return replace(snap, probed=tuple(self.kprobes_active), probe_note=self.probe_note)

    # -- timeline (timestamped pairing) ------------------------------------------------------
    def _setup_timeline(self) -> None:
        """Select the TSC trace clock in the instance (before any event is enabled: changing the
        clock resets the buffer) and decide which timeline events this kernel has."""
        assert self.instance is not None and self.tracefs is not None
        clock, note = set_trace_clock(self.instance, TSC_CLOCK)
        self.clock, self.clock_note = clock or "unknown", note
        flt = self._pid_filter()
        missing = []
        for ev in TIMELINE_KVM_EVENTS:
            if (self.instance / "events/kvm" / ev).is_dir():
                self._timeline_dirs.append((self.instance / "events/kvm" / ev, flt))
            else:
                missing.append(ev)
        syscalls = all((self.instance / "events/syscalls" / ev).is_dir()
                       for ev in TIMELINE_SYSCALL_EVENTS)
        if syscalls:
            for ev in TIMELINE_SYSCALL_EVENTS:
                f = f"({flt}) && cmd == {KVM_RUN_IOCTL}" if ev == "sys_enter_ioctl" else flt
                self._timeline_dirs.append((self.instance / "events/syscalls" / ev, f))
        else:
            missing.append("syscalls (no events/syscalls/sys_{enter,exit}_ioctl: "
                           "CONFIG_FTRACE_SYSCALLS)")
        self._timeline = Timeline(self.clock, syscalls, self.max_kept, missing=missing, note=note)
        self._pipe.acc.timeline = self._timeline

    def _enable_timeline_events(self, skip=()) -> None:
        """Enable the timeline's events (filtered on the vCPU threads) that are not yet enabled.
        One that cannot be enabled is noted in the timeline (its decomposition is refused), not
        fatal: the counts do not need it."""
        tl = self._timeline
        if tl is None:
            return
        for d, flt in self._timeline_dirs:
            if d.parent.name == "kvm" and d.name in skip:
                continue
            try:
                try:
                    write_control(d / "filter", flt, f"filter {d.parent.name}:{d.name} on the vCPU threads")
                except ExitlatError:
                    if flt == self._pid_filter():
                        raise
                    write_control(d / "filter", self._pid_filter(), f"filter {d.parent.name}:{d.name}")
                write_control(d / "enable", "1", f"enable {d.parent.name}:{d.name}")
            except ExitlatError as e:
                tl.missing += (f"{d.name} ({e})",)
                if d.parent.name == "syscalls":
                    tl.syscalls = False

    def _start_streaming(self, skip=()) -> None:
        """Enable the timeline's events that the backend has not (`skip`), then start the
        trace_pipe reader, which switches tracing on. The buffers are paused and sized by then."""
        assert self.instance is not None
        self._enable_timeline_events(skip=skip)
        self._pipe.start(self.instance)

    def timeline(self, timeout: float = SYNC_TIMEOUT_S) -> PairedExits:
        """The pairing so far, including every event the traced threads produced before the
        call (the same sync marker as snapshot()). Needs ExitCounter(timeline=True)."""
        if self._timeline is None:
            raise ExitlatError("ExitCounter.timeline() needs ExitCounter(timeline=True)")
        if self.instance is None:
            raise ExitlatError("ExitCounter.timeline() before start() (or after stop())")
        self._pipe.sync(timeout)
        lost_stats = self._pipe.overrun()
        with self._pipe.cond:
            return self._timeline.freeze(extra_lost=lost_stats)
