"""The exit catalogue's foundation: the instruction table (exitlat/instructions.py) is the one list
of exit kinds. The guest's ids and the probe's rows are generated from it (exitlat/build/guestgen.py),
the generated header is a hashed build input, the module has one row per id, the probe one WINDOW
per kind CPL 3 can run, and the bundle schema takes its instruction names from it. A kind on one
side only fails here."""

import re
import shutil
import subprocess
from dataclasses import replace

import pytest

from exitlat.build import guestgen
from exitlat.build.guestgen import instruction_ids, render_header
from exitlat.build.pins import load_pins
from exitlat.build.stages import STAGES, plan_build
from exitlat.bundle.format import schema
from exitlat.cases import case_specs
from exitlat.errors import ExitlatError
from exitlat.instructions import F_INSTRUCTIONS, PATH_KVM, PATH_QEMU, QEMU_NOP_PORT, TABLE, Instruction
from exitlat.paths import REPO_ROOT
from exitlat.verify.trace.counts import ExitCounts
from exitlat.verify.traced import verify_case

MODULE = REPO_ROOT / "guest/module"
PROBE = REPO_ROOT / "guest/probe/exitlat-probe.c"
NEW_KINDS = ("wbinvd", "invd", "xsetbv", "rd_tsc_adjust_msr", "wr_tsc_adjust_msr")
needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="no gcc")


def module_rows() -> dict[str, tuple[str, str]]:
    """EL_INSTRUCTIONS of exitlat_mod.c: id -> (name, ONCE column)."""
    src = (MODULE / "exitlat_mod.c").read_text()
    block = src[src.index("#define EL_INSTRUCTIONS(X)"):src.index("/* The table's ids")]
    rows = re.findall(r"\bX\((EXITLAT_I_\w+),\s*(\w+),\s*\w+,\s*(true|false),", block)
    assert len({r[0] for r in rows}) == len(rows), "an id has two module rows"
    return {i: (name, once) for i, name, once in rows}


def with_row(row: Instruction) -> dict:
    return {**TABLE, row.name: row}


def _run_c(tmp_path, header: str, main: str) -> subprocess.CompletedProcess:
    (tmp_path / guestgen.HEADER).write_text(header)
    (tmp_path / "t.c").write_text(f'#include <stdio.h>\n#include "{guestgen.HEADER}"\n{main}\n')
    return subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(tmp_path / "t"),
                           str(tmp_path / "t.c")], capture_output=True, text=True)


# ---- one source: the generated header -------------------------------------------------------

@needs_gcc
def test_generated_header_compiles_to_the_table(tmp_path):
    """What C sees (ids, F rows with cases, CPL 3 flag, why_not) is the table, compiled and run."""
    main = r"""
#define PRINT_ROW(kind, id, cases, user, why, port, needs, testdev, reg) printf("F %s %d %u %d %d %d %d %s|%s\n", #kind, id, cases, user, port, testdev, reg, needs, why);
int main(void) {
    printf("COUNT %d\n", EXITLAT_I_COUNT);
    printf("S %d %u\n", EXITLAT_I_S, EXITLAT_S_CASES);
    EXITLAT_F_INSTRS(PRINT_ROW)
    return 0;
}"""
    cp = _run_c(tmp_path, render_header(), main)
    assert cp.returncode == 0, cp.stderr
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    ids = instruction_ids()
    assert lines[0] == f"COUNT {len(ids)}"
    assert lines[1] == f"S {ids['EXITLAT_I_OUTB']} {(1 << 2) | (1 << 4) | (1 << 6)}"
    rows = [ln.split(" ", 8) for ln in lines[2:]]
    assert tuple(r[1] for r in rows) == F_INSTRUCTIONS
    for _, name, ident, cases, user, port, testdev, reg, rest in rows:
        row = TABLE[name]
        needs, why = rest.split("|", 1)
        assert int(ident) == ids[guestgen.enum_name(name)]
        assert int(cases) == sum(1 << c for c in row.cases)
        assert int(user) == (1 in row.cases)
        assert int(port) == (-1 if row.port is None else row.port)
        assert (int(testdev), int(reg)) == ((-1, -1) if row.testdev is None else
                                            (row.testdev, row.testdev_reg))
        assert (why, needs) == (row.why_not, row.needs)


