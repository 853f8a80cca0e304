"""One small class per isolation item, in the shape of pyperf's `system tune` operations.

`available()` says whether the item applies on this host, `show()` reads it and judges it,
`plan()` lists the writes that would tune it (pyperf's write(), split into plan and apply so
that --dry-run, the state file and the real run share one code path; see tune.py).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .host import CPU, Topology
from .sysfs import SysFs, format_cpulist, format_cpumask, parse_cpulist, parse_cpumask, selected

PASS, WARN, FAIL, INFO = "pass", "warn", "fail", "info"
DEEP_CSTATE_US = 10  # exit latency above this counts as a deep C-state (C1/C1E are a few us)
KVM_VENDORS = ("kvm_intel", "kvm_amd", "kvm_pvm")


@dataclass
class Check:
    name: str
    status: str
    value: Any
    expected: Any
    fix: str | None
    detail: str  # one human line; the bundle report prints it

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Change:
    """One reversible step: a file write or a service stop, with what restores it."""
    item: str
    kind: str  # "file", "service" or "note" (cannot be done here; printed only)
    target: str  # a path as on the host, or a service name
    old: str | None  # the text read before (exact), or "running" for a service
    new: str  # the text written, or "stopped"
    restore: str | None  # the text written back on revert (None: nothing to restore)
    expected_failure: bool = False  # e.g. managed IRQs refuse new affinities: skip quietly

    def describe(self) -> str:
        if self.kind == "service":
            return f"systemctl stop {self.target} (running now; revert starts it)"
        if self.kind == "note":
            return self.new
        old = "?" if self.old is None else (selected(self.old) if "[" in self.old else self.old.strip())
        return f"{self.target}: {old} -> {self.new.strip()}"


@dataclass
class Host:
    """What items need: the file view, the core, and the host's helpers (injected in tests)."""
    fs: SysFs
    core: int
    which: Callable[[str], str | None] = shutil.which
    docker_ping: Callable[[], str] | None = None  # returns a version, raises when unreachable
    topo: Topology = field(init=False)

    def __post_init__(self):
        self.topo = Topology(self.fs)

    @property
    def isolate_hint(self) -> str:
        return f"sudo invoke isolate --core {self.core}"


class Item:
    name = ""
    tunable = False  # isolate can change it at run time

    def __init__(self, host: Host):
        self.host, self.fs, self.core, self.topo = host, host.fs, host.core, host.topo

    def available(self) -> bool:
        return True

    def show(self) -> Check:
        raise NotImplementedError

    def plan(self) -> list[Change]:
        return []

    def check(self, status, value, expected, detail, fix=None) -> Check:
        return Check(self.name, status, value, expected, None if status in (PASS, INFO) else fix, detail)

    def file_change(self, path: str, new: str, selector: bool = False, **kw) -> Change:
        old = self.fs.read(path)
        restore = None if old is None else (selected(old) + "\n" if selector else old)
        return Change(self.name, "file", path, old, new + "\n", restore, **kw)


# -- KVM, Docker, tracing -----------------------------------------------------------------------

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


TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


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


# -- boot-time isolation ------------------------------------------------------------------------

class BootCpuSet(Item):
    """isolcpus / nohz_full / rcu_nocbs: set on the kernel command line only."""
    param = ""
    sysfs_hint = ""

    def cpus(self) -> set[int]:
        raise NotImplementedError

    def show(self):
        cpus = self.cpus()
        value = format_cpulist(cpus) or None
        arg = f"managed_irq,domain,{self.core}" if self.param == "isolcpus" else self.core
        fix = f"boot with {self.param}={arg} (see the kernel command line below)"
        if self.core in cpus:
            return self.check(PASS, value, f"includes {self.core}", f"{self.param}={value} covers core {self.core}")
        return self.check(WARN, value, f"includes {self.core}",
                          f"core {self.core} not in {self.param} ({value or 'not set'})", fix)


class Isolcpus(BootCpuSet):
    name = param = "isolcpus"

    def cpus(self):
        return self.topo.isolcpus


class NohzFull(BootCpuSet):
    name = param = "nohz_full"

    def cpus(self):
        return self.topo.nohz_full


