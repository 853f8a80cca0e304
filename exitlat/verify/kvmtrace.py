"""Host-side counting of KVM exits for one or more vCPU threads (tracefs).

`ExitCounter(tids)` counts, for the given host thread ids only:

* ``kvm:kvm_exit`` by exit reason (decoded to a name for VMX and SVM, kept as a number otherwise),
* ``kvm:kvm_userspace_exit`` by ``KVM_EXIT_*`` reason (the round trips to the VMM, e.g. QEMU),
* ``kvm:kvm_pio`` by (port, direction),
* KVM's in-kernel handler tracepoints ``kvm_cpuid``, ``kvm_msr`` (read/write) and
  ``kvm_hypercall``: they prove that KVM itself handled an instruction, whatever exit mechanism
  brought it there (on PVM, or when KVM emulates, there is no ``kvm_exit`` event at all),
* optionally (``kprobes=``) return probes on KVM's WRMSR fastpath handler, counted per symbol:
  ``probes["<sym>"]`` = calls, ``probes["<sym>:handled"]`` = calls that returned something other
  than EXIT_FASTPATH_NONE, i.e. that the irq-off fastpath really handled (see FASTPATH_SYMBOLS).

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

Fail closed: the instance carries only the events enabled here, filtered on the vCPU threads, so
every line must be a sync marker, a ``[LOST n EVENTS]`` line or a well-formed event whose payload
parses (a kvm_exit reason must be a known VMX/SVM name or a number). Anything else is counted in
`ExitCounts.unparsed` (the first lines kept in ``unparsed_lines``), and the verifier fails the
window. The same holds for hist lines that look like entries but do not parse.

Timeline mode (``ExitCounter(..., timeline=True)``, either backend): the instance's trace clock is
set to ``x86-tsc`` (trace_pipe then prints the raw TSC as the timestamp, without a decimal point;
the parser takes both forms), ``kvm_entry`` and ``syscalls:sys_{enter,exit}_ioctl`` are enabled as
well, and a `Timeline` in the reader thread pairs every kvm_exit with its kvm_entry and times the
trips to QEMU in between. `ExitCounter.timeline()` returns the `PairedExits`; exitlat/verify/decompose.py
turns them into each case's decomposition. Without it nothing changes: kvm_entry and syscall lines
are not counted events and stay unparsed.

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

from exitlat.errors import ExitlatError

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

# SVM exit codes and the names the kernel's kvm_exit print fmt gives them (SVM_EXIT_REASONS in
# arch/x86/include/uapi/asm/svm.h; identical in 6.1 and 6.12, 6.18 adds "buslock" and "idle-halt").
# Canonical names: the VMX name where the meaning is the same (io -> IO_INSTRUCTION, interrupt ->
# EXTERNAL_INTERRUPT, ...), else the print name upper-cased ("read_cr0" -> READ_CR0, "GP excp" ->
# GP_EXCP). SVM has one MSR exit for both directions ("MSR"); kvm_msr's `write` field tells them
# apart. Every name here is "decodable"; a code not listed is printed by the kernel as a number.
_SVM_EXCEPTIONS = {0: "DE", 1: "DB", 3: "BP", 4: "OF", 5: "BR", 6: "UD", 7: "NM", 8: "DF", 10: "TS",
                   11: "NP", 12: "SS", 13: "GP", 14: "PF", 16: "MF", 17: "AC", 18: "MC", 19: "XF"}
_SVM_PRINT = {
    **{c: f"read_cr{c}" for c in (0, 2, 3, 4, 8)},
    **{0x10 + c: f"write_cr{c}" for c in (0, 2, 3, 4, 8)},
    **{0x20 + d: f"read_dr{d}" for d in range(8)},
    **{0x30 + d: f"write_dr{d}" for d in range(8)},
    **{0x40 + v: f"{name} excp" for v, name in _SVM_EXCEPTIONS.items()},
    0x060: "interrupt", 0x061: "nmi", 0x062: "smi", 0x063: "init", 0x064: "vintr",
    0x065: "cr0_sel_write", 0x066: "read_idtr", 0x067: "read_gdtr", 0x068: "read_ldtr",
    0x069: "read_rt", 0x06A: "write_idtr", 0x06B: "write_gdtr", 0x06C: "write_ldtr",
    0x06D: "write_rt", 0x06E: "rdtsc", 0x06F: "rdpmc", 0x070: "pushf", 0x071: "popf",
    0x072: "cpuid", 0x073: "rsm", 0x074: "iret", 0x075: "swint", 0x076: "invd", 0x077: "pause",
    0x078: "hlt", 0x079: "invlpg", 0x07A: "invlpga", 0x07B: "io", 0x07C: "msr",
    0x07D: "task_switch", 0x07E: "ferr_freeze", 0x07F: "shutdown", 0x080: "vmrun",
    0x081: "hypercall", 0x082: "vmload", 0x083: "vmsave", 0x084: "stgi", 0x085: "clgi",
    0x086: "skinit", 0x087: "rdtscp", 0x088: "icebp", 0x089: "wbinvd", 0x08A: "monitor",
    0x08B: "mwait", 0x08D: "xsetbv", 0x08F: "write_efer_trap", 0x090: "write_cr0_trap",
    0x094: "write_cr4_trap", 0x098: "write_cr8_trap", 0x0A2: "invpcid", 0x0A5: "buslock",
    0x0A6: "idle-halt", 0x400: "npf", 0x401: "avic_incomplete_ipi",
    0x402: "avic_unaccelerated_access", 0x403: "vmgexit",
    0x80000001: "vmgexit_mmio_read", 0x80000002: "vmgexit_mmio_write",
    0x80000003: "vmgexit_nmi_complete", 0x80000004: "vmgexit_ap_hlt_loop",
    0x80000005: "vmgexit_ap_jump_table", 0x80000010: "vmgexit_page_state_change",
    0x80000011: "vmgexit_guest_request", 0x80000012: "vmgexit_ext_guest_request",
    0x80000013: "vmgexit_ap_creation", 0x8000FFFD: "vmgexit_hypervisor_feature",
    0xFFFFFFFF: "invalid_guest_state",          # SVM_EXIT_ERR (-1) in the u32 exit_reason field
}
_SVM_SAME_AS_VMX = {"interrupt": "EXTERNAL_INTERRUPT", "io": "IO_INSTRUCTION", "hypercall": "VMMCALL",
                    "pause": "PAUSE_INSTRUCTION", "monitor": "MONITOR_INSTRUCTION",
                    "mwait": "MWAIT_INSTRUCTION", "buslock": "BUS_LOCK"}


def _svm_canonical(print_name: str) -> str:
    return _SVM_SAME_AS_VMX.get(print_name) or re.sub(r"[^A-Za-z0-9]+", "_", print_name).upper()


SVM_EXIT_REASONS = {code: _svm_canonical(name) for code, name in _SVM_PRINT.items()}
# The names the kernel's print fmt uses for SVM, mapped to the canonical names.
SVM_PRINT_NAMES = {name: _svm_canonical(name) for name in _SVM_PRINT.values()}
_VMX_NAMES = frozenset(VMX_EXIT_REASONS.values())
DECODABLE_EXIT_NAMES = _VMX_NAMES | frozenset(SVM_EXIT_REASONS.values())

# KVM_EXIT_* (include/uapi/linux/kvm.h), without the prefix.
USERSPACE_EXIT_REASONS = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 11: "SET_TPR",
    12: "TPR_ACCESS", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT", 26: "IOAPIC_EOI", 27: "HYPERV",
    29: "X86_RDMSR", 30: "X86_WRMSR", 31: "DIRTY_RING_FULL", 32: "AP_RESET_HOLD",
    33: "X86_BUS_LOCK", 34: "XEN", 35: "RISCV_SBI", 36: "RISCV_CSR", 37: "NOTIFY",
    38: "LOONGARCH_IOCSR", 39: "MEMORY_FAULT",
}
# The kernel's kvm_userspace_exit print fmt names KVM_EXIT_* only up to X86_WRMSR (30) in 6.1 -
# 6.18; later ones print as a hex number ("reason 0x27 (39)") and are decoded with this table.

EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio", "kvm_cpuid", "kvm_msr", "kvm_hypercall")
REQUIRED_EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio")

DEFAULT_BUFFER_KB = 32768          # per CPU, streaming backend only
SYNC_TIMEOUT_S = 30.0
_MARK = "exitlat-sync-"
MAX_UNPARSED_LINES = 5             # unparsed lines kept per window (the count is always exact)

# KVM's irq-off fastpath for WRMSR (IA32_TSC_DEADLINE, x2APIC ICR), per kernel version. Read in
# the sources of Debian's linux 6.1.192 and 6.12.95 (arch/x86/kvm/x86.c, vmx/vmx.c, svm/svm.c) and
# in /proc/kallsyms of a 6.18.44 host:
#
#   6.1 - 6.12 (and up to the rename): x86.c `fastpath_t handle_fastpath_set_msr_irqoff(vcpu)`,
#       exported, called by vmx_exit_handlers_fastpath() for every EXIT_REASON_MSR_WRITE and by
#       svm_exit_handlers_fastpath() for every SVM_EXIT_MSR write. It returns EXIT_FASTPATH_NONE
#       (0) when it does not handle the MSR, and for IA32_TSC_DEADLINE whenever
#       kvm_can_use_hv_timer() is false -- always on AMD (no set_hv_timer) and on Intel without
#       the VMX preemption timer: the write then goes down the full handler. Its helpers
#       handle_fastpath_set_tscdeadline / handle_fastpath_set_x2apic_icr_irqoff are static (inlined).
#       vmx.c `static handle_fastpath_preemption_timer()` handles the timer's expiry, not the
#       write; 6.12.95 also has x86.c `handle_fastpath_hlt()`.
#   6.18: renamed `handle_fastpath_wrmsr(vcpu)` (Sean Christopherson's fastpath series, lore
#       20250805190526), a wrapper of `static __handle_fastpath_wrmsr(vcpu, msr, data)`, plus
#       `handle_fastpath_wrmsr_imm()` (the immediate form, MSR_WRITE_IMM exits), `handle_fastpath_hlt`
#       and `handle_fastpath_invd`. Same return convention.
#
# Only the per-WRMSR entry points are probed: a *return* probe with the return value, because a
# call alone does not prove the fastpath (the function is entered for every MSR write and returns
# EXIT_FASTPATH_NONE when it falls back). enum exit_fastpath_completion: NONE = 0,
# REENTER_GUEST = 1, EXIT_HANDLED = 2, EXIT_USERSPACE = 3 (arch/x86/include/asm/kvm_host.h).
FASTPATH_SYMBOLS = ("handle_fastpath_set_msr_irqoff", "handle_fastpath_wrmsr")
KALLSYMS = Path("/proc/kallsyms")
PROBE_GROUP_PREFIX = "exitlat_"
HANDLED_SUFFIX = ":handled"         # ExitCounts.probes["<sym>:handled"]


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
    unparsed:  lines (trace_pipe) or hist entries that did not parse; non-zero fails the window.
    unparsed_lines: the first few of them, raw (at most MAX_UNPARSED_LINES per window).
    probes:    kprobe hits: "<sym>" = calls, "<sym>:handled" = returns other than
               EXIT_FASTPATH_NONE (return probes only).
    probed:    the symbols that had a working probe during the window (so that zero hits can be
               told from "not probed"); probe_note says why a requested probe is missing.
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
                          self.probed, self.probe_note, index)

    def to_dict(self) -> dict:
        """JSON-friendly form (pio keys as "0xe9/out"); `from_dict` is its inverse."""
        return {"exits": dict(sorted(self.exits.items())),
                "userspace": dict(sorted(self.userspace.items())),
                "pio": {f"{p:#x}/{d}": n for (p, d), n in sorted(self.pio.items())},
                "handled": dict(sorted(self.handled.items())),
                "lost": self.lost, "backend": self.backend,
                "unparsed": self.unparsed, "unparsed_lines": list(self.unparsed_lines),
                "probes": dict(sorted(self.probes.items())), "probed": list(self.probed),
                "probe_note": self.probe_note}

    @classmethod
    def from_dict(cls, d: dict) -> "ExitCounts":
        """The window `to_dict` wrote (e.g. into a bundle), to verify it again.

        A dict without an "unparsed" count (written before exitlat counted unparsed lines) cannot
        prove that every line was counted: it comes back with unparsed = 1 and a line saying so,
        which fails verification (fail closed)."""
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
                   tuple(d.get("probed") or ()), str(d.get("probe_note") or ""))


class _Acc:
    """Mutable accumulator shared by both parsers."""

    def __init__(self):
        self.exits: Counter = Counter()
        self.userspace: Counter = Counter()
        self.pio: Counter = Counter()
        self.handled: Counter = Counter()
        self.probes: Counter = Counter()
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
                          tuple(i for i, _ln in self._samples))


# ---------------------------------------------------------------------------------------------
# Text parsing (trace_pipe lines), after the kernel's TP_printk formats (arch/x86/kvm/trace.h,
# include/trace/events/kvm.h; kernel/trace/trace_kprobe.c for probe events)

# "<comm>-<pid> [cpu] flags ts: event: payload"; comm may contain spaces, dashes and slashes
# (QEMU's vCPU threads are "CPU 0/KVM"). The timestamp is "secs.usecs" for the nanosecond clocks
# (local, global, mono, ...) and the raw counter without a decimal point for the others (x86-tsc,
# counter, uptime): kernel/trace/trace_output.c trace_print_time(), " %5lu.%06lu" vs " %12llu".
_TS = r"(?P<ts>\d+(?:\.\d+)?)"
_PREFIX = (r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
           r"(?:\S+\s+)?" + _TS + r": ")
_LINE = re.compile(_PREFIX + r"(?P<event>\w+): (?P<payload>.*)$")
# Syscall events print no "event:" tag (kernel/trace/trace_syscalls.c): sys_enter_* as
# "sys_ioctl(fd: 5, cmd: ae80, arg: 0)" (6.1 - 6.12: "%s: %lx"; 6.18 prints "cmd: 0xae80"),
# sys_exit_* as "sys_ioctl -> 0x0". Only parsed in timeline mode (see Timeline).
_SYSCALL_LINE = re.compile(_PREFIX + r"(?P<name>sys_\w+)"
                           r"(?:\((?P<args>[^()]*)\)| -> (?P<ret>0x[0-9a-fA-F]+))\s*$")
_SYSCALL_CMD = re.compile(r"(?:^|, )(?:[\w ]+ )?cmd: (?:0x)?([0-9a-fA-F]+)(?:,|$)")
# kvm_entry (arch/x86/kvm/trace.h): 6.1 - 6.12 "vcpu %u, rip 0x%lx%s" ("[immediate exit]");
# 6.18 adds " intr_info 0x%08x error_code 0x%08x" before it.
_ENTRY = re.compile(r"^vcpu \d+, rip 0x[0-9a-fA-F]+(?: intr_info 0x[0-9a-fA-F]+ error_code 0x[0-9a-fA-F]+)?"
                    r"(?:\[immediate exit\])?\s*$")
_LOST = re.compile(r"\s*CPU:(\d+) \[LOST (\d+) EVENTS\]\s*")
_EXIT_REASON = re.compile(r"^(?:vcpu \d+ )?reason (.+?) rip (?:0x)?[0-9a-fA-F]+(?: |$)")
_USER_REASON = re.compile(r"^reason (\S+) \((-?\d+)\)\s*$")
_PIO = re.compile(r"^pio_(read|write) at 0x([0-9a-fA-F]+) size \d+ count \d+")
_MSR = re.compile(r"^msr_(read|write) [0-9a-fA-F]+ = 0x[0-9a-fA-F]+")
_CPUID = re.compile(r"^func [0-9a-fA-F]+ idx [0-9a-fA-F]+ ")
_HYPERCALL = re.compile(r"^nr 0x[0-9a-fA-F]+ ")
# kprobe:    "(sym+0x0/0x30 [kvm])[ args]"; kretprobe: "(caller+0x5d/0x9a0 [kvm_intel] <- sym)[ args]"
_PROBE = re.compile(r"^\((?P<at>[^()<]+?)(?: <- (?P<func>[^()\s]+))?\)(?P<args>(?: \w+=\S*)*)\s*$")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


def _exit_name_from_text(text: str) -> str | None:
    """Canonical name of a printed kvm_exit reason; None when it is neither a known VMX/SVM name
    nor a number (the caller counts the line as unparsed)."""
    text = text.strip()
    if text in SVM_PRINT_NAMES:                   # lower-case, some with a space ("GP excp")
        return SVM_PRINT_NAMES[text]
    head, *flags = text.split(" ")
    # VMX: "NAME[ FAILED_VMENTRY][ 0x<other flag bits>]" (__print_flags of the upper 16 bits)
    if not all(f == "FAILED_VMENTRY" or _HEX.fullmatch(f) for f in flags):
        return None
    failed = "|FAILED_VMENTRY" if "FAILED_VMENTRY" in flags else ""
    if head in _VMX_NAMES:
        return head + failed
    if _HEX.fullmatch(head):                       # __print_symbolic prints unknown values in hex
        return str(int(head, 16)) + failed
    if head.isdigit():
        return head + failed
    return None


def _userspace_name(text: str) -> str | None:
    if text.startswith("KVM_EXIT_") and len(text) > len("KVM_EXIT_"):
        return text[len("KVM_EXIT_"):]
    if text in ("restart", "error"):
        return text
    if _HEX.fullmatch(text):                       # a KVM_EXIT_* the kernel's table lacks
        return decode_userspace_reason(int(text, 16))
    return None


def _probe_args(args: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args.split())


def parse_trace_line(line: str, acc: _Acc, pids: set[int] | None = None) -> str | None:
    """Add one trace_pipe line to `acc`. Returns the marker text for tracing_mark_write lines
    (so the caller can see its sync markers), else None. A non-empty line that is none of: a
    marker, a "[LOST n EVENTS]" line, an event of a pid not in `pids`, or one of the counted
    events with a payload that parses, is counted as unparsed."""
    if not line.strip():
        return None
    tl = acc.timeline
    m = _LOST.fullmatch(line)
    if m:
        acc.lost += int(m.group(2))
        if tl is not None:
            tl.lose(int(m.group(2)))
        return None
    m = _LINE.match(line)
    if not m:
        if tl is None or not _timeline_syscall(line, tl, pids):
            acc.bad(line)
        return None
    event, payload = m.group("event"), m.group("payload")
    if event == "tracing_mark_write" or event == "print":
        return payload.strip()
    pid = int(m.group("pid"))
    if pids is not None and pid not in pids:
        return None
    ok = True
    if event == "kvm_exit":
        r = _EXIT_REASON.match(payload)
        name = _exit_name_from_text(r.group(1)) if r else None
        if name is None:
            ok = False
        else:
            acc.exits[name] += 1
            if tl is not None:
                tl.exit(pid, m.group("ts"), name)
    elif event == "kvm_userspace_exit":
        r = _USER_REASON.match(payload)
        name = _userspace_name(r.group(1)) if r else None
        if name is None:
            ok = False
        else:
            acc.userspace[name] += 1
            if tl is not None:
                tl.userspace(pid, m.group("ts"), name)
    elif event == "kvm_pio":
        r = _PIO.match(payload)
        if r:
            acc.pio[(int(r.group(2), 16), "out" if r.group(1) == "write" else "in")] += 1
            if tl is not None:
                tl.pio(pid, int(r.group(2), 16), "out" if r.group(1) == "write" else "in")
        else:
            ok = False
    elif event == "kvm_entry" and tl is not None:
        if _ENTRY.match(payload):
            tl.entry(pid, m.group("ts"))
        else:
            ok = False
    elif event == "kvm_cpuid":
        if _CPUID.match(payload):
            acc.handled["cpuid"] += 1
        else:
            ok = False
    elif event == "kvm_msr":
        r = _MSR.match(payload)
        if r:
            acc.handled["msr_" + r.group(1)] += 1
        else:
            ok = False
    elif event == "kvm_hypercall":
        if _HYPERCALL.match(payload):
            acc.handled["hypercall"] += 1
        else:
            ok = False
    else:
        ok = _count_probe_line(event, payload, acc)
    if not ok:
        acc.bad(line)
    return None


def _count_probe_line(event: str, payload: str, acc: _Acc) -> bool:
    """A kprobe event line (the event is named after the probed symbol)."""
    r = _PROBE.match(payload)
    if not r:
        return False
    args = _probe_args(r.group("args"))
    if r.group("func") is None:                   # entry probe: a call, nothing about its outcome
        acc.probes[event] += 1
        return True
    try:
        ret = int(args["ret"], 0)
    except (KeyError, ValueError):
        return False                               # a return probe must carry ret=
    acc.probes[event] += 1
    if ret != 0:
        acc.probes[event + HANDLED_SUFFIX] += 1
    return True


def parse_trace_text(text: str, pids: set[int] | None = None,
                     timeline: "Timeline | None" = None) -> ExitCounts:
    """Counts from a whole captured trace (e.g. `cat trace`); for tests and by-hand checks.
    The header of `cat trace` ("# tracer: nop", ...) is skipped; everything else must parse.
    With a `timeline`, the text is also paired into it (kvm_entry and sys_ioctl lines parse)."""
    acc = _Acc()
    acc.timeline = timeline
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        parse_trace_line(line, acc, pids)
    return acc.freeze("text")


# ---------------------------------------------------------------------------------------------
# Timestamped pairing: where each exit's round trip goes (ExitCounter(timeline=True);
# exitlat/verify/decompose.py turns the result into the bundle's per-case decomposition)
#
# Where the tracepoints fire (read in the sources of Debian's linux 6.1.192 and 6.12.117;
# 6.18.44 checked on the dev host's format files):
#
#   kvm_entry           vmx_vcpu_run() / svm_vcpu_run(), just before the VM-entry code
#                       (vmx_vcpu_enter_exit / svm_vcpu_enter_exit), every time, fastpath
#                       re-entries included.
#   kvm_exit            the same functions right after the VM exit, before any handler and
#                       before the irq-off fastpath.
#   kvm_userspace_exit  kvm_vcpu_ioctl(KVM_RUN) after kvm_arch_vcpu_ioctl_run() returned, i.e.
#                       after vcpu_put and the guest FPU was put away.
#   syscalls:sys_exit_ioctl / sys_enter_ioctl   the syscall exit / entry work of the vCPU thread
#                       (CONFIG_FTRACE_SYSCALLS, set in the usual distribution kernels): the
#                       return of KVM_RUN to QEMU and QEMU's next call.
#
# So per exit (host TSC ticks, trace clock x86-tsc):
#   host  = kvm_entry - kvm_exit                       everything between the two tracepoints
#   qemu  = sum over its trips to user space of (sys_enter_ioctl(KVM_RUN) - sys_exit_ioctl):
#           QEMU's own time between the return of KVM_RUN and its next call (plus the few
#           instructions of the syscall return/entry around the two tracepoints)
#   kvm   = host - qemu                                in the kernel: KVM's handler, and for a
#           userspace exit also KVM_RUN's return and re-entry (vcpu_put/vcpu_load, FPU switch)
#   kvm_run = (kvm_entry - kvm_userspace_exit) - qemu  that return and re-entry alone
# What is left of the guest-side round trip is the hardware VM exit and VM entry, the few
# host instructions between them and the tracepoints, and the cost of tracing itself.
#
# Why not kvm_userspace_exit -> kvm_entry for QEMU's time: it also contains KVM_RUN's return and
# re-entry in the kernel (FPU and vCPU load/put, complete_userspace_io), which is KVM's work, and
# no KVM tracepoint marks the moment KVM_RUN is called again. Why not hist triggers with onmatch()
# synthetic events: they would keep only histograms, could not prove that every exit was paired
# (a missing kvm_entry silently matches an older timestamp), need global synthetic events, and
# cannot be tested on a kernel without hist triggers; the pairing below runs in the reader thread
# that already parses the stream, keeps only per-exit durations, and fails closed.

TSC_CLOCK = "x86-tsc"
KVM_RUN_IOCTL = 0xAE80                   # _IO(KVMIO, 0x80), include/uapi/linux/kvm.h
TIMELINE_KVM_EVENTS = ("kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_pio")
TIMELINE_SYSCALL_EVENTS = ("sys_enter_ioctl", "sys_exit_ioctl")
DEFAULT_MAX_KEPT = 1 << 21               # durations kept per exit kind (uniform reservoir beyond):
                                         # 3 x 8 bytes each, at most 48 MiB per kind


def _timeline_syscall(line: str, tl: "Timeline", pids: set[int] | None) -> bool:
    """A sys_ioctl enter/exit line (timeline mode); False when the line is not one (unparsed)."""
    m = _SYSCALL_LINE.match(line)
    if not m or m.group("name") != "sys_ioctl":
        return False
    pid = int(m.group("pid"))
    if pids is not None and pid not in pids:
        return True
    if m.group("ret") is not None:
        tl.syscall_exit(pid, m.group("ts"))
        return True
    c = _SYSCALL_CMD.search(m.group("args"))
    if not c:
        return False
    tl.syscall_enter(pid, m.group("ts"), int(c.group(1), 16))
    return True


def exit_kind(reason: str, port: tuple[int, str] | None = None) -> str:
    """The key of one kind of exit in PairedExits.kinds: the reason, and for port I/O the port
    ("CPUID", "IO_INSTRUCTION 0xe9/out")."""
    return reason if port is None else f"{reason} {port[0]:#x}/{port[1]}"


class _Open:
    """One exit between its kvm_exit and its kvm_entry."""
    __slots__ = ("t_exit", "reason", "port", "t_user", "t_ret", "qemu", "trips", "broken")

    def __init__(self, t_exit: int, reason: str):
        self.t_exit, self.reason, self.port = t_exit, reason, None
        self.t_user = None       # first kvm_userspace_exit
        self.t_ret = None        # the sys_exit_ioctl after a kvm_userspace_exit (in QEMU since)
        self.qemu, self.trips, self.broken = 0, 0, False


class _Series:
    """Durations of one kind of exit: host, qemu (-1: not measurable) and the first
    kvm_userspace_exit -> kvm_entry (-1: none). A uniform reservoir once `cap` are kept."""
    __slots__ = ("n", "host", "qemu", "user")

    def __init__(self):
        from array import array

        self.n = 0
        self.host, self.qemu, self.user = array("q"), array("q"), array("q")

    def add(self, host: int, qemu: int, user: int, cap: int, rng) -> None:
        self.n += 1
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
              kept exits (see _Series; n counts all of them, np.asarray() reads them in place)}.
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
        import random

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
        if o is not None and o.port is None:   # the exit's own I/O (an IN's completion repeats it)
            o.port = (port, direction)

    def userspace(self, pid: int, ts: str, reason: str) -> None:
        self.events["kvm_userspace_exit"] += 1
        t = self._ts(ts)
        o = self._open.get(pid)
        if t is None or o is None:
            return
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
        if t is None or o is None or o.t_ret != -1:
            return                             # another ioctl's return, or before the window
        o.t_ret = t

    def syscall_enter(self, pid: int, ts: str, cmd: int) -> None:
        self.events["sys_enter_ioctl"] += 1
        t = self._ts(ts)
        o = self._open.get(pid)
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
        series.add(host, qemu, user, self.max_kept, self._rng)

    def lose(self, n: int) -> None:
        """A "[LOST n EVENTS]" line: every open exit is dropped."""
        self.lost += n
        self._open.clear()

    # -- result ----------------------------------------------------------------------------
    def freeze(self, extra_lost: int = 0) -> PairedExits:
        kinds = {k: {"n": s.n, "host": s.host[:], "qemu": s.qemu[:], "user": s.user[:]}
                 for k, s in self._series.items()}
        return PairedExits(self.clock, self.syscalls, kinds, self.paired, self.unpaired_exits,
                           self.entries_without_exit, self.qemu_unpaired, self.backwards,
                           max(self.lost, extra_lost), self.unparsed, self.non_tsc,
                           dict(self.events), self.missing, self.note)


def trace_clocks(buf: Path) -> tuple[str | None, list[str]]:
    """(selected clock, available clocks) of one trace buffer (its trace_clock file)."""
    try:
        names = (Path(buf) / "trace_clock").read_text().split()
    except OSError:
        return None, []
    selected = next((n[1:-1] for n in names if n.startswith("[") and n.endswith("]")), None)
    return selected, [n.strip("[]") for n in names]


def set_trace_clock(buf: Path, clock: str = TSC_CLOCK) -> tuple[str | None, str]:
    """Select `clock` in one buffer's trace_clock (a private instance's: never the global
    buffer's). This resets that buffer, so call it before enabling events. Returns (the clock
    selected afterwards, "" or why it is not `clock`)."""
    selected, available = trace_clocks(buf)
    if selected is None:
        return None, f"cannot read {Path(buf) / 'trace_clock'}"
    if clock not in available:
        return selected, f"trace clock {clock} is not available here (only {', '.join(available)})"
    if selected != clock:
        try:
            _write(Path(buf) / "trace_clock", clock, f"select the {clock} trace clock")
        except ExitlatError as e:
            return trace_clocks(buf)[0], str(e)
        selected = trace_clocks(buf)[0]
    return selected, "" if selected == clock else f"trace clock is {selected}, not {clock}"


# ---------------------------------------------------------------------------------------------
# Hist parsing

_HIST_ENTRY = re.compile(r"^\{(?P<keys>.*)\}\s*hitcount:\s*(?P<hits>\d+)\s*$")
_HIST_KEY = re.compile(r"^\s*(\w+):\s*(.*?)\s*$")
_HIST_DROPPED = re.compile(r"^\s*Dropped:\s*(\d+)", re.M)
PROBE_HIST_PREFIX = "probe/"       # _acc_from_hists key of a kprobe event: "probe/<symbol>"


def _hist_value(v: str) -> int | str:
    v = v.strip()
    m = re.search(r"\[\s*(-?\d+)\s*\]\s*$", v)       # ".execname"/".sym" style: "name [ 123]"
    if m:
        return int(m.group(1))
    try:
        return int(v, 0)
    except ValueError:
        return v


def parse_hist(text: str, unparsed: list | None = None) -> tuple[list[tuple[dict, int]], int]:
    """Parse a hist file: ([(keys, hitcount)], dropped). A line that looks like an entry
    ("{ ... } hitcount: ...") but does not parse goes to `unparsed` when given."""
    entries = []
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("{"):
            continue
        m = _HIST_ENTRY.match(s)
        keys = {}
        if m:
            for part in m.group("keys").split(","):
                k = _HIST_KEY.match(part)
                if not k or not k.group(2):
                    m = None
                    break
                keys[k.group(1)] = _hist_value(k.group(2))
        if not m:
            if unparsed is not None:
                unparsed.append(line)
            continue
        entries.append((keys, int(m.group("hits"))))
    dropped = sum(int(d) for d in _HIST_DROPPED.findall(text))
    return entries, dropped


def _ints(keys: dict, required: tuple, optional: tuple = ()) -> dict | None:
    """The keys as integers; None when a required one is missing or any one is not an integer."""
    out = {}
    for k in required + optional:
        if k not in keys:
            if k in required:
                return None
            continue
        if not isinstance(keys[k], int):
            return None
        out[k] = keys[k]
    return out


def _acc_from_hists(hists: dict[str, str], acc: _Acc) -> None:
    for event, text in hists.items():
        bad_lines: list[str] = []
        entries, dropped = parse_hist(text, bad_lines)
        for line in bad_lines:
            acc.bad(f"{event} hist: {line.strip()}")
        acc.lost += dropped
        for keys, hits in entries:
            ok = True
            if event == "kvm_exit":
                k = _ints(keys, ("exit_reason",), ("isa",))
                if k is None:
                    ok = False
                else:
                    acc.exits[decode_exit_reason(k["exit_reason"], k.get("isa"))] += hits
            elif event == "kvm_userspace_exit":
                k = _ints(keys, ("reason",), ("errno",))
                if k is None:
                    ok = False
                else:
                    acc.userspace[decode_userspace_reason(k["reason"], k.get("errno", 0))] += hits
            elif event == "kvm_pio":
                k = _ints(keys, ("rw", "port"))
                if k is None:
                    ok = False
                else:
                    acc.pio[(k["port"], "out" if k["rw"] else "in")] += hits
            elif event in ("kvm_cpuid", "kvm_hypercall"):
                acc.handled["cpuid" if event == "kvm_cpuid" else "hypercall"] += hits
            elif event == "kvm_msr":
                k = _ints(keys, ("write",))
                if k is None:
                    ok = False
                else:
                    acc.handled["msr_write" if k["write"] else "msr_read"] += hits
            elif event.startswith(PROBE_HIST_PREFIX):
                sym = event[len(PROBE_HIST_PREFIX):]
                k = _ints(keys, (), ("ret",))
                if k is None:
                    ok = False
                else:
                    acc.probes[sym] += hits
                    if k.get("ret"):
                        acc.probes[sym + HANDLED_SUFFIX] += hits
            else:
                ok = False
            if not ok:
                acc.bad(f"{event} hist: {keys} hitcount: {hits}")


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


# ---------------------------------------------------------------------------------------------
# kprobes (the global kprobe_events file; enabled only inside our instance)

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_probe_lock = threading.Lock()
_probe_refs: dict[str, int] = {}       # "<group>/<sym>" -> ExitCounters of this process using it


def probe_group(pid: int | None = None) -> str:
    return f"{PROBE_GROUP_PREFIX}{os.getpid() if pid is None else pid}"


def _kernel_symbols(names, tracefs: Path | None = None, kallsyms: Path | None = None) -> dict:
    """{name: module or ""} for the names this kernel has (kallsyms, else the tracefs list of
    traceable functions)."""
    want, found = set(names), {}
    sources = [Path(kallsyms) if kallsyms else KALLSYMS]
    if tracefs is not None:
        sources.append(Path(tracefs) / "available_filter_functions")
    for src in sources:
        try:
            with open(src) as f:
                for line in f:
                    parts = line.split()
                    if src.name != "available_filter_functions":    # "addr type name [mod]"
                        if len(parts) < 3 or parts[1] not in ("t", "T", "w", "W"):
                            continue
                        parts = parts[2:]
                    if not parts:                                   # "name [mod]"
                        continue
                    name, mod = parts[0], parts[1].strip("[]") if len(parts) > 1 else ""
                    if name in want and name not in found:
                        found[name] = mod
        except OSError:
            continue
        if len(found) == len(want):
            break
    return found


def fastpath_symbols(tracefs: Path | None = None, kallsyms: Path | None = None) -> list[str]:
    """The WRMSR fastpath handlers (FASTPATH_SYMBOLS) this kernel has, to pass as
    ExitCounter(kprobes=...). Whether they can be probed is another question: see
    ExitCounter.probe_note."""
    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    have = _kernel_symbols(FASTPATH_SYMBOLS, root, kallsyms)
    return [s for s in FASTPATH_SYMBOLS if s in have]


def kprobes_available(tracefs: Path | None = None) -> tuple[bool, str]:
    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    if root is None:
        return False, "tracefs is not mounted"
    if not (root / "kprobe_events").exists():
        return False, f"kprobe events not available on this kernel (no {root}/kprobe_events: CONFIG_KPROBE_EVENTS)"
    if not os.access(root / "kprobe_events", os.W_OK):
        return False, f"{root}/kprobe_events is not writable (needs root)"
    return True, "kprobe events available"


def _append(path: Path, text: str) -> None:
    """Append one definition to a dynamic-event file: O_APPEND without O_TRUNC (truncating would
    delete every other tool's probes) and without the seek to the end that Python's "a" mode
    does, which the kernel's probe-event files refuse (EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _acquire_probe(root: Path, events_file: str, sym: str, target: str) -> str | None:
    """Create (or share) the return probe exitlat_<pid>/<sym> on `target` in `events_file`
    (kprobe_events); None when done, else why not."""
    key = f"{probe_group()}/{sym}"
    with _probe_lock:
        if _probe_refs.get(key, 0) > 0:
            _probe_refs[key] += 1
            return None
        try:
            _append(root / events_file, f"r:{key} {target} ret=$retval:u32")
        except OSError as e:
            if not (root / "events" / probe_group() / sym).is_dir():
                return f"cannot create a return probe on {sym} ({e.strerror or e})"
        if not (root / "events" / probe_group() / sym).is_dir():
            return f"the return probe on {sym} did not appear in {root}/events"
        _probe_refs[key] = 1
        return None


def _release_probe(root: Path, events_file: str, sym: str) -> None:
    key = f"{probe_group()}/{sym}"
    with _probe_lock:
        n = _probe_refs.get(key, 0) - 1
        if n > 0:
            _probe_refs[key] = n
            return
        _probe_refs.pop(key, None)
        try:
            _append(root / events_file, f"-:{key}")
        except OSError:
            pass


def _disable_event_dir(d: Path) -> None:
    """Drop hist triggers, the filter and the enable bit of one event directory; best effort."""
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


def _remove_stale_probes(root: Path) -> list[str]:
    """Remove exitlat_<pid>/* kprobe events whose process is gone."""
    removed = []
    for events_file in ("kprobe_events", "uprobe_events"):
        try:
            lines = (root / events_file).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(rf"^[pr]\d*:({re.escape(PROBE_GROUP_PREFIX)}(\d+))/(\w+)\s", line)
            if not m or Path(f"/proc/{m.group(2)}").exists():
                continue
            group, ev = m.group(1), m.group(3)
            for buf in [root] + sorted((root / "instances").glob("*")):
                if (buf / "events" / group / ev).is_dir():
                    _disable_event_dir(buf / "events" / group / ev)
            try:
                _append(root / events_file, f"-:{group}/{ev}")
                removed.append(f"{events_file[0]}probe {group}/{ev}")
            except OSError:
                pass
    return removed


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
    """Remove exitlat-<pid>-* instances and exitlat_<pid> kprobe events whose process is gone
    (left by a killed run)."""
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
    return removed + _remove_stale_probes(root)


def _teardown_instance(inst: Path) -> None:
    """Disable events, drop triggers/filters and remove the instance; best effort."""
    dirs = [inst / "events/kvm" / ev for ev in EVENTS]
    dirs += [inst / "events/kvm" / ev for ev in TIMELINE_KVM_EVENTS if ev not in EVENTS]
    dirs += [inst / "events/syscalls" / ev for ev in TIMELINE_SYSCALL_EVENTS]
    dirs += sorted(inst.glob(f"events/{PROBE_GROUP_PREFIX}*/*"))
    for d in dirs:
        if d.is_dir():
            _disable_event_dir(d)
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
        if backend not in ("auto", "hist", "stream"):
            raise ExitlatError(f"unknown tracing backend {backend!r} (auto, hist, stream)")
        if isinstance(kprobes, str):
            kprobes = [kprobes]
        self.kprobes = list(dict.fromkeys(kprobes or ()))
        bad = [s for s in self.kprobes if not isinstance(s, str) or not _SYMBOL.fullmatch(s)]
        if bad:
            raise ExitlatError(f"kprobes must be kernel function names, got {bad!r}")
        self._kprobes_requested = kprobes is not None
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
        self.kprobes_active: list[str] = []
        self.probe_note = ""
        self._probes_held: list[str] = []
        self.timeline_wanted = bool(timeline)
        self.max_kept = int(max_kept)
        self.clock = ""                    # the instance's trace clock (timeline mode)
        self.clock_note = ""
        self._timeline: Timeline | None = None
        self._timeline_dirs: list[tuple[Path, str]] = []    # (event dir in the instance, filter)

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
            if self.timeline_wanted:
                self._setup_timeline()
            self._setup_probes()
            if self.backend == "hist":
                self._start_hist()
                if self._timeline is not None:
                    self._start_timeline_reader()
            else:
                self._start_stream()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop counting, remove the tracefs instance and this counter's kprobes (idempotent)."""
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
        held, self._probes_held = self._probes_held, []
        for sym, events_file in held:
            _release_probe(self.tracefs, events_file, sym)
        _instances.discard(self)

    # -- filters ---------------------------------------------------------------------------
    def _pid_filter(self) -> str:
        return " || ".join(f"common_pid == {t}" for t in self.tids)

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
                notes.append(f"{sym} is not in {KALLSYMS} on this kernel")
                continue
            events_file, target = self._probe_target(sym, have[sym])
            problem = _acquire_probe(self.tracefs, events_file, sym, target)
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
        return _kernel_symbols(self.kprobes, self.tracefs)

    def _probe_target(self, sym: str, module: str) -> tuple[str, str]:
        return "kprobe_events", f"{module}:{sym}" if module else sym

    def _probe_dir(self, sym: str, buf: Path | None = None) -> Path:
        return (buf or self.instance) / "events" / probe_group() / sym

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
        for sym in list(self.kprobes_active):
            spec = "hist:keys=common_pid,ret:vals=hitcount:size=256"
            try:
                _write(self._probe_dir(sym) / "trigger", f"{spec} if {self._pid_filter()}",
                       f"set a hist trigger on the {sym} probe")
            except ExitlatError as e:
                self._drop_probe(sym, str(e))

    def _drop_probe(self, sym: str, why: str) -> None:
        self.kprobes_active.remove(sym)
        self.probe_note = "; ".join(filter(None, [self.probe_note, why]))

    def _read_hists(self) -> dict[str, str]:
        assert self.instance is not None
        out = {}
        paths = {ev: self.instance / "events/kvm" / ev / "hist" for ev in self._events}
        paths.update({PROBE_HIST_PREFIX + s: self._probe_dir(s) / "hist" for s in self.kprobes_active})
        for ev, path in paths.items():
            try:
                out[ev] = path.read_text()
            except OSError as e:
                raise ExitlatError(f"tracefs: cannot read the {ev} hist ({e.strerror or e})") from None
        return out

    # -- streaming backend -----------------------------------------------------------------
    def _start_stream(self) -> None:
        inst = self.instance
        assert inst is not None
        self._pause_and_size_buffers()
        flt = self._pid_filter()
        for ev in self._events:
            _write(inst / "events/kvm" / ev / "filter", flt, f"filter kvm:{ev} on the vCPU threads")
            _write(inst / "events/kvm" / ev / "enable", "1", f"enable kvm:{ev}")
        self._enable_timeline_events(skip=self._events)
        for sym in list(self.kprobes_active):
            try:
                _write(self._probe_dir(sym) / "filter", flt, f"filter the {sym} probe")
                _write(self._probe_dir(sym) / "enable", "1", f"enable the {sym} probe")
            except ExitlatError as e:
                self._drop_probe(sym, str(e))
        self._start_reader()

    def _pause_and_size_buffers(self) -> None:
        """Tracing off in the instance; the measured core's buffer gets buffer_kb (the vCPU is
        pinned there, so all its events land in it), the other CPUs at most the default."""
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

    def _start_reader(self) -> None:
        """Open trace_pipe, start the reader thread, then switch tracing on."""
        inst = self.instance
        assert inst is not None
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
        from dataclasses import replace

        if self.instance is None:
            raise ExitlatError("ExitCounter.snapshot() before start() (or after stop())")
        probes = {"probed": tuple(self.kprobes_active), "probe_note": self.probe_note}
        if self.backend == "hist":
            if self._reader is not None:       # timeline mode: its events are in trace_pipe
                self._sync_stream(timeout)
            acc = _Acc()
            _acc_from_hists(self._read_hists(), acc)
            return replace(acc.freeze("hist"), **probes)
        self._sync_stream(timeout)
        lost_stats = max(0, self._overrun() - self._base_overrun)
        with self._cond:
            snap = self._acc.freeze("stream")
        # "[LOST n EVENTS]" lines and the overrun counter describe the same losses; take the
        # larger so nothing is counted twice or hidden.
        return replace(snap, lost=max(snap.lost, lost_stats), **probes)

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
        self._acc.timeline = self._timeline

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
                    _write(d / "filter", flt, f"filter {d.parent.name}:{d.name} on the vCPU threads")
                except ExitlatError:
                    if flt == self._pid_filter():
                        raise
                    _write(d / "filter", self._pid_filter(), f"filter {d.parent.name}:{d.name}")
                _write(d / "enable", "1", f"enable {d.parent.name}:{d.name}")
            except ExitlatError as e:
                tl.missing += (f"{d.name} ({e})",)
                if d.parent.name == "syscalls":
                    tl.syscalls = False

    def _start_timeline_reader(self) -> None:
        """Hist backend in timeline mode: stream the timeline's events through trace_pipe."""
        inst = self.instance
        assert inst is not None
        self._pause_and_size_buffers()
        self._enable_timeline_events()
        self._start_reader()

    def timeline(self, timeout: float = SYNC_TIMEOUT_S) -> PairedExits:
        """The pairing so far, including every event the traced threads produced before the
        call (the same sync marker as snapshot()). Needs ExitCounter(timeline=True)."""
        if self._timeline is None:
            raise ExitlatError("ExitCounter.timeline() needs ExitCounter(timeline=True)")
        if self.instance is None:
            raise ExitlatError("ExitCounter.timeline() before start() (or after stop())")
        self._sync_stream(timeout)
        lost_stats = max(0, self._overrun() - self._base_overrun)
        with self._cond:
            return self._timeline.freeze(extra_lost=lost_stats)
