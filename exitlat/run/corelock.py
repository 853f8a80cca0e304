"""One run per core, and a record of the runs on this host.

The lock of core N is an exclusive flock(2) on <run dir>/core-N.lock, held by the bench process
for its whole run: the kernel releases it when that process ends in any way, kill -9 included,
so there is never a stale lock to remove. The holder writes who it is into the file (pid, start,
command), so a second run on the core can say who is there.

Every run also leaves a record in <run dir>/runs/ (kept a day), so that a run can list the other
exitlat runs on the host during its own: those running when it started and those that started
while it ran, even if they ended before it did.

The run dir is /run/exitlat (emptied at reboot) where this user may write, else a shared folder
under /tmp; EXITLAT_RUN_DIR overrides it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from exitlat.errors import ExitlatError

from .leftovers import alive, command_of, me

SYSTEM_RUN_DIR = Path("/run/exitlat")
KEEP_RECORDS_S = 86400


def run_dir() -> Path:
    if os.environ.get("EXITLAT_RUN_DIR"):
        d = Path(os.environ["EXITLAT_RUN_DIR"])
        d.mkdir(parents=True, exist_ok=True)
        return d
    try:
        SYSTEM_RUN_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(SYSTEM_RUN_DIR, os.W_OK):
            return SYSTEM_RUN_DIR
    except OSError:
        pass
    d = Path(tempfile.gettempdir()) / "exitlat-locks"
    try:
        d.mkdir(mode=0o1777)
        os.chmod(d, 0o1777)         # every user's runs meet here (sticky: none removes another's)
    except FileExistsError:
        pass
    return d


def _now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _record(core: int) -> dict:
    pid, start = me()
    return {"pid": pid, "start": start, "core": core, "started_utc": _now_utc(),
            "started_ns": time.time_ns(), "command": command_of(pid)}


def _read(path: Path) -> dict | None:
    for _ in range(5):           # the holder may be writing it this very moment
        try:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and "pid" in doc:
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None


def _flock_holder(path: Path) -> int | None:
    """The pid of the flock on `path` from /proc/locks, when the file says nothing useful."""
    try:
        st = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 6 and parts[1] == "FLOCK":
            dev_ino = parts[5].split(":")
            if len(dev_ino) == 3 and int(dev_ino[2]) == st.st_ino:
                return int(parts[4])
    return None


def describe(rec: dict) -> str:
    return (f"exitlat run pid {rec.get('pid')} started {rec.get('started_utc', '?')} "
            f"(`{rec.get('command', '?')}`)")


class CoreLock:
    """The lock of one core; `acquire()` refuses (or with wait=True, waits) while another run
    holds it."""

    def __init__(self, core: int, folder: Path | None = None):
        self.core = core
        self.folder = folder or run_dir()
        self.path = self.folder / f"core-{core}.lock"
        self.fd: int | None = None
        self.record: dict | None = None

    def holder(self) -> dict | None:
        rec = _read(self.path)
        if rec and alive(rec["pid"], rec.get("start")):
            return rec
        pid = _flock_holder(self.path)
        if pid is not None:
            return {"pid": pid, "started_utc": "?", "command": command_of(pid)}
        return None

    def acquire(self, wait: bool = False, say=None) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.fchmod(fd, 0o666)
        except OSError:
            pass            # another user's file: it stays as they made it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise ExitlatError(f"cannot lock {self.path}: {err.strerror}") from None
            rec = self.holder()
            who = describe(rec) if rec else "another exitlat run"
            if not wait:
                os.close(fd)
                raise ExitlatError(f"core {self.core} is busy: {who}; wait for it with --wait, or "
                                   "choose another --core") from None
            if say:
                say(f"core {self.core} is busy: {who}; waiting for it (--wait)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        self.record = _record(self.core)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.record).encode(), 0)
        register(self.record, self.folder)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)       # closing the last descriptor releases the flock
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# -- the runs on this host ----------------------------------------------------------------------

def register(rec: dict, folder: Path) -> None:
    """Leave this run's record; drop records older than a day."""
    runs = folder / "runs"
    try:
        runs.mkdir(exist_ok=True)
        cutoff = time.time_ns() - KEEP_RECORDS_S * 10**9
        for old in runs.glob("*.json"):
            try:
                if int(old.name.split("-", 1)[0]) < cutoff:
                    old.unlink()
            except (ValueError, OSError):
                pass
        tmp = runs / f".{rec['started_ns']}-{rec['pid']}.tmp"
        tmp.write_text(json.dumps(rec))
        os.chmod(tmp, 0o644)
        os.replace(tmp, runs / f"{rec['started_ns']}-{rec['pid']}.json")
    except OSError as err:     # the record only helps others' bundles: never fail a run over it
        print(f"warning: cannot record this run in {runs}: {err.strerror}", file=sys.stderr)


def holders(folder: Path | None = None) -> list[dict]:
    """The runs holding a core lock now."""
    folder = folder or run_dir()
    out = []
    for path in sorted(folder.glob("core-*.lock")):
        rec = CoreLock(int(path.stem.split("-")[1]), folder).holder()
        if rec:
            out.append(rec)
    return out


def other_runs(since_ns: int, folder: Path | None = None, running: list[dict] = ()) -> list[dict]:
    """Other exitlat runs during this one: `running` (holders seen at its start), every run
    holding a core now, and every run that started since `since_ns`; this process excluded."""
    folder = folder or run_dir()
    pid, start = me()
    seen: dict[int, dict] = {}       # by pid: a pid recycled within one run is not worth a second entry
    candidates = list(running) + holders(folder)
    for path in sorted((folder / "runs").glob("*.json")):
        try:
            if int(path.name.split("-", 1)[0]) < since_ns:
                continue
        except ValueError:
            continue
        rec = _read(path)
        if rec:
            candidates.append(rec)
    for rec in candidates:
        if rec.get("pid") == pid and rec.get("start") in (start, None):
            continue
        entry = {k: rec.get(k) for k in ("pid", "core", "started_utc", "command")}
        if rec.get("pid") not in seen or seen[rec["pid"]].get("core") is None:
            seen[rec.get("pid")] = entry
    return list(seen.values())