class RcuNocbs(BootCpuSet):
    name = param = "rcu_nocbs"

    def cpus(self):
        return self.topo.rcu_nocbs

    def show(self):
        c = super().show()
        if c.status == WARN and self.core in self.topo.nohz_full:
            # nohz_full= implies rcu_nocbs= for the same cpus (kernel-parameters.txt)
            return self.check(PASS, c.value, c.expected, f"core {self.core} offloaded (implied by nohz_full)")
        return c


class SmtSibling(Item):
    name = "smt_sibling"

    def show(self):
        sib = self.topo.siblings(self.core)
        online = sorted(sib & self.topo.online)
        if not sib:
            return self.check(PASS, None, "offline or none", "no SMT sibling")
        if not online:
            return self.check(PASS, format_cpulist(sib), "offline or none", f"sibling {format_cpulist(sib)} offline")
        s = format_cpulist(online)
        if set(online) <= self.topo.isolated:
            return self.check(PASS, s, "offline or none",
                              f"sibling {s} online but isolated (keep it idle: it shares the core's pipeline)")
        return self.check(WARN, s, "offline or none", f"sibling {s} online and schedulable",
                          f"echo 0 > {CPU}/cpu{online[0]}/online (or boot with nosmt, or isolate it too)")


# -- run-time tunables --------------------------------------------------------------------------

class ValueItem(Item):
    """A single file with one wanted value; `ok` judges the current (selected) value."""
    tunable = True
    path = ""
    want = ""
    selector = False  # "always [madvise] never" style files
    missing = INFO  # status when the file does not exist
    missing_detail = "not present on this kernel"
    missing_fix = None

    def ok(self, v: str) -> bool:
        return v == self.want

    def current(self) -> str | None:
        raw = self.fs.read(self.path)
        return selected(raw) if self.selector else (None if raw is None else raw.strip())

    def fix(self) -> str:
        return f"echo {self.want} > {self.path} (or: {self.host.isolate_hint})"

    def show(self):
        v = self.current()
        if v is None:
            return self.check(self.missing, None, self.want, f"{self.path}: {self.missing_detail}",
                              self.missing_fix or f"check {self.path} by hand")
        if self.ok(v):
            return self.check(PASS, v, self.want, v)
        return self.check(WARN, v, self.want, f"{v} (want {self.want})", self.fix())

    def plan(self):
        v = self.current()
        if v is None or self.ok(v):
            return []
        return [self.file_change(self.path, self.want, selector=self.selector)]


def _sysctl(name_, path_, want_, okf=None, missing_=INFO):
    attrs = {"name": name_, "path": path_, "want": want_, "missing": missing_}
    if okf:
        attrs["ok"] = lambda self, v: okf(v)
    return type(name_.title().replace("_", ""), (ValueItem,), attrs)


def _int_ok(pred):
    def ok(v):
        try:
            return pred(int(v))
        except ValueError:
            return False
    return ok


TimerMigration = _sysctl("timer_migration", "/proc/sys/kernel/timer_migration", "0")
NumaBalancing = _sysctl("numa_balancing", "/proc/sys/kernel/numa_balancing", "0")
NmiWatchdog = _sysctl("nmi_watchdog", "/proc/sys/kernel/nmi_watchdog", "0")
StatInterval = _sysctl("stat_interval", "/proc/sys/vm/stat_interval", "10", _int_ok(lambda n: n >= 10), WARN)
PerfSampleRate = _sysctl("perf_sample_rate", "/proc/sys/kernel/perf_event_max_sample_rate", "1",
                         _int_ok(lambda n: n <= 1))
Ksm = _sysctl("ksm", "/sys/kernel/mm/ksm/run", "0")


class Thp(ValueItem):
    name = "thp"
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    want = "never"
    selector = True


class Governor(ValueItem):
    name = "governor"
    want = "performance"
    missing = WARN
    missing_detail = "missing: no cpufreq driver (frequency set by firmware or hypervisor)"
    missing_fix = "set a fixed-frequency/performance profile in the BIOS, or load a cpufreq driver"

    def __init__(self, host):
        super().__init__(host)
        self.path = f"{CPU}/cpu{self.core}/cpufreq/scaling_governor"


