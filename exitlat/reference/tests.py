"""Which kvm-unit-tests x86/vmexit.c tests exitlat can stand beside, in one table.

Each row: the vmexit.flat test name (as `tests[]` in x86/vmexit.c of the pinned tag names it),
the exitlat kind (exitlat/instructions.py) whose case-5 figure it is compared with, or None where
exitlat has no such kind (kept so that the names are checked in one place), and the kvm_exit
reasons its name promises one of per loop iteration (on VMX, on SVM). What a test's loop really
exits with is measured, never assumed (exitlat/reference/perloop.py): since kvm-unit-tests commit
542ecfdb, `vmcall` also runs two CPUIDs per iteration (is_intel())."""

from __future__ import annotations

from dataclasses import dataclass

from exitlat.errors import ExitlatError

# exitlat's case for every comparison: kernel → exit → kernel, like vmexit.flat's CPL-0 loops.
COMPARED_CASE = 5
# Always run beside the kinds asked for: the figure people quote, and the cost of the extra CPUID
# exits of the vmcall test (exitlat/reference/perloop.py's corrected figure).
ALWAYS = ("cpuid",)


@dataclass(frozen=True)
class RefTest:
    test: str                   # the vmexit.flat test name
    kind: str | None            # exitlat's instruction of the same exit, None: none yet
    vmx_reason: str             # kvm_exit reason its name promises, VMX
    svm_reason: str             # and SVM
    note: str = ""              # where the two loops differ beyond the exit itself

    def reason(self, vendor: str) -> str:
        return self.svm_reason if vendor == "amd" else self.vmx_reason


TESTS = {t.test: t for t in (
    RefTest("cpuid", "cpuid", "CPUID", "CPUID"),
    RefTest("vmcall", "vmcall", "VMCALL", "VMMCALL",
            "since kvm-unit-tests 542ecfdb each iteration also runs is_intel(): 2 CPUID exits"),
    RefTest("wbinvd", "wbinvd", "WBINVD", "WBINVD"),
    RefTest("invd", "invd", "INVD", "INVD"),
    RefTest("inl_from_qemu", "inl_from_qemu", "IO_INSTRUCTION", "IO_INSTRUCTION"),
    RefTest("rd_tsc_adjust_msr", "rd_tsc_adjust_msr", "MSR_READ", "MSR"),
    RefTest("wr_tsc_adjust_msr", "wr_tsc_adjust_msr", "MSR_WRITE", "MSR"),
    RefTest("tscdeadline_immed", "wrmsr_tsc_deadline", "MSR_WRITE", "MSR",
            "an already expired deadline: each iteration also takes the timer interrupt"),
    # No exitlat kind yet: named so that a catalogue kind can be matched by one edit here.
    RefTest("mov_from_cr8", None, "CR_ACCESS", "READ_CR8"),
    RefTest("mov_to_cr8", None, "CR_ACCESS", "WRITE_CR8"),
    RefTest("inl_from_pmtimer", None, "IO_INSTRUCTION", "IO_INSTRUCTION"),
    RefTest("inl_from_kernel", None, "IO_INSTRUCTION", "IO_INSTRUCTION"),
    RefTest("outl_to_kernel", None, "IO_INSTRUCTION", "IO_INSTRUCTION"),
    RefTest("mov_dr", None, "DR_ACCESS", "WRITE_DR7"),
    RefTest("toggle_cr0_wp", None, "CR_ACCESS", "WRITE_CR0"),
    RefTest("toggle_cr4_pge", None, "CR_ACCESS", "WRITE_CR4"),
)}
BY_KIND = {t.kind: t for t in TESTS.values() if t.kind}


def matching_tests(kinds) -> list[RefTest]:
    """The vmexit.flat tests to run beside exitlat's kinds: cpuid always, then each kind's test;
    a kind without a vmexit.flat test is one line."""
    missing = [k for k in kinds if k not in BY_KIND]
    if missing:
        raise ExitlatError(f"--reference: kvm-unit-tests' vmexit.flat has no test of "
                           f"{', '.join(missing)}; it has {', '.join(sorted(BY_KIND))}")
    names = list(dict.fromkeys([*ALWAYS, *(BY_KIND[k].test for k in kinds)]))
    return [TESTS[n] for n in names]


def kinds_of(instr: str) -> list[str]:
    """The kinds of `bench --instr` (one, a comma list, or "all": every kind with a vmexit.flat
    test), read from the option's text so that it is checked before anything runs."""
    text = str(instr or "cpuid").strip()
    if text == "all":
        return list(BY_KIND)
    return list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
