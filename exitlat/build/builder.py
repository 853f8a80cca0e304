"""`invoke build`: runs the stages (exitlat.build.stages) in Docker, overlapping them where they do
not depend on each other, and assembles the content-addressed build folder with its manifest.
Every folder is made under a temporary name and renamed when complete.
"""

import errno
import json
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

from exitlat import __version__
from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT, build_root
from exitlat.progress import Progress, fmt_duration

from .baseimage import ensure_base_image
from .images import build_image, docker_client, image_origin, image_packages, unpack_image_tree
from .pins import Pins, load_pins
from .sources import SourceFetcher, sha256_file
from .stages import (ARTIFACTS, BUILD_FORMAT, STAGES, Stage, base_tag_of, builder_packages,
                     generated_inputs, plan_build)


class Builder:
    def __init__(self, pins: Pins, root: Path, mirror=None, progress: Progress | None = None):
        self.pins = pins
        self.root = root
        self.mirror = mirror
        self.progress = progress or Progress()
        self.plan = plan_build(pins)
        self.stages_dir = root / "stages"
        self.logs_dir = root / "logs"
        self.client = None
        self.fetched = {}
        # Seconds per step ("sources", "base image", "builder image", each stage) and, per stage,
        # when it started and ended relative to the start of the build (stages overlap).
        self.timings: dict[str, float] = {}
        self.spans: dict[str, tuple[float, float]] = {}
        self.cpu: dict[str, float] = {}      # CPU seconds (user + system) per stage
        self.t0 = time.monotonic()
        self._containers: dict[str, object] = {}   # running stage containers, for cancelling
        self._toolchain_usr: Path | None = None     # the builder image's /usr on the host
        self._cancel = threading.Event()

    # -- helpers -------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.stages_dir / f"{name}-{self.plan.stage_hashes[name]}"

    def _docker(self):
        if self.client is None:
            self.client = docker_client()
        return self.client

    def _timed(self, name: str, fn, *args):
        t = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.timings[name] = time.monotonic() - t

    def _base_image(self) -> str:
        """The pinned base image (pulled, or bootstrapped from the pinned packages)."""
        tag = base_tag_of(self.pins)
        if self._image_exists(tag):
            return tag
        return self._timed("base image", ensure_base_image, self._docker(), self.pins.base,
                           self.progress.say, self.mirror)

    def _image_exists(self, tag: str) -> bool:
        from .images import image_exists

        return image_exists(self._docker(), tag)

    def _builder_image(self) -> str:
        tag = f"exitlat/builder:{self.plan.builder_key}"
        client = self._docker()
        if self._image_exists(tag):
            return tag
        base = self._base_image()
        with open(self.logs_dir / f"image-builder-{self.plan.builder_key}.log", "a") as log:
            self._timed("builder image", build_image, client, "builder.Dockerfile", tag,
                        {"BASE": base, "PACKAGES": builder_packages(self.pins),
                         "SUITE": self.pins.base["debootstrap"]["suite"],
                         "MIRROR": self.pins.base["debootstrap"]["mirror"]}, log, self.progress.say)
        return tag

    # -- the build -----------------------------------------------------------------------------
    def run(self, force: bool = False) -> Path:
        final = self.root / self.plan.build_hash
        if (final / "manifest.json").is_file() and not force:
            self.progress.say(f"up to date: {final}")
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        self.stages_dir.mkdir(exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        for folder in (self.root, self.stages_dir):
            for gone in sweep_stale_tmp(folder):
                self.progress.say(f"removed {gone.name}: left by a build that was killed")
        needed = [st for st in STAGES if force or not self.stage_dir(st.name).is_dir()]
        if needed:
            self._docker()  # fail fast, before downloading anything, when there is no engine
            fetcher = SourceFetcher(self.pins, mirror=self.mirror, log=self.progress.say)
            # The sources download while the images are made (a first run needs both).
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="fetch") as pool:
                names = sorted({n for st in needed for n in st.sources})
                t = time.monotonic()
                futures = {n: pool.submit(fetcher.fetch, self.pins.source(n)) for n in names}
                try:
                    image = self._builder_image()
                    for n in names:
                        self.fetched[n] = futures[n].result()
                        f = self.fetched[n]
                        self.progress.say(f"source {n}: {f.provider} ({f.path.name}, sha256 ok)")
                except BaseException:      # a failed image or download, Ctrl-C: stop the others
                    fetcher.cancel()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                self.timings["sources"] = time.monotonic() - t
            self._toolchain_usr = self._unpack_toolchain(image)
            self._run_stages(needed, image)
        return self._assemble(final, force)

    def _unpack_toolchain(self, image: str) -> Path:
        """The builder image's /usr (compilers, headers, libraries), unpacked once per builder
        image into build/toolchain/<key>/ and bind-mounted read-only over /usr in every stage.
        On engines whose storage driver is fuse-overlayfs, each file a compile opens through the
        image costs a round trip to a user-space daemon: a fifth of the time of a compile that
        reads many headers. The files and their paths are the image's, so nothing in the
        artifacts changes. (Folders of other builder images are left alone: a build of other
        inputs may be using one right now.)"""
        top = self.root / "toolchain"
        key = self.plan.builder_key
        if not (top / key / "usr").is_dir():
            t = time.monotonic()
            self.progress.say(f"unpacking the builder image's /usr into {top / key}")
            unpack_image_tree(self._docker(), image, "usr", top / key)
            self.timings["toolchain unpack"] = time.monotonic() - t
        return top / key / "usr"

    def _run_stages(self, needed: list[Stage], image: str) -> None:
        """Run the needed stages, each as soon as the stages it uses are done: kernel, busybox and
        QEMU side by side (their serial parts — unpacking, configure, linking — leave cores idle
        that the others fill), the initramfs after the kernel and busybox. The first failure
        stops the others; Ctrl-C stops them all."""
        pending = {st.name: st for st in needed}
        done = {st.name for st in STAGES if st.name not in pending}
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(max_workers=len(STAGES), thread_name_prefix="stage") as pool:
            try:
                while pending or running:
                    for name, st in list(pending.items()):
                        if all(d in done for d in st.deps):
                            del pending[name]
                            running[pool.submit(self._run_stage, st, image)] = name
                    if not running:
                        raise ExitlatError(f"stages {sorted(pending)} wait on stages that are not built")
                    finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        name = running.pop(fut)
                        fut.result()   # raises the stage's error
                        done.add(name)
            except BaseException:
                self._cancel_all()
                for fut in list(running):
                    try:
                        fut.result()
                    except BaseException:
                        pass
                raise

    def _cancel_all(self) -> None:
        """Stop every running stage container (their folders stay temporary and are removed)."""
        import docker.errors

        self._cancel.set()
        for container in list(self._containers.values()):
            try:
                container.kill()
            except docker.errors.DockerException:
                pass

    def _run_stage(self, st: Stage, image: str) -> None:
        final = self.stage_dir(st.name)
        tmp = self.stages_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "out").mkdir(parents=True)
        # /work: the stage's scratch space (QEMU's source and build tree, the probes), on the host's
        # file system rather than the container's storage driver (fuse-overlayfs makes every
        # compile's file accesses slow); removed with the stage's temporary folder.
        (tmp / "work").mkdir()
        if st.generated:        # the files the Python side generates for it (guestgen)
            (tmp / "gen").mkdir()
            for name, text in generated_inputs(st).items():
                (tmp / "gen" / name).write_text(text)
        volumes = {str(REPO_ROOT): {"bind": "/repo", "mode": "ro"},
                   str(tmp): {"bind": "/stage", "mode": "rw"},
                   str(tmp / "work"): {"bind": "/work", "mode": "rw"}}
        if self._toolchain_usr is not None:
            volumes[str(self._toolchain_usr)] = {"bind": "/usr", "mode": "ro"}
        for pin_name, inner in st.sources.items():
            volumes[str(self.fetched[pin_name].path)] = {"bind": f"/sources/{inner}", "mode": "ro"}
        if st.keeps_tree:
            (tmp / "tree").mkdir()
            volumes[str(tmp / "tree")] = {"bind": "/kernel", "mode": "rw"}
        for dep in st.deps:
            d = self.stage_dir(dep)
            if dep == "kernel":
                volumes[str(d / "tree")] = {"bind": "/kernel", "mode": "ro"}
            volumes[str(d / "out")] = {"bind": f"/deps/{dep}", "mode": "ro"}
        log_path = self.logs_dir / f"{final.name}.log"
        self.progress.say(f"stage {st.name}: starting (log: {log_path})")
        t0 = time.monotonic()
        try:
            code, tail = self._run_container(image, st, volumes, log_path, t0)
            if self._cancel.is_set():
                raise ExitlatError(f"stage {st.name}: stopped")
            if code != 0:
                for line in tail[-15:]:
                    print(f"  | {line}", file=self.progress.stream)
                raise ExitlatError(f"stage {st.name} failed (exit {code}) after "
                                   f"{fmt_duration(time.monotonic() - t0)}; full log: {log_path}")
            shutil.rmtree(tmp / "work", ignore_errors=True)
            # Which provider served each input stays with the stage, for every later manifest.
            (tmp / "sources.json").write_text(json.dumps(
                {n: {"provider": self.fetched[n].provider, "origin": self.fetched[n].origin,
                     "sha256": self.fetched[n].pin.sha256} for n in sorted(st.sources)}, indent=1))
            if final.exists():  # --force: the old stage stays until the new one is complete
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise ExitlatError(f"disk full during stage {st.name} (in {self.root})") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        t1 = time.monotonic()
        self.timings[st.name] = t1 - t0
        cpu = _cpu_seconds(tail)
        if cpu is not None:
            self.cpu[st.name] = cpu
        self.spans[st.name] = (t0 - self.t0, t1 - self.t0)
        self.progress.say(f"stage {st.name}: done in {fmt_duration(self.timings[st.name])}")

    def _run_container(self, image, st: Stage, volumes, log_path: Path, t0: float):
        import docker.errors

        client = self._docker()
        env = {"SOURCE_DATE_EPOCH": str(self.pins.source_date_epoch), "HOME": "/tmp",
               "LC_ALL": "C.UTF-8", "TZ": "UTC"}
        container = None
        tail: list[str] = []
        state: dict = {}
        try:
            if self._cancel.is_set():
                return 1, ["(not started: another stage failed)"]
            # The last line: the CPU time (user, system) of everything the script ran, a figure
            # that, unlike wall time, does not depend on what else the machine is doing.
            # (`times` must run in this shell: a subshell or pipeline would show its own, none)
            cmd = (f'bash /repo/{st.script}; rc=$?; times > /tmp/.exitlat-times; '
                   f'echo "== cpu $(tail -1 /tmp/.exitlat-times)"; exit $rc')
            container = client.containers.create(
                image, ["bash", "-c", cmd], volumes=volumes, environment=env,
                user=f"{os.getuid()}:{os.getgid()}", working_dir="/tmp", network_disabled=True,
                labels={"exitlat.stage": st.name, "exitlat.build": str(self.root)})
            self._containers[st.name] = container
            container.start()
            partial = ""
            with open(log_path, "w") as log:
                for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    text = chunk.decode(errors="replace")
                    log.write(text)
                    partial += text
                    *lines, partial = partial.split("\n")
                    for line in lines:
                        if line.strip():
                            tail = (tail + [line])[-40:]
                    self.progress.heartbeat(f"stage {st.name}", t0, tail[-1] if tail else "", state)
            code = container.wait()["StatusCode"]
            return code, tail
        except docker.errors.DockerException as err:
            raise ExitlatError(f"stage {st.name}: Docker error: {str(err).splitlines()[0]}") from None
        finally:
            self._containers.pop(st.name, None)
            if container is not None:
                try:
                    container.remove(force=True)
                except docker.errors.DockerException:
                    pass

    # -- the final folder ----------------------------------------------------------------------
    def _assemble(self, final: Path, force: bool) -> Path:
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for stage, rel in ARTIFACTS:
                src = self.stage_dir(stage) / "out" / rel
                if not src.exists():
                    raise ExitlatError(f"stage {stage} did not produce {rel}")
                if src.is_dir():
                    shutil.copytree(src, tmp / rel, symlinks=True)
                else:
                    shutil.copy2(src, tmp / rel)
            manifest = self._manifest(tmp)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        latest = self.root / "latest"
        link_tmp = self.root / f".latest-{os.getpid()}"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(final.name)
        os.replace(link_tmp, latest)
        self.progress.say(f"build complete: {final}")
        return final

    def _manifest(self, folder: Path) -> dict:
        return {
            "format": BUILD_FORMAT,
            "build_hash": self.plan.build_hash,
            "exitlat_version": __version__,
            "artifacts": artifact_hashes(folder),
            "stages": self.plan.stage_hashes,
            "base_image": self._base_info(),
            "builder_image": {"key": self.plan.builder_key, "packages": self._toolchain_list()},
            "pins": self.pins.raw,
            "providers": self._providers(),
            "versions": {
                "kernel_release": _read(folder / "kernel.release"),
                "busybox": _read(folder / "busybox.version"),
                "qemu": _read(folder / "qemu.version"),
                "kvm_unit_tests": reference_version(self.pins),
            },
            "build_flags": {
                "SOURCE_DATE_EPOCH": self.pins.source_date_epoch,
                "KBUILD_BUILD_USER": "exitlat", "KBUILD_BUILD_HOST": "exitlat",
                "KBUILD_BUILD_VERSION": "1",
                "kernel_config_fragment": "kernel/exitlat.config",
                "qemu_configure": _config_lines(REPO_ROOT / "qemu/configure.args"),
                "qemu_devices": _config_lines(REPO_ROOT / "qemu/devices-x86_64.mak"),
            },
        }

    def _base_info(self) -> dict:
        """The base image: its tag, whether it was pulled or bootstrapped, its exact package list."""
        tag = base_tag_of(self.pins)
        cache = self.stages_dir / f"base-{tag.rsplit(':', 1)[1]}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        client = self._docker()
        self._base_image()   # e.g. pruned since the builder image was made from it
        info = {"tag": tag, "origin": image_origin(client, tag),
                "packages": image_packages(client, tag)}
        cache.write_text(json.dumps(info))
        return info

    def _providers(self) -> dict:
        """Per pinned input: the provider that served it when its stage was built."""
        out = {}
        for st in STAGES:
            f = self.stage_dir(st.name) / "sources.json"
            if f.is_file():
                out.update(json.loads(f.read_text()))
        return dict(sorted(out.items()))

    def _toolchain_list(self) -> list[str]:
        """The builder image's resolved package list (gcc, binutils, make … exact versions)."""
        cache = self.stages_dir / f"toolchain-{self.plan.builder_key}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        out = self._docker().containers.run(f"exitlat/builder:{self.plan.builder_key}",
                                            ["cat", "/etc/exitlat-packages.txt"], remove=True)
        pkgs = sorted(out.decode().split())
        cache.write_text(json.dumps(pkgs))
        return pkgs


