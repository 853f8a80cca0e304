"""Items about the platform: KVM, Docker, tracing, mitigations (checked, never changed)."""

from __future__ import annotations

import os

from .base import FAIL, INFO, PASS, WARN, Item
from .host import CPU
from .sysfs import SysFs

KVM_VENDORS = ("kvm_intel", "kvm_amd", "kvm_pvm")
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def cpu_flags(fs: SysFs) -> set[str]:
    for line in (fs.read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def loaded_vendor(fs: SysFs) -> str | None:
    return next((m for m in KVM_VENDORS if fs.exists(f"/sys/module/{m}")), None)


def module_params(fs: SysFs, module: str) -> dict[str, str | None]:
    d = f"/sys/module/{module}/parameters"
    return {p: fs.value(f"{d}/{p}") for p in fs.listdir(d)}


class DevKvm(Item):
    name = "dev_kvm"

    def show(self):
        if not self.fs.exists("/dev/kvm"):
            return self.check(FAIL, None, "read/write", "/dev/kvm missing: KVM is not available",
                              "load the KVM module (modprobe kvm_intel or kvm_amd) and enable VT-x/AMD-V in firmware")
        if not self.fs.access("/dev/kvm", os.R_OK | os.W_OK):
            return self.check(FAIL, "no access", "read/write", "/dev/kvm exists but this user cannot open it",
                              "add the user to the kvm group (usermod -aG kvm $USER) or run as root")
        return self.check(PASS, "read/write", "read/write", "/dev/kvm read/write")


class Virtualization(Item):
    name = "virtualization"

    def show(self):
        flags = cpu_flags(self.fs)
        nested = " (this host is itself a VM: nested virtualization)" if "hypervisor" in flags else ""
        if "vmx" in flags:
            return self.check(PASS, "vmx", "vmx or svm", "VMX (Intel VT-x)" + nested)
        if "svm" in flags:
            return self.check(PASS, "svm", "vmx or svm", "SVM (AMD-V)" + nested)
        if self.fs.exists("/sys/module/kvm_pvm"):
            return self.check(WARN, "software (kvm_pvm)", "vmx or svm",
                              "no VMX/SVM: software KVM (kvm_pvm); exits are not hardware VM exits" + nested,
                              "run on bare metal or a VM with nested VT-x/AMD-V for hardware exit costs")
        return self.check(FAIL, None, "vmx or svm", "no VMX/SVM flag in /proc/cpuinfo and no software KVM",
                          "enable VT-x/AMD-V in firmware (or nested virtualization for a VM)")


class KvmModule(Item):
    name = "kvm_module"

    def show(self):
        vendor = loaded_vendor(self.fs)
        value = {"module": vendor, "parameters": module_params(self.fs, vendor) if vendor else {},
                 "kvm_parameters": module_params(self.fs, "kvm")}
        if vendor is None:
            return self.check(FAIL if not self.fs.exists("/sys/module/kvm") else WARN, value,
                              "kvm_intel, kvm_amd or kvm_pvm", "no KVM vendor module loaded",
                              "modprobe kvm_intel (Intel) or modprobe kvm_amd (AMD)")
        n = len(value["parameters"])
        return self.check(PASS, value, "kvm_intel, kvm_amd or kvm_pvm",
                          f"{vendor} loaded, {n} parameters (see --json)")


class Docker(Item):
    name = "docker"

    def show(self):
        if self.host.docker_ping is None:
            return self.check(INFO, None, "reachable", "not checked")
        try:
            version = self.host.docker_ping()
        except Exception as err:  # the SDK raises several unrelated types for "no daemon"
            return self.check(WARN, None, "reachable", f"Docker engine not reachable ({type(err).__name__})",
                              "start dockerd (systemctl start docker) or use --no-container")
        return self.check(PASS, version, "reachable", f"Docker engine {version}")


class Tracefs(Item):
    name = "tracefs"

    def show(self):
        perf = self.host.which("perf")
        for d in TRACEFS:
            if self.fs.exists(f"{d}/events"):
                if self.fs.exists(f"{d}/events/kvm"):
                    return self.check(PASS, {"path": d, "perf": perf}, "events/kvm",
                                      f"{d} with kvm events (path verification possible)")
                return self.check(WARN, {"path": d, "perf": perf}, "events/kvm",
                                  f"{d} has no kvm events: exit paths cannot be verified",
                                  "load the KVM module before tracing, or use a kernel with KVM tracepoints")
        return self.check(WARN, {"path": None, "perf": perf}, "events/kvm",
                          "tracefs not mounted: exit paths cannot be verified",
                          "mount -t tracefs nodev /sys/kernel/tracing")


class Mitigations(Item):
    name = "mitigations"

    def show(self):
        d = f"{CPU}/vulnerabilities"
        vulns = {v: self.fs.value(f"{d}/{v}") for v in self.fs.listdir(d)}
        count = {k: sum(1 for t in vulns.values() if (t or "").startswith(k))
                 for k in ("Mitigation", "Vulnerable", "Not affected")}
        arg = self.topo.cmdline.get("mitigations", "default")
        return self.check(INFO, {"cmdline": arg, "vulnerabilities": vulns}, None,
                          f"mitigations={arg}: {count['Mitigation']} mitigated, {count['Vulnerable']} "
                          f"vulnerable, {count['Not affected']} not affected (exit cost depends on these)")


# Order matters for isolate: irqbalance stops before IRQs move, turbo before min frequency.
