"""Did each exit take the path the case claims? The rules, their tolerances and what they share;
the checks themselves are exitlat.verify.timed (timed windows and baselines, from KVM's stats)
and exitlat.verify.traced (traced windows, from the host's exit counts). Fail closed.

Three checks, one per kind of window (status values: STATUS_PASSED, STATUS_FAILED,
STATUS_UNVERIFIED; the caller adds "skipped"/"not_applicable"). What a check cannot parse, count
or prove is "failed" or "unverified", never "passed".

`verify_case(window, iterations_total, expected_path, instruction, port, vendor, kvm_stats=None)`
judges a *traced* window: an `exitlat.verify.trace.counts.ExitCounts` (the difference of two snapshots around
the loop) against what `iterations_total` iterations (warm-up included) must produce:

* a KVM-handled case ("kvm", "kvm_fastpath"): ≈1 exit of the expected reason per iteration
  (cpuid→CPUID, rdmsr→MSR_READ, wrmsr_tsc_deadline→MSR_WRITE, vmcall→VMCALL/VMMCALL; on AMD
  MSR reads and writes share one reason, "MSR"), ≈1 event of its KVM handler (kvm_cpuid,
  kvm_hypercall, kvm_msr read or write; the other MSR direction ≈0), ≈0 userspace exits and ≈0
  other synchronous exits per iteration;
* a QEMU case ("qemu", a port I/O kind: outb, inl_from_qemu): ≈1 kvm_pio write (outb) or read
  (inl_from_qemu, the table's `io`) on `port` per iteration, ≈1
  userspace exit (KVM_EXIT_IO) beyond the console's, and ≈0 exits besides its I/O exit;
* a QEMU MMIO case (mmio_no_eventfd): ≈1 exit of the kind's reason (NPF on SVM, EPT_MISCONFIG on
  VMX) and ≈1 userspace exit KVM_EXIT_MMIO per iteration, ≈0 other userspace exits beyond the
  console's and ≈0 other synchronous exits; an MMIO kind KVM completes through an ioeventfd is a
  KVM-handled case like any other (≈1 fault exit, ≈0 userspace exits);
* any lost trace event, and any trace line or hist entry that did not parse
  (`ExitCounts.unparsed`), fails the window: the counts would not be complete; a window without
  kvm_exit events (or with undecoded reasons KVM's `exits` does not confirm) is "unverified";
* "kvm_fastpath" (WRMSR IA32_TSC_DEADLINE) must be *proven* to take KVM's irq-off fastpath (the
  return probe on the handler reports ≈1 return other than EXIT_FASTPATH_NONE per iteration), and
  a "kvm" case of an instruction that has a fastpath must be proven to stay out of it (≈0); no
  probe → "unverified";
* with `kvm_stats` (KVM's binary stats over the same traced window) the stats and the trace must
  agree (`exits`, `io_exits`, `hypercalls`) within AGREE_TOLERANCE·n + AGREE_STRAY + the
  interrupt and idle exits the trace saw. Not compared where KVM's instruction emulator ran.

`verify_timed_window(stats, iterations_total, expected_path, instruction, console_io)` judges a
*timed* (untraced) window from KVM's stats alone, the same rules on KVM's counters: interrupts
(ASYNC_STATS) and idle (IDLE_STATS) are background, the console's I/O is the same boot's
estimate (`console_io`, from the baselines or the traced window) ± CONSOLE_SLACK, or the fixed
STATS_STRAY_EVENTS where nothing measured it. `verify_baseline(stats, iterations_total)` needs
exits besides I/O, interrupts and idle ≈0 per iteration: the proof that the timer does not exit.
No stats → "unverified"; KVM's instruction emulator ran → "unverified" where counts mismatch.

Tolerances (n = iterations_total; docs/verification.md has the table of every rule):

* "≈1 per iteration": (1 - ONE_TOLERANCE)·n ≤ count ≤ (1 + ONE_TOLERANCE)·n + allowance.
* "≈0 per iteration": count ≤ ZERO_TOLERANCE·n + allowance.
* allowance: STRAY_EVENTS + INTERRUPT_SIDE_EXITS × (interrupt and idle exits counted in the same
  window, ASYNC_REASONS / IDLE_REASONS): background the window itself measured.
* a check whose fixed allowance exceeds RESOLUTION·n cannot tell paths apart: "unverified", with
  the smallest n that verifies; one whose count passes only thanks to the background may do so
  only while its whole allowance is at most BACKGROUND_LIMIT·n (Bounds).
* every verdict reports `other_path_max`: the largest fraction of iterations that may have taken
  another path or been disturbed (the reports mark percentiles it does not cover).
"""

from __future__ import annotations

from exitlat.errors import ExitlatError
from exitlat.instructions import PATHS, TABLE

STATUS_PASSED = "passed"
STATUS_FAILED = "failed"
STATUS_UNVERIFIED = "unverified"

