import pytest

from exitlat.cases import case_specs, parse_cases
from exitlat.instructions import PATH_FASTPATH, PATH_KVM, PATH_QEMU
from exitlat.errors import ExitlatError


@pytest.mark.parametrize("text,expected", [
    ("1-6", [1, 2, 3, 4, 5, 6]),
    ("1,3,5", [1, 3, 5]),
    ("2", [2]),
    ("all", [1, 2, 3, 4, 5, 6]),
    (" ALL ", [1, 2, 3, 4, 5, 6]),
    ("5,1,1", [1, 5]),
    ("1-2,6", [1, 2, 6]),
    ("4-4", [4]),
])
def test_parse_cases_accepts(text, expected):
    assert parse_cases(text) == expected


@pytest.mark.parametrize("text", ["0", "7", "3-1", "a", "", " ", "1,,2", "1-", "-1", "1-7", "1.5", "1;2"])
def test_parse_cases_refuses_and_names_valid_cases(text):
    with pytest.raises(ExitlatError) as err:
        parse_cases(text)
    assert "1-6" in str(err.value)
    assert "\n" not in str(err.value)


def test_specs_default_cpuid():
    specs = case_specs([1, 2, 3, 4, 5, 6], "cpuid", 0xE9)
    assert [s.key for s in specs] == [f"case{n}" for n in range(1, 7)]
    assert [s.instruction for s in specs] == ["cpuid", "outb"] * 3
    assert [s.expected_path for s in specs] == [PATH_KVM, PATH_QEMU] * 3
    assert [s.flow for s in specs][::2] == ["user", "user→kernel (ioctl)", "kernel"]
    assert all(s.port == 0xE9 for s in specs if s.instruction == "outb")
    assert reasons(specs[0], "intel") == ("CPUID",) and reasons(specs[0], "amd") == ("CPUID",)
    assert reasons(specs[1], "intel") == ("IO_INSTRUCTION",) and reasons(specs[1], "amd") == ("IO_INSTRUCTION",)


def test_rdmsr_only_in_kernel_cases():
    with pytest.raises(ExitlatError, match="rdmsr.*#GP"):
        case_specs([1], "rdmsr")
    specs = case_specs([2, 3, 4, 5, 6], "rdmsr")
    assert specs[1].msr == 0x3B and specs[3].msr == 0x3B
    assert reasons(specs[1], "intel") == ("MSR_READ",) and reasons(specs[1], "amd") == ("MSR",)
    assert case_specs([3], "rdmsr", msr=0x1B)[0].msr == 0x1B


def test_passthrough_msr_refused():
    with pytest.raises(ExitlatError, match="passed through"):
        case_specs([3], "rdmsr", msr=0xC0000100)


def test_tsc_deadline_only_case5():
    (spec,) = case_specs([5], "wrmsr_tsc_deadline")
    assert spec.expected_path == PATH_FASTPATH and spec.msr == 0x6E0
    assert reasons(spec, "intel") == ("MSR_WRITE",)
    for n in (1, 3):
        with pytest.raises(ExitlatError, match=f"case {n} cannot use wrmsr_tsc_deadline"):
            case_specs([n], "wrmsr_tsc_deadline")
    # S cases do not care which F was chosen.
    assert [s.instruction for s in case_specs([2, 4, 6], "wrmsr_tsc_deadline")] == ["outb"] * 3


def test_vmcall_everywhere():
    assert [s.instruction for s in case_specs([1, 3, 5], "vmcall")] == ["vmcall"] * 3
    assert reasons(case_specs([1], "vmcall")[0], "amd") == ("VMMCALL",)


@pytest.mark.parametrize("kwargs,match", [
    ({"cases": [1], "instr": "nop"}, "unknown instruction"),
    ({"cases": [7]}, "unknown case"),
    ({"cases": [2], "port": 0x10000}, "0xffff"),
    ({"cases": [2], "port": -1}, "0xffff"),
])
def test_specs_refusals(kwargs, match):
    with pytest.raises(ExitlatError, match=match):
        case_specs(**kwargs)


def test_tsc_deadline_expects_the_fastpath_only_where_kvm_can_take_it():
    from exitlat.cases import tsc_deadline_fastpath

    intel = {"cpu": {"vendor": "GenuineIntel"}, "kvm": {"parameters": {"kvm_intel.preemption_timer": "Y"}}}
    no_timer = {"cpu": {"vendor": "GenuineIntel"}, "kvm": {"parameters": {"kvm_intel.preemption_timer": "N"}}}
    for host, path in ((intel, "kvm_fastpath"), (no_timer, "kvm"),
                       ({"cpu": {"vendor": "AuthenticAMD"}, "kvm": {"parameters": {}}}, "kvm"),
                       ({"cpu": {"vendor": "HygonGenuine"}, "kvm": {"parameters": {}}}, "kvm")):
        spec = case_specs([5], "wrmsr_tsc_deadline", host=host)[0]
        assert tsc_deadline_fastpath(host) == (path == "kvm_fastpath")
        assert spec.expected_path == path, host


def reasons(spec, vendor):
    """What the verifier expects of a case on a vendor's host: the one instruction table."""
    from exitlat.instructions import TABLE

    return TABLE[spec.instruction].reasons(vendor)


def test_one_instruction_table_for_python_and_the_guest():
    """Every row of exitlat/instructions.py is complete and the fastpath probes come from it."""
    from exitlat.instructions import TABLE
    from exitlat.verify.trace.kprobes import FASTPATH_SYMBOLS

    for ins in TABLE.values():
        assert ins.vmx_reason and ins.svm_reason and ins.kvm_stat, ins.name
        assert (ins.path == PATH_FASTPATH) == bool(ins.fastpath), ins.name
    assert set(FASTPATH_SYMBOLS) == {s for i in TABLE.values() for s in i.fastpath}
    # The guest's side (generated ids, the module's rows, the probe's windows): test_catalogue.py
