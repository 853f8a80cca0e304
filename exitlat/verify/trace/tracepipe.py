"""The reader of one instance's trace_pipe: a thread that parses every line into a CountAccumulator
(and, in timeline mode, its Timeline), the sync markers that make a snapshot complete, and the
ring buffer's own loss counters.

The stream backend takes its counts from here; in timeline mode the hist backend uses it for the
timeline's events alone.

Sync: `sync()` writes a unique marker to the instance's ``trace_marker`` and waits until the
reader has seen it. trace_pipe merges the per-CPU buffers in timestamp order, so every event the
traced threads produced before the call has been parsed by then. Lost events (ring-buffer
overrun, ``[LOST n EVENTS]`` lines) are counted, never hidden.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import threading
import time
from pathlib import Path

from exitlat.errors import ExitlatError

from .counts import CountAccumulator, ExitCounts
from .traceparse import parse_trace_line
from .tracefs import write_control

DEFAULT_BUFFER_KB = 32768          # per CPU, streaming backend only
SYNC_TIMEOUT_S = 30.0
_MARK = "exitlat-sync-"


def pause_and_size_buffers(inst: Path, buffer_kb: int, cpu: int | None) -> None:
    """Tracing off in the instance; the measured core's buffer gets buffer_kb (the vCPU is
    pinned there, so all its events land in it), the other CPUs at most the default."""
    write_control(inst / "tracing_on", "0", "pause the instance")
    one_cpu = inst / "per_cpu" / f"cpu{cpu}" / "buffer_size_kb"
    if cpu is not None and one_cpu.exists():
        write_control(inst / "buffer_size_kb", str(min(buffer_kb, DEFAULT_BUFFER_KB)),
                      "size the trace buffers")
        write_control(one_cpu, str(buffer_kb), f"size cpu{cpu}'s trace buffer")
    else:
        write_control(inst / "buffer_size_kb", str(buffer_kb), "size the trace buffer")


def buffer_overrun(inst: Path | None) -> int:
    """Events the instance's ring buffer overwrote or dropped (all CPUs), from per_cpu/cpu*/stats."""
    total = 0
    if inst is None:
        return 0
    for stats in inst.glob("per_cpu/cpu*/stats"):
        try:
            text = stats.read_text()
        except OSError:
            continue
        m = re.search(r"^overrun:\s*(\d+)", text, re.M)
        if m:
            total += int(m.group(1))
        m = re.search(r"^dropped events:\s*(\d+)", text, re.M)
        if m:
            total += int(m.group(1))
    return total


# The reader parses when asked (sync) or stopped, else once per READ_EVERY_S: the buffer holds a
# whole window (trace_buffer_kb), so nothing is lost by waiting, and the window is not disturbed by
# a reader that wakes for every event. Such a reader made the ring buffer send an irq_work self-IPI
# per event (each an interrupt exit of the traced vCPU), and on a one-CPU emulated host its parsing
# took the vCPU's own time: ~0.1 interrupt exits per traced iteration, too much background.
READ_EVERY_S = 1.0


class TracePipe:
    """Reads one instance's trace_pipe in a thread, for the events of `tids` only.

    acc:      what the lines add up to (its `timeline`, when set, is fed as well).
    cond:     guards acc and the markers seen; the reader takes it for each chunk it parses.
    stopping: set to make the reader finish (after it has read what is left)."""

    def __init__(self, tids):
        self.pids = set(tids)
        self.acc = CountAccumulator()
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.instance: Path | None = None
        self._thread: threading.Thread | None = None
        self._marks_seen: set[str] = set()
        self._error: BaseException | None = None
        self._mark_seq = itertools.count()
        self._base_overrun = 0
        self._wake = threading.Event()     # set by sync() and stop(): read now

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, inst: Path) -> None:
        """Open trace_pipe, start the reader thread, then switch tracing on."""
        self.instance = inst
        self._base_overrun = buffer_overrun(inst)
        try:
            fd = os.open(inst / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise ExitlatError(f"tracefs: cannot open trace_pipe ({e.strerror or e})") from None
        self.stopping.clear()
        self._thread = threading.Thread(target=self._read_loop, args=(fd,), daemon=True,
                                        name="exitlat-trace-reader")
        self._thread.start()
        write_control(inst / "tracing_on", "1", "start tracing")

    def join(self) -> None:
        """Wait for the reader to finish (after `stopping` was set)."""
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _read_loop(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    chunk = None
                if chunk:
                    data = pending + chunk
                    lines = data.split(b"\n")
                    pending = lines.pop()
                    marks = []
                    with self.cond:
                        for raw in lines:
                            mark = parse_trace_line(raw.decode("utf-8", "replace"), self.acc, self.pids)
                            if mark and mark.startswith(_MARK):
                                marks.append(mark)
                        if marks:
                            self._marks_seen.update(marks)
                            self.cond.notify_all()
                    continue
                if self.stopping.is_set():
                    break
                if poller.poll(100):
                    self._wake.wait(READ_EVERY_S)      # see READ_EVERY_S
                    self._wake.clear()
        except BaseException as e:  # surfaced by sync()
            with self.cond:
                self._error = e
                self.cond.notify_all()
        finally:
            os.close(fd)

    def sync(self, timeout: float) -> None:
        """Return once the reader has parsed every line written before the call."""
        if self.instance is None:
            raise ExitlatError("trace reader thread is not running")
        mark = f"{_MARK}{os.getpid()}-{next(self._mark_seq)}"
        write_control(self.instance / "trace_marker", mark, "write a sync marker")
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self.cond:
            while mark not in self._marks_seen:
                if self._error is not None:
                    raise ExitlatError(f"trace reader failed: {self._error}")
                if self._thread is None or not self._thread.is_alive():
                    raise ExitlatError("trace reader thread is not running")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExitlatError(f"tracing: sync marker not seen within {timeout:.0f} s "
                                       "(reader cannot keep up?)")
                self.cond.wait(min(left, 0.5))
            self._marks_seen.discard(mark)

    def overrun(self) -> int:
        """Events the ring buffer lost since the reader started."""
        return max(0, buffer_overrun(self.instance) - self._base_overrun)

    def counts(self, backend: str) -> ExitCounts:
        """The counts parsed so far (call sync() first for a complete snapshot)."""
        with self.cond:
            return self.acc.freeze(backend)