def sweep_stale_tmp(folder: Path) -> list[Path]:
    """Remove the `.tmp-<name>-<pid>` folders of builds whose process is gone (a kill -9 or a
    lost machine leaves them: a stage or an assembly half done); a living build's are kept."""
    from exitlat.run.leftovers import alive

    removed = []
    for entry in sorted(folder.glob(".tmp-*")):
        pid = entry.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or alive(int(pid), None):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def _cpu_seconds(tail: list[str]) -> float | None:
    """User + system seconds from the stage's last line, `== cpu 12m3.4s 0m50.1s`."""
    import re

    for line in reversed(tail):
        m = re.match(r"== cpu (\d+)m([\d.]+)s (\d+)m([\d.]+)s", line.strip())
        if m:
            return 60 * (int(m[1]) + int(m[3])) + float(m[2]) + float(m[4])
    return None


def _config_lines(path: Path) -> list[str]:
    return [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]


def reference_version(pins: Pins) -> dict:
    """The reference's identity in the manifest: kvm-unit-tests' tag, commit and git tree."""
    pin = pins.source("kvm-unit-tests")
    return {"version": pin.version, "tag": pin.tag, "commit": pin.commit, "git_tree": pin.git_tree}


def _read(p: Path) -> str | None:
    return p.read_text().strip() if p.is_file() else None


def build(pins_path=None, mirror=None, force=False, root: Path | None = None,
          progress: Progress | None = None) -> tuple[Path, dict]:
    """Build (or find) the build folder; returns it and the seconds per step (see Builder)."""
    pins = load_pins(pins_path)
    builder = Builder(pins, root or build_root(), mirror=mirror, progress=progress)
    folder = builder.run(force=force)
    timings = dict(builder.timings)
    if builder.spans:
        timings["stages (wall, overlapped)"] = (max(e for _, e in builder.spans.values())
                                                - min(s for s, _ in builder.spans.values()))
    timings.update({f"{name} (cpu)": secs for name, secs in builder.cpu.items()})
    return folder, timings


def artifact_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.is_symlink() and f.name != "manifest.json":
            out[str(f.relative_to(folder))] = sha256_file(f)
    return out
