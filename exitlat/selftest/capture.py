"""Real trace text from the emulated AMD-V host, for tests/fixtures/trace/captured-svm-*.

Inside L1 (`Capture`): two private tracefs instances around one short bench run. One streams the
text of every kvm event (trace_pipe, drained by a thread into a file), the other has one hist
trigger per event (the same keys as exitlat.verify.trace.kvmtrace's hist backend). Both are set up before QEMU
starts and stopped after it exited, so they saw exactly the same events: the hist counts must equal
the counts of the text, line for line.

On the host (`write_fixtures`): the full text (xz, with a header), the hist files, and for every
timed window the lines the vCPU produced strictly inside it, found from the guest's own console
output, which the trace carries byte by byte (kvm_pio writes to 0x3f8): the lines between the
newline that ends the guest's `ready` marker and the first byte of its `done` marker. Each excerpt
comes with an .expect.json counted here by a small counter of its own (not exitlat.verify.trace.kvmtrace),
which the tests compare with what the parser finds.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio", "kvm_msr", "kvm_cpuid", "kvm_hypercall",
          "kvm_entry")
HIST_KEYS = {"kvm_exit": "common_pid,exit_reason,isa", "kvm_userspace_exit": "common_pid,reason,errno",
             "kvm_pio": "common_pid,rw,port", "kvm_msr": "common_pid,write",
             "kvm_cpuid": "common_pid", "kvm_hypercall": "common_pid", "kvm_entry": "common_pid"}
# Not a counted event (exitlat's counts have no entries: the timeline pairs them with exits), so
# the window excerpts leave these lines out; the full capture keeps them.
UNCOUNTED = ("kvm_entry",)


class Capture:
    """Context manager (inside L1) that leaves trace_pipe.txt, hist-<event>.txt and the measured
    core's buffer stats in `dest`."""

    def __init__(self, dest: Path, root: Path = Path("/sys/kernel/tracing"), cpu: int = 1):
        self.dest, self.root, self.cpu = Path(dest), Path(root), cpu
        self.trace = self.root / "instances" / "selftest-capture-trace"
        self.hist = self.root / "instances" / "selftest-capture-hist"
        self.stop_flag = threading.Event()
        self.thread: threading.Thread | None = None
        self.out = None

    @staticmethod
    def _w(path: Path, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def __enter__(self) -> "Capture":
        self.dest.mkdir(parents=True, exist_ok=True)
        for inst in (self.trace, self.hist):
            inst.mkdir()
        self._w(self.trace / "buffer_size_kb", "65536")
        for ev in EVENTS:
            self._w(self.hist / "events/kvm" / ev / "trigger",
                    f"hist:keys={HIST_KEYS[ev]}:vals=hitcount:size=2048")
            self._w(self.trace / "events/kvm" / ev / "enable", "1")
        self.out = open(self.dest / "trace_pipe.txt", "wb")
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        return self

    def _drain(self) -> None:
        import select

        fd = os.open(self.trace / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        try:
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    chunk = b""
                if chunk:
                    self.out.write(chunk)
                    continue
                if self.stop_flag.is_set():
                    break
                select.select([fd], [], [], 0.2)
        finally:
            os.close(fd)

    def __exit__(self, *exc) -> bool:
        try:
            for ev in EVENTS:
                self._w(self.trace / "events/kvm" / ev / "enable", "0")
            for ev in EVENTS:
                text = (self.hist / "events/kvm" / ev / "hist").read_text()
                (self.dest / f"hist-{ev}.txt").write_text(text)
            time.sleep(0.5)
        finally:
            self.stop_flag.set()
            if self.thread is not None:
                self.thread.join(10)
            if self.out is not None:
                self.out.close()
            stats = self.trace / "per_cpu" / f"cpu{self.cpu}" / "stats"
            if stats.exists():
                (self.dest / f"stats-cpu{self.cpu}.txt").write_text(stats.read_text())
            for ev in EVENTS:
                try:
                    self._w(self.hist / "events/kvm" / ev / "trigger",
                            f"!hist:keys={HIST_KEYS[ev]}:vals=hitcount:size=2048")
                except OSError:
                    pass
            for inst in (self.trace, self.hist):
                try:
                    inst.rmdir()
                except OSError:
                    pass
        return False


# -- on the host: fixtures from a capture --------------------------------------------------------

_EVENT = re.compile(r"\s(kvm_\w+): (.*)$")
_CONSOLE = re.compile(r"pio_write at 0x3f8 size 1 count 1 val 0x([0-9a-fA-F]+)")
# Canonical exit names (docs/verification.md): the VMX name where SVM's print name means the same,
# else the print name upper-cased with spaces as underscores ("read_cr0" -> READ_CR0, "GP excp" ->
# GP_EXCP); a number stays a number.
_SAME_AS_VMX = {"interrupt": "EXTERNAL_INTERRUPT", "io": "IO_INSTRUCTION", "hypercall": "VMMCALL",
                "pause": "PAUSE_INSTRUCTION", "monitor": "MONITOR_INSTRUCTION",
                "mwait": "MWAIT_INSTRUCTION", "buslock": "BUS_LOCK"}


def _exit_name(printed: str) -> str:
    if printed in _SAME_AS_VMX:
        return _SAME_AS_VMX[printed]
    if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", printed):
        return str(int(printed, 0))
    return printed.upper().replace(" ", "_").replace("-", "_")


def count_lines(lines: list[str]) -> dict:
    """Counts of kvm events in trace_pipe lines, in ExitCounts.to_dict()'s shape (exits,
    userspace, pio, handled), by a counter independent of exitlat.verify.trace.kvmtrace."""
    exits, user, pio, handled = Counter(), Counter(), Counter(), Counter()
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        m = _EVENT.search(line)
        if m is None:
            raise ValueError(f"not a kvm event line: {line!r}")
        ev, p = m.group(1), m.group(2).strip()
        if ev in UNCOUNTED:
            continue
        if ev == "kvm_exit":
            name = re.search(r"reason (.+?) rip ", p).group(1)
            exits[_exit_name(name)] += 1
        elif ev == "kvm_userspace_exit":
            r = re.match(r"reason (\S+) \((-?\d+)\)", p)
            user[r.group(1).removeprefix("KVM_EXIT_")] += 1
        elif ev == "kvm_pio":
            r = re.match(r"pio_(read|write) at 0x([0-9a-fA-F]+)", p)
            pio[f"{int(r.group(2), 16):#x}/{'out' if r.group(1) == 'write' else 'in'}"] += 1
        elif ev == "kvm_cpuid":
            handled["cpuid"] += 1
        elif ev == "kvm_msr":
            handled["msr_write" if p.startswith("msr_write") else "msr_read"] += 1
        elif ev == "kvm_hypercall":
            handled["hypercall"] += 1
        else:
            raise ValueError(f"unexpected event {ev}")
    srt = lambda c: dict(sorted(c.items()))  # noqa: E731
    return {"exits": srt(exits), "userspace": srt(user), "pio": srt(pio), "handled": srt(handled),
            "lost": 0, "unparsed": 0}


def console_of(lines: list[str]) -> tuple[str, list[int]]:
    """The guest's serial output carried by the trace, and for each byte the line it came from."""
    chars, where = [], []
    for i, line in enumerate(lines):
        m = _CONSOLE.search(line)
        if m:
            chars.append(chr(int(m.group(1), 16)))
            where.append(i)
    return "".join(chars), where


def timed_windows(lines: list[str]) -> dict[str, tuple[int, int]]:
    """{case key: (first, end)} line ranges strictly inside each timed window."""
    text, where = console_of(lines)
    out = {}
    for m in re.finditer(r'EXITLAT \{"event":"ready","key":"(\w+)","window":"timed"', text):
        nl = text.find("\n", m.end())
        done = text.find("EXITLAT", nl)
        if nl < 0 or done < 0:
            continue
        out[m.group(1)] = (where[nl] + 1, where[done])
    return out


def write_fixtures(raw: Path, dest: Path, name: str, header: str) -> list[Path]:
    """Fixture files from one capture folder (trace_pipe.txt, hist-*.txt); returns them."""
    text = (raw / "trace_pipe.txt").read_text()
    lines = text.splitlines()
    head = "".join(f"# {h}\n" for h in header.splitlines())
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    full = dest / f"{name}-full.txt.xz"
    full.write_bytes(lzma.compress((head + f"# all {len(lines)} lines of the run\n" + text).encode(),
                                   preset=9))
    made.append(full)
    (dest / f"{name}-full.expect.json").write_text(json.dumps(count_lines(lines), indent=1) + "\n")
    made.append(dest / f"{name}-full.expect.json")
    for ev in EVENTS:
        src = raw / f"hist-{ev}.txt"
        if src.is_file():
            p = dest / f"{name}-hist-{ev}.hist"
            p.write_text(head + src.read_text())
            made.append(p)
    for key, (a, b) in sorted(timed_windows(lines).items()):
        seg = [line for line in lines[a:b] if not any(f" {ev}: " in line for ev in UNCOUNTED)]
        p = dest / f"{name}-{key}-timed.txt"
        p.write_text(head + f"# the {len(seg)} lines strictly inside the timed window of {key} "
                     f"(lines {a + 1}-{b} of the run)\n" + "\n".join(seg) + "\n")
        (dest / f"{name}-{key}-timed.expect.json").write_text(json.dumps(count_lines(seg), indent=1) + "\n")
        made += [p, dest / f"{name}-{key}-timed.expect.json"]
    return made
