"""CPU topology and boot-time isolation of a host, read under a root folder."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path

from .sysfs import SysFs, cmdline_params, parse_cpulist

CPU = "/sys/devices/system/cpu"


class Topology:
    """Online cpus, isolated sets and SMT siblings; every value is read lazily and never raises."""

    def __init__(self, fs: SysFs):
        self.fs = fs

    @cached_property
    def cmdline(self) -> dict[str, str]:
        return cmdline_params(self.fs)

    @cached_property
    def possible(self) -> set[int]:
        cpus = parse_cpulist(self.fs.value(f"{CPU}/possible"))
        if not cpus:
            cpus = {int(m.group(1)) for d in self.fs.listdir(CPU) if (m := re.fullmatch(r"cpu(\d+)", d))}
        return cpus or set(range(os.cpu_count() or 1))

    @property
    def nr_cpus(self) -> int:
        return max(self.possible) + 1

    @cached_property
    def online(self) -> set[int]:
        return parse_cpulist(self.fs.value(f"{CPU}/online"), self.nr_cpus) or set(self.possible)

    def _boot_set(self, sysfs_name: str | None, param: str) -> set[int]:
        """A cpu set from sysfs when the kernel exposes it, else from the kernel command line."""
        if sysfs_name:
            text = self.fs.value(f"{CPU}/{sysfs_name}")
            if text is not None:
                return parse_cpulist(text, self.nr_cpus)
        return parse_cpulist(self.cmdline.get(param), self.nr_cpus)

    @cached_property
    def isolcpus(self) -> set[int]:
        return self._boot_set("isolated", "isolcpus")

    @cached_property
    def nohz_full(self) -> set[int]:
        return self._boot_set("nohz_full", "nohz_full")

    @cached_property
    def rcu_nocbs(self) -> set[int]:
        return self._boot_set(None, "rcu_nocbs")

    @property
    def isolated(self) -> set[int]:
        """Cores the scheduler keeps free: isolcpus or nohz_full (either one counts)."""
        return self.isolcpus | self.nohz_full

    def siblings(self, core: int) -> set[int]:
        """The other hardware threads of `core` (online or not)."""
        for name in ("core_cpus_list", "thread_siblings_list"):
            text = self.fs.value(f"{CPU}/cpu{core}/topology/{name}")
            if text is not None:
                return parse_cpulist(text, self.nr_cpus) - {core}
        return set()

    def housekeeping(self, core: int) -> set[int]:
        """Online cores that may take the host's noise: not `core`, its siblings or isolated ones,
        relaxed step by step when nothing is left."""
        others = self.online - {core}
        for cand in (others - self.siblings(core) - self.isolated, others - self.isolated, others):
            if cand:
                return cand
        return {core}


def default_core(root: Path = Path("/")) -> tuple[int, str | None]:
    """An isolated online core (the highest), else the last online core with a warning."""
    topo = Topology(SysFs(root))
    iso = sorted(topo.isolated & topo.online)
    if iso:
        return iso[-1], None
    core = max(topo.online)
    return core, (f"no isolated core on this host (no isolcpus/nohz_full); using core {core}, "
                  "the last online one — see `invoke doctor`")


def housekeeping_core(core: int, root: Path = Path("/")) -> int:
    """A non-isolated online core other than `core` and, if possible, not its SMT sibling."""
    return min(Topology(SysFs(root)).housekeeping(core))
