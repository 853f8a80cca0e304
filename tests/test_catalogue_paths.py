"""The exit catalogue's paths: "no exit" proven (and refused when the kind did exit), port I/O that
KVM answers itself (the ELCR of the in-kernel PIC), kinds with two exits per iteration, the
host rules that decide a kind's path, and --instr lists / all pairing the same keys on both sides.
Counts are shaped like the emulated AMD-V host's real windows (selftest --runs catalogue)."""

import pytest

from exitlat.cases import case_keys, case_specs, parse_instrs
from exitlat.errors import ExitlatError
from exitlat.hostpaths import choose_path, host_facts
from exitlat.instructions import (ELCR_PORT, F_INSTRUCTIONS, PATH_KVM, PATH_NONE, PATH_QEMU,
                                  TABLE)
from exitlat.run.guestio import GuestPlan
from exitlat.run.plan import BenchOptions, make_plan
from exitlat.verify.timed import verify_timed_window
from exitlat.verify.trace.counts import ExitCounts
from exitlat.verify.traced import verify_case

N = 10_000
CONSOLE = {(0x3F8, "out"): 150}


def win(exits, user=None, pio=None, handled=None):
    return ExitCounts(exits, user or {"IO": 150}, {**CONSOLE, **(pio or {})}, handled or {}, 0,
                      "test")


# ---- "no exit" ---------------------------------------------------------------------------------

def quiet(**extra):
    """A window where the instruction under test never exited: the console, a few interrupts."""
    return win({"IO_INSTRUCTION": 150, "EXTERNAL_INTERRUPT": 12, "VINTR": 5, "MSR": 20, **extra})


@pytest.mark.parametrize("kind", ["mov_from_cr8", "pause", "wr_kernel_gs_base"])
def test_no_exit_is_proven_and_said(kind):
    r = verify_case(quiet(), N, PATH_NONE, kind, None, "amd")
    assert r["status"] == "passed", r["detail"]
    assert "no exit: virtualized in hardware or passed through" in r["detail"]
    assert r["other_path_max"] < 0.01


def test_a_no_exit_kind_that_exits_fails():
    own = TABLE["mov_from_cr8"].svm_reason
    r = verify_case(quiet(**{own: N}), N, PATH_NONE, "mov_from_cr8", None, "amd")
    assert r["status"] == "failed" and "expected no READ_CR8 exit" in r["detail"], r["detail"]
    # an exit of another reason per iteration fails it too
    r = verify_case(quiet(NPF=N), N, PATH_NONE, "mov_from_cr8", None, "amd")
    assert r["status"] == "failed" and "other synchronous exits" in r["detail"], r["detail"]
    # and one to QEMU per iteration
    w = win({"IO_INSTRUCTION": 150 + N}, {"IO": 150 + N}, {(0x1234, "in"): N})
    assert verify_case(w, N, PATH_NONE, "pause", None, "amd")["status"] == "failed"


def test_a_rearmed_intercept_may_exit_once_per_other_exit_and_no_more():
    """MOV to DR7: KVM intercepts again after any exit, so each background exit may bring one DR
    exit; an exit per iteration is still a failure."""
    fine = quiet(WRITE_DR7=400)       # above 2 % of n + 16, within it + the 187 other exits
    assert verify_case(fine, N, PATH_NONE, "mov_dr", None, "amd")["status"] == "passed"
    every = quiet(WRITE_DR7=N)
    r = verify_case(every, N, PATH_NONE, "mov_dr", None, "amd")
    assert r["status"] == "failed" and "one per other exit" in r["detail"], r["detail"]
    # a kind that is not re-armed gets no such allowance
    r = verify_case(quiet(MSR=20 + 187), N, PATH_NONE, "wr_kernel_gs_base", None, "amd")
    assert r["status"] == "passed", r["detail"]      # MSR exits: interrupts' side exits
    r = verify_case(quiet(READ_CR8=400), N, PATH_NONE, "mov_from_cr8", None, "amd")
    assert r["status"] == "failed", r["detail"]


