"""Every fact exitlat knows about an instruction it can time, in one table.

Adding an exit kind means one row here and one row in the module's EL_INSTRUCTIONS
(guest/module/exitlat_mod.c: the statement one iteration runs), plus a WINDOW line in the probe
(guest/probe/exitlat-probe.c) if CPL 3 can run it. The guest's ids and the probe's rows are
generated from this table at build time (exitlat/build/guestgen.py). The cases, the verifier and
the timed-window check all read it too (docs/architecture.md). Where the path a kind takes depends
on the host (EPT, TPR shadow, a pass-through MSR), its row says so in `host_paths`, decided from the
host's facts by exitlat.hostpaths.
"""

from __future__ import annotations

from dataclasses import dataclass

# Expected host paths, from cheapest to dearest.
PATH_FASTPATH = "kvm_fastpath"   # handled in KVM's irq-off fastpath, before IRQs are re-enabled
PATH_KVM = "kvm"                 # handled by KVM's normal in-kernel exit handler
PATH_QEMU = "qemu"               # exit to QEMU userspace (KVM_RUN returns) and back
PATH_NONE = "none"               # no exit: virtualized in hardware, or passed through by KVM
KVM_PATHS = (PATH_KVM, PATH_FASTPATH)
PATHS = KVM_PATHS + (PATH_QEMU, PATH_NONE)
PATH_TEXT = {PATH_FASTPATH: "KVM fastpath", PATH_KVM: "KVM", PATH_QEMU: "QEMU round trip",
             PATH_NONE: "no exit (virtualized in hardware or passed through)"}


