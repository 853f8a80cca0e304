"""Host side of the host↔guest protocol (docs/probes.md).

Plan in: `exitlat.*` words on the guest kernel command line (GuestPlan.kernel_args()).
Markers out: `EXITLAT {json}` lines on the serial console (parse_console_line()).
Samples out: a raw disk the guest sees as /dev/vda (GuestPlan.disk_size_bytes(), read_samples()).
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exitlat.cases import check_port
from exitlat.limits import MAX_BATCH, MAX_ITERATIONS, MAX_WARMUP
from exitlat.errors import ExitlatError

HEADER_SIZE = 4096
DISK_MAGIC = "exitlat-samples 1"
CONSOLE_PREFIX = "EXITLAT "
INIT_MARKER = "EXITLAT-INIT-READY"
# In the order the guest runs them; the last two are timed by the module's LOOP (irq-off batches).
BASELINE_KEYS = ("baseline_timer", "baseline_nonexiting", "baseline_syscall", "baseline_module_call",
                 "baseline_kernel_timer", "baseline_kernel_nonexiting")
TRACED_SUFFIX = "_traced"        # <case>_traced: a case's verification window, run right after it
TIMERS = ("rdtscp", "lfence")
GUEST_BASE_MEM_MB = 256          # kernel, initramfs (rootfs in RAM), page cache, slack
_KEY_RE = re.compile(r"^[a-z0-9_]{1,31}$")


def _align(n: int, a: int = 4096) -> int:
    return (n + a - 1) // a * a


@dataclass
class GuestPlan:
    """What the guest probe runs; every field becomes one `exitlat.<name>=` kernel argument."""
    cases: list[int]
    instr: str = "cpuid"              # the F instructions, comma-separated (cases.case_keys pairs them)
    port: int = 0xE9
    timer: str = "rdtscp"
    iterations: int = 10000
    warmup: int = 1000
    baselines: bool = True
    handshake: bool = True
    msr: int | None = None            # default in the guest: 0x3b (IA32_TSC_ADJUST)
    vendor: str | None = None         # intel | amd; default: the guest's CPUID vendor
    # Optional extras (omitted from the command line when None):
    batch: int | None = None          # kernel loops: iterations per irq-off batch (guest default 1000)
    handshake_timeout: int | None = None  # seconds the guest waits for "go" (guest default 60)
    timeout: int | None = None        # init's watchdog for the whole probe run (guest default 3600)
    # Verification (traced) window: after each case's timed window, the same case again for this many
    # iterations, no warm-up, as key "<case>_traced" (exitlat.viters; 0 = none, not on the command line).
    verify_iterations: int = 0
    extra: list[str] = field(default_factory=list)  # raw words, for tests of the guest's refusals

    def __post_init__(self) -> None:
        self.validate()         # once, where the plan is made: a GuestPlan is never invalid

    def validate(self) -> None:
        if not self.cases:
            raise ExitlatError("no case to run; valid cases: 1-6")
        if len(set(self.cases)) != len(self.cases):
            raise ExitlatError(f"a case is listed twice: {self.cases}")
        check_port(self.port)
        if self.timer not in TIMERS:
            raise ExitlatError(f"unknown --timer {self.timer!r}; choose rdtscp or lfence")
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ExitlatError(f"iterations must be between 1 and {MAX_ITERATIONS:,}, got {self.iterations}")
        if not 0 <= self.warmup <= MAX_WARMUP:
            raise ExitlatError(f"warm-up must be between 0 and {MAX_WARMUP:,}, got {self.warmup}")
        if self.vendor not in (None, "intel", "amd"):
            raise ExitlatError(f"vendor must be intel or amd, got {self.vendor!r}")
        if self.batch is not None and not 1 <= self.batch <= MAX_BATCH:
            raise ExitlatError(f"batch must be between 1 and {MAX_BATCH}, got {self.batch}")
        v = self.verify_iterations
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ITERATIONS:
            raise ExitlatError(f"verification iterations must be an integer between 0 and "
                               f"{MAX_ITERATIONS:,} (0 = no traced window), got {v!r}")

    def kernel_args(self) -> list[str]:
        """The exitlat.* words for the guest command line (the plan was checked when made)."""
        args = [
            f"exitlat.cases={','.join(str(c) for c in self.cases)}",
            f"exitlat.instr={self.instr}",
            f"exitlat.port={self.port:#x}" if isinstance(self.port, int) else f"exitlat.port={self.port}",
            f"exitlat.timer={self.timer}",
            f"exitlat.iters={self.iterations}",
            f"exitlat.warmup={self.warmup}",
            f"exitlat.baselines={int(bool(self.baselines))}",
            f"exitlat.handshake={int(bool(self.handshake))}",
        ]
        if self.msr is not None:
            args.append(f"exitlat.msr={self.msr:#x}")
        if self.vendor is not None:
            args.append(f"exitlat.vendor={self.vendor}")
        if self.verify_iterations:
            args.append(f"exitlat.viters={self.verify_iterations}")
        for name in ("batch", "handshake_timeout", "timeout"):
            value = getattr(self, name)
            if value is not None:
                args.append(f"exitlat.{name}={value}")
        if any(row.xapic for row in self._rows()):
            args.append("nox2apic")     # the xAPIC kinds write the APIC's MMIO page
        if self.vcpus() > 1:
            # device interrupts to CPU 0 (the sender's): the receiver's exits are the IPIs'
            args.append("irqaffinity=0")
        return args + list(self.extra)

    def _rows(self) -> list:
        """The instruction table's rows of the plan's kinds."""
        from exitlat.instructions import TABLE

        return [TABLE[n] for n in (w.strip() for w in self.instr.split(",")) if n in TABLE]

    def vcpus(self) -> int:
        """vCPUs the plan's kinds need: 2 with an IPI kind (RunPlan.vcpus reads it here)."""
        return max([row.vcpus for row in self._rows()] or [1])

    def devices(self) -> tuple[str, ...]:
        """The QEMU devices its kinds need beyond every run's (pci-testdev for mmio_*, pio_*): a
        VM gets a device only when a kind of its plan uses it."""
        return ("pci-testdev",) if any(row.testdev is not None for row in self._rows()) else ()

    def key_counts(self) -> dict[str, int]:
        """Key -> number of samples, in the order the guest runs them: baselines first, then each
        case as given, each followed by its traced window when verify_iterations > 0."""
        from exitlat.cases import case_keys

        counts = dict.fromkeys(BASELINE_KEYS, self.iterations) if self.baselines else {}
        for _c, _instr, key in case_keys(self.cases, tuple(self.instr.split(","))):
            counts[key] = self.iterations
            if self.verify_iterations:
                counts[f"{key}{TRACED_SUFFIX}"] = self.verify_iterations
        return counts

    def keys(self) -> list[str]:
        """The keys in the order the guest runs them (see key_counts())."""
        return list(self.key_counts())

    def sample_bytes(self) -> int:
        return sum(_align(n * 8) for n in self.key_counts().values())

    def disk_size_bytes(self) -> int:
        """Size of the raw sample disk: the 4 KiB header plus one 4 KiB-aligned array per key
        (traced windows with their own count)."""
        return HEADER_SIZE + self.sample_bytes()

    def guest_mem_mb(self) -> int:
        """Guest RAM: a base for kernel + initramfs, plus every key's samples (all kept in memory,
        locked, until the timed loops end), plus 10 %; rounded up to 64 MiB."""
        mb = GUEST_BASE_MEM_MB + math.ceil(self.sample_bytes() * 1.1 / 2**20)
        return _align(mb, 64)