def test_no_exit_needs_a_window_the_trace_saw_and_decoded():
    assert verify_case(win({}, {}), N, PATH_NONE, "pause", None, "amd")["status"] == "unverified"
    undecoded = win({"12345": 150}, {"IO": 150})
    r = verify_case(undecoded, N, PATH_NONE, "pause", None, "amd")
    assert r["status"] == "unverified" and "cannot be proven" in r["detail"], r["detail"]


def test_timed_window_of_no_exit():
    stats = {"exits": 150 + 30, "io_exits": 150, "irq_exits": 12, "halt_exits": 0}
    r = verify_timed_window(stats, N, PATH_NONE, "mov_from_cr8", console_io=150)
    assert r["status"] == "passed", r["detail"]
    stats["exits"] += N
    r = verify_timed_window(stats, N, PATH_NONE, "mov_from_cr8", console_io=150)
    assert r["status"] == "failed" and "it must not exit" in r["detail"], r["detail"]
    # mov_dr's re-armed exits ride on the background, not on the iterations
    rearm = {"exits": 150 + 12 + 150 + 12, "io_exits": 150, "irq_exits": 12, "halt_exits": 0}
    assert verify_timed_window(rearm, N, PATH_NONE, "mov_dr", console_io=150)["status"] == "passed"


# ---- port I/O answered inside KVM, two exits per iteration ---------------------------------------

def test_elcr_read_is_handled_in_kvm_without_a_userspace_exit():
    pio = {(ELCR_PORT, "in"): N}
    good = win({"IO_INSTRUCTION": 150 + N, "EXTERNAL_INTERRUPT": 9}, {"IO": 150}, pio)
    r = verify_case(good, N, PATH_KVM, "inl_from_kernel", ELCR_PORT, "amd")
    assert r["status"] == "passed", r["detail"]
    # the same reads gone to QEMU (split irqchip: no in-kernel PIC) are not this path ...
    to_qemu = win({"IO_INSTRUCTION": 150 + N}, {"IO": 150 + N}, pio)
    r = verify_case(to_qemu, N, PATH_KVM, "inl_from_kernel", ELCR_PORT, "amd")
    assert r["status"] == "failed" and "userspace exits" in r["detail"], r["detail"]
    # ... and writes there are not reads
    writes = win({"IO_INSTRUCTION": 150 + N}, {"IO": 150}, {(ELCR_PORT, "out"): N})
    assert verify_case(writes, N, PATH_KVM, "inl_from_kernel", ELCR_PORT, "amd")["status"] == "failed"
    # the timed window: ≈1 io_exit per iteration beyond the console's
    stats = {"exits": 150 + N + 9, "io_exits": 150 + N, "irq_exits": 9, "halt_exits": 0}
    assert verify_timed_window(stats, N, PATH_KVM, "inl_from_kernel", 150)["status"] == "passed"


def test_a_toggle_takes_two_exits_per_iteration():
    two = win({"WRITE_CR4": 2 * N, "IO_INSTRUCTION": 150})
    assert verify_case(two, N, PATH_KVM, "toggle_cr4_pge", None, "amd")["status"] == "passed"
    one = win({"WRITE_CR4": N, "IO_INSTRUCTION": 150})
    r = verify_case(one, N, PATH_KVM, "toggle_cr4_pge", None, "amd")
    assert r["status"] == "failed" and "expected ≈2 WRITE_CR4 exit" in r["detail"], r["detail"]
    stats = {"exits": 150 + 2 * N, "io_exits": 150, "irq_exits": 0, "halt_exits": 0}
    assert verify_timed_window(stats, N, PATH_KVM, "toggle_cr4_pge", 150)["status"] == "passed"
    stats["exits"] = 150 + N
    assert verify_timed_window(stats, N, PATH_KVM, "toggle_cr4_pge", 150)["status"] == "failed"


# ---- which path on which host ------------------------------------------------------------------

