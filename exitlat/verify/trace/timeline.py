"""Timestamped pairing: where each exit's round trip goes.

Timeline mode (``ExitCounter(..., timeline=True)``, either backend): the instance's trace clock is
set to ``x86-tsc`` (trace_pipe then prints the raw TSC as the timestamp, without a decimal point;
the parser takes both forms), ``kvm_entry`` and ``syscalls:sys_{enter,exit}_ioctl`` are enabled as
well, and a `Timeline` in the reader thread pairs every kvm_exit with its kvm_entry and times the
trips to QEMU in between. `ExitCounter.timeline()` returns the `PairedExits`;
exitlat/stats/decompose.py turns them into each case's decomposition. Without it nothing changes:
kvm_entry and syscall lines are not counted events and stay unparsed.

Where the tracepoints fire (read in the sources of Debian's linux 6.1.192 and 6.12.117;
6.18.44 checked on the dev host's format files):

  kvm_entry           vmx_vcpu_run() / svm_vcpu_run(), just before the VM-entry code
                      (vmx_vcpu_enter_exit / svm_vcpu_enter_exit), every time, fastpath
                      re-entries included.
  kvm_exit            the same functions right after the VM exit, before any handler and
                      before the irq-off fastpath.
  kvm_userspace_exit  kvm_vcpu_ioctl(KVM_RUN) after kvm_arch_vcpu_ioctl_run() returned, i.e.
                      after vcpu_put and the guest FPU was put away.
  syscalls:sys_exit_ioctl / sys_enter_ioctl   the syscall exit / entry work of the vCPU thread
                      (CONFIG_FTRACE_SYSCALLS, set in the usual distribution kernels): the
                      return of KVM_RUN to QEMU and QEMU's next call.

So per exit (host TSC ticks, trace clock x86-tsc):
  host  = kvm_entry - kvm_exit                       everything between the two tracepoints
  qemu  = sum over its trips to user space of (sys_enter_ioctl(KVM_RUN) - sys_exit_ioctl):
          QEMU's own time between the return of KVM_RUN and its next call (plus the few
          instructions of the syscall return/entry around the two tracepoints)
  kvm   = host - qemu                                in the kernel: KVM's handler, and for a
          userspace exit also KVM_RUN's return and re-entry (vcpu_put/vcpu_load, FPU switch)
  kvm_run = (kvm_entry - kvm_userspace_exit) - qemu  that return and re-entry alone
What is left of the guest-side round trip is the hardware VM exit and VM entry, the few
host instructions between them and the tracepoints, and the cost of tracing itself.

Tracing inside the intervals: every streamed event of the vCPU thread between an exit's kvm_exit
and its kvm_entry (kvm_pio, kvm_userspace_exit, sys_exit_ioctl, sys_enter_ioctl) is counted per
kind of exit (`inside`), so the decomposition can say how many events each interval carries;
the handler tracepoints and kprobes that only the hist backend sees are counted by the window's
ExitCounts instead (decompose.py). An in-KVM exit whose interval holds a kvm_userspace_exit left
the kernel: its `user` is >= 0 and the decomposition keeps it apart.

Why not kvm_userspace_exit -> kvm_entry for QEMU's time: it also contains KVM_RUN's return and
re-entry in the kernel (FPU and vCPU load/put, complete_userspace_io), which is KVM's work, and
no KVM tracepoint marks the moment KVM_RUN is called again. Why not hist triggers with onmatch()
synthetic events: they would keep only histograms, could not prove that every exit was paired
(a missing kvm_entry silently matches an older timestamp), need global synthetic events, and
cannot be tested on a kernel without hist triggers; the pairing below runs in the reader thread
that already parses the stream, keeps only per-exit durations, and fails closed.
"""

from __future__ import annotations

import random
from array import array
from collections import Counter
from dataclasses import dataclass, field

TSC_CLOCK = "x86-tsc"
KVM_RUN_IOCTL = 0xAE80                   # _IO(KVMIO, 0x80), include/uapi/linux/kvm.h
TIMELINE_KVM_EVENTS = ("kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_pio")
TIMELINE_SYSCALL_EVENTS = ("sys_enter_ioctl", "sys_exit_ioctl")
DEFAULT_MAX_KEPT = 1 << 21               # durations kept per exit kind (uniform reservoir beyond):
                                         # 3 x 8 bytes each, at most 48 MiB per kind


def exit_kind(reason: str, port: tuple[int, str] | None = None) -> str:
    """The key of one kind of exit in PairedExits.kinds: the reason, and for port I/O the port
    ("CPUID", "IO_INSTRUCTION 0xe9/out")."""
    return reason if port is None else f"{reason} {port[0]:#x}/{port[1]}"