class MinFreq(Item):
    name = "min_freq"
    tunable = True

    def paths(self):
        d = f"{CPU}/cpu{self.core}/cpufreq"
        return f"{d}/scaling_min_freq", f"{d}/scaling_max_freq"

    def show(self):
        pmin, pmax = self.paths()
        lo, hi = self.fs.int_value(pmin), self.fs.int_value(pmax)
        if lo is None or hi is None:
            return self.check(WARN, None, "min = max", "no cpufreq limits visible (frequency unknown)",
                              "check BIOS power settings / the cpufreq driver")
        if lo >= hi:
            return self.check(PASS, lo, hi, f"min = max = {hi} kHz")
        return self.check(WARN, lo, hi, f"min {lo} kHz < max {hi} kHz",
                          f"echo {hi} > {pmin} (or: {self.host.isolate_hint})")

    def plan(self):
        pmin, pmax = self.paths()
        lo, hi = self.fs.int_value(pmin), self.fs.int_value(pmax)
        if lo is None or hi is None or lo >= hi:
            return []
        return [self.file_change(pmin, str(hi))]


class Turbo(Item):
    name = "turbo"
    tunable = True
    INTEL = f"{CPU}/intel_pstate/no_turbo"
    BOOST = f"{CPU}/cpufreq/boost"

    def knob(self) -> tuple[str, str] | None:
        if self.fs.exists(self.INTEL):
            return self.INTEL, "1"
        if self.fs.exists(self.BOOST):
            return self.BOOST, "0"
        return None

    def show(self):
        k = self.knob()
        if k is None:
            return self.check(WARN, None, "off", "no turbo/boost control visible (state unknown)",
                              "disable Turbo Boost / Core Performance Boost in the BIOS")
        path, want = k
        v = self.fs.value(path)
        if v == want:
            return self.check(PASS, v, want, f"off ({path}={v})")
        return self.check(WARN, v, want, f"on ({path}={v})",
                          f"echo {want} > {path} (or: {self.host.isolate_hint})")

    def plan(self):
        k = self.knob()
        if k is None or self.fs.value(k[0]) in (k[1], None):
            return []
        return [self.file_change(*k)]


class CStates(Item):
    name = "cstates"
    tunable = True

    def deep_states(self) -> list[tuple[str, str, int, bool]]:
        """(folder, state name, exit latency us, enabled) of the core's states deeper than C1."""
        d = f"{CPU}/cpu{self.core}/cpuidle"
        out = []
        for s in self.fs.listdir(d):
            if not re.fullmatch(r"state\d+", s):
                continue
            lat = self.fs.int_value(f"{d}/{s}/latency")
            if lat is not None and lat > DEEP_CSTATE_US:
                out.append((f"{d}/{s}", self.fs.value(f"{d}/{s}/name") or s, lat,
                            self.fs.value(f"{d}/{s}/disable") == "0"))
        return out

    def show(self):
        if not self.fs.listdir(f"{CPU}/cpu{self.core}/cpuidle"):
            if self.topo.cmdline.get("idle") == "poll":
                return self.check(PASS, "idle=poll", "no deep C-states", "idle=poll: the core never sleeps")
            return self.check(INFO, None, "no deep C-states",
                              "no cpuidle states exposed (HLT only, or managed by firmware/hypervisor)")
        on = [f"{n} ({lat} us)" for _, n, lat, en in self.deep_states() if en]
        if not on:
            return self.check(PASS, [], "no deep C-states", f"no state deeper than {DEEP_CSTATE_US} us enabled")
        return self.check(WARN, on, "no deep C-states", "enabled: " + ", ".join(on),
                          f"echo 1 > {CPU}/cpu{self.core}/cpuidle/stateN/disable for each (or: {self.host.isolate_hint})")

    def plan(self):
        return [self.file_change(f"{d}/disable", "1") for d, _, _, en in self.deep_states() if en]


def irqbalance_running(fs: SysFs) -> bool:
    return any(fs.value(f"/proc/{p}/comm") == "irqbalance" for p in fs.listdir("/proc") if p.isdigit())