# vmx flags as the emulated VT-x host's /proc/cpuinfo lists them (Bochs corei7_skylake_x)
INTEL_EPT = {"cpu": {"vendor": "GenuineIntel", "vmx_flags": ["vnmi", "flexpriority", "vtpr", "vapic",
                                                            "ept", "vpid", "ple"]},
             "kvm": {"parameters": {"kvm_intel.ept": "Y", "kvm_intel.preemption_timer": "Y"}},
             "kernel": {"release": "6.12.0-1-amd64"}}
AMD = {"cpu": {"vendor": "AuthenticAMD"}, "kvm": {"parameters": {"kvm_amd.npt": "1"}},
       "kernel": {"release": "6.1.0"}}


def test_host_facts_decide_the_paths():
    assert {"intel", "ept", "kernel>=6.4"} <= host_facts(INTEL_EPT)
    assert choose_path(TABLE["toggle_cr0_wp"], INTEL_EPT).path == PATH_NONE
    assert choose_path(TABLE["toggle_cr4_pge"], INTEL_EPT).path == PATH_NONE
    assert choose_path(TABLE["toggle_cr0_wp"], AMD).path == PATH_KVM
    old = dict(INTEL_EPT, kernel={"release": "6.1.0"})      # CR0.WP guest-owned only since 6.4
    assert choose_path(TABLE["toggle_cr0_wp"], old).path == PATH_KVM
    shadow_less = dict(INTEL_EPT, cpu={"vendor": "GenuineIntel", "vmx_flags": ["ept"]})
    assert choose_path(TABLE["mov_from_cr8"], shadow_less).path == PATH_KVM
    assert choose_path(TABLE["mov_from_cr8"], INTEL_EPT).path == PATH_NONE
    # APICv virtualizes x2APIC EOI and SELF IPI writes (Bochs runs kvm_intel with it off)
    apicv = dict(INTEL_EPT, kvm={"parameters": {"kvm_intel.ept": "Y", "kvm_intel.enable_apicv": "Y"}})
    assert [choose_path(TABLE[k], apicv).path for k in ("eoi", "x2apic_self_ipi")] == [PATH_NONE] * 2
    assert [choose_path(TABLE[k], INTEL_EPT).path for k in ("eoi", "x2apic_self_ipi")] == [PATH_KVM] * 2
    assert choose_path(TABLE["eoi"], AMD).path == PATH_KVM
    # no host record: the row's default, said as such
    c = choose_path(TABLE["toggle_cr0_wp"], None)
    assert c.path == PATH_KVM and "default" in c.basis
    assert "ept" in choose_path(TABLE["toggle_cr0_wp"], INTEL_EPT).basis
    spec = case_specs([5], "toggle_cr0_wp", host=INTEL_EPT)[0]
    assert (spec.expected_path, "kernel>=6.4" in spec.path_basis) == (PATH_NONE, True)


# ---- MMIO: QEMU round trip vs. ioeventfd -------------------------------------------------------

def mmio_window(vendor_reason: str, user_mmio: int) -> ExitCounts:
    """N MMIO writes that each fault (NPF / EPT_MISCONFIG); `user_mmio` of them went to QEMU."""
    return win({"IO_INSTRUCTION": 150, "EXTERNAL_INTERRUPT": 9, vendor_reason: N},
               {"IO": 150, **({"MMIO": user_mmio} if user_mmio else {})})


