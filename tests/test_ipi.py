"""The two-vCPU kinds (ipi, ipi_halt): the receiver's verdict, the second core, the VM they need."""

from pathlib import Path

import pytest

from exitlat.cases import case_specs
from exitlat.errors import ExitlatError
from exitlat.hostpaths import choose_path, choose_receiver_path
from exitlat.instructions import PATH_FASTPATH, PATH_KVM, PATH_NONE, TABLE
from exitlat.run.plan import BenchOptions, make_plan
from exitlat.run.windows import TracedWindow
from exitlat.verify.receiver import verify_receiver
from exitlat.verify.trace.counts import ExitCounts
from exitlat.verify.verdicts import VerdictContext, traced_verdict

N = 10_000


def counts(exits, user=None, handled=None, probes=None):
    return ExitCounts(exits, user or {}, {}, handled or {}, 0, "test", probes=probes or {},
                      probed=tuple(k for k in (probes or {}) if ":" not in k))


def sender(n=N):
    """The sender's window as the emulated AMD-V host shows an ICR write in KVM's fastpath."""
    return counts({"MSR": n + 12, "EXTERNAL_INTERRUPT": 5}, handled={"msr_write": n + 12},
                  probes={"handle_fastpath_set_msr_irqoff": n + 12,
                          "handle_fastpath_set_msr_irqoff:handled": n + 10})


def test_a_halted_receiver_is_one_hlt_per_iteration():
    good = counts({"HLT": N + 8, "MSR": 30, "EXTERNAL_INTERRUPT": 3})
    assert verify_receiver(good, N, PATH_KVM, "ipi_halt", "amd")["status"] == "passed"
    # negative controls: a receiver that never halted (it ran: the IPI kicked it instead), one
    # that saw no IPI, and one whose IPIs went out to QEMU
    ran = counts({"EXTERNAL_INTERRUPT": N, "MSR": 30})
    assert verify_receiver(ran, N, PATH_KVM, "ipi_halt", "amd")["status"] == "failed"
    assert verify_receiver(counts({"MSR": 5}), N, PATH_KVM, "ipi_halt", "amd")["status"] == "failed"
    # the console's port I/O is background on the receiver too (its UART interrupt may land there)
    console = ExitCounts({"HLT": N, "IO_INSTRUCTION": 140, "MSR": 9}, {"IO": 140},
                         {(0x3F8, "out"): 140}, {}, 0, "test")
    assert verify_receiver(console, N, PATH_KVM, "ipi_halt", "amd")["status"] == "passed"
    out = counts({"HLT": N, "IO_INSTRUCTION": N}, user={"IO": N})
    v = verify_receiver(out, N, PATH_KVM, "ipi_halt", "amd")
    assert v["status"] == "failed" and "userspace" in v["detail"]


def test_a_running_receiver_is_kicked_once_per_iteration():
    # its timer ticks add an interrupt exit each, and re-arm the timer (an MSR write each)
    good = counts({"EXTERNAL_INTERRUPT": N + 40, "MSR_WRITE": 40})
    assert verify_receiver(good, N, PATH_KVM, "ipi", "intel")["status"] == "passed"
    # more kicks than its re-arms explain: another path (or a receiver that halted and woke)
    extra = counts({"EXTERNAL_INTERRUPT": N + 2000, "MSR_WRITE": 40})
    assert verify_receiver(extra, N, PATH_KVM, "ipi", "intel")["status"] == "failed"
    # a posted interrupt is no exit: the receiver's kicks fail a host where it should have none
    assert verify_receiver(good, N, PATH_NONE, "ipi", "intel")["status"] == "failed"
    quiet = counts({"EXTERNAL_INTERRUPT": 12, "MSR_WRITE": 12})
    assert verify_receiver(quiet, N, PATH_NONE, "ipi", "intel")["status"] == "passed"


