"""`invoke doctor` and `invoke isolate`: arguments in, text out, an exit code back.

Exit codes (as pyperf's `system` separates "error" from "not tuned"):
doctor 0 = nothing failed (warnings allowed), 1 = an item failed (e.g. no /dev/kvm);
isolate 0 = done, 1 = some change failed; 2 = a user error (ExitlatError).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from exitlat.errors import ExitlatError
from .doctor import collect_state, render
from .host import Topology, default_core
from .items import FAIL, Host
from .sysfs import SysFs, format_cpulist
from .tune import default_state_path, isolate, revert, run_command


def check_core(core: int, root: Path) -> None:
    online = Topology(SysFs(root)).online
    if core not in online:
        raise ExitlatError(f"--core {core} is not an online core (online: {format_cpulist(online)})")


def doctor_main(core: int | None, as_json: bool, root: Path = Path("/"), docker: bool = True,
                runs=None, render_runs=None) -> int:
    """`runs`, `render_runs`: the exitlat runs on this host, from the layer above
    (exitlat.doctor ties them in)."""
    if core is not None:
        check_core(core, root)
    state = collect_state(core, root, docker=docker, runs=runs)
    print(json.dumps(state, indent=2, sort_keys=True) if as_json else render(state, render_runs))
    return 1 if state["summary"][FAIL] else 0


def isolate_main(core: int | None, revert: bool, dry_run: bool, state_file: str | None,
                 root: Path = Path("/"), euid: int | None = None, runner=run_command,
                 which=shutil.which, out=print) -> int:
    fs = SysFs(root)
    state_path = Path(state_file) if state_file else default_state_path(fs)
    if revert:
        if core is not None:
            raise ExitlatError("--revert restores everything saved by isolate; it takes no --core")
        return _revert(fs, state_path, dry_run, euid, runner, out)
    if core is None:
        core, warning = default_core(root)
        out(f"note: no --core given; using core {core}" + (f" ({warning})" if warning else " (isolated at boot)"))
    check_core(core, root)
    host = Host(fs, core, which=which)
    code = isolate(host, state_path, dry_run=dry_run, euid=euid, runner=runner, out=out)
    from .doctor import cmdline_suggestion
    line = cmdline_suggestion(host.topo, core)
    if line:
        out(f"boot-time settings are not changed here; add to the kernel command line and reboot: {line}")
    return code


def _revert(fs, state_path, dry_run, euid, runner, out) -> int:
    return revert(fs, state_path, dry_run=dry_run, euid=euid, runner=runner, out=out)
