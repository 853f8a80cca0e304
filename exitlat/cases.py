"""The six measurement cases, which instruction each runs and which host path its exits must take.

F (the "fast" instruction, chosen with --instr) runs in cases 1, 3 and 5; S (OUTB to the debugcon
port, always) runs in cases 2, 4 and 6. See docs/probes.md for the reasoning behind each rule.
"""

from dataclasses import dataclass

from .errors import ExitlatError

ALL_CASES = (1, 2, 3, 4, 5, 6)
F_INSTRUCTIONS = ("cpuid", "vmcall", "rdmsr", "wrmsr_tsc_deadline")
S_INSTRUCTION = "outb"
DEFAULT_MSR = 0x3B          # IA32_TSC_ADJUST: intercepted and emulated inside KVM
TSC_DEADLINE_MSR = 0x6E0    # IA32_TSC_DEADLINE: KVM's irq-off fastpath
# Passed through to the guest by KVM (VMX and SVM): reading them never exits.
PASSTHROUGH_MSRS = frozenset({0x174, 0x175, 0x176, 0xC0000100, 0xC0000101, 0xC0000102})

# Expected host paths, from cheapest to dearest.
PATH_FASTPATH = "kvm_fastpath"   # handled in KVM's irq-off fastpath, before IRQs are re-enabled
PATH_KVM = "kvm"                 # handled by KVM's normal in-kernel exit handler
PATH_QEMU = "qemu"               # exit to QEMU userspace (KVM_RUN returns) and back

_FLOWS = {
    1: "user",
    2: "user",
    3: "user→kernel (ioctl)",
    4: "user→kernel (ioctl)",
    5: "kernel",
    6: "kernel",
}

# The instructions each F case accepts (S cases always run outb).
_F_ALLOWED = {
    1: ("cpuid", "vmcall"),                            # rdmsr #GPs at CPL 3 without an exit
    3: ("cpuid", "vmcall", "rdmsr"),                   # tsc deadline: only the kernel loop
    5: ("cpuid", "vmcall", "rdmsr", "wrmsr_tsc_deadline"),
}

_WHY_NOT = {
    "rdmsr": "RDMSR at CPL 3 raises #GP inside the guest without a VM exit; use case 3 or 5",
    "wrmsr_tsc_deadline": ("WRMSR to IA32_TSC_DEADLINE needs CPL 0 and the guest's timer saved and "
                           "restored around it, which only the kernel loop (case 5) does"),
}

# Exit reasons as KVM's kvm_exit tracepoint names them, per vendor.
_EXIT_REASON = {
    "intel": {"cpuid": "CPUID", "vmcall": "VMCALL", "rdmsr": "MSR_READ",
              "wrmsr_tsc_deadline": "MSR_WRITE", "outb": "IO_INSTRUCTION"},
    "amd": {"cpuid": "cpuid", "vmcall": "vmmcall", "rdmsr": "msr",
            "wrmsr_tsc_deadline": "msr", "outb": "io"},
}


@dataclass(frozen=True)
class CaseSpec:
    number: int
    flow: str                 # where the instruction runs: user, user→kernel (ioctl), kernel
    instruction: str          # cpuid, vmcall, rdmsr, wrmsr_tsc_deadline or outb
    expected_path: str        # PATH_FASTPATH, PATH_KVM or PATH_QEMU
    key: str                  # case1..case6: the name on the console and on the samples disk
    msr: int | None = None    # for rdmsr / wrmsr_tsc_deadline
    port: int | None = None   # for outb

    def exit_reason(self, vendor: str = "intel") -> str:
        """The kvm_exit reason one iteration should produce on this vendor's host."""
        return _EXIT_REASON["amd" if vendor == "amd" else "intel"][self.instruction]


def _valid() -> str:
    return "valid cases: 1-6 (e.g. 1-6, 1,3,5, 2 or all)"


def parse_cases(text: str) -> list[int]:
    """'1-6', '1,3,5', '2', 'all', '1-3,6' -> sorted unique case numbers; anything else is an error."""
    s = str(text).strip().lower()
    if not s:
        raise ExitlatError(f"no case given; {_valid()}")
    if s == "all":
        return list(ALL_CASES)
    out: set[int] = set()
    for part in s.split(","):
        part = part.strip()
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ExitlatError(f"bad case {part!r}; {_valid()}") from None
        if not (1 <= lo <= 6 and 1 <= hi <= 6):
            raise ExitlatError(f"unknown case {part!r}; {_valid()}")
        if hi < lo:
            raise ExitlatError(f"empty case range {part!r}; {_valid()}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ExitlatError(f"I/O port must be between 0 and 0xffff, got {port!r}")
    return port


def tsc_deadline_fastpath(host: dict | None) -> bool:
    """Whether KVM's irq-off fastpath can handle a WRMSR to IA32_TSC_DEADLINE on this host: only
    with the VMX preemption timer (kvm_can_use_hv_timer()), so never on AMD/Hygon (SVM has none)
    and not on Intel with kvm_intel.preemption_timer=N. Unknown hosts (no host facts) say yes and
    leave the proof to the verifier's fastpath probe."""
    if not host:
        return True
    vendor = (host.get("cpu") or {}).get("vendor")
    if vendor in ("AuthenticAMD", "HygonGenuine"):
        return False
    timer = ((host.get("kvm") or {}).get("parameters") or {}).get("kvm_intel.preemption_timer")
    return str(timer).upper() not in ("N", "0")


def case_specs(cases, instr: str = "cpuid", port: int = 0xE9, msr: int | None = None,
               fastpath: bool = True) -> list[CaseSpec]:
    """One CaseSpec per case, refusing combinations that cannot measure what they claim.
    `fastpath`: whether WRMSR TSC_DEADLINE can take KVM's fastpath here (tsc_deadline_fastpath);
    where it cannot, case 5 still runs it and expects the normal in-kernel handler."""
    if instr not in F_INSTRUCTIONS:
        raise ExitlatError(f"unknown instruction {instr!r}; choose one of {', '.join(F_INSTRUCTIONS)}")
    check_port(port)
    if msr is not None and not 0 <= msr <= 0xFFFFFFFF:
        raise ExitlatError(f"MSR index must be a 32-bit number, got {msr!r}")
    if instr == "rdmsr" and msr in PASSTHROUGH_MSRS:
        raise ExitlatError(f"MSR {msr:#x} is passed through by KVM and never exits; "
                           f"use {DEFAULT_MSR:#x} (IA32_TSC_ADJUST)")
    specs = []
    for n in cases:
        if n not in ALL_CASES:
            raise ExitlatError(f"unknown case {n!r}; {_valid()}")
        if n % 2 == 0:
            specs.append(CaseSpec(n, _FLOWS[n], S_INSTRUCTION, PATH_QEMU, f"case{n}", port=port))
            continue
        if instr not in _F_ALLOWED[n]:
            raise ExitlatError(f"case {n} cannot use {instr}: {_WHY_NOT[instr]}")
        spec_msr = None
        path = PATH_KVM
        if instr == "rdmsr":
            spec_msr = DEFAULT_MSR if msr is None else msr
        elif instr == "wrmsr_tsc_deadline":
            spec_msr, path = TSC_DEADLINE_MSR, PATH_FASTPATH if fastpath else PATH_KVM
        specs.append(CaseSpec(n, _FLOWS[n], instr, path, f"case{n}", msr=spec_msr))
    return specs
