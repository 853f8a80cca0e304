"""isolate / revert: apply the run-time items for a core after saving every old value.

The state file is written before the first change, so a crash half-way can still be reverted.
Its default lives in /run, which is emptied at reboot exactly when these settings reset.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

from exitlat.errors import ExitlatError
from .items import ITEMS, Change, Host
from .sysfs import SysFs

STATE_FORMAT = 1
DEFAULT_STATE = "/run/exitlat/isolate-state.json"
Runner = Callable[[list[str]], int]


def run_command(cmd: list[str]) -> int:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode
    except (OSError, subprocess.SubprocessError):
        return 127


def plan(host: Host) -> list[Change]:
    changes = []
    for cls in ITEMS:
        item = cls(host)
        if item.tunable and item.available():
            changes.extend(item.plan())
    return changes


# -- state file ---------------------------------------------------------------------------------

def boot_id(fs: SysFs) -> str | None:
    return fs.value("/proc/sys/kernel/random/boot_id")


def load_state(path: Path, fs: SysFs) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExitlatError(f"cannot read the isolate state {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT:
        raise ExitlatError(f"{path}: unknown state format {state.get('format_version') if isinstance(state, dict) else '?'}"
                           f" (this exitlat reads {STATE_FORMAT})")
    if state.get("boot_id") and boot_id(fs) and state["boot_id"] != boot_id(fs):
        raise ExitlatError(f"{path} was saved before the last reboot, which already reset these settings; "
                           "delete it")
    return state


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def _entry(c: Change) -> dict:
    return {"item": c.item, "kind": c.kind, "target": c.target, "old": c.old, "new": c.new,
            "restore": c.restore, "status": "planned"}


# -- applying -----------------------------------------------------------------------------------

def _fatal(err: OSError) -> bool:
    """Errors that mean "not allowed here" (not root, read-only sysfs): stop and undo."""
    return err.errno in (errno.EPERM, errno.EACCES, errno.EROFS)


def _apply(fs: SysFs, c: Change, runner: Runner) -> None:
    if c.kind == "file":
        fs.write(c.target, c.new)
    elif c.kind == "service":
        rc = runner(["systemctl", "stop", c.target])
        if rc != 0:
            raise OSError(errno.EIO, f"systemctl stop {c.target} exited with {rc}")


def _undo(fs: SysFs, kind: str, target: str, restore: str | None, runner: Runner) -> None:
    if restore is None:
        return
    if kind == "file":
        fs.write(target, restore)
    elif kind == "service" and restore == "running":
        rc = runner(["systemctl", "start", target])
        if rc != 0:
            raise OSError(errno.EIO, f"systemctl start {target} exited with {rc}")


def isolate(host: Host, state_path: Path, dry_run: bool = False, euid: int | None = None,
            runner: Runner = run_command, out=print) -> int:
    """Tune `host.core`; 0 when every change was made (or skipped as expected), 1 otherwise."""
    fs = host.fs
    changes = plan(host)
    if not changes:
        out(f"core {host.core}: every run-time item is already tuned; nothing to change")
        return 0
    if dry_run:
        out(f"dry run: isolate core {host.core} would make {len(changes)} changes:")
        for c in changes:
            out(f"  {c.item}: {c.describe()}")
        return 0
    if (os.geteuid() if euid is None else euid) != 0:
        raise ExitlatError("isolate changes kernel settings and needs root: "
                           f"sudo invoke isolate --core {host.core} (or --dry-run to only see the changes)")
    prior = load_state(state_path, fs)
    state = prior or {"format_version": STATE_FORMAT, "tool": "exitlat", "boot_id": boot_id(fs),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": [],
                      "changes": []}
    if host.core not in state["cores"]:
        state["cores"].append(host.core)
    # a second isolate keeps the values saved by the first: revert must reach the original state
    known = {(e["kind"], e["target"]) for e in state["changes"]}
    fresh = {}
    for c in changes:
        if c.kind != "note" and (c.kind, c.target) not in known:
            fresh[(c.kind, c.target)] = _entry(c)
            state["changes"].append(fresh[(c.kind, c.target)])
    save_state(state_path, state)

    done: list[Change] = []
    errors = skipped = 0
    for c in changes:
        if c.kind == "note":
            out(f"  skipped {c.item}: {c.describe()}")
            skipped += 1
            continue
        entry = fresh.get((c.kind, c.target))
        try:
            _apply(fs, c, runner)
        except OSError as err:
            if _fatal(err):
                _rollback(fs, done, runner, out)
                _restore_state_file(state_path, prior)
                raise ExitlatError(f"cannot change {c.target}: {os.strerror(err.errno)} (read-only /sys in a "
                                   f"container, or not root?); {len(done)} earlier changes were undone") from None
            reason = err.strerror or str(err)
            if entry:
                entry["status"] = f"failed: {reason}"
            if c.expected_failure:
                skipped += 1
                out(f"  skipped {c.item}: {c.target}: {reason}")
            else:
                errors += 1
                out(f"  FAILED  {c.item}: {c.describe()}: {reason}")
            continue
        if entry:
            entry["status"] = "applied"
        done.append(c)
        out(f"  changed {c.item}: {c.describe()}")
    save_state(state_path, state)
    out(f"isolate core {host.core}: {len(done)} changed, {skipped} skipped, {errors} failed; "
        f"previous values saved in {state_path} (undo: sudo invoke isolate --revert)")
    return 1 if errors else 0


def _rollback(fs: SysFs, done: list[Change], runner: Runner, out) -> None:
    for c in reversed(done):
        try:
            _undo(fs, c.kind, c.target, c.restore, runner)
        except OSError as err:
            out(f"  could not undo {c.target}: {err.strerror or err}")


def _restore_state_file(path: Path, prior: dict | None) -> None:
    if prior is None:
        path.unlink(missing_ok=True)
    else:
        save_state(path, prior)


def revert(fs: SysFs, state_path: Path, dry_run: bool = False, euid: int | None = None,
           runner: Runner = run_command, out=print) -> int:
    """Write back every saved value, newest first; the state file goes once all succeeded."""
    state = load_state(state_path, fs)
    if state is None:
        out(f"nothing to revert: no isolate state at {state_path}")
        return 0
    todo = [e for e in state["changes"] if e["status"] == "applied" or e["status"] == "planned"]
    if dry_run:
        out(f"dry run: revert would restore {len(todo)} settings from {state_path}:")
        for e in reversed(todo):
            what = "systemctl start" if e["kind"] == "service" else "restore"
            out(f"  {e['item']}: {what} {e['target']}" + (f" = {e['restore'].strip()}" if e["kind"] == "file" else ""))
        return 0
    if (os.geteuid() if euid is None else euid) != 0:
        raise ExitlatError("revert changes kernel settings and needs root: sudo invoke isolate --revert")
    failed = []
    for e in reversed(todo):
        try:
            _undo(fs, e["kind"], e["target"], e["restore"], runner)
            e["status"] = "reverted"
            out(f"  restored {e['item']}: {e['target']}")
        except FileNotFoundError:
            e["status"] = "reverted"  # the IRQ or device went away: nothing left to restore
            out(f"  gone     {e['item']}: {e['target']}")
        except OSError as err:
            failed.append(e)
            out(f"  FAILED  {e['item']}: {e['target']}: {err.strerror or err}")
    if failed:
        state["changes"] = [e for e in state["changes"] if e["status"] != "reverted"]
        save_state(state_path, state)
        out(f"revert: {len(failed)} settings could not be restored; kept in {state_path}")
        return 1
    state_path.unlink()
    out(f"revert: {len(todo)} settings restored; removed {state_path}")
    return 0


def default_state_path(fs: SysFs) -> Path:
    return fs.path(DEFAULT_STATE)