def test_a_receiver_whose_background_is_most_of_n_is_unverified():
    busy = counts({"HLT": N + 2000, "MSR": 3000})
    assert verify_receiver(busy, N, PATH_KVM, "ipi_halt", "amd")["status"] == "unverified"


def test_the_traced_verdict_is_the_worse_of_sender_and_receiver():
    spec = case_specs([5], "ipi_halt", host=AMD)[0]
    ctx = VerdictContext(vendor="amd", port=0xE9)
    w = TracedWindow(counts=sender(), receiver_counts=counts({"HLT": N + 3, "MSR": 4}))
    v = traced_verdict(spec, w, N, ctx)
    assert v["status"] == "passed", v["detail"]
    assert v["receiver"]["status"] == "passed"
    w.receiver_counts = counts({"EXTERNAL_INTERRUPT": N})
    assert traced_verdict(spec, w, N, ctx)["status"] == "failed"
    w.receiver_counts = None         # the receiver not traced: never a pass
    v = traced_verdict(spec, w, N, ctx)
    assert v["status"] == "failed" and "receiving vCPU" in v["detail"]


def test_the_timed_window_judges_the_receiver_by_its_own_stats():
    """The samples come from the timed window: its receiver is proven by its own vCPU's KVM
    stats (nothing traced it), not only in the traced window."""
    from exitlat.run.windows import TimedWindow
    from exitlat.verify.verdicts import timed_verdict

    spec = case_specs([5], "ipi_halt", host=AMD)[0]
    ctx = VerdictContext(vendor="amd", port=0xE9)
    sent = {"exits": N + 12, "io_exits": 0, "irq_exits": 5, "halt_exits": 0, "irq_window_exits": 0}
    w = TimedWindow(kvm_stats=sent, tracing_before=[], tracing_after=[],
                    receiver_kvm_stats={"exits": N + 20, "halt_exits": N + 5, "irq_exits": 9})
    v = timed_verdict(spec, w, N, ctx)
    assert v["status"] == "passed", v["detail"]
    assert v["receiver"]["expected_reason_per_iter"] == pytest.approx(1.0005)
    # negative controls: a receiver that never halted in the timed window (kicked while it ran,
    # as halt polling or a busy receiver would leave it), and one a host rule says takes no exit
    w.receiver_kvm_stats = {"exits": N + 20, "halt_exits": 0, "irq_exits": N + 10}
    v = timed_verdict(spec, w, N, ctx)
    assert v["status"] == "failed" and "halt_exit" in v["detail"], v["detail"]
    none = case_specs([5], "ipi_halt", host=AMD)[0]
    object.__setattr__(none, "receiver_path", PATH_NONE)
    w.receiver_kvm_stats = {"exits": N + 20, "halt_exits": N + 5}
    assert timed_verdict(none, w, N, ctx)["status"] == "failed"
    # the receiver's stats not read, or without the stat of its reason: never a pass
    w.receiver_kvm_stats = None
    v = timed_verdict(spec, w, N, ctx)
    assert v["status"] == "unverified" and "not read" in v["detail"], v["detail"]
    w.receiver_kvm_stats = {"exits": N + 20}
    assert timed_verdict(spec, w, N, ctx)["status"] == "unverified"
    # a receiver whose other exits are most of n: its count rests on them, too much to prove
    w.receiver_kvm_stats = {"exits": N + 5000, "halt_exits": N + 2000}
    assert timed_verdict(spec, w, N, ctx)["status"] == "unverified"
    # the running receiver (ipi): its kick is an external-interrupt exit, irq_exits
    ipi = case_specs([5], "ipi", host=AMD)[0]
    w.receiver_kvm_stats = {"exits": N + 50, "irq_exits": N + 10, "halt_exits": 0}
    assert timed_verdict(ipi, w, N, ctx)["status"] == "passed"


