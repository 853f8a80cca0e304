"""What a run that was killed (kill -9, an OOM kill, a lost machine) leaves on the host, found and
removed: the runtime container, a QEMU still running, the /tmp/exitlat-run-* folder, the tracefs
instances and probes of a traced window.

Everything a run makes names its owner, the bench process, by pid and start time (the kernel's
clock ticks since boot, /proc/PID/stat field 22, so a recycled pid is never taken for the owner):
the run folder is /tmp/exitlat-run-<pid>-<start>-XXXX, the container carries the labels
exitlat.owner_pid and exitlat.owner_start, QEMU's command line names the run folder. What
belongs to a living owner is a run in progress and is never touched."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER_PREFIX = "exitlat-run-"
_OWNED = re.compile(r"^exitlat-run-(\d+)-(\d+)-")
_IN_ARGV = re.compile(r"(/[^\s,=]*/exitlat-run-[^/\s,]+)")

LABEL_RUN = "exitlat.run"            # the run folder (also on containers of older versions)
LABEL_RUN_ID = "exitlat.run_id"
LABEL_OWNER_PID = "exitlat.owner_pid"
LABEL_OWNER_START = "exitlat.owner_start"
LABEL_CORE = "exitlat.core"
UNKNOWN_GRACE_S = 600       # a run folder without an owner in its name is left alone this long


# -- owners -------------------------------------------------------------------------------------

def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def alive(pid: int, start: int | None) -> bool:
    """The process `pid` that started at `start` still runs (None: any process with that pid)."""
    now = start_ticks(pid)
    return now is not None and (start is None or now == start)


def me() -> tuple[int, int]:
    pid = os.getpid()
    return pid, start_ticks(pid) or 0


def command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a) or "?"


# -- the run folder -----------------------------------------------------------------------------

def run_folders_root() -> Path:
    return Path(tempfile.gettempdir())


def new_run_folder() -> Path:
    """A private folder for one VM run whose name says who owns it."""
    pid, start = me()
    return Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{pid}-{start}-", dir=run_folders_root()))


def folder_owner(folder: str | Path) -> tuple[int, int] | None:
    m = _OWNED.match(Path(folder).name)
    return (int(m.group(1)), int(m.group(2))) if m else None


# -- finding ------------------------------------------------------------------------------------

@dataclass
class Found:
    kind: str                      # container, process, folder, tracefs
    ident: str                     # container id, pid, path, instance name
    detail: str                    # for people
    owner: tuple[int, int] | None  # (pid, start) of the bench that made it; None: unknown
    live: bool                     # its owner still runs: a run in progress, never removed
    start: int | None = None       # a process's own start (so a recycled pid is never killed)
    core: int | None = None

    def describe(self) -> str:
        who = f"owner pid {self.owner[0]}" if self.owner else "owner unknown"
        return f"{self.kind} {self.ident} ({self.detail}; {who}{'' if self.live else ', gone'})"


def _owner_alive(owner: tuple[int, int] | None) -> bool:
    return owner is not None and alive(*owner)


def find_processes(exclude: set[int] | None = None) -> list[Found]:
    """Processes whose command line names a run folder: QEMU (on the host or in the runtime
    container, which shares the host's pid namespace) and the container's watcher."""
    out = []
    skip = {os.getpid()} | (exclude or set())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid = int(entry.name)
        cmd = command_of(pid)
        m = _IN_ARGV.search(cmd)
        if not m:
            continue
        owner = folder_owner(m.group(1))
        prog = os.path.basename(cmd.split()[0])
        out.append(Found("process", str(pid), f"{prog} of {m.group(1)}", owner,
                         _owner_alive(owner) if owner else True, start=start_ticks(pid)))
    return out


def find_folders(processes: list[Found]) -> list[Found]:
    """Run folders; one without an owner in its name (an older exitlat) counts as left over only
    when no process uses it."""
    out = []
    used = {p.detail.split(" of ", 1)[1] for p in processes}
    for folder in sorted(run_folders_root().glob(FOLDER_PREFIX + "*")):
        if not folder.is_dir():
            continue
        owner = folder_owner(folder)
        if owner:
            live = _owner_alive(owner)
        else:   # an older exitlat's: left over once no process uses it and it is not brand new
            try:
                young = time.time() - folder.stat().st_mtime < UNKNOWN_GRACE_S
            except OSError:
                continue
            live = str(folder) in used or young
        out.append(Found("folder", str(folder), "run folder", owner, live))
    return out


def docker_engine(timeout: int = 5):
    """A Docker client, or None when no engine answers (then containers are not looked at)."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception:   # the SDK raises several unrelated types for "no engine"
        return None


def find_containers(client) -> list[Found]:
    """Runtime containers (running or exited) by their label."""
    if client is None:
        return []
    out = []
    try:
        containers = client.containers.list(all=True, filters={"label": LABEL_RUN})
    except Exception:
        return []
    for c in containers:
        labels = c.labels or {}
        try:
            owner = (int(labels[LABEL_OWNER_PID]), int(labels[LABEL_OWNER_START]))
        except (KeyError, ValueError):
            owner = folder_owner(labels.get(LABEL_RUN, ""))
        core = labels.get(LABEL_CORE)
        live = _owner_alive(owner) if owner else c.status == "running"
        out.append(Found("container", c.short_id, f"{c.status}, core {core or '?'}, run "
                         f"{labels.get(LABEL_RUN_ID) or Path(labels.get(LABEL_RUN, '?')).name}",
                         owner, live, core=int(core) if core and core.isdigit() else None))
    return out


def find_tracefs() -> list[Found]:
    """tracefs instances of traced windows whose process is gone."""
    try:
        from exitlat.verify.trace.tracefs import find_tracefs as tracefs_root

        root = tracefs_root(mount=False)
    except Exception:
        return []
    if root is None or not (root / "instances").is_dir():
        return []
    out = []
    for d in sorted((root / "instances").glob("exitlat-*")):
        m = re.match(r"exitlat-(\d+)-", d.name)
        if m and start_ticks(int(m.group(1))) is None:
            out.append(Found("tracefs", d.name, "tracing instance of a traced window",
                             (int(m.group(1)), 0), False))
    return out


def find_all(client=None, docker: bool = True) -> list[Found]:
    """Everything exitlat runs have on this host, live or left over."""
    if docker and client is None:
        client = docker_engine()
    procs = find_processes()
    return find_containers(client) + procs + find_folders(procs) + find_tracefs()


# -- removing -----------------------------------------------------------------------------------

def remove(found: list[Found], client=None) -> list[str]:
    """Remove what is left over (never what a living owner has); what was removed, one per item.
    Containers first (removing one stops its QEMU), then processes, folders, tracefs."""
    done = []
    leftovers = [f for f in found if not f.live]
    if client is None and any(f.kind == "container" for f in leftovers):
        client = docker_engine()
    for f in leftovers:
        if f.kind == "container" and client is not None:
            try:
                client.containers.get(f.ident).remove(force=True)
                done.append(f"container {f.ident}")
            except Exception as err:
                if "404" in str(err) or "No such container" in str(err):
                    continue
    for f in leftovers:
        if f.kind == "process" and f.start is not None and alive(int(f.ident), f.start):
            kill_and_wait(int(f.ident))
            done.append(f"process {f.ident} ({f.detail})")
    for f in leftovers:
        if f.kind == "folder" and Path(f.ident).exists():
            shutil.rmtree(f.ident, ignore_errors=True)
            done.append(f"folder {f.ident}")
    if any(f.kind == "tracefs" for f in leftovers):
        try:
            from exitlat.verify.trace.instances import remove_stale_instances

            done += [f"tracefs {name}" for name in remove_stale_instances()]
        except Exception:
            pass
    return done


def kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and start_ticks(pid) is not None:
        state = ""
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            pass
        if state == "Z":        # dead; its parent (gone too, or the container's) reaps it
            return
        time.sleep(0.05)


def kill_folder_processes(folder: Path) -> None:
    """Kill whatever still runs with `folder` on its command line (a QEMU a start that was cut
    short did not hand back)."""
    for f in find_processes():
        if f.detail.endswith(f" of {folder}") and f.start is not None and alive(int(f.ident), f.start):
            kill_and_wait(int(f.ident))


def remove_run_containers(client, folder: Path) -> None:
    """Remove the containers labelled with this run folder (one created but never handed back)."""
    if client is None:
        return
    try:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={folder}"}):
            c.remove(force=True)
    except Exception:
        pass


def pinned_to(core: int) -> list[str]:
    """User processes allowed on `core` alone (kernel threads excluded): what else may be
    measuring, or spinning, there."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[6]) & 0x00200000:     # PF_KTHREAD
            continue
        allowed = next((ln.split(":", 1)[1].strip() for ln in status.splitlines()
                        if ln.startswith("Cpus_allowed_list:")), "")
        if allowed == str(core):
            out.append(f"pid {entry.name} ({command_of(int(entry.name))[:80]})")
    return out
