"""The six measurement cases, which instruction each runs and which host path its exits must take.

F (the "fast" instructions, chosen with --instr: one, a list or all) run in cases 1, 3 and 5; S (OUTB to the debugcon
port, always) runs in cases 2, 4 and 6. See docs/probes.md for the reasoning behind each rule.
"""

from dataclasses import dataclass

from .errors import ExitlatError
from .limits import MAX_PORT
from .hostpaths import choose_path, choose_reason, choose_receiver_path, choose_second
from .instructions import (DEFAULT_MSR, F_INSTRUCTIONS, PASSTHROUGH_MSRS, PATH_FASTPATH,
                           PATH_NONE, S_INSTRUCTION, TABLE)

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
    expected_path: str        # PATH_FASTPATH, PATH_KVM, PATH_QEMU or PATH_NONE
    key: str                  # case1..case6, or case<n>_<instr> with several F instructions: the
    #                           name on the console and on the samples disk (case_keys)
    msr: int | None = None    # for rdmsr / wrmsr_tsc_deadline
    port: int | None = None   # for port I/O: outb's --port, or the kind's own (inl_from_qemu)
    path_basis: str = ""      # why this path is expected here (exitlat.hostpaths.choose_path)
    receiver_path: str | None = None   # a two-vCPU kind: whether the receiver exits ("kvm":
    #                                    its one exit per iteration) or not ("none")
    receiver_basis: str = ""
    second_exit: str | None = None   # the kvm_exit reason of its second exit here (a timer's
    #                                    expiry, an interrupt window, a HLT), if it has one
    exit_reason: str | None = None   # the kvm_exit reason of its exit here where the host's
    #                                  differs from its row's (hostpaths.choose_reason), else None


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
    and not on Intel with kvm_intel.preemption_timer=N (the table's host rules for it). Unknown
    hosts (no host facts) say yes and leave the proof to the verifier's fastpath probe."""
    return choose_path(TABLE["wrmsr_tsc_deadline"], host).path == PATH_FASTPATH


def parse_instrs(text) -> tuple[str, ...] | str:
    """--instr: one F kind, a comma list of them, or 'all' (returned as "all": every kind the
    cases allow). Unknown names and repeats are one-line errors."""
    words = [w.strip() for w in str(text).lower().split(",")] if str(text).strip() else []
    if words == ["all"]:
        return "all"
    if not words or "" in words:
        raise ExitlatError(f"no instruction in --instr {text!r}; choose all or a comma list of "
                           f"{', '.join(F_INSTRUCTIONS)}")
    bad = [w for w in words if w not in F_INSTRUCTIONS]
    if bad:
        raise ExitlatError(f"unknown instruction {bad[0]!r} (--instr); choose all or a comma list "
                           f"of {', '.join(F_INSTRUCTIONS)}")
    if len(set(words)) != len(words):
        raise ExitlatError(f"--instr names an instruction twice: {text}")
    return tuple(words)


def case_keys(cases, instrs: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(case, instruction, key) in the order the guest runs them: each case as given; an F case
    once per instruction that it allows (exitlat-probe.c builds the same list). A single F
    instruction keeps the key case<n>; several make it case<n>_<instruction>."""
    out = []
    for n in cases:
        if n % 2 == 0:
            out.append((n, S_INSTRUCTION, f"case{n}"))
            continue
        for name in instrs:
            if n in TABLE[name].cases:
                out.append((n, name, f"case{n}" if len(instrs) == 1 else f"case{n}_{name}"))
    return out


def check_apic_modes(instrs) -> None:
    """The guest's local APIC runs in one mode per boot: the xAPIC kinds (MMIO to the APIC page;
    the guest booted nox2apic) and the x2APIC kinds (its MSRs) cannot share a run."""
    xapic = [n for n in instrs if TABLE[n].xapic]
    x2apic = [n for n in instrs if TABLE[n].x2apic]
    if xapic and x2apic:
        raise ExitlatError(f"{', '.join(xapic)} need{'s' if len(xapic) == 1 else ''} the guest in "
                           f"xAPIC mode and {', '.join(x2apic)} in x2APIC mode: one boot has one; "
                           f"run them in separate benches")


def case_specs(cases, instr="cpuid", port: int = 0xE9, msr: int | None = None,
               host: dict | None = None, two_cores: bool = False) -> list[CaseSpec]:
    """One CaseSpec per case and F instruction, refusing combinations that cannot measure what
    they claim. `instr`: a name, a comma list, a tuple of names or "all" (every kind each F case
    allows; the others are left out, not refused). `host`: the host's facts, which decide the
    path of host-dependent kinds (exitlat.hostpaths); without them each kind's default.
    `two_cores`: the user gave a second core, so "all" includes the two-vCPU kinds (ipi, ...);
    named, they run anyway (the placement then picks the second core)."""
    chosen = parse_instrs(",".join(instr) if isinstance(instr, (tuple, list)) else instr)
    everything = chosen == "all"
    instrs = (tuple(n for n in F_INSTRUCTIONS if (two_cores or TABLE[n].vcpus == 1)
                    and not TABLE[n].xapic) if everything else chosen)
    check_apic_modes(instrs)
    check_port(port)
    if msr is not None and not 0 <= msr <= 0xFFFFFFFF:
        raise ExitlatError(f"MSR index must be a 32-bit number, got {msr!r}")
    if "rdmsr" in instrs and msr in PASSTHROUGH_MSRS:
        raise ExitlatError(f"MSR {msr:#x} is passed through by KVM and never exits; "
                           f"use {DEFAULT_MSR:#x} (IA32_TSC_ADJUST)")
    for n in cases:
        if n not in ALL_CASES:
            raise ExitlatError(f"unknown case {n!r}; {_valid()}")
        for name in ((S_INSTRUCTION,) if n % 2 == 0 else () if everything else instrs):
            ins = TABLE[name]
            if n not in ins.cases:
                raise ExitlatError(f"case {n} cannot use {ins.name}: {ins.why_not}")
    specs = []
    for n, name, key in case_keys(cases, instrs):
        ins = TABLE[name]
        choice = choose_path(ins, host)
        spec_msr = (msr if msr is not None and ins.name == "rdmsr" else ins.msr)
        receiver = choose_receiver_path(ins, host)
        second = choose_second(ins, host) if choice.path != PATH_NONE else None
        reason = choose_reason(ins, host) if choice.path != PATH_NONE else None
        basis = choice.basis + "".join(f"; {c.basis}" for c in (reason, second) if c)
        specs.append(CaseSpec(n, _FLOWS[n], ins.name, choice.path, key, msr=spec_msr,
                              port=port if ins.name == S_INSTRUCTION else ins.port,
                              path_basis=basis,
                              second_exit=second.path if second and second.path != PATH_NONE
                              else None,
                              exit_reason=reason.path if reason else None,
                              receiver_path=receiver.path if receiver else None,
                              receiver_basis=receiver.basis if receiver else ""))
    if not specs:
        raise ExitlatError(f"no case of {','.join(map(str, cases))} can run {instr}")
    return specs