@needs_gcc
def test_the_irqs_on_kinds_are_the_tables(tmp_path):
    """EXITLAT_IRQS_ON (el_batch holds the guest's timer for these kinds) is the table's irqs_on,
    compiled and run; a row that turns it on is in it without an edit of the module."""
    main = r"""
int main(void) {
    for (int i = 0; i < EXITLAT_I_COUNT; i++)
        if (EXITLAT_IRQS_ON(i))
            printf("%d\n", i);
    return 0;
}"""
    ids = instruction_ids()

    def on(header):
        cp = _run_c(tmp_path, header, main)
        assert cp.returncode == 0, cp.stderr
        out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout
        return {int(x) for x in out.split()}
    assert on(render_header()) == {ids[guestgen.enum_name(n)] for n, i in TABLE.items() if i.irqs_on}
    assert ids["EXITLAT_I_SELF_IPI_TPR"] in on(render_header())
    assert ids["EXITLAT_I_CPUID"] not in on(render_header())
    assert ids["EXITLAT_I_CPUID"] in on(render_header(with_row(replace(TABLE["cpuid"], irqs_on=True))))


def test_ids_are_generated_not_written_by_hand():
    """No guest source defines an EXITLAT_I_* value: the header the table generates does."""
    for f in (MODULE / "exitlat_uapi.h", MODULE / "exitlat_mod.c", PROBE):
        assert not re.search(r"\bEXITLAT_I_\w+\s*=", f.read_text()), f.name
    assert f'#include "{guestgen.HEADER}"' in (MODULE / "exitlat_uapi.h").read_text()
    tracked = subprocess.run(["git", "ls-files", f"guest/module/{guestgen.HEADER}"],
                             cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert not tracked.strip(), "a generated header checked in goes stale"


def test_the_module_has_one_row_per_table_id():
    """Every EXITLAT_I_* the table generates has exactly one row in the module (the statement one
    iteration runs) and no row is left without an id; ONCE runs exactly the case-3 kinds."""
    rows = module_rows()
    assert set(rows) == set(instruction_ids())
    for ident, (name, once) in rows.items():
        assert ident == guestgen.enum_name(name), (ident, name)
        if name in TABLE:
            assert (once == "true") == (3 in TABLE[name].cases or 4 in TABLE[name].cases), name


def test_a_row_on_one_side_only_fails():
    """The negative control of the test above: a table row without a module row, and the reverse."""
    extra = with_row(Instruction("mov_to_cr3", (5,), PATH_KVM, "CR_ACCESS", "WRITE_CR3", None,
                                 "exits"))
    assert set(module_rows()) != set(instruction_ids(extra))
    fewer = {n: i for n, i in TABLE.items() if n != "invd"}
    assert set(module_rows()) != set(instruction_ids(fewer))


@needs_gcc
def test_the_probe_compiles_with_the_header_and_needs_a_window_per_user_kind(tmp_path):
    """The probe builds its rows from the header; a CPL 3 kind without a WINDOW does not compile."""
    def compile_probe(header: str) -> subprocess.CompletedProcess:
        (tmp_path / guestgen.HEADER).write_text(header)
        return subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                               f"-I{MODULE}", f"-I{tmp_path}", str(PROBE)],
                              capture_output=True, text=True)

    cp = compile_probe(render_header())
    assert cp.returncode == 0, cp.stderr
    bad = with_row(Instruction("rdpmc_user", (1, 5), PATH_KVM, "RDPMC", "RDPMC", None, "exits"))
    cp = compile_probe(render_header(bad))
    assert cp.returncode != 0 and "window_rdpmc_user" in cp.stderr


def test_a_table_change_rebuilds_the_guest(monkeypatch):
    """The generated header is a hashed input of the initramfs stage, and of nothing else."""
    pins = load_pins()
    before = plan_build(pins)
    monkeypatch.setattr(guestgen, "TABLE", with_row(
        Instruction("mov_from_cr8", (5,), PATH_KVM, "CR_ACCESS", "READ_CR8", None, "exits")))
    after = plan_build(pins)
    assert {k for k in before.stage_hashes if before.stage_hashes[k] != after.stage_hashes[k]} \
        == {"initramfs"}
    assert [st.generated for st in STAGES if st.generated] == [(guestgen.HEADER,)]