def test_the_report_shows_the_receivers_exits_beside_the_senders():
    from exitlat.report.text import verified_text

    spec = case_specs([5], "ipi_halt", host=AMD)[0]
    w = TracedWindow(counts=sender(), receiver_counts=counts({"HLT": N + 3, "MSR": 4}))
    v = traced_verdict(spec, w, N, VerdictContext(vendor="amd", port=0xE9))
    assert verified_text(v) == "passed (exit 1.00, user 0.00, receiver 1.00)", verified_text(v)


AMD = {"cpu": {"vendor": "AuthenticAMD"}, "kvm": {"parameters": {"kvm_amd.npt": "Y"}}}
INTEL = {"cpu": {"vendor": "GenuineIntel"}, "kvm": {"parameters": {"kvm_intel.ept": "Y"}}}


def test_host_facts_decide_both_vcpus_paths():
    assert choose_path(TABLE["ipi"], AMD).path == PATH_FASTPATH
    assert choose_receiver_path(TABLE["ipi"], AMD).path == PATH_KVM
    avic = {**AMD, "kvm": {"parameters": {"kvm_amd.avic": "Y"}}}
    assert choose_path(TABLE["ipi"], avic).path == PATH_NONE
    assert choose_receiver_path(TABLE["ipi"], avic).path == PATH_NONE
    apicv = {**INTEL, "kvm": {"parameters": {"kvm_intel.enable_apicv": "Y"}}}
    assert choose_path(TABLE["ipi"], apicv).path == PATH_FASTPATH      # the send still exits
    assert choose_receiver_path(TABLE["ipi"], apicv).path == PATH_NONE  # posted
    ipiv = {**INTEL, "kvm": {"parameters": {"kvm_intel.enable_apicv": "Y",
                                            "kvm_intel.enable_ipiv": "Y"}}}
    assert choose_path(TABLE["ipi"], ipiv).path == PATH_NONE
    # a halted receiver exits on HLT whatever the host (no cpu-pm=on)
    assert choose_receiver_path(TABLE["ipi_halt"], ipiv).path == PATH_KVM
    assert choose_receiver_path(TABLE["cpuid"], AMD) is None
    # SVM without NRIP save (TCG's EPYC): KVM's fastpath cannot skip the WRMSR, the normal
    # handler takes the ICR write (seen on the emulated AMD-V host: 0 fastpath calls)
    no_nrips = {**AMD, "cpu": {"vendor": "AuthenticAMD", "path_flags": ["npt"]}}
    nrips = {**AMD, "cpu": {"vendor": "AuthenticAMD", "path_flags": ["npt", "nrip_save"]}}
    off = {"cpu": nrips["cpu"], "kvm": {"parameters": {"kvm_amd.nrips": "0"}}}
    assert choose_path(TABLE["ipi"], off).path == PATH_KVM       # kvm_amd.nrips=0 as well
    for kind in ("ipi", "ipi_halt"):
        assert choose_path(TABLE[kind], no_nrips).path == PATH_KVM
        assert choose_path(TABLE[kind], nrips).path == PATH_FASTPATH
    # AVIC before NRIPs: a running receiver's IPI does not exit at all
    assert choose_path(TABLE["ipi"], {**no_nrips, "kvm": {"parameters": {"kvm_amd.avic": "Y"}}}
                       ).path == PATH_NONE


def test_only_two_vcpu_guests_route_device_interrupts_away_from_the_receiver():
    from exitlat.run.guestio import GuestPlan

    assert "irqaffinity=0" in GuestPlan(cases=[5], instr="cpuid,ipi_halt").kernel_args()
    assert "irqaffinity=0" not in GuestPlan(cases=[5], instr="cpuid").kernel_args()