@pytest.mark.parametrize("vendor,reason", [("amd", "NPF"), ("intel", "EPT_MISCONFIG")])
def test_mmio_to_qemu_and_to_an_ioeventfd_are_told_apart(vendor, reason):
    """The same fault exit either way: only the userspace MMIO exits say who completed the
    write, so each path fails on the other's window (the selftest's controls do the same on
    real windows)."""
    to_qemu, in_kvm = mmio_window(reason, N), mmio_window(reason, 0)
    r = verify_case(to_qemu, N, PATH_QEMU, "mmio_no_eventfd", None, vendor)
    assert r["status"] == "passed" and "userspace MMIO exits/iter" in r["detail"], r["detail"]
    for kind in ("mmio_eventfd", "mmio_datamatch"):
        assert verify_case(in_kvm, N, PATH_KVM, kind, None, vendor)["status"] == "passed"
        r = verify_case(to_qemu, N, PATH_KVM, kind, None, vendor)
        assert r["status"] == "failed" and "userspace exits" in r["detail"], r["detail"]
    r = verify_case(in_kvm, N, PATH_QEMU, "mmio_no_eventfd", None, vendor)
    assert r["status"] == "failed" and "KVM completed the writes itself" in r["detail"], r["detail"]
    # a fault of the other vendor's name (or none) is not the write's exit
    other = "EPT_MISCONFIG" if vendor == "amd" else "NPF"
    r = verify_case(mmio_window(other, N), N, PATH_QEMU, "mmio_no_eventfd", None, vendor)
    assert r["status"] == "failed", r["detail"]
    # reasons the trace could not decode prove nothing
    undecoded = win({"12345": N + 150}, {"IO": 150, "MMIO": N})
    r = verify_case(undecoded, N, PATH_QEMU, "mmio_no_eventfd", None, vendor)
    assert r["status"] == "unverified", r["detail"]


def test_mmio_timed_window_counts_the_fault_exit():
    ok = {"exits": N + 150 + 9, "io_exits": 150, "irq_exits": 9, "halt_exits": 0}
    for path, kind in ((PATH_QEMU, "mmio_no_eventfd"), (PATH_KVM, "mmio_eventfd")):
        assert verify_timed_window(ok, N, path, kind, console_io=150)["status"] == "passed"
        none = dict(ok, exits=150 + 9)
        assert verify_timed_window(none, N, path, kind, console_io=150)["status"] == "failed"


def test_pci_testdev_port_io_is_verified_on_the_port_the_guest_reported():
    """pio_*: the firmware places the I/O BAR, the guest reports it (hello: testdev_io), and the
    run's port is that base + the table's register offset; OUTs anywhere else are not the kind's,
    and without the report the window fails rather than guess."""
    from exitlat.cases import case_specs
    from exitlat.verify.verdicts import VerdictContext, run_port, traced_verdict

    ctx = VerdictContext("amd", 0xE9)
    spec = case_specs([5], "pio_eventfd")[0]
    assert spec.port is None and TABLE["pio_eventfd"].testdev_reg == 132
    assert run_port(spec, ctx, {"testdev_io": 0xC000}) == 0xC084
    assert run_port(spec, ctx, {}) is None and run_port(spec, ctx, {"testdev_io": True}) is None
    assert run_port(case_specs([5], "cpuid")[0], ctx, {"testdev_io": 0xC000}) is None
    port = 0xC084
    in_kvm = win({"IO_INSTRUCTION": 150 + N, "EXTERNAL_INTERRUPT": 4}, {"IO": 150},
                 {(port, "out"): N})
    to_qemu = win({"IO_INSTRUCTION": 150 + N}, {"IO": 150 + N}, {(port - 1, "out"): N})
    assert verify_case(in_kvm, N, PATH_KVM, "pio_eventfd", port, "amd")["status"] == "passed"
    r = verify_case(to_qemu, N, PATH_QEMU, "pio_no_eventfd", port - 1, "intel")
    assert r["status"] == "passed", r["detail"]
    # each path fails on the other's window; OUTs to another port are not the kind's
    assert verify_case(to_qemu, N, PATH_KVM, "pio_eventfd", port - 1, "amd")["status"] == "failed"
    assert verify_case(in_kvm, N, PATH_QEMU, "pio_no_eventfd", port, "amd")["status"] == "failed"
    assert verify_case(in_kvm, N, PATH_KVM, "pio_eventfd", port + 1, "amd")["status"] == "failed"

    class Traced:
        counts, kvm_stats, error = in_kvm, None, None
    v = traced_verdict(spec, Traced(), N, ctx, {})
    assert v["status"] == "failed" and "did not report the port" in v["detail"]
    assert traced_verdict(spec, Traced(), N, ctx, {"testdev_io": 0xC000})["status"] == "passed"


