"""HostInfo readers against fake /proc and /sys trees."""

from pathlib import Path

from exitlat.host.facts import collect_host, cpu_info, kvm_info, tsc_info, vulnerabilities

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
microcode\t: 0x2b000590
siblings\t: 4
cpu cores\t: 2
flags\t\t: fpu vmx constant_tsc nonstop_tsc rdtscp

processor\t: 1
vendor_id\t: GenuineIntel

processor\t: 2
vendor_id\t: GenuineIntel

processor\t: 3
vendor_id\t: GenuineIntel
"""


def fake_tree(root: Path) -> Path:
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(CPUINFO)
    (root / "proc/cmdline").write_text("isolcpus=3 nohz_full=3\n")
    cpu = root / "sys/devices/system/cpu"
    (cpu / "cpu0").mkdir(parents=True)
    (cpu / "cpu0/tsc_freq_khz").write_text("2000000\n")
    (cpu / "smt").mkdir()
    (cpu / "smt/active").write_text("1\n")
    (cpu / "vulnerabilities").mkdir()
    (cpu / "vulnerabilities/spectre_v2").write_text("Mitigation: Enhanced IBRS\n")
    for mod, params in {"kvm": {"halt_poll_ns": "200000"},
                        "kvm_intel": {"ept": "Y", "enable_apicv": "Y", "ple_gap": "128"}}.items():
        d = root / "sys/module" / mod / "parameters"
        d.mkdir(parents=True)
        for k, v in params.items():
            (d / k).write_text(v + "\n")
    return root


def test_cpu_fields(tmp_path):
    c = cpu_info(fake_tree(tmp_path))
    assert (c["vendor"], c["family"], c["model"], c["stepping"]) == ("GenuineIntel", 6, 143, 8)
    assert c["microcode"] == "0x2b000590" and c["cores"] == 4 and c["threads_per_core"] == 2
    assert c["smt"] is True and c["virtualization"] == "vmx" and c["constant_tsc"]


def test_tsc_from_sysfs(tmp_path):
    assert tsc_info(fake_tree(tmp_path)) == {"hz": 2_000_000_000, "source": "sysfs tsc_freq_khz"}


def test_tsc_unknown_on_empty_tree(tmp_path):
    assert tsc_info(tmp_path)["hz"] is None


def test_kvm_module_and_parameters(tmp_path):
    k = kvm_info(fake_tree(tmp_path))
    assert k["module"] == "kvm_intel" and not k["software"]
    assert k["parameters"]["kvm_intel.ept"] == "Y" and k["parameters"]["kvm.halt_poll_ns"] == "200000"


def test_vulnerabilities_and_whole_host(tmp_path):
    root = fake_tree(tmp_path)
    assert vulnerabilities(root) == {"spectre_v2": "Mitigation: Enhanced IBRS"}
    h = collect_host(root, with_docker=False)
    assert h["kernel"]["cmdline"] == "isolcpus=3 nohz_full=3" and h["docker_version"] is None


def test_missing_everything_is_not_an_error(tmp_path):
    h = collect_host(tmp_path, with_docker=False)
    assert h["cpu"]["vendor"] is None and h["kvm"]["module"] is None and h["vulnerabilities"] == {}