def test_only_a_plan_with_an_ipi_kind_has_two_vcpus_and_a_second_core():
    plan = make_plan(BenchOptions(cases=[5], instr="cpuid,ipi"), AMD, "kvm")
    assert plan.vcpus == 2
    assert make_plan(BenchOptions(cases=[5], instr="all"), AMD, "kvm").vcpus == 1
    with pytest.raises(ExitlatError, match="a second core is for the two-vCPU kinds"):
        make_plan(BenchOptions(cases=[5], instr="cpuid", core=1, peer_core=2), AMD, "kvm")
    both = make_plan(BenchOptions(cases=[5], instr="all", core=1, peer_core=2), AMD, "kvm")
    assert both.vcpus == 2 and {"ipi", "ipi_halt"} <= {s.instruction for s in both.specs}
    from exitlat.run.qemu import QemuConfig, RunFiles, qemu_argv

    def smp(vcpus):
        argv = qemu_argv(QemuConfig(Path("/b"), "kvm", 256, [], 0xE9, "null", True, (), vcpus),
                         RunFiles(Path("/r")))
        return argv[argv.index("-smp") + 1]
    # one socket each: the guest finds its CPUs in SeaBIOS's MP table, one CPU per package
    assert smp(1) == "1" and smp(2) == "2,sockets=2,cores=1,threads=1"


def test_core_a_comma_b():
    from exitlat.bench import parse_peer_core

    assert parse_peer_core(None) is None and parse_peer_core("3") is None
    assert parse_peer_core("1,2") == 2
    for bad in ("1,2,3", "1,x", "1,-1"):
        with pytest.raises(ExitlatError):
            parse_peer_core(bad)


def test_the_receivers_core_is_its_own(tmp_path, monkeypatch):
    from exitlat.run.placement import resolve_peer
    from exitlat.run.plan import Placement

    with pytest.raises(ExitlatError, match="a core of its own"):
        resolve_peer(Placement(core=1, housekeeping=0), 1, print)
    with pytest.raises(ExitlatError, match="a core of its own"):
        resolve_peer(Placement(core=1, housekeeping=0), 0, print)
    with pytest.raises(ExitlatError, match="does not exist"):
        resolve_peer(Placement(core=1, housekeeping=0), 4096, print)


def _cpu(root, n, core_cpus, pkg, llc):
    d = root / f"sys/devices/system/cpu/cpu{n}"
    (d / "topology").mkdir(parents=True)
    (d / "topology/core_cpus_list").write_text(core_cpus + "\n")
    (d / "topology/physical_package_id").write_text(f"{pkg}\n")
    for idx, (level, shared) in enumerate(((1, str(n)), (3, llc))):
        c = d / f"cache/index{idx}"
        c.mkdir(parents=True)
        (c / "level").write_text(f"{level}\n")
        (c / "shared_cpu_list").write_text(shared + "\n")


def test_pair_topology_tells_siblings_llc_and_packages(tmp_path):
    from exitlat.host.isolation import pair_topology

    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-5\n")
    (tmp_path / "sys/devices/system/cpu/possible").write_text("0-5\n")
    _cpu(tmp_path, 0, "0,3", 0, "0-3")
    _cpu(tmp_path, 1, "1", 0, "0-3")
    _cpu(tmp_path, 2, "2", 0, "0-3")
    _cpu(tmp_path, 3, "0,3", 0, "0-3")
    _cpu(tmp_path, 4, "4", 0, "4-5")
    _cpu(tmp_path, 5, "5", 1, "4-5")
    rel = lambda a, b: pair_topology(a, b, tmp_path)["relation"]     # noqa: E731
    assert rel(0, 3) == "smt_sibling"
    assert rel(0, 1) == "same_llc"
    assert rel(0, 4) == "same_package"
    assert rel(0, 5) == "other_package"
    assert pair_topology(0, 1, tmp_path)["llc_level"] == "3"