def test_the_header_escapes_c_strings():
    text = render_header(with_row(replace(TABLE["xsetbv"], name="q", why_not='a "b" \\ é')))
    assert r'"a \"b\" \\ \303\251"' in text


def test_bundle_schema_takes_the_instructions_from_the_table():
    enum = schema()["$defs"]["case"]["properties"]["instruction"]["enum"]
    assert enum == [n for n, i in TABLE.items() if i.cases]
    assert set(NEW_KINDS) <= set(enum)


# ---- the first vmexit.flat kinds ------------------------------------------------------------

@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_are_kernel_only_and_refused_at_cpl3_with_why(kind):
    row = TABLE[kind]
    assert 5 in row.cases and 1 not in row.cases and row.path == PATH_KVM
    (spec,) = case_specs([5], kind)
    assert spec.instruction == kind and spec.expected_path == PATH_KVM
    with pytest.raises(ExitlatError, match=f"case 1 cannot use {kind}: .*CPL"):
        case_specs([1], kind)


@pytest.mark.parametrize("kind,vmx,svm", [("wbinvd", "WBINVD", "WBINVD"), ("invd", "INVD", "INVD"),
                                          ("xsetbv", "XSETBV", "XSETBV"),
                                          ("rd_tsc_adjust_msr", "MSR_READ", "MSR"),
                                          ("wr_tsc_adjust_msr", "MSR_WRITE", "MSR")])
def test_new_kinds_are_proven_by_their_exit_reasons(kind, vmx, svm):
    n = 11000
    handled = {"msr_read": n} if kind.startswith("rd_") else \
        {"msr_write": n} if kind.startswith("wr_") else {}
    for vendor, reason in (("intel", vmx), ("amd", svm)):
        good = ExitCounts({reason: n, "EXTERNAL_INTERRUPT": 20}, {}, {}, handled, 0, "test")
        assert verify_case(good, n, "kvm", kind, None, vendor)["status"] == "passed"
        bad = ExitCounts({"CPUID": n}, {}, {}, handled, 0, "test")
        assert verify_case(bad, n, "kvm", kind, None, vendor)["status"] == "failed"


def test_kind_without_handler_tracepoint_is_unverified_where_reasons_do_not_decode():
    """WBINVD and XSETBV have no kvm_* handler event: with numeric exit reasons (PVM) nothing
    tells their exits apart, so the window is unverified, never passed (and no crash)."""
    n = 11000
    w = ExitCounts({"54": n}, {}, {}, {}, 0, "test")
    r = verify_case(w, n, "kvm", "wbinvd", None, "unknown", kvm_stats={"exits": n})
    assert r["status"] == "unverified" and "no handler tracepoint" in r["detail"], r["detail"]


# ---- inl_from_qemu: port I/O in the other direction ------------------------------------------

def test_inl_from_qemu_runs_in_kernel_cases_on_its_own_port():
    row = TABLE["inl_from_qemu"]
    assert row.path == PATH_QEMU and row.io == "in" and row.port == QEMU_NOP_PORT == 0x1234
    assert "inl_from_qemu" in F_INSTRUCTIONS
    specs = case_specs([1, 3, 4, 5, 6], "inl_from_qemu", port=0xE9)
    assert [(s.instruction, s.expected_path, s.port) for s in specs] == [
        ("inl_from_qemu", PATH_QEMU, 0x1234),       # case 1: through ioperm() for 0x1234
        ("inl_from_qemu", PATH_QEMU, 0x1234), ("outb", PATH_QEMU, 0xE9),
        ("inl_from_qemu", PATH_QEMU, 0x1234), ("outb", PATH_QEMU, 0xE9)]
    assert "#define EXITLAT_PORT_INL_FROM_QEMU\t0x1234" in render_header()


