"""Start QEMU either in the runtime container (the default) or straight on the host
(--no-container). Both give the same handle: the QEMU pid in the host's pid namespace, wait, stop.

Either way QEMU dies with the bench that started it, however that bench ends (kill -9 included),
so that no VM is left spinning on the measured core: on the host through the kernel's parent-death
signal; in the container, whose parent is the engine, through a pipe the bench holds open (a
watcher beside QEMU kills it when the pipe reports that its last writer is gone)."""

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.build.baseimage import ensure_base_image
from exitlat.build.images import build_image, docker_client, short_hash
from exitlat.paths import REPO_ROOT

from . import leftovers

PR_SET_PDEATHSIG = 1
ENGINE_WAIT_S = 30.0        # how long stop() waits for an engine that is restarting

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:             # no C library to call: QEMU then outlives a killed bench (cleanup finds it)
    _LIBC = None


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGKILL when the bench (its parent) ends."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def exit_text(code: int | None) -> str:
    """An exit status as people read it: 'code 1', 'killed by SIGKILL (code 137)'."""
    if code is None:
        return "code unknown"
    sig = -code if code < 0 else code - 128 if 128 < code < 160 else None
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}" + (f" (code {code})" if code > 0 else "")
        except ValueError:
            pass
    return f"code {code}"


class HostQemu:
    def __init__(self, argv: list[str], folder: Path):
        self.log = open(folder / "qemu-stderr.log", "wb")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        except OSError as err:
            raise ExitlatError(f"cannot start QEMU: {err}") from None
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def exit_text(self) -> str:
        return exit_text(self.wait(5))      # its sockets close a moment before it is reaped

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            if self.wait(5) is None:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# The container's first process: it opens the owner pipe, forks a watcher that blocks reading it,
# and becomes QEMU (so the container's pid is QEMU's). The read returns (end of file) only when
# no writer is left, i.e. when the bench is gone; the watcher then kills QEMU. Opened without
# blocking, so that a bench that died before the container started still counts as gone. Perl:
# the runtime image is the Debian base, whose essential packages include perl-base.
WATCHER = r"""
use Fcntl;
my $fifo = shift @ARGV;
sysopen(my $f, $fifo, O_RDONLY | O_NONBLOCK) or die "exitlat: cannot open $fifo: $!\n";
fcntl($f, F_SETFL, fcntl($f, F_GETFL, 0) & ~O_NONBLOCK) or die "exitlat: fcntl: $!\n";
my $qemu = $$;
my $pid = fork() // die "exitlat: fork: $!\n";
if ($pid == 0) {
    sysread($f, my $buf, 1);
    kill 'KILL', $qemu if getppid() == $qemu;
    exit 0;
}
close $f;
exec { $ARGV[0] } @ARGV or die "exitlat: cannot run $ARGV[0]: $!\n";
"""