def parse_console_line(line) -> dict | None:
    """One serial-console line -> the probe's event dict, or None for anything else.

    Kernel messages may precede the marker on the same line; a marker with broken JSON yields
    {"event": "garbled", "raw": ...} so a cut-off error is not silently lost. The boot marker
    EXITLAT-INIT-READY yields {"event": "init_ready"}."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8", "replace")
    text = line.strip().strip("\x00")
    if INIT_MARKER in text:
        return {"event": "init_ready"}
    at = text.find(CONSOLE_PREFIX + "{")
    if at < 0:
        return None
    raw = text[at + len(CONSOLE_PREFIX):]
    try:
        ev = json.loads(raw)
    except json.JSONDecodeError:
        return {"event": "garbled", "raw": raw}
    if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
        return {"event": "garbled", "raw": raw}
    return ev


def read_samples(disk_path) -> dict[str, np.ndarray]:
    """The samples the guest wrote, key -> uint64 TSC deltas, in the order run.

    Raises ExitlatError with one line naming the problem for a missing, short, empty or corrupt disk."""
    path = Path(disk_path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError as err:
        raise ExitlatError(f"cannot read the sample disk {path}: {err.strerror}") from None
    if len(head) < HEADER_SIZE:
        raise ExitlatError(f"sample disk {path} is truncated: {size} bytes, shorter than its "
                           f"{HEADER_SIZE}-byte header")
    if not head.strip(b"\x00"):
        raise ExitlatError(f"sample disk {path} has an empty header: the guest wrote no samples "
                           "(did the probe finish?)")
    text = head.split(b"\x00", 1)[0]
    if head[len(text):].strip(b"\x00"):
        raise ExitlatError(f"sample disk {path}: header has data after its zero padding (corrupt)")
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ExitlatError(f"sample disk {path}: header is not ASCII (not an exitlat sample disk)") from None
    if lines[0] != DISK_MAGIC:
        if lines[0].startswith("exitlat-samples "):
            raise ExitlatError(f"sample disk {path}: unsupported format {lines[0]!r} "
                               f"(this exitlat reads {DISK_MAGIC!r})")
        raise ExitlatError(f"sample disk {path}: header does not start with {DISK_MAGIC!r} "
                           "(not an exitlat sample disk)")
    if "end" not in lines:
        raise ExitlatError(f"sample disk {path}: header has no 'end' line (truncated header)")
    end = lines.index("end")
    if any(lines[end + 1:]):
        raise ExitlatError(f"sample disk {path}: text after the header's 'end' line")
    out: dict[str, np.ndarray] = {}
    spans = []
    for n, line in enumerate(lines[1:end], start=2):
        parts = line.split(" ")
        if len(parts) != 3 or not _KEY_RE.match(parts[0]) or not all(p.isdigit() for p in parts[1:]):
            raise ExitlatError(f"sample disk {path}: header line {n} is malformed: {line!r}")
        key, offset, count = parts[0], int(parts[1]), int(parts[2])
        if key in out:
            raise ExitlatError(f"sample disk {path}: key {key} appears twice in the header")
        if offset < HEADER_SIZE or offset % 4096:
            raise ExitlatError(f"sample disk {path}: {key} starts at {offset}, not a 4096-aligned "
                               "offset after the header")
        stop = offset + count * 8
        if stop > size:
            raise ExitlatError(f"sample disk {path} is truncated: {key} needs bytes {offset}..{stop} "
                               f"but the disk has {size}")
        for other, (a, b) in spans:
            if offset < b and a < stop:
                raise ExitlatError(f"sample disk {path}: {key} overlaps {other}")
        spans.append((key, (offset, stop)))
        out[key] = np.fromfile(path, dtype="<u8", count=count, offset=offset)
        if len(out[key]) != count:
            raise ExitlatError(f"sample disk {path}: short read for {key}")
    return out