def test_kvm_stats_are_one_vcpus_not_the_sum():
    """With two vCPUs the timed window's stats are the sender's alone (its receiver's HLTs would
    otherwise count as the sender's background)."""
    from exitlat.run.qmp import QMP

    q = object.__new__(QMP)
    cpus = [{"cpu-index": 1, "thread-id": 12, "qom-path": "/m/cpu[1]"},
            {"cpu-index": 0, "thread-id": 11, "qom-path": "/m/cpu[0]"}]
    stats = [{"provider": "kvm", "qom-path": "/m/cpu[0]", "stats": [{"name": "exits", "value": 5}]},
             {"provider": "kvm", "qom-path": "/m/cpu[1]", "stats": [{"name": "exits", "value": 70},
                                                                   {"name": "halt_exits", "value": 60}]}]
    q.command = lambda name, **kw: cpus if name == "query-cpus-fast" else stats
    assert q.vcpu_threads() == [11, 12]           # vCPU order, whatever QEMU's list order
    assert q.kvm_stats() == {"exits": 5}
    assert q.kvm_stats(1) == {"exits": 70, "halt_exits": 60}
    assert q.kvm_stats(2) is None                 # no such vCPU: no stats, never someone else's
    q.command = lambda name, **kw: cpus[1:] if name == "query-cpus-fast" else stats[:1]
    q.vcpu_threads()
    assert q.kvm_stats() == {"exits": 5}          # one vCPU: as before


def test_compare_says_when_the_receivers_core_sits_elsewhere():
    from exitlat.report.compare import setup_unfairness

    def doc(relation, isolated):
        return {"options": {}, "run": {"receiver_core": 7, "topology": {"relation": relation},
                                       "receiver_isolation": {"isolated": isolated}}}
    lines = setup_unfairness(doc("same_llc", True), doc("smt_sibling", True), "A", "B")
    assert len(lines) == 1 and "receiver core" in lines[0] and "smt_sibling" in lines[0]
    assert setup_unfairness(doc("same_llc", True), doc("same_llc", True), "A", "B") == []
    assert "not isolated" in setup_unfairness(doc("same_llc", True), doc("same_llc", False),
                                              "A", "B")[0]
    # one-vCPU bundles say nothing of it
    assert setup_unfairness({"options": {}, "run": {}}, {"options": {}, "run": {}}, "A", "B") == []


# ---- tscdeadline: a timer armed ahead, whose expiry is an exit of its own ------------------------

def test_a_timer_armed_ahead_is_its_wrmsr_and_its_expiry():
    """tscdeadline on an SVM host: the WRMSR (normal handler: no preemption timer) and KVM's
    hrtimer kicking the vCPU (EXTERNAL_INTERRUPT), ≈1 each per iteration."""
    from exitlat.verify.traced import verify_case

    probes = {"handle_fastpath_set_msr_irqoff": N + 10,
              "handle_fastpath_set_msr_irqoff:handled": 0}
    w = counts({"MSR": N + 10, "EXTERNAL_INTERRUPT": N + 25, "VINTR": 4},
               handled={"msr_write": N + 10}, probes=probes)
    stats = {"exits": 2 * N + 39, "irq_exits": N + 25, "irq_window_exits": 4, "halt_exits": 0,
             "io_exits": 0}
    spec = case_specs([5], "tscdeadline", host=AMD)[0]
    assert spec.expected_path == PATH_KVM and spec.second_exit == "EXTERNAL_INTERRUPT"
    v = verify_case(w, N, spec.expected_path, "tscdeadline", None, "amd", kvm_stats=stats,
                    second_exit=spec.second_exit)
    assert v["status"] == "passed", v["detail"]
    assert v["second_exit"] == {"reason": "EXTERNAL_INTERRUPT", "per_iter": 1.0025}
    # the timer expired before the re-entry (injected on entry): no expiry exit, another path
    early = counts({"MSR": N + 10, "EXTERNAL_INTERRUPT": 25}, handled={"msr_write": N + 10},
                   probes=probes)
    v = verify_case(early, N, PATH_KVM, "tscdeadline", None, "amd",
                    second_exit="EXTERNAL_INTERRUPT")
    assert v["status"] == "failed" and "second" in v["detail"]
    # and only the expiry rule catches that: the WRMSR's exits alone look the same
    assert verify_case(early, N, PATH_KVM, "tscdeadline", None, "amd")["status"] == "passed"


