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


def peer_core(core: int, housekeeping: int, root: Path = Path("/")) -> tuple[int | None, str | None]:
    """The receiving vCPU's core of a two-vCPU run, when the user named none: an isolated online
    core other than `core` and `housekeeping` (the highest; `core`'s SMT sibling last), else the
    highest such core with a warning; (None, why) on a host with no third core."""
    topo = Topology(SysFs(root))
    others = topo.online - {core, housekeeping}
    if not others:
        return None, (f"a two-vCPU kind needs a third host core besides core {core} and "
                      f"housekeeping core {housekeeping}; this host has cores "
                      f"{','.join(map(str, sorted(topo.online)))}")
    iso = others & topo.isolated
    for cand in (iso - topo.siblings(core), iso):
        if cand:
            return max(cand), None
    peer = max(others)
    return peer, (f"no second isolated core for the receiving vCPU; using core {peer} "
                  "(name both with --core A,B)")


def pair_topology(a: int, b: int, root: Path = Path("/")) -> dict:
    """Where two cores sit relative to each other, from sysfs: "smt_sibling" (one physical core),
    "same_llc" (sharing the last-level cache), "same_package", "other_package" or "unknown".
    An IPI between them costs multiples more the further apart they are."""
    fs = SysFs(root)
    topo = Topology(fs)

    def read(cpu: int, rel: str) -> str | None:
        v = fs.value(f"{CPU}/cpu{cpu}/{rel}")
        return v.strip() if v is not None else None

    def llc(cpu: int) -> tuple[str | None, str | None]:
        best = (None, None)
        for d in sorted(fs.listdir(f"{CPU}/cpu{cpu}/cache") or []):
            if not re.fullmatch(r"index\d+", d):
                continue
            level = read(cpu, f"cache/{d}/level")
            if level and (best[0] is None or int(level) > int(best[0])):
                best = (level, read(cpu, f"cache/{d}/shared_cpu_list"))
        return best

    pkg = [read(c, "topology/physical_package_id") for c in (a, b)]
    caches = [llc(c) for c in (a, b)]
    if b in topo.siblings(a):
        relation = "smt_sibling"
    elif caches[0][1] is not None and b in parse_cpulist(caches[0][1], topo.nr_cpus):
        relation = "same_llc"
    elif None not in pkg and pkg[0] == pkg[1]:
        relation = "same_package"
    elif None not in pkg:
        relation = "other_package"
    else:
        relation = "unknown"
    return {"cores": [a, b], "relation": relation, "packages": pkg,
            "llc_level": caches[0][0], "llc_shared": [c[1] for c in caches]}
