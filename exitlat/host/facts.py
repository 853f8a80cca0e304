"""HostInfo: what the numbers were measured on (CPU, TSC, kernel, KVM module and parameters,
mitigations, Docker). Every reader takes a root path so tests can use a fake tree."""

import os
import platform
import re
import socket
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# CPU flags that decide an exit kind's path or whether it can run (SVM features, speculation
# controls, TSX); VMX's own features are the "vmx flags" line, kept whole.
PATH_FLAGS = frozenset({"npt", "avic", "x2avic", "pausefilter", "pfthreshold", "v_spec_ctrl", "vgif",
                        "vnmi", "ibrs", "ibpb", "stibp", "ssbd", "amd_ssbd", "virt_ssbd",
                        "arch_capabilities", "rtm", "hle", "x2apic", "tsc_deadline_timer",
                        "xsave", "hypervisor", "nrip_save"})


def cpu_info(root: Path = Path("/")) -> dict:
    text = _read(root / "proc/cpuinfo") or ""
    first = text.split("\n\n")[0]
    fields = {}
    for line in first.splitlines():
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip()
    flags = set(fields.get("flags", "").split())
    n_logical = len(re.findall(r"^processor\s*:", text, re.M))
    siblings = int(fields.get("siblings") or 0)
    cores = int(fields.get("cpu cores") or 0)
    tpc = (siblings // cores) if siblings and cores else 1
    smt_active = _read(root / "sys/devices/system/cpu/smt/active")

    def num(key):
        v = fields.get(key)
        try:
            return int(v, 0) if v and v.startswith("0x") else int(v) if v else None
        except ValueError:
            return None

    return {
        "vendor": fields.get("vendor_id"),
        "model_name": fields.get("model name"),
        "family": num("cpu family"),
        "model": num("model"),
        "stepping": num("stepping"),
        "microcode": fields.get("microcode"),
        "cores": n_logical,
        "threads_per_core": tpc,
        "smt": None if smt_active is None else smt_active == "1",
        "virtualization": "vmx" if "vmx" in flags else "svm" if "svm" in flags else None,
        "constant_tsc": "constant_tsc" in flags,
        "nonstop_tsc": "nonstop_tsc" in flags,
        # what decides the paths of host-dependent exit kinds (exitlat.hostpaths)
        "path_flags": sorted(flags & PATH_FLAGS),
        "vmx_flags": fields["vmx flags"].split() if "vmx flags" in fields else None,
    }


def tsc_info(root: Path = Path("/")) -> dict:
    """The host TSC frequency, and how it was found (sysfs, or the kernel's boot message)."""
    khz = _read(root / "sys/devices/system/cpu/cpu0/tsc_freq_khz")
    if khz and khz.isdigit():
        return {"hz": int(khz) * 1000, "source": "sysfs tsc_freq_khz"}
    # tsc_khz is exported to KVM guests and to /proc via 'tsc: Refined TSC clocksource calibration'
    for log in ("var/log/kern.log", "var/log/dmesg"):
        text = _read(root / log) or ""
        m = re.findall(r"tsc: Refined TSC clocksource calibration: ([\d.]+) MHz", text) or \
            re.findall(r"tsc: Detected ([\d.]+) MHz", text)
        if m:
            return {"hz": int(float(m[-1]) * 1e6), "source": f"{log}"}
    if root == Path("/"):
        try:
            import subprocess
            out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
            m = re.findall(r"tsc: Refined TSC clocksource calibration: ([\d.]+) MHz", out) or \
                re.findall(r"tsc: Detected ([\d.]+) MHz", out)
            if m:
                return {"hz": int(float(m[-1]) * 1e6), "source": "dmesg"}
        except (OSError, subprocess.SubprocessError):
            pass
    return {"hz": None, "source": "unknown"}


KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


def kvm_info(root: Path = Path("/")) -> dict:
    mods = root / "sys/module"
    vendor = next((m for m in KVM_MODULES if (mods / m).is_dir()), None)
    params = {}
    for m in ("kvm", vendor):
        if m and (mods / m / "parameters").is_dir():
            for p in sorted((mods / m / "parameters").iterdir()):
                v = _read(p)
                if v is not None:
                    params[f"{m}.{p.name}"] = v
    return {"module": vendor, "loaded": (mods / "kvm").is_dir(), "parameters": params,
            "software": vendor == "kvm_pvm"}


def vulnerabilities(root: Path = Path("/")) -> dict:
    d = root / "sys/devices/system/cpu/vulnerabilities"
    if not d.is_dir():
        return {}
    return {p.name: _read(p) for p in sorted(d.iterdir())}


def docker_version() -> str | None:
    try:
        from exitlat.build.images import docker_client
        return docker_client(timeout=5).version().get("Version")
    except Exception:  # absent or stopped engine: recorded as unknown, never fatal here
        return None


def collect_host(root: Path = Path("/"), with_docker: bool = True) -> dict:
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_info(root),
        "tsc": tsc_info(root),
        "kernel": {"release": uname.release, "version": uname.version,
                   "cmdline": _read(root / "proc/cmdline")},
        "kvm": kvm_info(root),
        "vulnerabilities": vulnerabilities(root),
        "docker_version": docker_version() if with_docker else None,
    }


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    return True, "ok"