def test_the_timed_window_of_a_timer_armed_ahead():
    from exitlat.verify.timed import verify_timed_window

    stats = {"exits": 2 * N + 60, "irq_exits": N + 30, "irq_window_exits": 5, "halt_exits": 3,
             "io_exits": 20}
    v = verify_timed_window(stats, N, PATH_KVM, "tscdeadline", console_io=20,
                            second_exit="EXTERNAL_INTERRUPT")
    assert v["status"] == "passed", v["detail"]
    none = dict(stats, exits=N + 60, irq_exits=30)      # no kick: the interrupts are not there
    v = verify_timed_window(none, N, PATH_KVM, "tscdeadline", console_io=20,
                            second_exit="EXTERNAL_INTERRUPT")
    assert v["status"] == "failed" and "second exit" in v["detail"]
    # VMX's preemption timer: no stat of its own; its exits are in `exits`
    vmx = dict(stats, irq_exits=30)
    assert verify_timed_window(vmx, N, PATH_FASTPATH, "tscdeadline", console_io=20,
                               second_exit="PREEMPTION_TIMER")["status"] == "passed"


def test_the_expiry_reason_follows_the_host():
    from exitlat.hostpaths import choose_second

    assert choose_second(TABLE["tscdeadline"], AMD).path == "EXTERNAL_INTERRUPT"
    assert choose_second(TABLE["tscdeadline"], INTEL).path == "PREEMPTION_TIMER"
    off = {**INTEL, "kvm": {"parameters": {"kvm_intel.preemption_timer": "N"}}}
    assert choose_second(TABLE["tscdeadline"], off).path == "EXTERNAL_INTERRUPT"
    assert choose_path(TABLE["tscdeadline"], off).path == PATH_KVM
    assert choose_second(TABLE["cpuid"], AMD) is None



# ---- self_ipi_tpr: the SELF IPI masked by the TPR, delivered when the TPR is put back ------------

def test_a_self_ipi_held_by_the_tpr_is_its_send_and_the_tpr_drop():
    """self_ipi_tpr: the SELF IPI's MSR exit, then the CR8 write KVM intercepts while the IPI is
    pending (SVM) or the TPR-below-threshold exit (VMX), ≈1 each per iteration."""
    from exitlat.hostpaths import choose_second
    from exitlat.verify.timed import verify_timed_window
    from exitlat.verify.traced import verify_case

    spec = case_specs([5], "self_ipi_tpr", host=AMD)[0]
    assert spec.expected_path == PATH_KVM and spec.second_exit == "WRITE_CR8"
    w = counts({"MSR": N + 8, "WRITE_CR8": N + 2, "EXTERNAL_INTERRUPT": 6},
               handled={"msr_write": N + 8})
    v = verify_case(w, N, PATH_KVM, "self_ipi_tpr", None, "amd", second_exit=spec.second_exit)
    assert v["status"] == "passed", v["detail"]
    # the TPR drop that did not exit: the IPI was not held (another path), or KVM never saw it
    held_not = counts({"MSR": N + 8, "EXTERNAL_INTERRUPT": 6}, handled={"msr_write": N + 8})
    v = verify_case(held_not, N, PATH_KVM, "self_ipi_tpr", None, "amd", second_exit="WRITE_CR8")
    assert v["status"] == "failed" and "second" in v["detail"]
    # KVM counts the CR8 write in `exits` alone: the timed window takes n of them out of it
    stats = {"exits": 2 * N + 20, "irq_exits": 6, "irq_window_exits": 0, "halt_exits": 0,
             "io_exits": 4}
    assert verify_timed_window(stats, N, PATH_KVM, "self_ipi_tpr", console_io=4,
                               second_exit="WRITE_CR8")["status"] == "passed"
    # the second exit's reason follows the host: VMX's TPR threshold, or every CR8 write without
    # a TPR shadow; with APICv neither the send nor the drop exits
    assert choose_second(TABLE["self_ipi_tpr"], INTEL).path == "TPR_BELOW_THRESHOLD"
    bare = {**INTEL, "cpu": {"vendor": "GenuineIntel", "vmx_flags": ["ept"]}}
    assert choose_second(TABLE["self_ipi_tpr"], bare).path == "CR_ACCESS"
    apicv = {**INTEL, "kvm": {"parameters": {"kvm_intel.enable_apicv": "Y"}}}
    s = case_specs([5], "self_ipi_tpr", host=apicv)[0]
    assert s.expected_path == PATH_NONE and s.second_exit is None


