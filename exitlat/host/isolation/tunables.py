"""Run-time tunables: each item judges one setting and plans the writes that isolate makes."""

from __future__ import annotations

import re

from .base import INFO, PASS, WARN, Change, Item
from .host import CPU
from .sysfs import SysFs, format_cpulist, format_cpumask, parse_cpulist, parse_cpumask, selected

DEEP_CSTATE_US = 10  # exit latency above this counts as a deep C-state (C1/C1E are a few us)


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
