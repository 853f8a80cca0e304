"""What a counter counts: `ExitCounts` (cumulative, or one window after subtraction, and its JSON
form for the bundle) and `CountAccumulator`, the mutable tally the trace_pipe and hist parsers
add to (traceparse.py, histparse.py)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitlat.errors import ExitlatError

if TYPE_CHECKING:
    from .timeline import Timeline

MAX_UNPARSED_LINES = 5             # unparsed lines kept per window (the count is always exact)
HANDLED_SUFFIX = ":handled"         # ExitCounts.probes["<sym>:handled"]


def _pio_key(text: str) -> tuple[int, str]:
    m = re.fullmatch(r"(0x[0-9a-fA-F]+)/(in|out)", str(text))
    if not m:
        raise ExitlatError(f"bad pio key {text!r} (expected e.g. \"0xe9/out\")")
    return int(m.group(1), 16), m.group(2)


@dataclass(frozen=True)
class ExitCounts:
    """Cumulative (or, after subtraction, per-window) counts for the traced vCPU threads.

    exits:     kvm_exit by reason name ("CPUID", "IO_INSTRUCTION", ..., unknown ones as "13").
    userspace: kvm_userspace_exit by KVM_EXIT_* name ("IO", "HLT", "MMIO", "restart", ...).
    pio:       kvm_pio by (port, "in"|"out").
    handled:   KVM handler tracepoints: "cpuid", "msr_read", "msr_write", "hypercall".
    lost:      events the kernel dropped (ring-buffer overrun / full hist map). Non-zero = the
               other numbers are lower bounds only.
    unparsed:  lines (trace_pipe) or hist entries that did not parse, and events of a thread that
               is not a vCPU thread (the instance's pid filter did not hold); non-zero fails the
               window.
    unparsed_lines: the first few of them, raw (at most MAX_UNPARSED_LINES per window).
    probes:    kprobe hits: "<sym>" = calls, "<sym>:handled" = returns other than
               EXIT_FASTPATH_NONE (return probes only).
    probed:    the symbols that had a working probe during the window (so that zero hits can be
               told from "not probed"); probe_note says why a requested probe is missing.
    hv_timer:  kvm_hv_timer_state by the timer KVM armed for the guest's LAPIC timer:
               "in_use" (the VMX preemption timer) and "not_in_use" (an hrtimer); one event
               each time KVM (re)starts that timer, e.g. on every WRMSR IA32_TSC_DEADLINE
               (exitlat/verify/timerbacking.py). {} also where the kernel lacks the event.
    """

    exits: dict = field(default_factory=dict)
    userspace: dict = field(default_factory=dict)
    pio: dict = field(default_factory=dict)
    handled: dict = field(default_factory=dict)
    lost: int = 0
    backend: str = ""
    unparsed: int = 0
    unparsed_lines: tuple = ()
    probes: dict = field(default_factory=dict)
    probed: tuple = ()
    probe_note: str = ""
    # 1-based position of each unparsed_lines entry in the cumulative unparsed count, so that a
    # window (later - earlier) keeps only its own lines; () when unknown (e.g. from_dict).
    unparsed_index: tuple = field(default=(), repr=False, compare=False)
    hv_timer: dict = field(default_factory=dict)

    @property
    def total_exits(self) -> int:
        return sum(self.exits.values())

    @property
    def total_userspace(self) -> int:
        return sum(self.userspace.values())

    def pio_count(self, port: int, direction: str = "out") -> int:
        return self.pio.get((port, direction), 0)

    def __sub__(self, other: "ExitCounts") -> "ExitCounts":
        if not isinstance(other, ExitCounts):
            return NotImplemented

        def sub(a: dict, b: dict) -> dict:
            out = {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}
            return {k: v for k, v in out.items() if v}

        if self.unparsed_index and len(self.unparsed_index) == len(self.unparsed_lines):
            mine = [(i, ln) for i, ln in zip(self.unparsed_index, self.unparsed_lines)
                    if i > other.unparsed][:MAX_UNPARSED_LINES]
            lines, index = tuple(ln for _i, ln in mine), tuple(i for i, _ln in mine)
        else:                                   # no positions: keep the later snapshot's lines
            lines, index = self.unparsed_lines, ()
        return ExitCounts(sub(self.exits, other.exits), sub(self.userspace, other.userspace),
                          sub(self.pio, other.pio), sub(self.handled, other.handled),
                          self.lost - other.lost, self.backend or other.backend,
                          self.unparsed - other.unparsed, lines, sub(self.probes, other.probes),
                          self.probed, self.probe_note, index,
                          hv_timer=sub(self.hv_timer, other.hv_timer))

    def to_dict(self) -> dict:
        """JSON-friendly form (pio keys as "0xe9/out"); `from_dict` is its inverse."""
        return {"exits": dict(sorted(self.exits.items())),
                "userspace": dict(sorted(self.userspace.items())),
                "pio": {f"{p:#x}/{d}": n for (p, d), n in sorted(self.pio.items())},
                "handled": dict(sorted(self.handled.items())),
                "lost": self.lost, "backend": self.backend,
                "unparsed": self.unparsed, "unparsed_lines": list(self.unparsed_lines),
                "probes": dict(sorted(self.probes.items())), "probed": list(self.probed),
                "probe_note": self.probe_note, "hv_timer": dict(sorted(self.hv_timer.items()))}

    @classmethod
    def from_dict(cls, d: dict) -> "ExitCounts":
        """The window `to_dict` wrote (e.g. into a bundle), to verify it again.

        A dict without an "unparsed" count (written before exitlat counted unparsed lines) cannot
        prove that every line was counted: it comes back with unparsed = 1 and a line saying so,
        which fails verification (fail closed). A dict without "hv_timer" (written before
        exitlat counted kvm_hv_timer_state) reads as {}: nothing counted, which timer_backing
        reports as unknown."""
        if not isinstance(d, dict):
            raise ExitlatError(f"ExitCounts.from_dict needs a dict, got {type(d).__name__}")
        missing = [k for k in ("exits", "userspace", "pio", "handled", "lost") if k not in d]
        if missing:
            raise ExitlatError(f"not an exit-count window: missing {', '.join(missing)}")

        def counts(name: str) -> dict:
            v = d.get(name) or {}
            if not isinstance(v, dict) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                  for n in v.values()):
                raise ExitlatError(f"window field {name!r} must map names to integers")
            return {str(k): n for k, n in v.items()}

        pio = {_pio_key(k): n for k, n in counts("pio").items()}
        if "unparsed" in d:
            unparsed, lines = int(d["unparsed"]), tuple(d.get("unparsed_lines") or ())
        else:
            unparsed, lines = 1, ("<window stored without an unparsed-line count: completeness "
                                  "of its counts is unknown>",)
        return cls(counts("exits"), counts("userspace"), pio, counts("handled"), int(d["lost"]),
                   str(d.get("backend") or ""), unparsed, lines, counts("probes"),
                   tuple(d.get("probed") or ()), str(d.get("probe_note") or ""),
                   hv_timer=counts("hv_timer"))


class CountAccumulator:
    """Mutable tally shared by both parsers (trace_pipe lines and hist files); `freeze()` gives
    the ExitCounts so far."""

    def __init__(self):
        self.exits: Counter = Counter()
        self.userspace: Counter = Counter()
        self.pio: Counter = Counter()
        self.handled: Counter = Counter()
        self.probes: Counter = Counter()
        self.hv_timer: Counter = Counter()
        self.lost = 0
        self.unparsed = 0
        self._samples: list[tuple[int, str]] = []   # (position, line), bounded
        self._mark = 0                              # unparsed count at the last freeze()
        self.timeline: Timeline | None = None       # timestamped pairing (ExitCounter(timeline=True))

    def bad(self, line: str) -> None:
        """One line (or hist entry) that did not parse."""
        self.unparsed += 1
        if self.timeline is not None:
            self.timeline.unparsed += 1
        if self.unparsed - self._mark <= MAX_UNPARSED_LINES and len(self._samples) < 1000:
            self._samples.append((self.unparsed, line.rstrip("\n")[:400]))

    def freeze(self, backend: str, extra_lost: int = 0) -> ExitCounts:
        self._mark = self.unparsed
        return ExitCounts(dict(self.exits), dict(self.userspace), dict(self.pio),
                          dict(self.handled), self.lost + extra_lost, backend, self.unparsed,
                          tuple(ln for _i, ln in self._samples), dict(self.probes), (), "",
                          tuple(i for i, _ln in self._samples), hv_timer=dict(self.hv_timer))