def test_a_pending_self_ipi_takes_its_interrupt_window():
    """self_ipi_sti_nop: the SELF IPI's MSR exit, then the interrupt window (VMX INTERRUPT_WINDOW,
    SVM VINTR). A loop whose IPI was delivered without it (sent with IRQs on, as
    self_ipi_delivery does) fails, in both windows."""
    from exitlat.verify.timed import verify_timed_window
    from exitlat.verify.traced import verify_case

    for vendor, reason in (("intel", "INTERRUPT_WINDOW"), ("amd", "VINTR")):
        spec = case_specs([5], "self_ipi_sti_nop", host=AMD if vendor == "amd" else INTEL)[0]
        assert spec.second_exit == reason and spec.expected_path == PATH_KVM
        msr = "MSR" if vendor == "amd" else "MSR_WRITE"
        w = counts({msr: N + 20, reason: N + 4, "EXTERNAL_INTERRUPT": 9},
                   handled={"msr_write": N + 20})
        v = verify_case(w, N, PATH_KVM, "self_ipi_sti_nop", None, vendor, second_exit=reason)
        assert v["status"] == "passed", (vendor, v["detail"])
        alone = counts({msr: N + 20, "EXTERNAL_INTERRUPT": 9}, handled={"msr_write": N + 20})
        assert verify_case(alone, N, PATH_KVM, "self_ipi_sti_nop", None, vendor,
                           second_exit=reason)["status"] == "failed", vendor
        stats = {"exits": 2 * N + 40, "irq_exits": 9, "irq_window_exits": N + 4, "halt_exits": 2,
                 "io_exits": 0}
        assert verify_timed_window(stats, N, PATH_KVM, "self_ipi_sti_nop", console_io=0,
                                   second_exit=reason)["status"] == "passed", vendor
        stats.update(irq_window_exits=4, exits=N + 40)
        assert verify_timed_window(stats, N, PATH_KVM, "self_ipi_sti_nop", console_io=0,
                                   second_exit=reason)["status"] == "failed", vendor
    # with APICv the send and its delivery are virtualized: no exit, and no second exit expected
    apicv = {**INTEL, "kvm": {"parameters": {"kvm_intel.enable_apicv": "Y"}}}
    s = case_specs([5], "self_ipi_sti_nop", host=apicv)[0]
    assert s.expected_path == PATH_NONE and s.second_exit is None


def test_a_receiver_reason_kvm_keeps_no_stat_of_is_unverified(monkeypatch):
    """Fail closed: a receiver whose reason has no KVM stat cannot be judged from stats."""
    from exitlat.verify import second_exit
    from exitlat.verify.receiver import verify_receiver_timed

    monkeypatch.delitem(second_exit.STAT_OF, "HLT")
    v = verify_receiver_timed({"exits": N + 5, "halt_exits": N}, N, PATH_KVM, "ipi_halt", "intel")
    assert v["status"] == "unverified" and "no stat" in v["detail"], v["detail"]
