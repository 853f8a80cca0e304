"""`invoke cleanup` and doctor's view of the runs on this host: who holds which core, and what
killed runs left (exitlat.run.leftovers), removed or listed."""

from __future__ import annotations

from pathlib import Path

from . import leftovers
from .corelock import describe, holders, run_dir

ISOLATE_STATE = Path("/run/exitlat/isolate-state.json")


def runs_state(core: int | None = None, docker: bool = True) -> dict:
    """JSON-ready: the runs holding cores, what killed runs left, what else is pinned to `core`."""
    found = leftovers.find_all(docker=docker)
    held = holders()
    state = {
        "holders": [{k: h.get(k) for k in ("pid", "core", "started_utc", "command")} for h in held],
        "leftovers": [f.describe() for f in found if not f.live],
        "in_progress": [f.describe() for f in found if f.live],
        "isolate_state": str(ISOLATE_STATE) if ISOLATE_STATE.exists() else None,
    }
    if core is not None:
        mine = [h for h in held if h.get("core") == core]
        state["core_holder"] = describe(mine[0]) if mine else None
        state["pinned_to_core"] = leftovers.pinned_to(core)
    return state


def runs_state_of(core: int | None, docker: bool = True) -> dict:
    """runs_state, for the isolation state (doctor, the bundle): an error becomes a line in it,
    never a failure that hides the isolation checks."""
    try:
        return runs_state(core, docker=docker)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


def render_runs(state: dict, core: int | None = None) -> list[str]:
    """doctor's lines about exitlat runs on this host."""
    lines = []
    if core is not None:
        holder = state.get("core_holder")
        lines.append(f"core {core}: " + (f"held by {holder}" if holder else "no exitlat run holds it"))
        others = [p for p in state.get("pinned_to_core", [])]
        if others:
            lines.append(f"pinned to core {core} alone: {'; '.join(others)}")
    for h in state["holders"]:
        if core is None or h.get("core") != core:
            lines.append(f"exitlat run on core {h.get('core')}: pid {h.get('pid')} since "
                         f"{h.get('started_utc')}")
    if state["leftovers"]:
        lines.append(f"left by killed runs: {'; '.join(state['leftovers'])}  -> fix: invoke cleanup")
    if state.get("isolate_state"):
        lines.append(f"isolation settings of `invoke isolate` are applied (saved in "
                     f"{state['isolate_state']}); undo: sudo invoke isolate --revert")
    return lines


def cleanup_main(dry_run: bool = False, out=print) -> int:
    """Remove what killed runs left; say what runs now and what was removed. 0, or 1 when
    something left over could not be removed."""
    found = leftovers.find_all()
    for h in holders():
        out(f"running: core {h.get('core')}: {describe(h)} (not touched)")
    gone = [f for f in found if not f.live]
    if not gone:
        out("nothing left over by killed exitlat runs")
    elif dry_run:
        for f in gone:
            out(f"would remove: {f.describe()}")
    else:
        removed = leftovers.remove(gone)
        for line in removed:
            out(f"removed: {line}")
        left = [f for f in leftovers.find_all() if not f.live]
        if left:
            for f in left:
                out(f"could not remove: {f.describe()}")
            return 1
    if ISOLATE_STATE.exists():
        out(f"note: the isolation settings of `invoke isolate` stay applied ({ISOLATE_STATE}); "
            "they are undone only by `sudo invoke isolate --revert`")
    out(f"core locks and run records: {run_dir()}")
    return 0
