"""Boot-time isolation of the core: kernel command line and SMT (reported, never changed)."""

from __future__ import annotations

from .base import PASS, WARN, Item
from .host import CPU
from .sysfs import format_cpulist


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
