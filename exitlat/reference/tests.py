"""Which kvm-unit-tests x86/vmexit.c tests exitlat can stand beside: read from the one instruction
table (exitlat/instructions.py), whose `kut` names each kind's vmexit.flat test (as `tests[]` in
x86/vmexit.c of the pinned tag names it), with the kvm_exit reasons one iteration promises (on
VMX, on SVM) and how many of them (`exits`: a toggle writes twice). What a test's loop really exits
with is measured, never assumed (exitlat/reference/perloop.py): since kvm-unit-tests commit
542ecfdb, `vmcall` also runs two CPUIDs per iteration (is_intel())."""

from __future__ import annotations

from dataclasses import dataclass

from exitlat.errors import ExitlatError
from exitlat.instructions import TABLE

# exitlat's case for every comparison: kernel → exit → kernel, like vmexit.flat's CPL-0 loops.
COMPARED_CASE = 5
# Always run beside the kinds asked for: the figure people quote, and the cost of the extra CPUID
# exits of the vmcall test (exitlat/reference/perloop.py's corrected figure).
ALWAYS = ("cpuid",)
# Where the two loops differ beyond the exit itself (shown beside the test).
NOTES = {"vmcall": "since kvm-unit-tests 542ecfdb each iteration also runs is_intel(): 2 CPUID exits"}


@dataclass(frozen=True)
class RefTest:
    test: str                   # the vmexit.flat test name
    kind: str                   # exitlat's instruction of the same exit
    vmx_reason: str             # kvm_exit reason its name promises, VMX
    svm_reason: str             # and SVM
    per_iteration: int = 1      # of that reason per iteration (2: a toggle)
    note: str = ""

    def reason(self, vendor: str) -> str:
        return self.svm_reason if vendor == "amd" else self.vmx_reason


TESTS = {i.kut: RefTest(i.kut, i.name, i.vmx_reason, i.svm_reason, i.exits, NOTES.get(i.kut, ""))
         for i in TABLE.values() if i.kut}
BY_KIND = {t.kind: t for t in TESTS.values()}


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