@dataclass(frozen=True)
class HostPath:
    """The path a kind takes instead of its row's `path` on hosts of `vendor` ("intel"/"amd") where
    every one of `facts` holds (exitlat.hostpaths.host_facts names them); the first match wins."""
    path: str
    vendor: str
    facts: tuple[str, ...] = ()
    why: str = ""


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
    exits: int = 1              # exits of its reason one iteration takes where it exits (a toggle
    #                             writes twice)
    rearm: bool = False         # on the path "none", KVM intercepts it again after any other exit
    #                             (mov_dr): its own exits then count as background, not the path
    host_paths: tuple[HostPath, ...] = ()   # host-dependent paths, first match wins (else `path`)
    kut: str | None = None      # the kvm-unit-tests x86/vmexit.c test it corresponds to
    kut_twin: tuple[str, str] | None = None  # (vmexit.flat's test of the same operation, why
    #                                          --reference does not run it beside this kind)
    what: str = ""              # what one iteration exercises in KVM or QEMU (docs/measuring.md)
    needs: str = ""             # the vCPU feature without which the guest refuses it
    irqs_on: bool = False       # its loop turns interrupts on in the window: the guest's own
    #                             interrupts (a timer re-armed: one more MSR exit) may land there,
    #                             so the module holds the guest's timer for its batch
    testdev: int | None = None  # a write to QEMU's pci-testdev: the test it selects (QEMU's
    #                             number: 0-2 in the memory BAR, 3-5 in the I/O BAR; TESTDEV_TESTS)
    vcpus: int = 1              # vCPUs its VM needs (2: an IPI from the measured vCPU to another)
    receiver: tuple[str, str] | None = None   # the other vCPU's exit per iteration (VMX, SVM
    #                                           reason), proven in the traced window too
    receiver_paths: tuple[HostPath, ...] = ()  # hosts where the receiver takes no exit (PATH_NONE)
    second: tuple[str, str] | None = None   # the exit every iteration takes after its first
    #                                         (VMX, SVM reason): ≈1 per iteration, not background
    second_why: str = ""        # what the second exit is
    second_paths: tuple[HostPath, ...] = ()  # hosts where the second exit has another reason
    #                                          (HostPath.path: that reason; first match wins)
    timer_expiry: bool = False  # the second exit is a timer's expiry (its reason is the host's:
    #                             hostpaths.choose_second)
    ahead: int = 0              # cycles from t0 to its deadline; its samples are stored net of it
    reason_paths: tuple[HostPath, ...] = ()  # hosts where its exit has another kvm_exit reason
    #                                          (HostPath.path: that reason; first match wins)
    xapic: bool = False         # it writes the local APIC's MMIO page: the guest boots in xAPIC
    #                             mode (nox2apic), where the x2APIC kinds cannot run

    @property
    def mmio(self) -> bool:
        """An MMIO write (its exit: an NPT/EPT fault on the device's page), not port I/O."""
        return self.testdev is not None and self.io is None

    @property
    def testdev_reg(self) -> int | None:
        """The offset of its pci-testdev test's register in its BAR (QEMU: the BAR's test area,
        2048 bytes of memory or 128 ports, + the test's number); the guest module refuses the kind
        where the device's header says otherwise."""
        if self.testdev is None:
            return None
        return (TESTDEV_IO_AREA if self.io else TESTDEV_MEM_AREA) + self.testdev

    @property
    def kut_testdev(self) -> str | None:
        """vmexit.flat's test of the same write (its pci-mem and pci-io tests, which `--reference`
        does not run: they need pci-testdev in the reference's VM too)."""
        if self.testdev is None:
            return None
        return f"{TESTDEV_TESTS[self.testdev]}:pci-{'io' if self.io else 'mem'}"

    @property
    def kut_smp(self) -> str | None:
        """vmexit.flat's test of the same IPI (its `ipi` and `ipi_halt` need -smp 2, which
        `--reference`'s VM does not have: not run there)."""
        return self.name if self.vcpus > 1 else None

    @property
    def x2apic(self) -> bool:
        """It needs the local APIC in x2APIC mode (its MSRs), the guest's default."""
        return "x2APIC mode" in self.needs

    def receiver_reasons(self, vendor: str) -> tuple[str, ...]:
        """kvm_exit reason names the receiving vCPU's one exit per iteration has on `vendor`."""
        if self.receiver is None:
            return ()
        vmx, svm = self.receiver
        return {"intel": (vmx,), "amd": (svm,)}.get(vendor, tuple(dict.fromkeys((vmx, svm))))

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
ELCR_PORT = 0x4D0           # the 8259 PIC's edge/level register: KVM's in-kernel PIC answers it
PM_TIMER_PORT = 0x608       # ACPI PM timer of -machine pc: PIIX4 PM at the PMBASE SeaBIOS 1.16
#                             gives it (0x600), + 8 (the module checks that it counts)
TSC_DEADLINE_MSR = 0x6E0    # IA32_TSC_DEADLINE: KVM's irq-off fastpath where it can arm the
#                             VMX preemption timer
KERNEL_GS_BASE_MSR = 0xC0000102
SPEC_CTRL_MSR = 0x48
PRED_CMD_MSR = 0x49
TSX_CTRL_MSR = 0x122
X2APIC_EOI_MSR = 0x80B      # the local APIC's EOI register in x2APIC mode
X2APIC_SELF_IPI_MSR = 0x83F  # x2APIC SELF IPI: the vector in bits 0-7
X2APIC_ICR_MSR = 0x830      # x2APIC ICR: the destination's APIC ID in bits 32-63
# QEMU's pci-testdev (-device pci-testdev, added to the VM only for the kinds that need it): a
# memory BAR whose tests are selected by writing their number to offset 0; a write to the selected
# test's register either exits to QEMU (no-eventfd) or, through the ioeventfd QEMU registers with
# KVM when the test is selected, is completed inside KVM (no userspace exit).
TESTDEV_VENDOR, TESTDEV_DEVICE = 0x1B36, 0x0005      # PCI_VENDOR_ID_REDHAT, ..._REDHAT_TEST
TESTDEV_MEM_AREA, TESTDEV_IO_AREA = 2048, 128       # where each BAR's test registers start
TESTDEV_VALUE = 0xFA                                # the datamatch tests' value (every kind writes it)
# On SVM an MMIO access to a page no memslot backs is a nested page fault; on VMX KVM marks such
# pages misconfigured in the EPT after the first access (its MMIO cache), so every later one is an
# EPT misconfiguration exit.
MMIO_VMX_REASON, MMIO_SVM_REASON = "EPT_MISCONFIG", "NPF"
TESTDEV_TESTS = tuple(f"{bar}-{test}" for bar in ("mmio", "portio")       # QEMU's names,
                      for test in ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd"))  # by number
_TESTDEV_NEEDS = "a pci-testdev (QEMU -device pci-testdev, which bench adds for these kinds)"
_TESTDEV_LOOP = ("its test is selected on the device (a QEMU round trip that also registers the "
                 "ioeventfd) before the timed loop, which the user loop (case 1: the BAR mapped "
                 "through sysfs, or ioperm) and the kernel loop (case 5) do; one ioctl per "
                 "iteration (case 3) cannot")
# KVM's irq-off WRMSR fastpath (x2APIC ICR, TSC deadline), as its handler is named per kernel
MSR_FASTPATH = ("handle_fastpath_set_msr_irqoff",     # 6.1 - 6.12
                "handle_fastpath_wrmsr")              # 6.18
_IPIV = HostPath(PATH_NONE, "intel", ("apicv", "ipiv"), "IPI virtualization: the ICR write does "
                 "not exit")
_IPI_NEEDS = "x2APIC mode and a second vCPU (bench --core A,B)"
_NO_NRIPS = HostPath(PATH_KVM, "amd", ("no_nrips",), "no NRIP save (next_rip): KVM's fastpath "
                     "cannot skip the WRMSR and leaves it to the normal handler")
# The xAPIC's page (xapic_* kinds): the ICR write's exit reason where it differs from the rows'.
# SVM: a nested page fault, as any MMIO. VMX: KVM gives the APIC page its own memslot where it has
# FlexPriority, but while APICv is not active its fault handler emulates every access to it
# without mapping it (kvm_mmu_faultin_pfn: RET_PF_EMULATE), so each write is an EPT violation
# (measured on the emulated VT-x host: 1.003 per iteration); with APICv the page is mapped and
# the ICR write traps after it; without FlexPriority it has no memslot: cached MMIO.
_XAPIC_REASONS = (
    HostPath("APIC_WRITE", "intel", ("apicv",),
             "APICv virtualizes the APIC page: the ICR write traps after it (APIC-write exit)"),
    HostPath(MMIO_VMX_REASON, "intel", ("no_flexpriority",),
             "no FlexPriority: the APIC page is unbacked MMIO"))
_XAPIC_AVIC = HostPath(PATH_NONE, "amd", ("avic",),
                       "AVIC accelerates the self-IPI's ICR write (untested: no emulated host "
                       "has AVIC)")
_XAPIC_NEEDS = "xAPIC mode (bench boots the guest nox2apic for it)"
# The second exit of a self-IPI left pending (self_ipi_* and xapic_ipi_*): the interrupt window
# after STI, or the TPR put back below it (VMX: its TPR threshold; CR_ACCESS without a TPR shadow)
_WINDOW_SECOND = dict(second=("INTERRUPT_WINDOW", "VINTR"),
                      second_why="the interrupt window KVM asks for, the IPI pending while IRQs "
                                 "were off")
_TPR_SECOND = dict(second=("TPR_BELOW_THRESHOLD", "WRITE_CR8"),
                   second_why="the TPR put back below the pending IPI")
_CR8_EXITS = HostPath("CR_ACCESS", "intel", ("no_tpr_shadow",),
                      "no TPR shadow: every CR8 write exits")
# A second exit that a host does not take (HostPath.path PATH_NONE in second_paths)
_VID_NO_SECOND = HostPath(PATH_NONE, "intel", ("apicv",),
                          "virtual-interrupt delivery injects the IPI: no second exit")


def _xapic_row(name: str, why_not: str, what: str, **kw) -> Instruction:
    """A row of the xAPIC's self-IPI kinds: case 5, its send one MOV to the APIC page's ICR (the
    exit's reason the host's: _XAPIC_REASONS), in a guest booted nox2apic."""
    return Instruction(name, (5,), PATH_KVM, "EPT_VIOLATION", "NPF", None, "exits",
                       why_not=why_not, reason_paths=_XAPIC_REASONS, host_paths=(_XAPIC_AVIC,),
                       xapic=True, what=what, needs=_XAPIC_NEEDS, **kw)


# Passed through to the guest by KVM (VMX and SVM): reading them never exits.
PASSTHROUGH_MSRS = frozenset({0x174, 0x175, 0x176, 0xC0000100, 0xC0000101, 0xC0000102})

_CPL0 = "{what} at CPL 3 raises #GP inside the guest without a VM exit; use case 3 or 5"
_LOOP = "{what} needs CPL 0 and {setup} read before the timed loop, which only the kernel loop (case 5) does"
# Where VMX lets the guest own a CR0/CR4 bit (cr0/cr4_guest_owned_bits), writing it never exits.
_EPT_OWNS = "with EPT the guest owns CR0.WP (Linux ≥ 6.4) and CR4.PGE: writes do not exit"

TABLE = {i.name: i for i in (
    Instruction("cpuid", (1, 3, 5), PATH_KVM, "CPUID", "CPUID", "cpuid", "exits", kut="cpuid",
                what="kvm_emulate_cpuid: KVM's CPUID table lookup"),
    Instruction("vmcall", (1, 3, 5), PATH_KVM, "VMCALL", "VMMCALL", "hypercall", "hypercalls",
                kut="vmcall", what="kvm_emulate_hypercall: an unknown hypercall, -KVM_ENOSYS"),
    Instruction("rdmsr", (3, 5), PATH_KVM, "MSR_READ", "MSR", "msr_read", "exits", DEFAULT_MSR,
                _CPL0.format(what="RDMSR"), what="kvm_get_msr of --msr (default IA32_TSC_ADJUST)"),
    Instruction("wrmsr_tsc_deadline", (5,), PATH_FASTPATH, "MSR_WRITE", "MSR", "msr_write", "exits",
                TSC_DEADLINE_MSR,
                "WRMSR to IA32_TSC_DEADLINE needs CPL 0 and the guest's timer saved and restored "
                "around it, which only the kernel loop (case 5) does",
                fastpath=MSR_FASTPATH,
                host_paths=(
                    # only the VMX preemption timer lets the irq-off fastpath arm the deadline
                    HostPath(PATH_KVM, "amd", why="SVM has no preemption timer: an hrtimer, "
                             "armed by the normal handler"),
                    HostPath(PATH_KVM, "intel", ("no_preemption_timer",),
                             "kvm_intel.preemption_timer=N: an hrtimer, armed by the normal handler")),
                what="the guest's TSC-deadline timer re-armed 2^30 cycles ahead",
                needs="the TSC-deadline timer (CPUID.1:ECX.TSC_DEADLINE)"),
    Instruction("wrmsr", (), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits"),
    Instruction("outb", (2, 4, 6), PATH_QEMU, "IO_INSTRUCTION", "IO_INSTRUCTION", None, "io_exits",
                io="out", what="KVM_EXIT_IO to QEMU's isa-debugcon and back"),
    # The kvm-unit-tests x86/vmexit.c kinds (docs/architecture.md: one row here, one guest row).
    # WBINVD: kvm_emulate_wbinvd, which flushes only with non-coherent DMA (an assigned device),
    # else just skips it. Intercepted on SVM always, on VMX with "WBINVD exiting" (every VMX CPU
    # KVM supports has it; without it the guest's WBINVD runs natively, no exit).
    Instruction("wbinvd", (3, 5), PATH_KVM, "WBINVD", "WBINVD", None, "exits",
                why_not=_CPL0.format(what="WBINVD"), kut="wbinvd",
                what="kvm_emulate_wbinvd: skipped unless the VM has non-coherent DMA"),
    # INVD: kvm_emulate_invd skips it as a NOP (VMX exits on it unconditionally, SVM intercepts it).
    # Safe only where KVM intercepts it (natively it drops dirty cache lines): the module refuses
    # it unless it runs under KVM, so TCG refuses it too.
    Instruction("invd", (3, 5), PATH_KVM, "INVD", "INVD", None, "exits",
                why_not=_CPL0.format(what="INVD"), kut="invd",
                what="kvm_emulate_invd: skipped as a NOP"),
    # INL from a port no device claims: KVM has no in-kernel device there, so every read is a
    # userspace exit (KVM_EXIT_IO) and QEMU's unassigned-I/O read, as OUTB to 0xe9 is for writes.
    Instruction("inl_from_qemu", (1, 3, 5), PATH_QEMU, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="in", port=QEMU_NOP_PORT, kut="inl_from_qemu",
                what="KVM_EXIT_IO to QEMU's unassigned-port read and back"),
    # XSETBV of XCR0's current value (read before the batch): kvm_emulate_xsetbv, both vendors.
    Instruction("xsetbv", (5,), PATH_KVM, "XSETBV", "XSETBV", None, "exits",
                why_not=_LOOP.format(what="XSETBV", setup="the current XCR0"),
                what="kvm_emulate_xsetbv of XCR0's current value", needs="XSAVE (CR4.OSXSAVE)"),
    Instruction("rd_tsc_adjust_msr", (3, 5), PATH_KVM, "MSR_READ", "MSR", "msr_read", "exits",
                DEFAULT_MSR, _CPL0.format(what="RDMSR"), kut="rd_tsc_adjust_msr",
                what="kvm_get_msr(IA32_TSC_ADJUST)"),
    # WRMSR IA32_TSC_ADJUST of its current value: KVM adjusts the TSC offset by 0 and still asks
    # for a guest clock update (KVM_REQ_CLOCK_UPDATE) on every write, as vmexit.flat measures it.
    Instruction("wr_tsc_adjust_msr", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                DEFAULT_MSR, _LOOP.format(what="WRMSR", setup="the current IA32_TSC_ADJUST"),
                kut="wr_tsc_adjust_msr",
                what="kvm_set_msr(IA32_TSC_ADJUST): TSC offset update and a clock-update request"),
    # The ELCR (0x4d0) belongs to KVM's in-kernel 8259 PIC (kernel_irqchip, QEMU's default with
    # KVM): an I/O exit KVM answers from its PIO bus, no userspace exit. The write rewrites the
    # value the read gave (vmexit.flat writes 0).
    Instruction("inl_from_kernel", (1, 3, 5), PATH_KVM, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="in", port=ELCR_PORT, kut="inl_from_kernel",
                what="an IN of the ELCR, answered by KVM's in-kernel PIC (no userspace exit)"),
    Instruction("outl_to_kernel", (5,), PATH_KVM, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="out", port=ELCR_PORT, kut="outl_to_kernel",
                why_not="the OUT rewrites the ELCR's current value, read before the timed loop, "
                        "which only the kernel loop (case 5) does",
                what="an OUT to the ELCR, handled by KVM's in-kernel PIC (no userspace exit)"),
    # ACPI PM timer: QEMU's PIIX4 PM device computes it from QEMU's clock on every read.
    Instruction("inl_from_pmtimer", (1, 3, 5), PATH_QEMU, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="in", port=PM_TIMER_PORT, kut="inl_from_pmtimer",
                what="KVM_EXIT_IO to QEMU's ACPI PM timer (a clock read in QEMU) and back"),
    # MOV to DR7 of its reset value 0x400 (the module refuses while a breakpoint is armed). The
    # first access exits; KVM then stops intercepting debug registers until the next exit of any
    # kind re-arms it (KVM_DEBUGREG_WONT_EXIT, both vendors): one DR exit per other exit.
    Instruction("mov_dr", (3, 5), PATH_NONE, "DR_ACCESS", "WRITE_DR7", None, "exits", rearm=True,
                why_not=_CPL0.format(what="MOV to DR7"), kut="mov_dr",
                what="MOV to DR7: intercepted once, then the guest owns the debug registers "
                     "until the next exit"),
    # CR8 (the TPR): VMX's TPR shadow and SVM's V_TPR keep it in hardware; a write of the TPR
    # Linux keeps (0) raises no interrupt, so neither direction exits where the shadow exists.
    Instruction("mov_from_cr8", (3, 5), PATH_NONE, "CR_ACCESS", "READ_CR8", None, "exits",
                why_not=_CPL0.format(what="MOV from CR8"), kut="mov_from_cr8",
                host_paths=(HostPath(PATH_KVM, "intel", ("no_tpr_shadow",),
                                     "no TPR shadow: every CR8 access exits (CR_ACCESS)"),),
                what="MOV from CR8: read from the TPR shadow (VMX) or V_TPR (SVM)"),
    # It rewrites the TPR Linux runs with (CR8 = 1: setup_local_APIC's 0x10), read before the
    # loop; vmexit.flat writes 0, its OS's TPR.
    Instruction("mov_to_cr8", (5,), PATH_NONE, "CR_ACCESS", "WRITE_CR8", None, "exits",
                rearm=True, why_not=_LOOP.format(what="MOV to CR8", setup="the current TPR"),
                kut="mov_to_cr8",
                host_paths=(HostPath(PATH_KVM, "intel", ("no_tpr_shadow",),
                                     "no TPR shadow: every CR8 access exits (CR_ACCESS)"),),
                what="MOV to CR8 of its value: the TPR shadow (VMX) or V_TPR (SVM; KVM intercepts CR8 "
                     "writes again only while an interrupt is pending)"),
    # Two CR writes per iteration (clear the bit, restore it), as vmexit.flat does, with IRQs off.
    Instruction("toggle_cr0_wp", (5,), PATH_KVM, "CR_ACCESS", "CR0_SEL_WRITE", None, "exits",
                exits=2, why_not=_LOOP.format(what="a CR0 write", setup="CR0"),
                kut="toggle_cr0_wp",
                host_paths=(HostPath(PATH_NONE, "intel", ("ept", "kernel>=6.4"), _EPT_OWNS),),
                what="CR0.WP cleared and set: kvm_set_cr0 (SVM's selective CR0 intercept)"),
    Instruction("toggle_cr4_pge", (5,), PATH_KVM, "CR_ACCESS", "WRITE_CR4", None, "exits",
                exits=2, why_not=_LOOP.format(what="a CR4 write", setup="CR4"),
                kut="toggle_cr4_pge",
                host_paths=(HostPath(PATH_NONE, "intel", ("ept",), _EPT_OWNS),),
                what="CR4.PGE cleared and set: kvm_set_cr4 and a guest TLB flush"),
    # MSRs KVM passes through: KERNEL_GS_BASE always; SPEC_CTRL once the guest wrote a non-zero
    # value; PRED_CMD once the guest's CPUID has IBPB. At most the first write exits.
    Instruction("wr_kernel_gs_base", (5,), PATH_NONE, "MSR_WRITE", "MSR", "msr_write", "exits",
                KERNEL_GS_BASE_MSR, _LOOP.format(what="WRMSR", setup="the current KERNEL_GS_BASE"),
                kut="wr_kernel_gs_base", what="WRMSR KERNEL_GS_BASE: passed through, no exit"),
    Instruction("wr_ibrs_msr", (5,), PATH_NONE, "MSR_WRITE", "MSR", "msr_write", "exits",
                SPEC_CTRL_MSR, _LOOP.format(what="WRMSR", setup="the current IA32_SPEC_CTRL"),
                exits=2, kut="wr_ibrs_msr",
                what="IA32_SPEC_CTRL.IBRS set and restored: passed through after the first "
                     "non-zero write", needs="IA32_SPEC_CTRL (CPUID: SPEC_CTRL or AMD IBRS)"),
    Instruction("wr_ibpb_msr", (3, 5), PATH_NONE, "MSR_WRITE", "MSR", "msr_write", "exits",
                PRED_CMD_MSR, _CPL0.format(what="WRMSR"), kut="wr_ibpb_msr",
                what="IA32_PRED_CMD.IBPB: passed through, the barrier itself is the cost",
                needs="IBPB (CPUID: SPEC_CTRL or AMD IBPB)"),
    Instruction("wr_tsx_ctrl_msr", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                TSX_CTRL_MSR, _LOOP.format(what="WRMSR", setup="the current IA32_TSX_CTRL"),
                kut="wr_tsx_ctrl_msr",
                what="kvm_set_msr(IA32_TSX_CTRL), where ARCH_CAPABILITIES has TSX_CTRL",
                needs="IA32_TSX_CTRL (ARCH_CAPABILITIES.TSX_CTRL_MSR)"),
    # The local APIC in x2APIC mode (part of the catalogue's interrupt kinds). EOI with nothing in
    # service (the loop runs in an ioctl, not in a handler): KVM's apic_set_eoi finds no vector
    # and returns; APICv's virtual-interrupt delivery virtualizes the write (no exit).
    Instruction("eoi", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits", X2APIC_EOI_MSR,
                "an EOI needs CPL 0 and interrupts off, so that no handler is in service, which "
                "only the kernel loop (case 5) does",
                host_paths=(HostPath(PATH_NONE, "intel", ("apicv",),
                                     "APICv's virtual-interrupt delivery: x2APIC EOI writes do "
                                     "not exit"),),
                what="x2APIC EOI with nothing in service: kvm_lapic_reg_write(APIC_EOI)",
                needs="x2APIC mode"),
    # SELF IPI of the reschedule vector with IRQs off: the send only (vmexit.flat's "ipi" figure
    # of its x2apic_self_ipi tests, without their delivery); the vector stays pending in IRR and
    # is taken once when the batch turns IRQs back on.
    Instruction("x2apic_self_ipi", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                X2APIC_SELF_IPI_MSR,
                "a self-IPI needs CPL 0 and interrupts off (it is taken after the batch), which "
                "only the kernel loop (case 5) does",
                host_paths=(HostPath(PATH_NONE, "intel", ("apicv",),
                                     "APICv virtualizes x2APIC SELF IPI writes: no exit"),),
                what="x2APIC SELF IPI (send only; delivered after the batch): "
                     "kvm_lapic_reg_write(APIC_SELF_IPI)", needs="x2APIC mode"),
    # The same send through the xAPIC's MMIO page (vmexit.flat's self_ipi tests, without their
    # delivery): one MOV to the ICR with the self shorthand. No MSR: the write faults on the APIC
    # page (SVM: a nested page fault, as for any MMIO; VMX: an EPT violation, an APIC-write exit
    # with APICv: _XAPIC_REASONS) and KVM's emulator decodes it for the in-kernel local APIC. The guest must run in xAPIC mode (booted nox2apic).
    _xapic_row("xapic_self_ipi",
               "a self-IPI needs CPL 0 and interrupts off (it is taken after the batch), which "
               "only the kernel loop (case 5) does",
               "xAPIC self-IPI by a MOV to the ICR (send only; delivered after the batch): the "
               "APIC-page fault, KVM's instruction emulator and kvm_lapic_reg_write(APIC_ICR)"),
    # vmexit.flat's self_ipi_sti_nop and self_ipi_tpr (xAPIC mode, as vmexit.flat runs): the
    # send of xapic_self_ipi, then delivered as self_ipi_sti_nop and self_ipi_tpr deliver it.
    # With APICv the ICR write still exits (APIC-write), but virtual-interrupt delivery then
    # takes the IPI without a window or TPR-threshold exit.
    _xapic_row("xapic_ipi_sti_nop",
               "the IPI is sent with IRQs off and taken after STI;NOP, which only the kernel loop "
               "(case 5) does",
               "xAPIC self-IPI (a MOV to the ICR) with IRQs off, then STI;NOP: the send's "
               "APIC-page exit, the interrupt-window exit, the injection and the handler; the "
               "guest's own timer is held for the batch",
               **_WINDOW_SECOND,
               second_paths=(_VID_NO_SECOND,),
               kut_twin=("self_ipi_sti_nop", "its bare OS writes the EOI to the APIC page, an "
                         "exit more; Linux's EOI is paravirtual"),
               irqs_on=True),
    _xapic_row("xapic_ipi_tpr",
               "the loop must turn IRQs on and rewrite the TPR around each send, which only the "
               "kernel loop (case 5) does",
               "xAPIC self-IPI (a MOV to the ICR) sent with CR8 = 15, so it stays pending: its "
               "APIC-page exit, then the TPR put back, which exits (SVM's CR8 write intercept, "
               "VMX's TPR threshold) and lets KVM inject it; the guest's own timer is held for "
               "the batch",
               **_TPR_SECOND, second_paths=(_VID_NO_SECOND, _CR8_EXITS),
               kut_twin=("self_ipi_tpr", "it writes the TPR through the APIC page (two exits "
                         "more) and its EOI too; this kind moves CR8, Linux's EOI is "
                         "paravirtual"),
               irqs_on=True),
    # The TSC-deadline timer armed in the past with IRQs on: KVM finds it expired in the WRMSR's
    # exit and injects its interrupt on the next entry; the loop waits for the handler. The
    # timer's LVT entry points at IRQ_WORK_VECTOR for the batch (the module saves and restores it
    # and the deadline), so the handler is Linux's lightest and the guest's clockevent, which would
    # re-arm the timer with an exit of its own, never runs in a window.
    Instruction("tscdeadline_immed", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                TSC_DEADLINE_MSR,
                "the timer's LVT is redirected and IRQs turned on around each iteration, which "
                "only the kernel loop (case 5) does",
                what="WRMSR IA32_TSC_DEADLINE of a deadline already passed, with IRQs on: KVM "
                     "expires the timer in the exit and injects its interrupt on the next entry; "
                     "waited for until the guest's handler ran (its EOI paravirtual, no exit)",
                irqs_on=True, needs="the TSC-deadline timer in TSC-deadline mode, in x2APIC mode"),
    # The TSC-deadline timer armed TSCDEADLINE_AHEAD cycles past t0, with IRQs on, and its
    # interrupt waited for (vmexit.flat's tscdeadline arms 3000 cycles ahead: shorter than an exit
    # round trip under emulation, where the timer would expire before the re-entry). The timer's
    # LVT is redirected to the irq_work vector as for tscdeadline_immed. Samples are stored net of
    # the wait: the cycles from the deadline to the handler's count seen by the loop.
    Instruction("tscdeadline", (5,), PATH_FASTPATH, "MSR_WRITE", "MSR", "msr_write", "exits",
                TSC_DEADLINE_MSR,
                "the timer's LVT is redirected and IRQs turned on around each iteration, which "
                "only the kernel loop (case 5) does",
                fastpath=MSR_FASTPATH,
                host_paths=(HostPath(PATH_KVM, "amd", why="SVM has no preemption timer: an "
                                     "hrtimer, armed by the normal handler"),
                            HostPath(PATH_KVM, "intel", ("no_preemption_timer",),
                                     "kvm_intel.preemption_timer=N: an hrtimer, armed by the "
                                     "normal handler")),
                second=("PREEMPTION_TIMER", "EXTERNAL_INTERRUPT"), timer_expiry=True,
                second_why="the timer's expiry", ahead=1 << 20,
                what="the TSC-deadline timer armed 2^20 cycles ahead with IRQs on, and its "
                     "interrupt waited for: the WRMSR's exit, then the expiry's (the VMX "
                     "preemption timer, or KVM's hrtimer interrupting the vCPU), the injection "
                     "and the guest's handler; samples are the cycles from the deadline to the "
                     "handler (net of the 2^20)",
                irqs_on=True, needs="the TSC-deadline timer in TSC-deadline mode, in x2APIC mode"),
    # The self-IPI delivered: sent with IRQs on, so KVM injects it on the very next entry and the
    # guest's handler runs before the send returns. Its EOI does not exit: KVM marks the injected
    # vector for the guest's paravirtual EOI (KVM_FEATURE_PV_EOI, which -cpu host offers and Linux
    # uses), a bit the guest clears in memory. (vmexit.flat's x2apic_self_ipi_sti_nop sends with
    # IRQs off and takes an interrupt-window exit besides; its bare OS writes the EOI MSR.)
    Instruction("self_ipi_delivery", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                X2APIC_SELF_IPI_MSR,
                "the IPI's handler is the module's (an irq_work), and the loop must turn IRQs on "
                "around each send, which only the kernel loop (case 5) does",
                host_paths=(HostPath(PATH_NONE, "intel", ("apicv",),
                                     "APICv virtualizes the SELF IPI and delivers a virtual "
                                     "interrupt: no exit"),),
                what="x2APIC SELF IPI (an irq_work) with IRQs on: one MSR-write exit "
                     "(kvm_lapic_reg_write), the interrupt injected on the next entry and taken by "
                     "the guest's handler, its EOI paravirtual (no exit); the guest's own timer "
                     "is held for the batch, so no tick lands in it",
                irqs_on=True, needs="x2APIC mode"),
    # vmexit.flat's x2apic_self_ipi_sti_nop: the SELF IPI sent with IRQs off (it stays pending),
    # then STI;NOP. KVM cannot inject into IF=0, so it asks for the interrupt window: a second
    # exit once STI's shadow ends, then the injection. (Its STI;HLT twin is left out: on the
    # emulated AMD-V host it took the window and the HLT, a third exit no rule covers yet.)
    Instruction("self_ipi_sti_nop", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write",
                "exits", X2APIC_SELF_IPI_MSR,
                "the IPI is sent with IRQs off and taken after STI;NOP, which only the kernel loop "
                "(case 5) does",
                host_paths=(HostPath(PATH_NONE, "intel", ("apicv",),
                                     "APICv virtualizes the SELF IPI and delivers the virtual "
                                     "interrupt once IRQs are on: no exit"),),
                **_WINDOW_SECOND,
                kut_twin=("x2apic_self_ipi_sti_nop", "its bare OS writes the EOI MSR, an exit "
                          "more; Linux's EOI is paravirtual"),
                what="x2APIC SELF IPI (an irq_work) with IRQs off, then STI;NOP: the send's exit, "
                     "the interrupt-window exit after STI's shadow, the injection and the handler; "
                     "the guest's own timer is held for the batch",
                irqs_on=True, needs="x2APIC mode"),
    # vmexit.flat's x2apic_self_ipi_tpr: the SELF IPI sent while the TPR (CR8) masks it, then the
    # TPR put back, which KVM made exit (SVM: the CR8 write intercept KVM sets while an interrupt
    # is pending above the TPR; VMX: the TPR threshold) and on which it injects the IPI.
    Instruction("self_ipi_tpr", (5,), PATH_KVM, "MSR_WRITE", "MSR", "msr_write", "exits",
                X2APIC_SELF_IPI_MSR,
                "the IPI's handler is the module's (an irq_work), and the loop must turn IRQs on "
                "and rewrite the TPR around each send, which only the kernel loop (case 5) does",
                host_paths=(HostPath(PATH_NONE, "intel", ("apicv",),
                                     "APICv virtualizes the SELF IPI and the TPR, and delivers "
                                     "the virtual interrupt when the TPR drops: no exit"),),
                **_TPR_SECOND,
                kut_twin=("x2apic_self_ipi_tpr", "its bare OS writes the EOI MSR, an exit more; "
                          "Linux's EOI is paravirtual"),
                second_paths=(_CR8_EXITS,),
                what="x2APIC SELF IPI (an irq_work) sent with the TPR at 15, so it stays pending: "
                     "its MSR-write exit, then the TPR put back, which exits (SVM's CR8 write "
                     "intercept, VMX's TPR threshold) and lets KVM inject it; the guest's own "
                     "timer is held for the batch",
                irqs_on=True, needs="x2APIC mode"),
    # IPIs to a second vCPU (the receiver), on its own host core (bench --core A,B): the sender
    # writes the x2APIC ICR (fixed, physical: KVM's irq-off fastpath on both vendors) and waits
    # for the receiver's handler to count the IPI. The receiver's exit is proven as well. With
    # IPI virtualization (Intel IPIv) or AVIC the send does not exit; with posted interrupts
    # (APICv) or AVIC a running receiver takes the interrupt without an exit.
    Instruction("ipi", (5,), PATH_FASTPATH, "MSR_WRITE", "MSR", "msr_write", "exits",
                X2APIC_ICR_MSR,
                "the IPI is sent with IRQs off and waited for, with a second vCPU spinning to "
                "receive it, which only the kernel loop (case 5) does",
                fastpath=MSR_FASTPATH,
                host_paths=(_IPIV,
                            HostPath(PATH_NONE, "amd", ("avic",),
                                     "AVIC: an IPI to a running vCPU does not exit"),
                            _NO_NRIPS),
                vcpus=2, receiver=("EXTERNAL_INTERRUPT", "EXTERNAL_INTERRUPT"),  # SVM_EXIT_INTR as named
                receiver_paths=(HostPath(PATH_NONE, "intel", ("apicv",),
                                         "a posted interrupt: the running receiver does not exit"),
                                HostPath(PATH_NONE, "amd", ("avic",),
                                         "AVIC's doorbell: the running receiver does not exit")),
                what="an x2APIC IPI to a running vCPU and its handler's acknowledgement: the "
                     "sender's ICR exit (kvm_x2apic_icr_write in KVM's fastpath) and the "
                     "receiver kicked out of guest mode (a host IPI) to take the interrupt",
                needs=_IPI_NEEDS),
    Instruction("ipi_halt", (5,), PATH_FASTPATH, "MSR_WRITE", "MSR", "msr_write", "exits",
                X2APIC_ICR_MSR,
                "the IPI is sent with IRQs off and waited for, then the receiver left to halt "
                "again outside the timing, which only the kernel loop (case 5) does",
                fastpath=MSR_FASTPATH, host_paths=(_IPIV, _NO_NRIPS),
                vcpus=2, receiver=("HLT", "HLT"),
                what="an x2APIC IPI to a vCPU halted in HLT and its handler's acknowledgement: "
                     "the sender's ICR exit (KVM's fastpath) and the receiver's vCPU thread woken "
                     "after 1 ms halted (past KVM's default halt polling) to run the interrupt",
                needs=_IPI_NEEDS),
    # MMIO writes to pci-testdev's memory BAR, one byte of the datamatch value each, as
    # vmexit.flat's pci-mem tests (mmio-*-eventfd:pci-mem) write them. The exit is the same fault
    # for all three; who completes the write is what differs.
    Instruction("mmio_no_eventfd", (1, 5), PATH_QEMU, MMIO_VMX_REASON, MMIO_SVM_REASON, None,
                "exits", why_not=_TESTDEV_LOOP, testdev=0,
                what="an MMIO write KVM decodes and hands to QEMU (KVM_EXIT_MMIO) and back",
                needs=_TESTDEV_NEEDS),
    Instruction("mmio_eventfd", (1, 5), PATH_KVM, MMIO_VMX_REASON, MMIO_SVM_REASON, None,
                "exits", why_not=_TESTDEV_LOOP, testdev=1,
                what="an MMIO write KVM decodes and completes by signalling QEMU's ioeventfd (any "
                     "value): no userspace exit",
                needs=_TESTDEV_NEEDS),
    Instruction("mmio_datamatch", (1, 5), PATH_KVM, MMIO_VMX_REASON, MMIO_SVM_REASON, None,
                "exits", why_not=_TESTDEV_LOOP, testdev=2,
                what="an MMIO write KVM decodes, matches against the ioeventfd's value and "
                     "completes by signalling it: no userspace exit", needs=_TESTDEV_NEEDS),
    # The same three writes as OUTs to pci-testdev's I/O BAR (vmexit.flat's pci-io tests): an I/O
    # exit either way, with a userspace exit only without the ioeventfd. Its port is the firmware's
    # choice: the guest reports the BAR (hello: testdev_io) and the verifier adds testdev_reg.
    Instruction("pio_no_eventfd", (1, 5), PATH_QEMU, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="out", why_not=_TESTDEV_LOOP, testdev=3,
                what="an OUT KVM hands to QEMU's pci-testdev (KVM_EXIT_IO) and back",
                needs=_TESTDEV_NEEDS),
    Instruction("pio_eventfd", (1, 5), PATH_KVM, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="out", why_not=_TESTDEV_LOOP, testdev=4,
                what="an OUT KVM completes by signalling QEMU's ioeventfd (any value): no "
                     "userspace exit", needs=_TESTDEV_NEEDS),
    Instruction("pio_datamatch", (1, 5), PATH_KVM, "IO_INSTRUCTION", "IO_INSTRUCTION", None,
                "io_exits", io="out", why_not=_TESTDEV_LOOP, testdev=5,
                what="an OUT KVM matches against the ioeventfd's value and completes by "
                     "signalling it: no userspace exit", needs=_TESTDEV_NEEDS),
    # PAUSE: PLE (VMX) and the pause filter (SVM) exit only for a spin of many PAUSEs close
    # together (ple_gap 128 cycles, ple_window 4096; pause_filter_count 3000); one PAUSE per timed
    # window is never such a spin. vmexit.flat's ple_round_robin needs several vCPUs (part 2).
    Instruction("pause", (1, 3, 5), PATH_NONE, "PAUSE_INSTRUCTION", "PAUSE_INSTRUCTION", None,
                "exits",
                what="one PAUSE: below PLE's and the pause filter's spin thresholds, no exit"),
)}

def f_instructions(table: dict[str, Instruction]) -> tuple[str, ...]:
    """The instructions --instr may name (cases 1, 3, 5), in table order: the first is the default."""
    return tuple(n for n, i in table.items() if any(c % 2 for c in i.cases))


F_INSTRUCTIONS = f_instructions(TABLE)
S_INSTRUCTION = "outb"


def instruction(name: str) -> Instruction:
    return TABLE[name]