def test_a_delivered_self_ipi_is_one_msr_write_per_iteration():
    """self_ipi_delivery: the SELF IPI is an MSR-write exit with its kvm_msr write event; the
    handler's EOI is paravirtual (measured on the emulated AMD-V host: 1.06 MSR exits per
    iteration). A loop whose EOI exits too (no PV EOI) is another path, and so is one whose send
    did not exit."""
    send = win({"MSR": N + 60, "IO_INSTRUCTION": 150, "VINTR": 31, "EXTERNAL_INTERRUPT": 13},
               None, None, {"msr_write": N + 60})
    r = verify_case(send, N, PATH_KVM, "self_ipi_delivery", None, "amd")
    assert r["status"] == "passed", r["detail"]
    with_eoi = win({"MSR": 2 * N, "IO_INSTRUCTION": 150}, None, None, {"msr_write": 2 * N})
    assert verify_case(with_eoi, N, PATH_KVM, "self_ipi_delivery", None, "amd")["status"] == \
        "failed"
    # where APICv virtualizes the send there is no exit at all
    assert choose_path(TABLE["self_ipi_delivery"], INTEL_EPT).path == PATH_KVM
    apicv = {**INTEL_EPT, "kvm": {"parameters": {**INTEL_EPT["kvm"]["parameters"],
                                                 "kvm_intel.enable_apicv": "Y"}}}
    assert choose_path(TABLE["self_ipi_delivery"], apicv).path == PATH_NONE


