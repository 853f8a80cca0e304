"""Host-side counting of KVM exits for one or more vCPU threads (tracefs).

`ExitCounter(tids)` counts, for the given host thread ids only:

* ``kvm:kvm_exit`` by exit reason (decoded to a name for VMX and SVM, kept as a number otherwise),
* ``kvm:kvm_userspace_exit`` by ``KVM_EXIT_*`` reason (the round trips to the VMM, e.g. QEMU),
* ``kvm:kvm_pio`` by (port, direction),
* KVM's in-kernel handler tracepoints ``kvm_cpuid``, ``kvm_msr`` (read/write) and
  ``kvm_hypercall``: they prove that KVM itself handled an instruction, whatever exit mechanism
  brought it there (on PVM, or when KVM emulates, there is no ``kvm_exit`` event at all).

Two backends behind one interface, both in a private tracefs instance ``instances/exitlat-<pid>-<n>``
(the global buffer's settings are never touched; the instance is removed by `stop()`, also on
errors and Ctrl-C):

* ``hist``: in-kernel aggregation with hist triggers (``hist:keys=...``), cheap for millions of
  exits. `snapshot()` reads the ``hist`` files: the counts are updated synchronously as each event
  fires, so they are consistent by construction.
* ``stream``: where the kernel has no hist triggers. Each event gets a filter on ``common_pid``,
  a reader thread streams the instance's ``trace_pipe`` and aggregates in Python. `snapshot()`
  writes a unique marker to the instance's ``trace_marker`` and waits until the reader has seen it,
  so every event the vCPU produced before the call is counted. Lost events (ring-buffer overrun,
  ``[LOST n EVENTS]`` lines) are counted and reported in `ExitCounts.lost`, never hidden.

See docs/verification.md.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import select
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExitlatError

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# kvm:kvm_exit `isa` field values (arch/x86/kvm/trace.h).
KVM_ISA_VMX = 1
KVM_ISA_SVM = 2

# VMX basic exit reasons (arch/x86/include/uapi/asm/vmx.h), as the kernel prints them.
VMX_EXIT_REASONS = {
    0: "EXCEPTION_NMI", 1: "EXTERNAL_INTERRUPT", 2: "TRIPLE_FAULT", 3: "INIT_SIGNAL",
    4: "SIPI_SIGNAL", 7: "INTERRUPT_WINDOW", 8: "NMI_WINDOW", 9: "TASK_SWITCH", 10: "CPUID",
    12: "HLT", 13: "INVD", 14: "INVLPG", 15: "RDPMC", 16: "RDTSC", 18: "VMCALL", 19: "VMCLEAR",
    20: "VMLAUNCH", 21: "VMPTRLD", 22: "VMPTRST", 23: "VMREAD", 24: "VMRESUME", 25: "VMWRITE",
    26: "VMOFF", 27: "VMON", 28: "CR_ACCESS", 29: "DR_ACCESS", 30: "IO_INSTRUCTION",
    31: "MSR_READ", 32: "MSR_WRITE", 33: "INVALID_STATE", 34: "MSR_LOAD_FAIL",
    36: "MWAIT_INSTRUCTION", 37: "MONITOR_TRAP_FLAG", 39: "MONITOR_INSTRUCTION",
    40: "PAUSE_INSTRUCTION", 41: "MCE_DURING_VMENTRY", 43: "TPR_BELOW_THRESHOLD",
    44: "APIC_ACCESS", 45: "EOI_INDUCED", 46: "GDTR_IDTR", 47: "LDTR_TR", 48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG", 50: "INVEPT", 51: "RDTSCP", 52: "PREEMPTION_TIMER", 53: "INVVPID",
    54: "WBINVD", 55: "XSETBV", 56: "APIC_WRITE", 57: "RDRAND", 58: "INVPCID", 59: "VMFUNC",
    60: "ENCLS", 61: "RDSEED", 62: "PML_FULL", 63: "XSAVES", 64: "XRSTORS", 67: "UMWAIT",
    68: "TPAUSE", 74: "BUS_LOCK", 75: "NOTIFY", 77: "TDCALL", 84: "MSR_READ_IMM",
    85: "MSR_WRITE_IMM",
}

# SVM exit codes (arch/x86/include/uapi/asm/svm.h): the ones a measurement cares about, under the
# same canonical names as VMX where the meaning is the same. SVM has one MSR exit for both
# directions ("MSR"); kvm_msr's `write` field tells them apart.
SVM_EXIT_REASONS = {
    0x060: "EXTERNAL_INTERRUPT", 0x061: "NMI", 0x062: "SMI", 0x063: "INIT", 0x064: "VINTR",
    0x06E: "RDTSC", 0x06F: "RDPMC", 0x072: "CPUID", 0x077: "PAUSE_INSTRUCTION", 0x078: "HLT",
    0x079: "INVLPG", 0x07B: "IO_INSTRUCTION", 0x07C: "MSR", 0x07D: "TASK_SWITCH",
    0x07F: "SHUTDOWN", 0x081: "VMMCALL", 0x087: "RDTSCP", 0x089: "WBINVD", 0x08B: "MWAIT",
    0x08D: "XSETBV", 0x08F: "WRITE_EFER_TRAP", 0x0A2: "INVPCID", 0x400: "NPF",
    0x401: "AVIC_INCOMPLETE_IPI", 0x402: "AVIC_UNACCELERATED_ACCESS", 0x403: "VMGEXIT",
}
# The names the kernel's print fmt uses for SVM (lowercase), mapped to the canonical names.
SVM_PRINT_NAMES = {
    "interrupt": "EXTERNAL_INTERRUPT", "nmi": "NMI", "smi": "SMI", "init": "INIT", "vintr": "VINTR",
    "rdtsc": "RDTSC", "rdpmc": "RDPMC", "cpuid": "CPUID", "pause": "PAUSE_INSTRUCTION",
    "hlt": "HLT", "invlpg": "INVLPG", "io": "IO_INSTRUCTION", "msr": "MSR",
    "task_switch": "TASK_SWITCH", "shutdown": "SHUTDOWN", "hypercall": "VMMCALL",
    "rdtscp": "RDTSCP", "wbinvd": "WBINVD", "mwait": "MWAIT", "xsetbv": "XSETBV",
    "write_efer_trap": "WRITE_EFER_TRAP", "invpcid": "INVPCID", "npf": "NPF",
    "avic_incomplete_ipi": "AVIC_INCOMPLETE_IPI",
    "avic_unaccelerated_access": "AVIC_UNACCELERATED_ACCESS", "vmgexit": "VMGEXIT",
}
_VMX_NAMES = frozenset(VMX_EXIT_REASONS.values())

# KVM_EXIT_* (include/uapi/linux/kvm.h), without the prefix.
USERSPACE_EXIT_REASONS = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 11: "SET_TPR",
    12: "TPR_ACCESS", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT", 26: "IOAPIC_EOI", 27: "HYPERV",
    29: "X86_RDMSR", 30: "X86_WRMSR", 35: "XEN", 36: "RISCV_SBI", 38: "NOTIFY",
    39: "LOONGARCH_IOCSR", 40: "MEMORY_FAULT",
}

EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio", "kvm_cpuid", "kvm_msr", "kvm_hypercall")
REQUIRED_EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio")

DEFAULT_BUFFER_KB = 32768          # per CPU, streaming backend only
SYNC_TIMEOUT_S = 30.0
_MARK = "exitlat-sync-"


def decode_exit_reason(reason: int, isa: int | None) -> str:
    """Canonical name of a kvm_exit reason; unknown ones (and non-VMX/SVM ISAs) as the number."""
    if isa == KVM_ISA_VMX:
        basic = reason & 0xFFFF
        name = VMX_EXIT_REASONS.get(basic)
        if name is None:
            return str(basic)
        return name + ("|FAILED_VMENTRY" if reason & 0x80000000 else "")
    if isa == KVM_ISA_SVM:
        return SVM_EXIT_REASONS.get(reason, str(reason))
    return str(reason)


def decode_userspace_reason(reason: int, errno: int = 0) -> str:
    if errno < 0:
        return "restart" if errno == -4 else "error"
    return USERSPACE_EXIT_REASONS.get(reason, str(reason))


# ---------------------------------------------------------------------------------------------
# Counts


@dataclass(frozen=True)
class ExitCounts:
    """Cumulative (or, after subtraction, per-window) counts for the traced vCPU threads.

    exits:     kvm_exit by reason name ("CPUID", "IO_INSTRUCTION", ..., unknown ones as "13").
    userspace: kvm_userspace_exit by KVM_EXIT_* name ("IO", "HLT", "MMIO", "restart", ...).
    pio:       kvm_pio by (port, "in"|"out").
    handled:   KVM handler tracepoints: "cpuid", "msr_read", "msr_write", "hypercall".
    lost:      events the kernel dropped (ring-buffer overrun / full hist map). Non-zero = the
               other numbers are lower bounds only.
    """

    exits: dict = field(default_factory=dict)
    userspace: dict = field(default_factory=dict)
    pio: dict = field(default_factory=dict)
    handled: dict = field(default_factory=dict)
    lost: int = 0
    backend: str = ""

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

        return ExitCounts(sub(self.exits, other.exits), sub(self.userspace, other.userspace),
                          sub(self.pio, other.pio), sub(self.handled, other.handled),
                          self.lost - other.lost, self.backend or other.backend)

    def to_dict(self) -> dict:
        """JSON-friendly form (pio keys as "0xe9/out")."""
        return {"exits": dict(sorted(self.exits.items())),
                "userspace": dict(sorted(self.userspace.items())),
                "pio": {f"{p:#x}/{d}": n for (p, d), n in sorted(self.pio.items())},
                "handled": dict(sorted(self.handled.items())),
                "lost": self.lost, "backend": self.backend}


class _Acc:
    """Mutable accumulator shared by both parsers."""

    def __init__(self):
        self.exits: Counter = Counter()
        self.userspace: Counter = Counter()
        self.pio: Counter = Counter()
        self.handled: Counter = Counter()
        self.lost = 0

    def freeze(self, backend: str, extra_lost: int = 0) -> ExitCounts:
        return ExitCounts(dict(self.exits), dict(self.userspace), dict(self.pio),
                          dict(self.handled), self.lost + extra_lost, backend)


# ---------------------------------------------------------------------------------------------
# Text parsing (trace_pipe lines)

# "<comm>-<pid> [cpu] flags ts: event: payload"; comm may contain spaces and dashes.
_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                   r"(?:\S+\s+)?(?P<ts>\d+\.\d+): (?P<event>\w+): (?P<payload>.*)$")
_LOST = re.compile(r"CPU:(\d+) \[LOST (\d+) EVENTS\]")
_EXIT_REASON = re.compile(r"reason (.*?) rip ")
_USER_REASON = re.compile(r"reason (\S+) \((-?\d+)\)")
_PIO = re.compile(r"pio_(read|write) at 0x([0-9a-fA-F]+)")


def _exit_name_from_text(text: str) -> str:
    text = text.strip()
    failed = text.endswith(" FAILED_VMENTRY")
    if failed:
        text = text[: -len(" FAILED_VMENTRY")]
    if text in _VMX_NAMES:
        return text + ("|FAILED_VMENTRY" if failed else "")
    if text in SVM_PRINT_NAMES:
        return SVM_PRINT_NAMES[text]
    if text.startswith("0x"):
        try:
            return str(int(text, 16))
        except ValueError:
            pass
    return text


def parse_trace_line(line: str, acc: _Acc, pids: set[int] | None = None) -> str | None:
    """Add one trace_pipe line to `acc`. Returns the marker text for tracing_mark_write lines
    (so the caller can see its sync markers), else None."""
    if "[LOST" in line:
        m = _LOST.search(line)
        if m:
            acc.lost += int(m.group(2))
            return None
    m = _LINE.match(line)
    if not m:
        return None
    event, payload = m.group("event"), m.group("payload")
    if event == "tracing_mark_write" or event == "print":
        return payload.strip()
    if pids is not None and int(m.group("pid")) not in pids:
        return None
    if event == "kvm_exit":
        r = _EXIT_REASON.search(payload + " rip ")
        acc.exits[_exit_name_from_text(r.group(1)) if r else "?"] += 1
    elif event == "kvm_userspace_exit":
        r = _USER_REASON.search(payload)
        if r:
            name = r.group(1)
            name = name[len("KVM_EXIT_"):] if name.startswith("KVM_EXIT_") else name
            acc.userspace[name] += 1
        else:
            acc.userspace["?"] += 1
    elif event == "kvm_pio":
        r = _PIO.search(payload)
        if r:
            acc.pio[(int(r.group(2), 16), "out" if r.group(1) == "write" else "in")] += 1
    elif event == "kvm_cpuid":
        acc.handled["cpuid"] += 1
    elif event == "kvm_msr":
        acc.handled["msr_write" if payload.startswith("msr_write") else "msr_read"] += 1
    elif event == "kvm_hypercall":
        acc.handled["hypercall"] += 1
    return None


def parse_trace_text(text: str, pids: set[int] | None = None) -> ExitCounts:
    """Counts from a whole captured trace (e.g. `cat trace`); for tests and by-hand checks."""
    acc = _Acc()
    for line in text.splitlines():
        parse_trace_line(line, acc, pids)
    return acc.freeze("text")


# ---------------------------------------------------------------------------------------------
# Hist parsing

_HIST_ENTRY = re.compile(r"^\{(?P<keys>.*)\}\s*hitcount:\s*(?P<hits>\d+)")
_HIST_KEY = re.compile(r"(\w+):\s*([^,]*?)\s*(?:,|$)")
_HIST_DROPPED = re.compile(r"^\s*Dropped:\s*(\d+)", re.M)


def _hist_value(v: str) -> int | str:
    v = v.strip()
    m = re.search(r"\[\s*(-?\d+)\s*\]\s*$", v)       # ".execname"/".sym" style: "name [ 123]"
    if m:
        return int(m.group(1))
    try:
        return int(v, 0)
    except ValueError:
        return v


def parse_hist(text: str) -> tuple[list[tuple[dict, int]], int]:
    """Parse a hist file: ([(keys, hitcount)], dropped)."""
    entries = []
    for line in text.splitlines():
        m = _HIST_ENTRY.match(line.strip())
        if not m:
            continue
        keys = {k: _hist_value(v) for k, v in _HIST_KEY.findall(m.group("keys"))}
        entries.append((keys, int(m.group("hits"))))
    dropped = sum(int(d) for d in _HIST_DROPPED.findall(text))
    return entries, dropped


def _acc_from_hists(hists: dict[str, str], acc: _Acc) -> None:
    for event, text in hists.items():
        entries, dropped = parse_hist(text)
        acc.lost += dropped
        for keys, hits in entries:
            if event == "kvm_exit":
                reason = keys.get("exit_reason", -1)
                isa = keys.get("isa")
                acc.exits[decode_exit_reason(int(reason), None if isa is None else int(isa))
                          if isinstance(reason, int) else str(reason)] += hits
            elif event == "kvm_userspace_exit":
                acc.userspace[decode_userspace_reason(int(keys.get("reason", 0)),
                                                      int(keys.get("errno", 0)))] += hits
            elif event == "kvm_pio":
                acc.pio[(int(keys.get("port", 0)), "out" if keys.get("rw") else "in")] += hits
            elif event == "kvm_cpuid":
                acc.handled["cpuid"] += hits
            elif event == "kvm_msr":
                acc.handled["msr_write" if keys.get("write") else "msr_read"] += hits
            elif event == "kvm_hypercall":
                acc.handled["hypercall"] += hits


# ---------------------------------------------------------------------------------------------
# tracefs helpers


def find_tracefs(mount: bool = True) -> Path | None:
    """The tracefs mount point; mounts it at /sys/kernel/tracing when absent and we may."""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs" and Path(parts[1], "events").is_dir():
                return Path(parts[1])
    except OSError:
        pass
    for p in TRACEFS_CANDIDATES:
        if (p / "events").is_dir():
            return p
    if mount and os.geteuid() == 0 and TRACEFS_CANDIDATES[0].is_dir():
        import subprocess

        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS_CANDIDATES[0])],
                       capture_output=True, timeout=10)
        if (TRACEFS_CANDIDATES[0] / "events").is_dir():
            return TRACEFS_CANDIDATES[0]
    return None


def has_hist_triggers(tracefs: Path) -> bool:
    return (tracefs / "events/kvm/kvm_exit/hist").exists()


def tracing_available(tracefs: Path | None = None) -> tuple[bool, str]:
    """(usable, one line): can exitlat count KVM exits on this host?"""
    root = Path(tracefs) if tracefs else find_tracefs()
    if root is None or not (root / "events").is_dir():
        return False, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    missing = [e for e in REQUIRED_EVENTS if not (root / "events/kvm" / e).is_dir()]
    if missing:
        return False, f"no kvm tracepoints in {root}/events/kvm ({', '.join(missing)}): is kvm loaded?"
    if not os.access(root / "instances", os.W_OK):
        return False, f"{root}/instances is not writable (needs root or CAP_SYS_ADMIN)"
    backend = "hist triggers" if has_hist_triggers(root) else "streaming trace_pipe (no hist triggers)"
    return True, f"tracefs at {root}; backend: {backend}"


def _write(path: Path, text: str, what: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise ExitlatError(f"tracefs: cannot {what} ({path}: {e.strerror or e})") from None


def _event_fields(tracefs: Path, event: str) -> set[str]:
    try:
        text = (tracefs / "events/kvm" / event / "format").read_text()
    except OSError:
        return set()
    return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text))


_instances: "weakref.WeakSet[ExitCounter]" = weakref.WeakSet()
_seq = itertools.count()


@atexit.register
def _cleanup_at_exit() -> None:
    for c in list(_instances):
        try:
            c.stop()
        except Exception:
            pass


def remove_stale_instances(tracefs: Path | None = None) -> list[str]:
    """Remove exitlat-<pid>-* instances whose process is gone (left by a killed run)."""
    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    removed = []
    if root is None or not (root / "instances").is_dir():
        return removed
    for d in (root / "instances").glob("exitlat-*"):
        m = re.match(r"exitlat-(\d+)", d.name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        _teardown_instance(d)
        removed.append(d.name)
    return removed


def _teardown_instance(inst: Path) -> None:
    """Disable events, drop triggers/filters and remove the instance; best effort."""
    for ev in EVENTS:
        d = inst / "events/kvm" / ev
        try:
            for line in (d / "trigger").read_text().splitlines():
                if line.startswith("hist:"):
                    with open(d / "trigger", "w") as f:
                        f.write("!" + line.split(" [")[0].strip())
        except OSError:
            pass
        for name, val in (("enable", "0"), ("filter", "0")):
            try:
                with open(d / name, "w") as f:
                    f.write(val)
            except OSError:
                pass
    for _ in range(50):
        try:
            inst.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# The counter


class ExitCounter:
    """Count KVM exits of the given host threads (vCPU tids). See the module docstring.

    backend: "auto" (hist triggers if the kernel has them, else streaming), "hist" or "stream".
    buffer_kb: per-CPU ring buffer of the private instance (streaming backend).
    cpu: the core the vCPU is pinned to; its buffer alone gets buffer_kb (the others keep the
         default), so a long case can have a large buffer without one per CPU of the host.
    """

    def __init__(self, tids: list[int], tracefs: Path | None = None, *, backend: str = "auto",
                 buffer_kb: int = DEFAULT_BUFFER_KB, cpu: int | None = None):
        try:
            self.tids = sorted({int(t) for t in tids})
        except (TypeError, ValueError):
            raise ExitlatError(f"vCPU thread ids must be integers, got {tids!r}") from None
        if not self.tids or any(t <= 0 for t in self.tids):
            raise ExitlatError(f"need at least one positive vCPU thread id, got {tids!r}")
        if backend not in ("auto", "hist", "stream"):
            raise ExitlatError(f"unknown tracing backend {backend!r} (auto, hist, stream)")
        self._tracefs_arg = Path(tracefs) if tracefs else None
        self._want = backend
        self.buffer_kb = int(buffer_kb)
        self.cpu = cpu
        self.backend = ""
        self.tracefs: Path | None = None
        self.instance: Path | None = None
        self._events: list[str] = []
        self._hist_specs: dict[str, str] = {}
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._acc = _Acc()
        self._marks_seen: set[str] = set()
        self._reader_error: BaseException | None = None
        self._mark_seq = itertools.count()
        self._base_overrun = 0

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
        hist = has_hist_triggers(root)
        if self._want == "hist" and not hist:
            raise ExitlatError("this kernel has no hist triggers (CONFIG_HIST_TRIGGERS); use the streaming backend")
        self.backend = "hist" if (self._want == "hist" or (self._want == "auto" and hist)) else "stream"
        self._events = [e for e in EVENTS if (root / "events/kvm" / e).is_dir()]
        remove_stale_instances(root)
        inst = root / "instances" / f"exitlat-{os.getpid()}-{next(_seq)}"
        try:
            inst.mkdir()
        except OSError as e:
            raise ExitlatError(f"tracefs: cannot create instance {inst} ({e.strerror or e})") from None
        self.instance = inst
        _instances.add(self)
        try:
            if self.backend == "hist":
                self._start_hist()
            else:
                self._start_stream()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop counting and remove the tracefs instance (idempotent)."""
        inst, self.instance = self.instance, None
        if inst is None:
            return
        self._stop.set()
        try:
            _write(inst / "tracing_on", "0", "stop tracing")
        except ExitlatError:
            pass
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        _teardown_instance(inst)
        _instances.discard(self)

    # -- filters ---------------------------------------------------------------------------
    def _pid_filter(self) -> str:
        return " || ".join(f"common_pid == {t}" for t in self.tids)

    # -- hist backend ----------------------------------------------------------------------
    def _start_hist(self) -> None:
        assert self.instance is not None and self.tracefs is not None
        keys_for = {
            "kvm_exit": ["exit_reason", "isa"],
            "kvm_userspace_exit": ["reason", "errno"],
            "kvm_pio": ["rw", "port"],
            "kvm_cpuid": [],
            "kvm_msr": ["write"],
            "kvm_hypercall": [],
        }
        for ev in self._events:
            have = _event_fields(self.tracefs, ev)
            keys = ["common_pid"] + [k for k in keys_for[ev] if k in have]
            spec = f"hist:keys={','.join(keys)}:vals=hitcount:size=2048"
            self._hist_specs[ev] = spec
            _write(self.instance / "events/kvm" / ev / "trigger", f"{spec} if {self._pid_filter()}",
                   f"set a hist trigger on kvm:{ev}")

    def _read_hists(self) -> dict[str, str]:
        assert self.instance is not None
        out = {}
        for ev in self._events:
            try:
                out[ev] = (self.instance / "events/kvm" / ev / "hist").read_text()
            except OSError as e:
                raise ExitlatError(f"tracefs: cannot read kvm:{ev} hist ({e.strerror or e})") from None
        return out

    # -- streaming backend -----------------------------------------------------------------
    def _start_stream(self) -> None:
        inst = self.instance
        assert inst is not None
        _write(inst / "tracing_on", "0", "pause the instance")
        one_cpu = inst / "per_cpu" / f"cpu{self.cpu}" / "buffer_size_kb"
        if self.cpu is not None and one_cpu.exists():
            _write(inst / "buffer_size_kb", str(min(self.buffer_kb, DEFAULT_BUFFER_KB)),
                   "size the trace buffers")
            _write(one_cpu, str(self.buffer_kb), f"size cpu{self.cpu}'s trace buffer")
        else:
            _write(inst / "buffer_size_kb", str(self.buffer_kb), "size the trace buffer")
        flt = self._pid_filter()
        for ev in self._events:
            _write(inst / "events/kvm" / ev / "filter", flt, f"filter kvm:{ev} on the vCPU threads")
            _write(inst / "events/kvm" / ev / "enable", "1", f"enable kvm:{ev}")
        self._base_overrun = self._overrun()
        try:
            fd = os.open(inst / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise ExitlatError(f"tracefs: cannot open trace_pipe ({e.strerror or e})") from None
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, args=(fd,), daemon=True,
                                        name="exitlat-trace-reader")
        self._reader.start()
        _write(inst / "tracing_on", "1", "start tracing")

    def _overrun(self) -> int:
        """Events the ring buffer overwrote (all CPUs), from per_cpu/cpu*/stats."""
        total = 0
        if self.instance is None:
            return 0
        for stats in self.instance.glob("per_cpu/cpu*/stats"):
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

    def _read_loop(self, fd: int) -> None:
        pids = set(self.tids)
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
                    with self._cond:
                        for raw in lines:
                            mark = parse_trace_line(raw.decode("utf-8", "replace"), self._acc, pids)
                            if mark and mark.startswith(_MARK):
                                marks.append(mark)
                        if marks:
                            self._marks_seen.update(marks)
                            self._cond.notify_all()
                    continue
                if self._stop.is_set():
                    break
                poller.poll(100)
        except BaseException as e:  # surfaced by snapshot()
            with self._cond:
                self._reader_error = e
                self._cond.notify_all()
        finally:
            os.close(fd)

    def _sync_stream(self, timeout: float) -> None:
        assert self.instance is not None
        mark = f"{_MARK}{os.getpid()}-{next(self._mark_seq)}"
        _write(self.instance / "trace_marker", mark, "write a sync marker")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mark not in self._marks_seen:
                if self._reader_error is not None:
                    raise ExitlatError(f"trace reader failed: {self._reader_error}")
                if self._reader is None or not self._reader.is_alive():
                    raise ExitlatError("trace reader thread is not running")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExitlatError(f"tracing: sync marker not seen within {timeout:.0f} s "
                                       "(reader cannot keep up?)")
                self._cond.wait(min(left, 0.5))
            self._marks_seen.discard(mark)

    # -- public ----------------------------------------------------------------------------
    def snapshot(self, timeout: float = SYNC_TIMEOUT_S) -> ExitCounts:
        """Cumulative counts, including every event the traced threads produced before the call."""
        if self.instance is None:
            raise ExitlatError("ExitCounter.snapshot() before start() (or after stop())")
        if self.backend == "hist":
            acc = _Acc()
            _acc_from_hists(self._read_hists(), acc)
            return acc.freeze("hist")
        self._sync_stream(timeout)
        lost_stats = max(0, self._overrun() - self._base_overrun)
        with self._cond:
            # "[LOST n EVENTS]" lines and the overrun counter describe the same losses; take the
            # larger so nothing is counted twice or hidden.
            lost = max(self._acc.lost, lost_stats)
            snap = self._acc.freeze("stream")
        return ExitCounts(snap.exits, snap.userspace, snap.pio, snap.handled, lost, "stream")
