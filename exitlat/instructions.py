"""Every fact exitlat knows about an instruction it can time, in one table.

Adding an exit kind means one row here and one row in the module's EL_INSTRUCTIONS
(guest/module/exitlat_mod.c: the statement one iteration runs), plus a WINDOW line in the probe
(guest/probe/exitlat-probe.c) if CPL 3 can run it. The guest's ids and the probe's rows are
generated from this table at build time (exitlat/build/guestgen.py). The cases, the verifier and
the timed-window check all read it too (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

# Expected host paths, from cheapest to dearest.
PATH_FASTPATH = "kvm_fastpath"   # handled in KVM's irq-off fastpath, before IRQs are re-enabled
PATH_KVM = "kvm"                 # handled by KVM's normal in-kernel exit handler
PATH_QEMU = "qemu"               # exit to QEMU userspace (KVM_RUN returns) and back
KVM_PATHS = (PATH_KVM, PATH_FASTPATH)
PATHS = KVM_PATHS + (PATH_QEMU,)


@dataclass(frozen=True)
class Instruction:
    name: str
    cases: tuple[int, ...]      # the cases that may run it (empty: verifier-only, not benchable)
    path: str                   # the path one iteration must take
    vmx_reason: str             # kvm_exit reason on Intel (VMX), as exitlat.verify.trace.kvmtrace names it
    svm_reason: str             # kvm_exit reason on AMD/Hygon (SVM)
    handler: str | None         # KVM handler tracepoint count (ExitCounts.handled key), if any
    kvm_stat: str               # KVM binary stat that counts one per iteration
    msr: int | None = None      # the MSR it reads or writes
    why_not: str = ""           # why the cases it is not allowed in cannot measure it
    fastpath: tuple[str, ...] = ()  # KVM's irq-off fastpath handlers of it, per kernel version
    #                                 (return-probed to prove the fastpath: verify/trace/kprobes.py)
    io: str | None = None       # port I/O: the kvm_pio direction of one iteration, "in" or "out"
    port: int | None = None     # the port it always uses (None: --port, as outb)

    def reasons(self, vendor: str) -> tuple[str, ...]:
        """kvm_exit reason names one iteration produces on `vendor`'s host ("unknown": either)."""
        if vendor == "intel":
            return (self.vmx_reason,)
        if vendor == "amd":
            return (self.svm_reason,)
        return tuple(dict.fromkeys((self.vmx_reason, self.svm_reason)))


DEFAULT_MSR = 0x3B          # IA32_TSC_ADJUST: intercepted and emulated inside KVM
QEMU_NOP_PORT = 0x1234      # a port no device claims: KVM exits to QEMU, which reads all ones
#                             (kvm-unit-tests x86/vmexit.c inl_from_qemu)
TSC_DEADLINE_MSR = 0x6E0    # IA32_TSC_DEADLINE: KVM's irq-off fastpath where it can arm the
#                             VMX preemption timer
# Passed through to the guest by KVM (VMX and SVM): reading them never exits.
PASSTHROUGH_MSRS = frozenset({0x174, 0x175, 0x176, 0xC0000100, 0xC0000101, 0xC0000102})

TABLE = {i.name: i for i in (
    Instruction("cpuid", (1, 3, 5), PATH_KVM, "CPUID", "CPUID", "cpuid", "exits"),
    Instruction("vmcall", (1, 3, 5), PATH_KVM, "VMCALL", "VMMCALL", "hypercall", "hypercalls"),
    Instruction("rdmsr", (3, 5), PATH_KVM, "MSR_READ", "MSR", "msr_read", "exits", DEFAULT_MSR,
                "RDMSR at CPL 3 raises #GP inside the guest without a VM exit; use case 3 or 5"),
    Instruction("wrmsr_tsc_deadline", (5,), PATH_FASTPATH, "MSR_WRITE", "MSR", "msr_write", "exits",
                TSC_DEADLINE_MSR,
                "WRMSR to IA32_TSC_DEADLINE needs CPL 0 and the guest's timer saved and restored "
                "around it, which only the kernel loop (case 5) does",
                fastpath=("handle_fastpath_set_msr_irqoff",     # 6.1 - 6.12
                          "handle_fastpath_wrmsr")),            # 6.18
    Instruction("wrmsr", (), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits"),
    Instruction("outb", (2, 4, 6), PATH_QEMU, "IO_INSTRUCTION", "IO_INSTRUCTION", None, "io_exits",
                io="out"),
    # The kvm-unit-tests x86/vmexit.c kinds (docs/architecture.md: one row here, one guest row).
    # WBINVD: kvm_emulate_wbinvd, which flushes only with non-coherent DMA (an assigned device),
    # else just skips it. Intercepted on SVM always, on VMX with "WBINVD exiting" (every VMX CPU
    # KVM supports has it; without it the guest's WBINVD runs natively, no exit).
    Instruction("wbinvd", (3, 5), PATH_KVM, "WBINVD", "WBINVD", None, "exits",
                why_not="WBINVD at CPL 3 raises #GP inside the guest without a VM exit; "
                        "use case 3 or 5"),
    # INVD: kvm_emulate_invd skips it as a NOP (VMX exits on it unconditionally, SVM intercepts it).
    # Safe only where KVM intercepts it (natively it drops dirty cache lines): the module refuses
    # it unless it runs under KVM, so TCG refuses it too.
    Instruction("invd", (3, 5), PATH_KVM, "INVD", "INVD", None, "exits",
                why_not="INVD at CPL 3 raises #GP inside the guest without a VM exit; "
                        "use case 3 or 5"),
    # INL from a port no device claims: KVM has no in-kernel device there, so every read is a
    # userspace exit (KVM_EXIT_IO) and QEMU's unassigned-I/O read, as OUTB to 0xe9 is for writes.
    Instruction("inl_from_qemu", (3, 5), PATH_QEMU, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits",
                why_not="IN at CPL 3 needs ioperm() for its port, which the probe sets up only for "
                        "outb; use case 3 or 5", io="in", port=QEMU_NOP_PORT),
    # XSETBV of XCR0's current value (read before the batch): kvm_emulate_xsetbv, both vendors.
    Instruction("xsetbv", (5,), PATH_KVM, "XSETBV", "XSETBV", None, "exits",
                why_not="XSETBV needs CPL 0 and the current XCR0 read before the timed loop, "
                        "which only the kernel loop (case 5) does"),
    Instruction("rd_tsc_adjust_msr", (3, 5), PATH_KVM, "MSR_READ", "MSR", "msr_read", "exits",
                DEFAULT_MSR,
                "RDMSR at CPL 3 raises #GP inside the guest without a VM exit; use case 3 or 5"),
    # WRMSR IA32_TSC_ADJUST of its current value: KVM adjusts the TSC offset by 0 and still asks
    # for a guest clock update (KVM_REQ_CLOCK_UPDATE) on every write, as vmexit.flat measures it.
    Instruction("wr_tsc_adjust_msr", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                DEFAULT_MSR,
                "WRMSR needs CPL 0 and the current IA32_TSC_ADJUST read before the timed loop, "
                "which only the kernel loop (case 5) does"),
)}



def f_instructions(table: dict[str, Instruction]) -> tuple[str, ...]:
    """The instructions --instr may name (cases 1, 3, 5), in table order: the first is the default."""
    return tuple(n for n, i in table.items() if any(c % 2 for c in i.cases))


F_INSTRUCTIONS = f_instructions(TABLE)
S_INSTRUCTION = "outb"


def instruction(name: str) -> Instruction:
    return TABLE[name]
