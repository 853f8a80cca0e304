"""Doctor and isolate against fake sysfs/procfs trees in tmp_path (nothing real is touched)."""

import errno
import json
from pathlib import Path

import pytest

from exitlat.errors import ExitlatError
from exitlat.host.isolation import collect_state, default_core, housekeeping_core
from exitlat.host.isolation.cli import doctor_main, isolate_main
from exitlat.host.isolation.items import Docker, Host
from exitlat.host.isolation.sysfs import (SysFs, cmdline_params, format_cpulist, format_cpumask, parse_cpulist,
                                     parse_cpumask, selected)
from exitlat.host.isolation.tune import isolate, revert

CPU = "sys/devices/system/cpu"
BOOT_ID = "0b0b0b0b-1111-2222-3333-444444444444\n"


def write_tree(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def base_files(isolated: bool) -> dict:
    """A 4-cpu host, SMT pairs (0,2) and (1,3); `isolated` tunes it for core 1 in every way."""
    f = {
        "dev/kvm": "",
        "proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vmx tsc\n",
        "sys/module/kvm/parameters/halt_poll_ns": "200000\n",
        "sys/module/kvm_intel/parameters/ept": "Y\n",
        "sys/module/kvm_intel/parameters/enable_apicv": "Y\n",
        "sys/kernel/tracing/events/kvm/kvm_exit/enable": "0\n",
        f"{CPU}/possible": "0-3\n",
        f"{CPU}/vulnerabilities/spectre_v2": "Mitigation: Retpolines\n",
        f"{CPU}/vulnerabilities/mds": "Not affected\n",
        "proc/sys/kernel/random/boot_id": BOOT_ID,
        "proc/1/comm": "systemd\n",
    }
    for c, sib in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")):
        f[f"{CPU}/cpu{c}/topology/thread_siblings_list"] = sib + "\n"
    for n, name, lat in ((0, "POLL", 0), (1, "C1", 2), (2, "C6", 133)):
        f[f"{CPU}/cpu1/cpuidle/state{n}/name"] = name + "\n"
        f[f"{CPU}/cpu1/cpuidle/state{n}/latency"] = f"{lat}\n"
        f[f"{CPU}/cpu1/cpuidle/state{n}/disable"] = "1\n" if isolated and lat > 10 else "0\n"
    irq = "0,2\n" if isolated else "0-3\n"
    for n in (0, 8, 24, 25):
        f[f"proc/irq/{n}/smp_affinity_list"] = irq
    f.update({
        f"{CPU}/online": "0-2\n" if isolated else "0-3\n",
        f"{CPU}/isolated": "1,3\n" if isolated else "\n",
        f"{CPU}/nohz_full": "1,3\n" if isolated else "(null)\n",
        f"{CPU}/cpu3/online": "0\n" if isolated else "1\n",
        f"{CPU}/cpu1/cpufreq/scaling_governor": "performance\n" if isolated else "powersave\n",
        f"{CPU}/cpu1/cpufreq/scaling_min_freq": "3000000\n" if isolated else "800000\n",
        f"{CPU}/cpu1/cpufreq/scaling_max_freq": "3000000\n",
        f"{CPU}/intel_pstate/no_turbo": "1\n" if isolated else "0\n",
        "proc/cmdline": ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 isolcpus=managed_irq,domain,1,3 nohz_full=1,3 "
                         "rcu_nocbs=1,3 irqaffinity=0,2 mitigations=auto\n") if isolated else
                        "BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet -- isolcpus=1 nohz_full=1\n",
        "proc/irq/default_smp_affinity": "5\n" if isolated else "f\n",
        "sys/devices/virtual/workqueue/cpumask": "5\n" if isolated else "f\n",
        "proc/sys/kernel/timer_migration": "0\n" if isolated else "1\n",
        "proc/sys/kernel/numa_balancing": "0\n" if isolated else "1\n",
        "proc/sys/kernel/nmi_watchdog": "0\n" if isolated else "1\n",
        "proc/sys/kernel/perf_event_max_sample_rate": "1\n" if isolated else "100000\n",
        "proc/sys/vm/stat_interval": "10\n" if isolated else "1\n",
        "sys/kernel/mm/transparent_hugepage/enabled": "always madvise [never]\n" if isolated else
                                                      "always [madvise] never\n",
        "sys/kernel/mm/ksm/run": "0\n" if isolated else "1\n",
    })
    if not isolated:
        f["proc/4242/comm"] = "irqbalance\n"
    return f