class Irqbalance(Item):
    name = "irqbalance"
    tunable = True

    def show(self):
        if not irqbalance_running(self.fs):
            return self.check(PASS, "not running", "not running", "not running")
        return self.check(WARN, "running", "not running", "running (it moves IRQs back onto the core)",
                          f"systemctl stop irqbalance (or: {self.host.isolate_hint})")

    def plan(self):
        if not irqbalance_running(self.fs):
            return []
        if not self.host.which("systemctl"):
            return [Change(self.name, "note", "irqbalance", "running", "irqbalance is running and there is no "
                           "systemctl: stop it by hand, or IRQ affinities will drift back", None)]
        return [Change(self.name, "service", "irqbalance", "running", "stopped", "running")]


class IrqAffinity(Item):
    name = "irq_affinity"
    tunable = True

    def irqs_on_core(self) -> list[tuple[str, set[int]]]:
        out = []
        for n in self.fs.listdir("/proc/irq"):
            if n.isdigit():
                cpus = parse_cpulist(self.fs.value(f"/proc/irq/{n}/smp_affinity_list"), self.topo.nr_cpus)
                if self.core in cpus:
                    out.append((n, cpus))
        return sorted(out, key=lambda t: int(t[0]))

    def show(self):
        irqs = [n for n, _ in self.irqs_on_core()]
        if not irqs:
            return self.check(PASS, [], "none", f"no IRQ affinity includes core {self.core}")
        shown = ",".join(irqs[:12]) + (",..." if len(irqs) > 12 else "")
        return self.check(WARN, irqs, "none", f"{len(irqs)} IRQs may run on core {self.core}: {shown}",
                          f"{self.host.isolate_hint} (managed IRQs need isolcpus=managed_irq at boot)")

    def plan(self):
        hk = self.topo.housekeeping(self.core)
        # managed (per-queue) IRQs refuse new affinities with EIO: expected, reported as skipped
        return [self.file_change(f"/proc/irq/{n}/smp_affinity_list", format_cpulist(cpus - {self.core} or hk),
                                 expected_failure=True)
                for n, cpus in self.irqs_on_core()]


class MaskItem(Item):
    """A hex cpumask file that should leave the core out (default IRQ affinity, workqueues)."""
    tunable = True
    path = ""
    what = ""

    def cpus(self) -> set[int] | None:
        raw = self.fs.value(self.path)
        return None if raw is None else parse_cpumask(raw)

    def show(self):
        cpus = self.cpus()
        if cpus is None:
            return self.check(INFO, None, f"excludes {self.core}", f"{self.path}: not present on this kernel")
        s = format_cpulist(cpus)
        if self.core not in cpus:
            return self.check(PASS, s, f"excludes {self.core}", f"{self.what} cpus {s}")
        return self.check(WARN, s, f"excludes {self.core}", f"{self.what} cpus {s} include core {self.core}",
                          f"write a mask without cpu {self.core} to {self.path} (or: {self.host.isolate_hint})")

    def plan(self):
        cpus = self.cpus()
        if cpus is None or self.core not in cpus:
            return []
        keep = (cpus & self.topo.online) - {self.core} or self.topo.housekeeping(self.core)
        return [self.file_change(self.path, format_cpumask(keep, self.fs.value(self.path)))]


class DefaultIrqAffinity(MaskItem):
    name = "default_irq_affinity"
    path = "/proc/irq/default_smp_affinity"
    what = "new IRQs go to"


class WorkqueueCpumask(MaskItem):
    name = "workqueue_cpumask"
    path = "/sys/devices/virtual/workqueue/cpumask"
    what = "unbound workqueues run on"


# -- recorded, not judged -----------------------------------------------------------------------

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
ITEMS: list[type[Item]] = [
    DevKvm, Virtualization, KvmModule, Docker, Tracefs,
    Isolcpus, NohzFull, RcuNocbs, SmtSibling,
    Turbo, Governor, MinFreq, CStates,
    Irqbalance, IrqAffinity, DefaultIrqAffinity, WorkqueueCpumask,
    TimerMigration, NmiWatchdog, StatInterval, PerfSampleRate, NumaBalancing, Thp, Ksm,
    Mitigations,
]