ONE_TOLERANCE = 0.02        # ±2 % of n for "about one per iteration"
ZERO_TOLERANCE = 0.02       # at most 2 % of n for "about zero per iteration"
STRAY_EVENTS = 16           # per window: synchronous exits that nothing counted in it explains
INTERRUPT_SIDE_EXITS = 4    # synchronous exits one interrupt or idle wake-up may cause in the
#                             guest (EOI, timer re-armed, stopped and restarted around idle:
#                             up to 4.1 per interrupt measured on the emulated AMD-V host)
CONSOLE_SLACK = 0.15        # timed windows: the console's I/O exits, estimated from the same
#                             boot's baselines, may differ by ±15 % (+ STRAY_EVENTS)
STATS_STRAY_EVENTS = 512    # timed windows of a boot without baselines: the console's I/O bound
RESOLUTION = 0.10           # a fixed allowance above 10 % of n cannot tell a path from its
#                             neighbours: such a check is "unverified", never "passed"
BACKGROUND_LIMIT = 0.25     # nor can one whose whole allowance, background explained by the
#                             interrupts it counted included, is above a quarter of n
AGREE_TOLERANCE = 0.002     # stats vs. trace: 0.2 % of n ...
AGREE_STRAY = 32            # ... + 32 + the idle and interrupt exits the trace saw (the trace
#                             window encloses the stats window by a few idle milliseconds)

# Exits no guest instruction of the loop causes: interrupts, their windows, timers (asynchronous),
# and the idle vCPU waiting for the host's "go" (HLT). They are background, never the path; they
# do disturb the iterations they land in (other_path_max).
ASYNC_REASONS = frozenset({"EXTERNAL_INTERRUPT", "INTERRUPT_WINDOW", "NMI_WINDOW",
                           "PREEMPTION_TIMER", "VINTR", "NMI", "SMI", "INIT", "INIT_SIGNAL",
                           "SIPI_SIGNAL"})
IDLE_REASONS = frozenset({"HLT", "IDLE_HALT", "MWAIT_INSTRUCTION"})
# What an interrupt makes the guest do that exits: write its EOI and re-arm its timer (MSR writes
# with x2APIC and TSC-deadline, or APIC page accesses). Only these may be explained by the
# interrupts a window counted; any other extra exit (an EPT violation or misconfig, say) must fit
# the fixed allowance, and no userspace exit is ever an interrupt's.
SIDE_REASONS = frozenset({"MSR", "MSR_WRITE", "APIC_WRITE", "APIC_ACCESS", "EOI_INDUCED",
                          "TPR_BELOW_THRESHOLD", "WRITE_CR8", "AVIC_UNACCELERATED_ACCESS"})
# The guest's console: ttyS0, the 16550 UART at COM1 (QEMU -serial on -machine pc). Its port I/O
# (the handshake's lines) lands in every window and is background; port I/O anywhere else is not.
CONSOLE_PORTS = range(0x3F8, 0x400)
ASYNC_STATS = ("irq_exits", "irq_window_exits", "nmi_window_exits")
IDLE_STATS = ("halt_exits",)

INSTRUCTIONS = tuple(TABLE)
VENDORS = ("intel", "amd", "unknown")
HANDLER = {name: i.handler for name, i in TABLE.items() if i.handler}
_VENDOR_IDS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}


def exit_vendor(cpu_vendor: str | None) -> str:
    """Which exit-reason names a host produces, from its CPUID vendor string (/proc/cpuinfo
    vendor_id): "intel" (VMX), "amd" (SVM: AMD and Hygon, whose KVM is kvm_amd) or "unknown"."""
    return _VENDOR_IDS.get((cpu_vendor or "").strip(), "unknown")


def expected_reasons(instruction: str, vendor: str) -> tuple[str, ...]:
    """kvm_exit reason names one iteration of `instruction` produces on `vendor`'s host."""
    return TABLE[instruction].reasons(vendor)


def per_iteration(count: int, n: int) -> float:
    return round(count / n, 6)


def check_n(iterations_total) -> int:
    if isinstance(iterations_total, bool) or not isinstance(iterations_total, int) or iterations_total <= 0:
        raise ExitlatError(f"iterations_total must be a positive integer, got {iterations_total!r}")
    return iterations_total


def check_path(expected_path: str, instruction: str) -> None:
    if expected_path not in PATHS:
        raise ExitlatError(f"unknown expected path {expected_path!r} ({', '.join(PATHS)})")
    if instruction not in INSTRUCTIONS:
        raise ExitlatError(f"unknown instruction {instruction!r} ({', '.join(INSTRUCTIONS)})")
    if expected_path == "qemu" and not (TABLE[instruction].io or TABLE[instruction].mmio):
        raise ExitlatError(f"a QEMU-path case runs port I/O or MMIO, not {instruction}")


def check_stats(stats) -> None:
    if stats is not None and (not isinstance(stats, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in stats.values())):
        raise ExitlatError(f"KVM stats must be a dict name -> integer delta, got {stats!r}")


def bounds(n: int, allowance: int) -> tuple[float, float, float]:
    """(lo, hi) of "≈1 per iteration" and the maximum of "≈0 per iteration"."""
    return ((1 - ONE_TOLERANCE) * n, (1 + ONE_TOLERANCE) * n + allowance,
            ZERO_TOLERANCE * n + allowance)