@pytest.fixture
def noisy(tmp_path):
    return write_tree(tmp_path / "noisy", base_files(False))


@pytest.fixture
def tuned(tmp_path):
    return write_tree(tmp_path / "tuned", base_files(True))


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class KernelFs(SysFs):
    """Writes behave like the kernel's: selector files move their [brackets]; chosen paths fail."""

    def __init__(self, root, fail: dict | None = None):
        super().__init__(root)
        self.fail = fail or {}
        self.writes = []

    def write(self, p, text):
        if p in self.fail:
            raise OSError(self.fail[p], f"fake {errno.errorcode[self.fail[p]]}")
        self.writes.append((p, text))
        cur = self.read(p)
        if cur is not None and "[" in cur:
            want = text.strip()
            assert want in cur.replace("[", "").replace("]", "").split(), f"{p}: invalid choice {want}"
            text = " ".join(f"[{w}]" if w == want else w
                            for w in cur.replace("[", "").replace("]", "").split()) + "\n"
        super().write(p, text)


class Systemctl:
    """Records commands; stopping irqbalance removes its /proc entry, starting adds it back."""

    def __init__(self, root: Path, rc: int = 0):
        self.root, self.rc, self.calls = root, rc, []

    def __call__(self, cmd):
        self.calls.append(cmd)
        comm = self.root / "proc/4242/comm"
        if self.rc == 0 and cmd[:2] == ["systemctl", "stop"]:
            comm.unlink()
            comm.parent.rmdir()
        elif self.rc == 0 and cmd[:2] == ["systemctl", "start"]:
            write_tree(self.root, {"proc/4242/comm": "irqbalance\n"})
        return self.rc


def has_systemctl(name):
    return "/usr/bin/systemctl" if name == "systemctl" else None


def statuses(state):
    return {i["name"]: i["status"] for i in state["items"]}


# -- parsing ------------------------------------------------------------------------------------

