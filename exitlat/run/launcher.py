"""Start QEMU either in the runtime container (the default) or straight on the host
(--no-container). Both give the same handle: the QEMU pid in the host's pid namespace, wait, stop."""

import os
import subprocess
import time
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.build.baseimage import ensure_base_image
from exitlat.build.images import build_image, docker_client, short_hash
from exitlat.paths import REPO_ROOT


class HostQemu:
    def __init__(self, argv: list[str], folder: Path):
        self.log = open(folder / "qemu-stderr.log", "wb")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            raise ExitlatError(f"cannot start QEMU: {err}") from None
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

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


class ContainerQemu:
    """QEMU in the runtime image: /dev/kvm only (no --privileged), the host pid namespace so the
    vCPU thread id from QMP is the host's (pinning and tracing happen on the host), a cpuset of the
    measured core plus one housekeeping core, CAP_IPC_LOCK (for -overcommit mem-lock=on: with it
    mlockall ignores RLIMIT_MEMLOCK, which some engines may not raise), no network."""

    def __init__(self, argv: list[str], folder: Path, build: Path, cpus: list[int], accel: str,
                 pins_base: dict, log):
        import docker.errors

        self.client = docker_client()
        self.folder = folder
        base = ensure_base_image(self.client, pins_base, log)
        tag = f"exitlat/runtime:{short_hash((REPO_ROOT / 'docker/runtime.Dockerfile').read_bytes(), base)}"
        with open(folder / "image-build.log", "a") as f:
            build_image(self.client, "runtime.Dockerfile", tag, {"BASE": base}, f, log)
        devices = ["/dev/kvm:/dev/kvm:rwm"] if accel == "kvm" else []
        try:
            self.container = self.client.containers.create(
                tag, argv, detach=True, devices=devices, pid_mode="host", network_mode="none",
                cpuset_cpus=",".join(str(c) for c in cpus),
                cap_add=["IPC_LOCK"],
                volumes={str(build): {"bind": str(build), "mode": "ro"},
                         str(folder): {"bind": str(folder), "mode": "rw"}},
                labels={"exitlat.run": str(folder)})
            self.container.start()
            self.container.reload()
            self.pid = int(self.container.attrs["State"]["Pid"])
        except docker.errors.DockerException as err:
            self.stop()
            raise ExitlatError(f"cannot start the runtime container: {str(err).splitlines()[0]}") from None
        if self.pid == 0:
            self.stop()
            raise ExitlatError("the runtime container exited at once; see qemu-stderr.log")

    def poll(self) -> int | None:
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            return int(self.container.attrs["State"]["ExitCode"])
        return None

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.poll()
            if code is not None:
                return code
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        c = getattr(self, "container", None)
        if c is None:
            return
        try:
            (self.folder / "qemu-stderr.log").write_bytes(c.logs(stdout=True, stderr=True))
        except Exception:
            pass
        try:
            c.remove(force=True)
        except Exception:
            pass
        self.container = None


def threads_of(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def pin_threads(pid: int, vcpu_tids: list[int], core: int, housekeeping: int) -> dict:
    """The vCPU thread to the measured core, every other QEMU thread to the housekeeping core."""
    pinned = {}
    for tid in threads_of(pid):
        target = core if tid in vcpu_tids else housekeeping
        try:
            os.sched_setaffinity(tid, {target})
            pinned[tid] = target
        except OSError as err:
            raise ExitlatError(f"cannot pin QEMU thread {tid} to core {target}: {err.strerror}") from None
    return pinned
