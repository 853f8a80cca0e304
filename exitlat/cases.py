"""The six measurement cases, which instruction each runs and which host path its exits must take.

F (the "fast" instruction, chosen with --instr) runs in cases 1, 3 and 5; S (OUTB to the debugcon
port, always) runs in cases 2, 4 and 6. See docs/probes.md for the reasoning behind each rule.
"""

from dataclasses import dataclass

from .errors import ExitlatError
from .limits import MAX_PORT
from .instructions import (DEFAULT_MSR, F_INSTRUCTIONS, PASSTHROUGH_MSRS, PATH_FASTPATH, PATH_KVM,
                           S_INSTRUCTION, TABLE)

ALL_CASES = (1, 2, 3, 4, 5, 6)

_FLOWS = {
    1: "user",
    2: "user",
    3: "user→kernel (ioctl)",
    4: "user→kernel (ioctl)",
    5: "kernel",
    6: "kernel",
}


@dataclass(frozen=True)
class CaseSpec:
    number: int
    flow: str                 # where the instruction runs: user, user→kernel (ioctl), kernel
    instruction: str          # a row of exitlat/instructions.py: F (cpuid, ...) or outb
    expected_path: str        # PATH_FASTPATH, PATH_KVM or PATH_QEMU
    key: str                  # case1..case6: the name on the console and on the samples disk
    msr: int | None = None    # for rdmsr / wrmsr_tsc_deadline
    port: int | None = None   # for port I/O: outb's --port, or the kind's own (inl_from_qemu)


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
    if not isinstance(port, int) or not 0 <= port <= MAX_PORT:
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
        raise ExitlatError(f"unknown instruction {instr!r} (--instr); choose one of {', '.join(F_INSTRUCTIONS)}")
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
        ins = TABLE[S_INSTRUCTION if n % 2 == 0 else instr]
        if n not in ins.cases:
            raise ExitlatError(f"case {n} cannot use {ins.name}: {ins.why_not}")
        path = ins.path
        if path == PATH_FASTPATH and not fastpath:
            path = PATH_KVM
        spec_msr = (msr if msr is not None and ins.name == "rdmsr" else ins.msr)
        specs.append(CaseSpec(n, _FLOWS[n], ins.name, path, f"case{n}", msr=spec_msr,
                              port=port if ins.name == S_INSTRUCTION else ins.port))
    return specs