def test_cpulist_and_mask_parsing():
    assert parse_cpulist("0-3,8,10-15:2/4") == {0, 1, 2, 3, 8, 10, 11, 14, 15}
    assert parse_cpulist("managed_irq,domain,1,3") == {1, 3}
    assert parse_cpulist("(null)") == set()
    assert parse_cpulist("all", 4) == {0, 1, 2, 3} and parse_cpulist("N", 4) == {3}
    assert format_cpulist({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert parse_cpumask("ff,00000001") == {0} | set(range(32, 40))
    assert format_cpumask({0, 33}, like="ffffffff,ffffffff") == "2,00000001"
    assert format_cpumask({0, 2}) == "5"
    assert selected("always [madvise] never\n") == "madvise"


def test_cmdline_ignores_init_arguments(noisy):
    params = cmdline_params(SysFs(noisy))
    assert params["root"] == "/dev/sda1" and "quiet" in params
    assert "isolcpus" not in params and "nohz_full" not in params


# -- doctor -------------------------------------------------------------------------------------

def test_isolated_tree_passes(tuned):
    state = collect_state(1, tuned, docker=False, which=has_systemctl)
    st = statuses(state)
    assert state["isolated"] is True and state["core"] == 1
    assert [n for n, s in st.items() if s not in ("pass", "info")] == []
    assert st["docker"] == "info" and st["mitigations"] == "info"
    assert state["summary"]["warn"] == 0 and state["summary"]["fail"] == 0
    assert state["cmdline_suggestion"] == ""
    items = {i["name"]: i for i in state["items"]}
    assert items["smt_sibling"]["detail"] == "sibling 3 offline"
    assert items["kvm_module"]["value"]["module"] == "kvm_intel"
    assert items["kvm_module"]["value"]["parameters"] == {"enable_apicv": "Y", "ept": "Y"}
    assert items["virtualization"]["value"] == "vmx"
    assert items["mitigations"]["value"]["cmdline"] == "auto"
    json.dumps(state)  # the bundle stores it as is


def test_noisy_tree_warns_with_fixes(noisy):
    state = collect_state(1, noisy, docker=False, which=has_systemctl)
    st = statuses(state)
    warned = {"isolcpus", "nohz_full", "rcu_nocbs", "smt_sibling", "turbo", "governor", "min_freq", "cstates",
              "irqbalance", "irq_affinity", "default_irq_affinity", "workqueue_cpumask", "timer_migration",
              "nmi_watchdog", "stat_interval", "perf_sample_rate", "numa_balancing", "thp", "ksm"}
    assert {n for n, s in st.items() if s == "warn"} == warned
    assert st["dev_kvm"] == "pass" and state["isolated"] is False
    items = {i["name"]: i for i in state["items"]}
    assert items["irq_affinity"]["value"] == ["0", "8", "24", "25"]
    assert items["cstates"]["value"] == ["C6 (133 us)"]
    assert items["governor"]["value"] == "powersave" and items["governor"]["expected"] == "performance"
    assert items["thp"]["value"] == "madvise"
    assert items["smt_sibling"]["value"] == "3"
    assert "echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo" in items["turbo"]["fix"]
    assert all(i["fix"] for i in state["items"] if i["status"] == "warn")
    assert state["cmdline_suggestion"] == ("isolcpus=managed_irq,domain,1,3 irqaffinity=0,2 "
                                           "nohz_full=1,3 rcu_nocbs=1,3")
    assert "turbo" in state["summary"]["tunable_warn"] and "isolcpus" not in state["summary"]["tunable_warn"]


def test_empty_tree_never_raises(tmp_path):
    state = collect_state(0, tmp_path, docker=False, which=lambda n: None)
    st = statuses(state)
    assert st["dev_kvm"] == "fail" and st["virtualization"] == "fail"
    assert st["tracefs"] == "warn" and st["governor"] == "warn" and st["thp"] == "info"
    json.dumps(state)


def test_software_kvm_is_a_warning(tmp_path):
    root = write_tree(tmp_path, {"dev/kvm": "", "proc/cpuinfo": "flags\t: fpu hypervisor\n",
                                 "sys/module/kvm_pvm/parameters/pvm_native": "N\n"})
    items = {i["name"]: i for i in collect_state(0, root, docker=False)["items"]}
    assert items["virtualization"]["status"] == "warn"
    assert items["virtualization"]["value"] == "software (kvm_pvm)"
    assert items["kvm_module"]["value"]["module"] == "kvm_pvm"


def test_docker_down_is_a_warning(noisy):
    def down():
        raise ConnectionError("no daemon")

    check = Docker(Host(SysFs(noisy), 1, docker_ping=down)).show()
    assert check.status == "warn" and "ConnectionError" in check.detail
    assert Docker(Host(SysFs(noisy), 1, docker_ping=lambda: "24.0.7")).show().status == "pass"


def test_default_and_housekeeping_cores(tuned, noisy):
    assert default_core(tuned) == (1, None)  # 3 is isolated but offline
    core, warning = default_core(noisy)
    assert core == 3 and "no isolated core" in warning
    assert housekeeping_core(1, noisy) == 0  # not 1's sibling 3
    assert housekeeping_core(1, tuned) == 0


def test_doctor_main_json_and_exit_codes(tuned, tmp_path, capsys):
    assert doctor_main(1, as_json=True, root=tuned, docker=False) == 0
    assert json.loads(capsys.readouterr().out)["isolated"] is True
    assert doctor_main(0, as_json=False, root=tmp_path / "nothing", docker=False) == 1
    out = capsys.readouterr().out
    assert "FAIL  dev_kvm" in out and "-> fix:" in out
    with pytest.raises(ExitlatError, match="not an online core"):
        doctor_main(9, as_json=False, root=tuned, docker=False)


# -- isolate / revert ---------------------------------------------------------------------------

def run_isolate(root, state, fs=None, runner=None, **kw):
    out = []
    host = Host(fs or KernelFs(root), 1, which=has_systemctl)
    code = isolate(host, state, euid=0, runner=runner or Systemctl(root), out=out.append, **kw)
    return code, out


def test_isolate_then_revert_is_byte_identical(noisy, tmp_path):
    before = snapshot(noisy)
    state = tmp_path / "state.json"
    sc = Systemctl(noisy)
    code, out = run_isolate(noisy, state, runner=sc)
    assert code == 0 and state.exists()
    st = statuses(collect_state(1, noisy, docker=False, which=has_systemctl))
    for name in ("turbo", "governor", "min_freq", "cstates", "irqbalance", "irq_affinity", "default_irq_affinity",
                 "workqueue_cpumask", "timer_migration", "nmi_watchdog", "stat_interval", "perf_sample_rate",
                 "numa_balancing", "thp", "ksm"):
        assert st[name] == "pass", name
    assert (noisy / "proc/irq/24/smp_affinity_list").read_text() == "0,2-3\n"
    assert (noisy / "proc/irq/default_smp_affinity").read_text() == "d\n"
    assert (noisy / "sys/kernel/mm/transparent_hugepage/enabled").read_text() == "always madvise [never]\n"
    assert (noisy / f"{CPU}/cpu1/cpufreq/scaling_min_freq").read_text() == "3000000\n"
    assert (noisy / f"{CPU}/cpu1/cpuidle/state2/disable").read_text() == "1\n"
    assert (noisy / f"{CPU}/cpu1/cpuidle/state1/disable").read_text() == "0\n"  # C1 stays
    assert sc.calls == [["systemctl", "stop", "irqbalance"]]
    assert [e["target"] for e in json.loads(state.read_text())["changes"]][:5] == [
        "/sys/devices/system/cpu/intel_pstate/no_turbo", "/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
        "/sys/devices/system/cpu/cpu1/cpufreq/scaling_min_freq",
        "/sys/devices/system/cpu/cpu1/cpuidle/state2/disable", "irqbalance"]  # stopped before IRQs move

    assert revert(KernelFs(noisy), state, euid=0, runner=sc, out=lambda s: None) == 0
    assert sc.calls[-1] == ["systemctl", "start", "irqbalance"]
    assert snapshot(noisy) == before
    assert not state.exists()
    assert revert(KernelFs(noisy), state, euid=0, runner=sc, out=lambda s: None) == 0  # twice: no-op


def test_isolate_twice_equals_once(noisy, tmp_path):
    before = snapshot(noisy)
    state = tmp_path / "state.json"
    sc = Systemctl(noisy)
    run_isolate(noisy, state, runner=sc)
    once, saved = snapshot(noisy), json.loads(state.read_text())
    code, out = run_isolate(noisy, state, runner=sc)
    assert code == 0 and out == ["core 1: every run-time item is already tuned; nothing to change"]
    assert snapshot(noisy) == once and json.loads(state.read_text()) == saved
    assert revert(KernelFs(noisy), state, euid=0, runner=sc, out=lambda s: None) == 0
    assert snapshot(noisy) == before


def test_isolate_state_records_old_values(noisy, tmp_path):
    state = tmp_path / "state.json"
    run_isolate(noisy, state)
    doc = json.loads(state.read_text())
    assert doc["format_version"] == 1 and doc["cores"] == [1] and doc["boot_id"] == BOOT_ID.strip()
    by_target = {e["target"]: e for e in doc["changes"]}
    thp = by_target["/sys/kernel/mm/transparent_hugepage/enabled"]
    assert thp["old"] == "always [madvise] never\n" and thp["restore"] == "madvise\n" and thp["new"] == "never\n"
    assert by_target["irqbalance"] == {"item": "irqbalance", "kind": "service", "target": "irqbalance",
                                       "old": "running", "new": "stopped", "restore": "running",
                                       "status": "applied"}
    assert all(e["status"] == "applied" for e in doc["changes"])


def test_dry_run_changes_nothing(noisy, tmp_path):
    before = snapshot(noisy)
    state = tmp_path / "state.json"
    fs = KernelFs(noisy)
    code, out = run_isolate(noisy, state, fs=fs, dry_run=True)
    assert code == 0 and fs.writes == [] and not state.exists() and snapshot(noisy) == before
    assert out[0] == "dry run: isolate core 1 would make 18 changes:"
    assert "  governor: /sys/devices/system/cpu/cpu1/cpufreq/scaling_governor: powersave -> performance" in out
    assert "  irqbalance: systemctl stop irqbalance (running now; revert starts it)" in out


def test_not_root_is_a_clear_error(noisy, tmp_path):
    before = snapshot(noisy)
    with pytest.raises(ExitlatError, match="needs root"):
        isolate_main(1, revert=False, dry_run=False, state_file=str(tmp_path / "s.json"), root=noisy, euid=1000,
                     out=lambda s: None)
    assert snapshot(noisy) == before and not (tmp_path / "s.json").exists()
    (tmp_path / "s.json").write_text(json.dumps({"format_version": 1, "changes": []}))
    with pytest.raises(ExitlatError, match="needs root"):
        isolate_main(None, revert=True, dry_run=False, state_file=str(tmp_path / "s.json"), root=noisy, euid=1000)


def test_permission_error_undoes_and_explains(noisy, tmp_path):
    before = snapshot(noisy)
    state = tmp_path / "state.json"
    fs = KernelFs(noisy, fail={"/proc/sys/kernel/timer_migration": errno.EACCES})
    sc = Systemctl(noisy)
    with pytest.raises(ExitlatError, match=r"cannot change /proc/sys/kernel/timer_migration: Permission denied"):
        run_isolate(noisy, state, fs=fs, runner=sc)
    assert snapshot(noisy) == before  # everything done before the failure was undone, irqbalance restarted
    assert sc.calls == [["systemctl", "stop", "irqbalance"], ["systemctl", "start", "irqbalance"]]
    assert not state.exists()


def test_managed_irq_is_skipped_and_revert_still_exact(noisy, tmp_path):
    before = snapshot(noisy)
    state = tmp_path / "state.json"
    fs = KernelFs(noisy, fail={"/proc/irq/8/smp_affinity_list": errno.EIO})
    code, out = run_isolate(noisy, state, fs=fs)
    assert code == 0
    assert any(line.startswith("  skipped irq_affinity: /proc/irq/8/smp_affinity_list") for line in out)
    entry = next(e for e in json.loads(state.read_text())["changes"] if e["target"].endswith("/8/smp_affinity_list"))
    assert entry["status"].startswith("failed:")
    assert revert(fs, state, euid=0, runner=Systemctl(noisy), out=lambda s: None) == 0
    assert snapshot(noisy) == before


def test_other_write_failure_gives_exit_code_1(noisy, tmp_path):
    fs = KernelFs(noisy, fail={"/proc/sys/vm/stat_interval": errno.EINVAL})
    code, out = run_isolate(noisy, tmp_path / "state.json", fs=fs)
    assert code == 1 and any("FAILED  stat_interval" in line for line in out)


def test_irqbalance_without_systemctl_is_left_alone(noisy, tmp_path):
    out = []
    host = Host(KernelFs(noisy), 1, which=lambda n: None)
    sc = Systemctl(noisy)
    isolate(host, tmp_path / "state.json", euid=0, runner=sc, out=out.append)
    assert sc.calls == [] and (noisy / "proc/4242/comm").exists()
    assert any("no systemctl" in line for line in out)


def test_state_from_another_boot_is_refused(noisy, tmp_path):
    state = tmp_path / "state.json"
    run_isolate(noisy, state)
    (noisy / "proc/sys/kernel/random/boot_id").write_text("ffffffff-0000-0000-0000-000000000000\n")
    with pytest.raises(ExitlatError, match="before the last reboot"):
        revert(KernelFs(noisy), state, euid=0, runner=Systemctl(noisy))


def test_revert_takes_no_core(noisy, tmp_path):
    with pytest.raises(ExitlatError, match="takes no --core"):
        isolate_main(1, revert=True, dry_run=False, state_file=str(tmp_path / "s.json"), root=noisy)


def test_isolate_main_dry_run_prints_cmdline(noisy, tmp_path):
    out = []
    assert isolate_main(1, revert=False, dry_run=True, state_file=None, root=noisy, which=has_systemctl,
                        out=out.append) == 0
    assert out[-1].endswith("isolcpus=managed_irq,domain,1,3 irqaffinity=0,2 nohz_full=1,3 rcu_nocbs=1,3")
    assert not (noisy / "run").exists()