class _Open:
    """One exit between its kvm_exit and its kvm_entry."""
    __slots__ = ("t_exit", "reason", "port", "t_user", "t_ret", "qemu", "trips", "broken", "inside")

    def __init__(self, t_exit: int, reason: str):
        self.t_exit, self.reason, self.port = t_exit, reason, None
        self.t_user = None       # first kvm_userspace_exit
        self.t_ret = None        # the sys_exit_ioctl after a kvm_userspace_exit (in QEMU since)
        self.qemu, self.trips, self.broken = 0, 0, False
        self.inside: Counter = Counter()   # streamed events between kvm_exit and kvm_entry


class _Series:
    """Durations of one kind of exit: host, qemu (-1: not measurable) and the first
    kvm_userspace_exit -> kvm_entry (-1: none). A uniform reservoir once `cap` are kept."""
    __slots__ = ("n", "host", "qemu", "user", "inside")

    def __init__(self):
        self.n = 0
        self.host, self.qemu, self.user = array("q"), array("q"), array("q")
        self.inside: Counter = Counter()    # events inside the intervals, all n exits

    def add(self, host: int, qemu: int, user: int, cap: int, rng, inside=()) -> None:
        self.n += 1
        self.inside.update(inside)
        if len(self.host) < cap:
            self.host.append(host)
            self.qemu.append(qemu)
            self.user.append(user)
            return
        j = rng.randrange(self.n)
        if j < cap:
            self.host[j], self.qemu[j], self.user[j] = host, qemu, user


@dataclass(frozen=True)
class PairedExits:
    """What the pairing of one traced window found (Timeline.freeze()).

    clock:    the trace clock the timestamps were taken with ("x86-tsc": host TSC ticks).
    syscalls: sys_enter_ioctl/sys_exit_ioctl were traced (QEMU's time is measurable).
    kinds:    exit_kind() -> {"n": exits paired, "host", "qemu", "user": array("q") of the
              kept exits (see _Series; n counts all of them, np.asarray() reads them in place),
              "inside": {event: how many fired inside the kind's intervals, over all n}}.
    paired:   exits with both a kvm_exit and a kvm_entry.
    unpaired_exits: kvm_exit events followed by another kvm_exit without a kvm_entry between.
    entries_without_exit: kvm_entry events without an open exit (the window's first entry, an
              entry after a KVM_RUN that returned before entering the guest): not an error.
    qemu_unpaired: exits that went to user space without a complete sys_exit_ioctl ->
              sys_enter_ioctl(KVM_RUN) pair (or while syscalls were not traced).
    backwards: exits whose kvm_entry timestamp was below their kvm_exit's.
    lost, unparsed: events lost / lines that did not parse while the timeline ran.
    non_tsc:  event lines with a "secs.usecs" timestamp (a nanosecond trace clock).
    events:   timeline events seen, by name.
    missing:  timeline tracepoints this kernel lacks or that could not be enabled.
    note:     why the clock or a tracepoint is not what the decomposition needs.
    """

    clock: str
    syscalls: bool
    kinds: dict = field(default_factory=dict)
    paired: int = 0
    unpaired_exits: int = 0
    entries_without_exit: int = 0
    qemu_unpaired: int = 0
    backwards: int = 0
    lost: int = 0
    unparsed: int = 0
    non_tsc: int = 0
    events: dict = field(default_factory=dict)
    missing: tuple = ()
    note: str = ""

    def summary(self) -> dict:
        """The counters, without the arrays (JSON-friendly)."""
        return {"clock": self.clock, "syscalls": self.syscalls, "paired": self.paired,
                "unpaired_exits": self.unpaired_exits,
                "entries_without_exit": self.entries_without_exit,
                "qemu_unpaired": self.qemu_unpaired, "backwards": self.backwards,
                "lost": self.lost, "unparsed": self.unparsed, "non_tsc": self.non_tsc,
                "events": dict(sorted(self.events.items())), "missing": list(self.missing),
                "kinds": {k: v["n"] for k, v in sorted(self.kinds.items())}, "note": self.note}