def stats_tolerances() -> dict:
    return {"one": ONE_TOLERANCE, "zero": ZERO_TOLERANCE, "stray": STRAY_EVENTS,
            "interrupt_side_exits": INTERRUPT_SIDE_EXITS, "console_slack": CONSOLE_SLACK,
            "console_default": STATS_STRAY_EVENTS, "resolution": RESOLUTION,
            "background_limit": BACKGROUND_LIMIT}


class Bounds:
    """"≈1" and "≈0 per iteration" for one window of n iterations, with the fixed allowance
    (STRAY_EVENTS) and with the background the window measured (`background`: the interrupt and
    idle side exits it may explain). A count that passes only thanks to the background sets
    `relied`: that check rests on the background, and BACKGROUND_LIMIT decides whether it may. A
    count within the fixed allowance proves its point however busy the window was.

    `fixed`: the fixed allowance (STRAY_EVENTS, or a measured estimate's slack such as the
    console's); `symmetric`: the allowances widen "≈1" downwards too (KVM's counters, which
    cannot tell an exit of the loop from one of the background, unlike the trace's reasons)."""

    def __init__(self, n: int, background: float, fixed: float = STRAY_EVENTS,
                 symmetric: bool = False):
        self.n, self.background, self.fixed, self.relied = n, background, fixed, False
        self.lo_fixed = (1 - ONE_TOLERANCE) * n - (fixed if symmetric else 0)
        self.lo = self.lo_fixed - (background if symmetric else 0)
        self.hi_fixed = (1 + ONE_TOLERANCE) * n + fixed
        self.zero_fixed = ZERO_TOLERANCE * n + fixed
        self.hi, self.zero_max = self.hi_fixed + background, self.zero_fixed + background

    def one(self, count: float) -> bool:
        if not self.lo <= count <= self.hi:
            return False
        self.relied |= not self.lo_fixed <= count <= self.hi_fixed
        return True

    def zero(self, count: float) -> bool:
        if count > self.zero_max:
            return False
        self.relied |= count > self.zero_fixed
        return True

    def zero_fixed_only(self, count: float) -> bool:
        """≈0 where no background can explain anything (userspace exits, exits no interrupt
        causes)."""
        return count <= self.zero_fixed

    def gate(self, what: str) -> str:
        """too_small() of this window's checks: the whole allowance counts only where one rested
        on it."""
        return too_small(self.n, self.fixed, self.fixed + (self.background if self.relied else 0),
                         what)


def side_allowance(interrupts: int, idle: int) -> int:
    """Synchronous exits a window may hold beyond its path: STRAY_EVENTS plus what the interrupts
    and idle wake-ups it counted explain (each may make the guest write its EOI and re-arm its
    timer)."""
    return STRAY_EVENTS + INTERRUPT_SIDE_EXITS * (max(interrupts, 0) + max(idle, 0))


def min_verifiable_n(allowance: float) -> int:
    """The smallest n at which an absolute allowance is small against n (RESOLUTION)."""
    return int(-(-allowance // RESOLUTION))


def too_small(n: int, fixed: float, total: float, what: str) -> str:
    """Why a check cannot verify at n ('' when it can): its fixed allowance is not small against
    n (RESOLUTION), or its whole allowance, measured background included, is not (BACKGROUND_LIMIT)."""
    if fixed > RESOLUTION * n:
        return (f"n={n} is too small: the fixed allowance for {what} ({fixed:.0f} events) is "
                f"{fixed / n:.0%} of n, above {RESOLUTION:.0%}; verifying needs n ≥ "
                f"{min_verifiable_n(fixed)}")
    if total > BACKGROUND_LIMIT * n:
        return (f"too much background: the allowance for {what} ({total:.0f} events, mostly "
                f"explained by interrupts) is {total / n:.0%} of n, above {BACKGROUND_LIMIT:.0%}")
    return ""


def other_path_fraction(deviating: float, n: int) -> float:
    """The largest fraction of n iterations that may have taken another path or been disturbed."""
    return round(min(max(deviating, 0) / n, 1.0), 6)


def emulation_detail(stats: dict, zero_max: float) -> str:
    """Why the exit counters cannot describe the path ('' when they can): KVM's instruction
    emulator ran the loop (software KVM such as PVM emulates guest code; exits and io_exits then
    count neither the instructions nor their I/O)."""
    emu = stats.get("insn_emulation", 0)
    if emu > zero_max:
        return (f"KVM's instruction emulator ran {emu} instructions in the window (insn_emulation; "
                "software KVM or emulated code): its exit counters do not describe the path")
    return ""


def stats_verdict(problems: list[str], small: str, head: str, summary: str) -> tuple[str, str]:
    """(status, detail) of a check from KVM's stats: failed on any problem, else unverified where
    the window is too small or busy to verify (`small`, from Bounds.gate or too_small), else
    passed; `head` names the check, `summary` what was counted."""
    if problems:
        return STATUS_FAILED, f"failed {head}: " + "; ".join(problems)
    if small:
        return STATUS_UNVERIFIED, f"unverified {head}: {small} ({summary})"
    return STATUS_PASSED, f"passed {head}: {summary}"