def test_inl_from_qemu_is_proven_by_reads_of_its_port():
    """≈1 kvm_pio read on 0x1234 and ≈1 userspace IO exit per iteration; writes there (the
    direction outb makes) are not it."""
    n = 11000
    console = {(0x3F8, "out"): 80}
    good = ExitCounts({"IO_INSTRUCTION": n + 80}, {"IO": n + 80},
                      {(0x1234, "in"): n, **console}, {}, 0, "test")
    for vendor in ("intel", "amd"):
        r = verify_case(good, n, "qemu", "inl_from_qemu", 0x1234, vendor)
        assert r["status"] == "passed", r["detail"]
        assert "INs from 0x1234" in r["detail"]
    wrong = ExitCounts({"IO_INSTRUCTION": n + 80}, {"IO": n + 80},
                       {(0x1234, "out"): n, **console}, {}, 0, "test")
    r = verify_case(wrong, n, "qemu", "inl_from_qemu", 0x1234, "intel")
    assert r["status"] == "failed" and "kvm_pio read on 0x1234" in r["detail"], r["detail"]
    with pytest.raises(ExitlatError, match="needs its port"):
        verify_case(good, n, "qemu", "inl_from_qemu", None, "intel")
    with pytest.raises(ExitlatError, match="runs port I/O or MMIO, not cpuid"):
        verify_case(good, n, "qemu", "cpuid", None, "intel")


def test_the_decomposition_pairs_the_reads_of_an_in_kind():
    """Where the round trip goes is taken from the exits of the case's own direction: an IN kind's
    reads of its port, not writes there."""
    from exitlat.stats.decompose import _select
    from exitlat.verify.trace.timeline import PairedExits

    read = {"n": 3, "host": [1, 2, 3], "qemu": [4, 5, 6], "user": [7, 8, 9]}
    write = {"n": 2, "host": [1, 1], "qemu": [1, 1], "user": [1, 1]}
    paired = PairedExits("x86-tsc", True, kinds={"IO_INSTRUCTION 0x1234/in": read,
                                                 "IO_INSTRUCTION 0x1234/out": write})
    label, host, _qemu, _user, n = _select(paired, ("IO_INSTRUCTION",), 0x1234,
                                           TABLE["inl_from_qemu"].io)
    assert (label, list(host), n) == ("IO_INSTRUCTION 0x1234/in", [1, 2, 3], 3)
    assert _select(paired, ("IO_INSTRUCTION",), 0x1234)[4] == 2     # outb: the writes


def test_the_selftest_runs_the_catalogue_by_name_or_together():
    """Every kind of the catalogue has a selftest run the guest accepts, in "all" (the emulated
    hosts proved them) and alone as "catalogue"."""
    from exitlat.selftest import inner
    from exitlat.selftest.cli import parse_runs

    assert parse_runs("catalogue") == list(inner.CATALOGUE_NAMES + inner.TWO_VCPU_NAMES)
    assert parse_runs("vmcall,catalogue-kernel") == ["vmcall", "catalogue-kernel"]
    assert set(inner.CATALOGUE_NAMES) <= set(parse_runs("all"))
    # one run per F case, each with every kind that case allows: no kind is left without a run
    assert sorted(c for r in inner.CATALOGUE_RUNS if r[1] == "all" for c in r[2]) == [1, 3, 5]
    ran = {s.instruction for r in inner.CATALOGUE_RUNS + inner.TWO_VCPU_RUNS
           for s in case_specs(list(r[2]), r[1])}
    assert ran == set(F_INSTRUCTIONS)
    assert parse_runs("default") == list(inner.RUN_NAMES)
    with pytest.raises(ExitlatError, match="choose all, default, catalogue"):
        parse_runs("mov_dr")


def test_every_kinds_longest_key_fits_the_probes_key_field():
    """The guest names a window case<n>_<kind>_traced in a char[32] (exitlat-probe.c struct key)
    and refuses the whole plan at boot when one does not fit: every kind's name must leave room
    (xapic_self_ipi_sti_nop did not, and cost a VM boot to find out)."""
    size = int(re.search(r"struct key \{\s*char name\[(\d+)\];", PROBE.read_text()).group(1))
    for name, row in TABLE.items():
        for case in row.cases:
            assert len(f"case{case}_{name}_traced") < size, name