class Timeline:
    """Pairs every kvm_exit of a thread with its next kvm_entry, and attributes the trips to user
    space in between (kvm_userspace_exit, sys_exit_ioctl, sys_enter_ioctl(KVM_RUN)) to it.

    Fed by parse_trace_line (the events of an ExitCounter(timeline=True) instance, or captured
    text through parse_trace_text(..., timeline=...)). Memory is bounded: per kind of exit three
    integer arrays of at most `max_kept` entries (a seeded uniform reservoir beyond), never lines.
    Timestamps must be raw counter values (x86-tsc); "secs.usecs" ones are counted in non_tsc and
    not paired. A lost-events line drops every open exit (it cannot be paired reliably)."""

    def __init__(self, clock: str = TSC_CLOCK, syscalls: bool = True,
                 max_kept: int = DEFAULT_MAX_KEPT, seed: int = 0, missing=(), note: str = ""):
        self.clock, self.syscalls = clock, bool(syscalls)
        self.max_kept = max(1, int(max_kept))
        self._rng = random.Random(seed)
        self._open: dict[int, _Open] = {}
        self._series: dict[str, _Series] = {}
        self.events: Counter = Counter()
        self.paired = self.unpaired_exits = self.entries_without_exit = 0
        self.qemu_unpaired = self.backwards = 0
        self.lost = self.unparsed = self.non_tsc = 0
        self.missing, self.note = tuple(missing), note

    def _ts(self, text: str) -> int | None:
        if "." in text:
            self.non_tsc += 1
            return None
        return int(text)

    # -- events (parse_trace_line) ---------------------------------------------------------
    def exit(self, pid: int, ts: str, reason: str) -> None:
        self.events["kvm_exit"] += 1
        t = self._ts(ts)
        if t is None:
            return
        if pid in self._open:                  # the previous exit never saw its kvm_entry
            self.unpaired_exits += 1
        self._open[pid] = _Open(t, reason)

    def pio(self, pid: int, port: int, direction: str) -> None:
        self.events["kvm_pio"] += 1
        o = self._open.get(pid)
        if o is not None:
            o.inside["kvm_pio"] += 1
        if o is not None and o.port is None:   # the exit's own I/O (an IN's completion repeats it)
            o.port = (port, direction)

    def userspace(self, pid: int, ts: str, reason: str) -> None:
        self.events["kvm_userspace_exit"] += 1
        t = self._ts(ts)
        o = self._open.get(pid)
        if t is None or o is None:
            return
        o.inside["kvm_userspace_exit"] += 1
        if o.t_ret is not None:                # back in KVM_RUN without a traced call: broken
            o.broken = True
        if o.t_user is None:
            o.t_user = t
        o.trips += 1
        o.t_ret = -1                           # waiting for the ioctl's return

    def syscall_exit(self, pid: int, ts: str) -> None:
        self.events["sys_exit_ioctl"] += 1
        t = self._ts(ts)
        o = self._open.get(pid)
        if o is not None:
            o.inside["sys_exit_ioctl"] += 1
        if t is None or o is None or o.t_ret != -1:
            return                             # another ioctl's return, or before the window
        o.t_ret = t

    def syscall_enter(self, pid: int, ts: str, cmd: int) -> None:
        self.events["sys_enter_ioctl"] += 1
        t = self._ts(ts)
        o = self._open.get(pid)
        if o is not None:
            o.inside["sys_enter_ioctl"] += 1
        if t is None or o is None or cmd != KVM_RUN_IOCTL or o.t_user is None:
            return                             # another ioctl (QEMU may make a few in between)
        if o.t_ret is None or o.t_ret == -1:   # called again without the return being seen
            o.broken = True
        else:
            o.qemu += t - o.t_ret
        o.t_ret = None

    def entry(self, pid: int, ts: str) -> None:
        self.events["kvm_entry"] += 1
        t = self._ts(ts)
        if t is None:
            return
        o = self._open.pop(pid, None)
        if o is None:
            self.entries_without_exit += 1
            return
        host = t - o.t_exit
        if host < 0:
            self.backwards += 1
            return
        self.paired += 1
        qemu, user = 0, -1
        if o.t_user is not None:
            user = t - o.t_user
            if o.broken or o.t_ret is not None or not self.syscalls:
                self.qemu_unpaired += 1
                qemu = -1
            else:
                qemu = o.qemu
        kind = exit_kind(o.reason, o.port)
        series = self._series.get(kind)
        if series is None:
            series = self._series[kind] = _Series()
        series.add(host, qemu, user, self.max_kept, self._rng, o.inside)

    def lose(self, n: int) -> None:
        """A "[LOST n EVENTS]" line: every open exit is dropped."""
        self.lost += n
        self._open.clear()

    # -- result ----------------------------------------------------------------------------
    def freeze(self, extra_lost: int = 0) -> PairedExits:
        kinds = {k: {"n": s.n, "host": s.host[:], "qemu": s.qemu[:], "user": s.user[:],
                     "inside": dict(s.inside)}
                 for k, s in self._series.items()}
        return PairedExits(self.clock, self.syscalls, kinds, self.paired, self.unpaired_exits,
                           self.entries_without_exit, self.qemu_unpaired, self.backwards,
                           max(self.lost, extra_lost), self.unparsed, self.non_tsc,
                           dict(self.events), self.missing, self.note)
