"""KVM exit reasons: the VMX and SVM tables as the kernel names them, one canonical name per
reason, and the decoding of both forms the counters meet: numbers (hist triggers' keys) and the
names trace_pipe prints (the kernel's kvm_exit and kvm_userspace_exit print formats).

A reason is "decodable" when it has a VMX/SVM name (DECODABLE_EXIT_NAMES); anything else (other
ISAs, PVM's own exit vectors) stays a number ("13"), and rules.py falls back to KVM's handler
tracepoints for it.
"""

from __future__ import annotations

import re

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
    """Name of a kvm_userspace_exit: the KVM_EXIT_* reason, or "restart"/"error" for a KVM_RUN
    that returned an error (-4 = EINTR: a signal kicked the vCPU)."""
    if errno < 0:
        return "restart" if errno == -4 else "error"
    return USERSPACE_EXIT_REASONS.get(reason, str(reason))


# -- the names trace_pipe prints ------------------------------------------------------------

_HEX = re.compile(r"0x[0-9a-fA-F]+")


def exit_name_from_text(text: str) -> str | None:
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


def userspace_name_from_text(text: str) -> str | None:
    """Name of a printed kvm_userspace_exit reason ("KVM_EXIT_IO" -> "IO"); None when it is not one."""
    if text.startswith("KVM_EXIT_") and len(text) > len("KVM_EXIT_"):
        return text[len("KVM_EXIT_"):]
    if text in ("restart", "error"):
        return text
    if _HEX.fullmatch(text):                       # a KVM_EXIT_* the kernel's table lacks
        return decode_userspace_reason(int(text, 16))
    return None