class ContainerQemu:
    """QEMU in the runtime image: /dev/kvm only (no --privileged), the host pid namespace so the
    vCPU thread id from QMP is the host's (pinning and tracing happen on the host), a cpuset of the
    measured core plus one housekeeping core, CAP_IPC_LOCK (for -overcommit mem-lock=on: with it
    mlockall ignores RLIMIT_MEMLOCK, which some engines may not raise), no network. Labels name
    the run, its owner (pid and start) and the core, for `invoke cleanup` after a kill -9."""

    def __init__(self, argv: list[str], folder: Path, build: Path, cpus: list[int], accel: str,
                 pins_base: dict, log):
        import docker.errors
        from docker.types import Mount

        self.client = docker_client()
        self.folder, self.log = folder, log
        self.container = None
        self.owner_fd = None
        self.lost: str | None = None       # why the engine could not say how QEMU ended
        base = ensure_base_image(self.client, pins_base, log)
        tag = f"exitlat/runtime:{short_hash((REPO_ROOT / 'docker/runtime.Dockerfile').read_bytes(), base)}"
        with open(folder / "image-build.log", "a") as f:
            build_image(self.client, "runtime.Dockerfile", tag, {"BASE": base}, f, log)
        devices = ["/dev/kvm:/dev/kvm:rwm"] if accel == "kvm" else []
        pid, start = leftovers.me()
        labels = {leftovers.LABEL_RUN: str(folder), leftovers.LABEL_RUN_ID: folder.name,
                  leftovers.LABEL_OWNER_PID: str(pid), leftovers.LABEL_OWNER_START: str(start),
                  leftovers.LABEL_CORE: str(cpus[0])}
        fifo = folder / "owner.fifo"
        try:
            os.mkfifo(fifo, 0o600)
            # read-write: opening never blocks, and this process stays a writer until it ends
            self.owner_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            # bind mounts (not volumes): a build folder removed meanwhile is an error here, never
            # an empty folder the engine makes in its place
            self.container = self.client.containers.create(
                tag, ["perl", "-e", WATCHER, str(fifo), *argv], detach=True, devices=devices,
                pid_mode="host", network_mode="none", cpuset_cpus=",".join(str(c) for c in cpus),
                cap_add=["IPC_LOCK"],
                mounts=[Mount(str(build), str(build), type="bind", read_only=True),
                        Mount(str(folder), str(folder), type="bind")],
                labels=labels)
            self.container.start()
            self.container.reload()
            self.pid = int(self.container.attrs["State"]["Pid"])
        except docker.errors.DockerException as err:
            self._give_up()
            raise ExitlatError(f"cannot start the runtime container: {str(err).splitlines()[0]}") from None
        except BaseException:      # a stop request (or anything) half-way: leave no container
            self._give_up()
            raise
        if self.pid == 0:
            self.stop()
            raise ExitlatError("the runtime container exited at once; see qemu-stderr.log")

    def _give_up(self) -> None:
        self.stop()
        leftovers.remove_run_containers(self.client, self.folder)

    def poll(self) -> int | None:
        """QEMU's exit code once its container has stopped; ExitlatError when the engine does
        not answer (it is restarting, or gone)."""
        import docker.errors

        try:
            self.container.reload()
        except docker.errors.NotFound:
            self.lost = "its container was removed by someone else"
            raise ExitlatError(f"the runtime container {self.container.short_id} was removed "
                               "during the run") from None
        except Exception as err:   # the SDK raises several unrelated types for a lost engine
            self.lost = "the Docker engine stopped answering"
            raise ExitlatError(f"the Docker engine stopped answering during the run "
                               f"({type(err).__name__})") from None
        if self.container.status in ("exited", "dead"):
            return int(self.container.attrs["State"]["ExitCode"])
        return None

    def exit_text(self) -> str:
        """How QEMU ended, never raising (for the reason of an incomplete run)."""
        try:
            code = self.wait(5)       # the engine notes the exit a moment after the sockets close
        except ExitlatError:
            return f"code unknown: {self.lost}"
        if code == 137 and not self.lost:
            return "killed by SIGKILL (code 137): QEMU or its container was killed"
        return exit_text(code)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.poll()
            if code is not None:
                return code
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        """Remove the container, waiting up to ENGINE_WAIT_S for an engine that is restarting;
        then close the owner pipe, which ends a QEMU that is still running anyway."""
        import docker.errors

        c = getattr(self, "container", None)
        if c is not None:
            try:
                (self.folder / "qemu-stderr.log").write_bytes(c.logs(stdout=True, stderr=True))
            except Exception:
                pass
            deadline = time.monotonic() + ENGINE_WAIT_S
            while True:
                try:
                    c.remove(force=True)
                    break
                except docker.errors.NotFound:
                    break
                except Exception as err:
                    if time.monotonic() > deadline:
                        self.log(f"warning: cannot remove the runtime container {c.short_id} "
                                 f"({type(err).__name__}: the Docker engine does not answer); "
                                 "`invoke cleanup` removes it once the engine is back")
                        break
                    time.sleep(1)
            self.container = None
        if getattr(self, "owner_fd", None) is not None:
            os.close(self.owner_fd)
            self.owner_fd = None


def threads_of(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def pin_threads(pid: int, vcpu_tids: list[int], cores, housekeeping: int) -> dict:
    """Each vCPU thread to its core (`cores`: one per vCPU, in vCPU order, or one core for all),
    every other QEMU thread to the housekeeping core."""
    if isinstance(cores, int):
        cores = [cores] * len(vcpu_tids)
    core_of = dict(zip(vcpu_tids, cores))
    pinned = {}
    for tid in threads_of(pid):
        target = core_of.get(tid, housekeeping)
        try:
            os.sched_setaffinity(tid, {target})
            pinned[tid] = target
        except OSError as err:
            raise ExitlatError(f"cannot pin QEMU thread {tid} to core {target}: {err.strerror}") from None
    return pinned