def test_an_xapic_self_ipi_boots_the_guest_in_xapic_mode_and_counts_the_hosts_reason():
    """xapic_self_ipi: a MOV to the APIC page's ICR. Its exit's reason is the host's (SVM: the
    nested page fault; VMX: an EPT violation, APIC_WRITE with APICv), which the plan
    resolves and the traced window counts; an MSR write (an x2APIC send) is not it. The guest
    boots nox2apic, and no x2APIC kind may share that boot."""
    assert "nox2apic" in GuestPlan(cases=[5], instr="xapic_self_ipi").kernel_args()
    assert "nox2apic" not in GuestPlan(cases=[5], instr="x2apic_self_ipi").kernel_args()
    # the x2APIC kinds, read from their `needs`: a reworded row must not drop out of the check
    assert {n for n, r in TABLE.items() if r.x2apic} == {
        "eoi", "x2apic_self_ipi", "tscdeadline_immed", "tscdeadline", "self_ipi_delivery",
        "self_ipi_sti_nop", "self_ipi_tpr", "ipi", "ipi_halt"}
    with pytest.raises(ExitlatError, match="xAPIC mode and eoi, tscdeadline in x2APIC mode"):
        case_specs([5], "xapic_self_ipi,cpuid,eoi,tscdeadline")
    assert [s.instruction for s in case_specs([5], "xapic_self_ipi,cpuid")] == [
        "xapic_self_ipi", "cpuid"]
    apicv = {**INTEL_EPT, "kvm": {"parameters": {**INTEL_EPT["kvm"]["parameters"],
                                                 "kvm_intel.enable_apicv": "Y"}}}
    no_flex = {**INTEL_EPT, "kvm": {"parameters": {**INTEL_EPT["kvm"]["parameters"],
                                                   "kvm_intel.flexpriority": "N"}}}
    reasons = {}
    for name, host, vendor in (("amd", AMD, "amd"), ("flexpriority", INTEL_EPT, "intel"),
                               ("apicv", apicv, "intel"), ("no_flex", no_flex, "intel")):
        spec = case_specs([5], "xapic_self_ipi", host=host)[0]
        assert spec.expected_path == PATH_KVM
        reason = spec.exit_reason or TABLE["xapic_self_ipi"].reasons(vendor)[0]
        reasons[name] = reason
        ok = win({reason: N + 3, "IO_INSTRUCTION": 150, "EXTERNAL_INTERRUPT": 3})
        r = verify_case(ok, N, PATH_KVM, "xapic_self_ipi", None, vendor,
                        exit_reason=spec.exit_reason)
        assert r["status"] == "passed" and reason in r["detail"], (name, r["detail"])
        msr = win({"MSR_WRITE" if vendor == "intel" else "MSR": N, "IO_INSTRUCTION": 150})
        r = verify_case(msr, N, PATH_KVM, "xapic_self_ipi", None, vendor,
                        exit_reason=spec.exit_reason)
        assert r["status"] == "failed", (name, r["detail"])
    assert reasons == {"amd": "NPF", "flexpriority": "EPT_VIOLATION", "apicv": "APIC_WRITE",
                       "no_flex": "EPT_MISCONFIG"}
    # the delivered kinds: the same first exit, then the window or the TPR's exit, except where
    # APICv's virtual-interrupt delivery injects the IPI (no second exit, said in the basis)
    seconds = {k: (case_specs([5], k, host=AMD)[0].second_exit,
                   case_specs([5], k, host=INTEL_EPT)[0].second_exit,
                   case_specs([5], k, host=apicv)[0]) for k in
               ("xapic_ipi_sti_nop", "xapic_ipi_tpr")}
    assert seconds["xapic_ipi_sti_nop"][:2] == ("VINTR", "INTERRUPT_WINDOW")
    assert seconds["xapic_ipi_tpr"][:2] == ("WRITE_CR8", "TPR_BELOW_THRESHOLD")
    for _amd, _intel, spec in seconds.values():
        assert spec.second_exit is None and spec.exit_reason == "APIC_WRITE"
        assert "no second exit (virtual-interrupt delivery" in spec.path_basis
    spec = case_specs([5], "xapic_ipi_tpr", host=AMD)[0]
    both = win({"NPF": N + 2, "WRITE_CR8": N, "IO_INSTRUCTION": 150, "EXTERNAL_INTERRUPT": 2})
    r = verify_case(both, N, PATH_KVM, spec.instruction, None, "amd",
                    second_exit=spec.second_exit, exit_reason=spec.exit_reason)
    assert r["status"] == "passed", r["detail"]
    no_second = win({"NPF": N + 2, "IO_INSTRUCTION": 150, "EXTERNAL_INTERRUPT": 2})
    assert verify_case(no_second, N, PATH_KVM, spec.instruction, None, "amd",
                       second_exit=spec.second_exit)["status"] == "failed"
    # the row's own reason is not the APICv host's: without the plan's reason it fails there
    apic_write = win({"APIC_WRITE": N, "IO_INSTRUCTION": 150})
    assert verify_case(apic_write, N, PATH_KVM, "xapic_self_ipi", None, "intel")["status"] == \
        "failed"


def test_mmio_kinds_bring_their_device():
    """Only a VM whose plan has an MMIO kind gets pci-testdev (the others stay as they were)."""
    assert GuestPlan(cases=[5], instr="cpuid,mov_dr").devices() == ()
    assert GuestPlan(cases=[5], instr="cpuid,mmio_eventfd").devices() == ("pci-testdev",)
    assert GuestPlan(cases=[5], instr="pio_datamatch").devices() == ("pci-testdev",)
    from pathlib import Path

    from exitlat.run.qemu import QemuConfig, RunFiles, qemu_argv
    argv = qemu_argv(QemuConfig(Path("/b"), "kvm", 256, [], 0xE9, "null", True, ("pci-testdev",)),
                     RunFiles(Path("/r")))
    assert argv[argv.index("pci-testdev") - 1] == "-device"


# ---- --instr lists and all -----------------------------------------------------------------------

