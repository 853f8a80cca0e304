"""Doctor: judge every item for one core, as a JSON-ready dict and as one line per item."""

from __future__ import annotations

import shutil
from pathlib import Path

from .host import Topology, default_core
from .items import FAIL, INFO, ITEMS, PASS, WARN, Check, Host
from .sysfs import SysFs, format_cpulist

FORMAT_VERSION = 1


def docker_ping(timeout: int = 3) -> str:
    """The engine's version; raises when it cannot be reached within `timeout` seconds."""
    import docker

    client = docker.from_env(timeout=timeout)
    try:
        return client.version().get("Version") or "?"
    finally:
        client.close()


def cmdline_suggestion(topo: Topology, core: int) -> str:
    """The kernel parameters still missing to isolate `core` (and its SMT siblings) at boot."""
    cpus = {core} | (topo.siblings(core) & topo.possible)
    cl = format_cpulist(cpus)
    parts = []
    if not cpus <= topo.isolcpus:
        parts.append(f"isolcpus=managed_irq,domain,{cl}")
        hk = topo.online - cpus - topo.isolated
        if hk:
            parts.append(f"irqaffinity={format_cpulist(hk)}")
    if not cpus <= topo.nohz_full:
        parts.append(f"nohz_full={cl}")
    if not cpus <= (topo.rcu_nocbs | topo.nohz_full) or any(p.startswith("nohz_full") for p in parts):
        parts.append(f"rcu_nocbs={cl}")
    return " ".join(parts)


def run_items(host: Host) -> tuple[list[Check], list[str]]:
    """Every item's verdict, and the names of those `isolate` would change."""
    checks, fixable = [], []
    for cls in ITEMS:
        item = cls(host)
        try:
            if item.available():
                checks.append(item.show())
                if item.tunable and checks[-1].status == WARN and item.plan():
                    fixable.append(item.name)
        except Exception as err:  # one odd file must not hide the other items
            checks.append(Check(cls.name, WARN, None, None, None, f"could not check: {type(err).__name__}: {err}"))
    return checks, fixable


def collect_state(core: int | None, root: Path = Path("/"), docker: bool = True,
                  which=shutil.which, runs=None) -> dict:
    """Doctor's verdicts for `core` as a JSON-serialisable dict (the bundle's "isolation").
    `runs(core, docker)`: what the layer above knows of exitlat runs on this host (what holds the
    core, what killed runs left: exitlat.run.cleanup.runs_state_of), stored under "runs"."""
    fs = SysFs(root)
    warning = None
    if core is None:
        core, warning = default_core(root)
    host = Host(fs, core, which=which, docker_ping=docker_ping if docker else None)
    checks, fixable = run_items(host)
    topo = host.topo
    summary = {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL, INFO)}
    summary["tunable_warn"] = fixable
    return {
        "format_version": FORMAT_VERSION,
        "core": core,
        "core_warning": warning,
        "isolated": core in topo.isolated,
        "online": format_cpulist(topo.online),
        "siblings": format_cpulist(topo.siblings(core)),
        "items": [c.as_dict() for c in checks],
        "summary": summary,
        "cmdline_suggestion": cmdline_suggestion(topo, core),
        **({"runs": runs(core, docker)} if runs is not None else {}),
    }


def render(state: dict, render_runs=None) -> str:
    """`render_runs(runs, core)`: the lines about exitlat runs (exitlat.run.cleanup.render_runs)."""
    """One line per item: status, name, what was found, and the fix when it is not a pass."""
    core = state["core"]
    lines = [f"exitlat doctor: core {core} (online {state['online']}"
             + (f", SMT sibling {state['siblings']})" if state["siblings"] else ")")]
    if state.get("core_warning"):
        lines.append(f"note: no isolated core on this host; checking core {core}, the one bench would use")
    width = max(len(i["name"]) for i in state["items"])
    for i in state["items"]:
        line = f"{i['status'].upper():4}  {i['name']:<{width}}  {i['detail']}"
        if i.get("fix"):
            line += f"  -> fix: {i['fix']}"
        lines.append(line)
    s = state["summary"]
    lines.append("")
    lines.append(f"{s['pass']} pass, {s['warn']} warn, {s['fail']} fail, {s['info']} info; core {core} is "
                 + ("isolated" if state["isolated"] else "NOT isolated (bench will warn)"))
    if s["tunable_warn"]:
        lines.append(f"run-time fixes ({', '.join(s['tunable_warn'])}): sudo invoke isolate --core {core} "
                     "(--dry-run to preview, --revert to undo)")
    if state["cmdline_suggestion"]:
        lines.append(f"boot-time fixes: add to the kernel command line: {state['cmdline_suggestion']}")
    if state.get("runs"):
        if state["runs"].get("error"):
            lines.append(f"exitlat runs on this host: could not check ({state['runs']['error']})")
        elif render_runs is not None:
            lines += render_runs(state["runs"], core)
    lines.append("details and how to revert each setting: docs/isolation.md")
    return "\n".join(lines)