def test_instr_lists_and_all():
    assert parse_instrs("cpuid") == ("cpuid",)
    assert parse_instrs("cpuid, mov_dr") == ("cpuid", "mov_dr")
    assert parse_instrs("ALL") == "all"
    for bad, msg in (("cpuid,cpuid", "twice"), ("cpuid,,vmcall", "no instruction"),
                     ("mov_cr9", "unknown instruction 'mov_cr9'"), ("", "no instruction")):
        with pytest.raises(ExitlatError, match=msg):
            parse_instrs(bad)
    specs = case_specs([5], "all")
    assert [s.instruction for s in specs] == [n for n in F_INSTRUCTIONS if 5 in TABLE[n].cases
                                              and TABLE[n].vcpus == 1 and not TABLE[n].xapic]
    # the two-vCPU kinds join "all" only when a second core was given
    both = case_specs([5], "all", two_cores=True)
    assert [s.instruction for s in both] == [n for n in F_INSTRUCTIONS if 5 in TABLE[n].cases
                                             and not TABLE[n].xapic]
    assert {"ipi", "ipi_halt"} <= {s.instruction for s in both}
    assert all(s.key == f"case5_{s.instruction}" for s in specs)
    # all: case 1 runs only what CPL 3 can run; an explicit pair it cannot is refused
    assert {s.instruction for s in case_specs([1], "all")} == {
        n for n in F_INSTRUCTIONS if 1 in TABLE[n].cases}
    with pytest.raises(ExitlatError, match="case 1 cannot use mov_dr"):
        case_specs([1], "cpuid,mov_dr")
    # one F instruction keeps the keys of old bundles
    assert [s.key for s in case_specs([1, 2], "cpuid")] == ["case1", "case2"]
    assert [k for _, _, k in case_keys([2, 3], ("cpuid", "vmcall"))] == [
        "case2", "case3_cpuid", "case3_vmcall"]


def test_the_plan_and_the_guest_pair_the_same_keys():
    for instr in ("all", "cpuid", "inl_from_kernel,pause"):
        plan = make_plan(BenchOptions(cases=[1, 2, 3, 5], instr=instr, verify_iterations=5),
                         AMD, "kvm")
        timed = [k for k in plan.guest.keys() if k.startswith("case") and "_traced" not in k]
        assert timed == [s.key for s in plan.specs]
        assert max(len(k) for k in plan.guest.keys()) <= 31      # the probe's key name field
        assert set(plan.guest.instr.split(",")) == {s.instruction for s in plan.specs
                                                    if s.number % 2}
    g = GuestPlan(cases=[5], instr="cpuid,vmcall", verify_iterations=3)
    assert g.keys() == ["baseline_timer", "baseline_nonexiting", "baseline_syscall",
                        "baseline_module_call", "baseline_kernel_timer",
                        "baseline_kernel_nonexiting", "case5_cpuid", "case5_cpuid_traced",
                        "case5_vmcall", "case5_vmcall_traced"]


def test_every_kind_has_its_vmexit_flat_name_or_says_why_not():
    """The catalogue's correspondence to kvm-unit-tests' x86/vmexit.c (docs/measuring.md)."""
    for name in F_INSTRUCTIONS:
        row = TABLE[name]
        assert row.what, name
        if row.kut is None:
            assert name in ("rdmsr", "wrmsr_tsc_deadline", "xsetbv", "pause", "eoi",
                            "x2apic_self_ipi", "xapic_self_ipi", "self_ipi_delivery",
                            "tscdeadline_immed", "tscdeadline") or row.testdev is not None \
                or row.kut_smp or row.kut_twin, name
        if row.testdev is not None:     # vmexit.flat's pci-mem and pci-io tests
            assert row.kut_testdev.startswith("mmio-" if row.mmio else "portio-"), name
            assert row.kut_testdev.endswith(":pci-mem" if row.mmio else ":pci-io"), name
    assert {r.path for r in TABLE.values()} >= {PATH_KVM, PATH_QEMU, PATH_NONE}


def test_the_docs_catalogue_is_the_table():
    """docs/measuring.md carries the catalogue generated from the table, verbatim."""
    from exitlat.catalogue import markdown
    from exitlat.paths import REPO_ROOT

    assert markdown() in (REPO_ROOT / "docs/measuring.md").read_text(), \
        "regenerate the catalogue: python3 -m exitlat.catalogue"
