"""Boot L1 (the emulated host), run the selftest inside it, and collect what it wrote. AMD-V: L1
under the project's QEMU with TCG, the output disk virtio-blk. VT-x: L1 under Bochs in a container
(exitlat.selftest.bochs), booted from a CD, the output disk ATA. What goes in and comes back (the
per-run archive appended to L1's initramfs, the raw output disk) is exitlat.selftest.l1disk; /init
loads the modules, mounts proc/sys/dev/tracefs, runs `python3 -m exitlat.selftest.inner`, then
powers L1 off.

L1's console goes to a log file that is followed here: every phase has a deadline and a one-line
error (L1 did not boot, the modules did not load, L1 stalled), and a long phase prints progress.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.progress import Progress, fmt_duration
from . import bochs
from .l1disk import read_output_disk, write_run_archive
from .protocol import DISK_BYTES, MARK

L1_KERNEL_ARGS = ["console=ttyS0", "panic=-1", "quiet", "loglevel=4", "mitigations=off",
                  "nowatchdog"]
# printk lines on the console ("[    1.234567] ..."): kept in the log, not echoed.
_KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]")


VENDORS = ("amd", "intel")
KVM_MODULE = {"amd": "kvm_amd", "intel": "kvm_intel"}
MACHINE = {"amd": "emulated AMD-V host (L1 under QEMU's TCG, kvm_amd)",
           "intel": "emulated VT-x host (L1 under Bochs, kvm_intel)"}


@dataclass
class Timeouts:
    boot: float = 120.0        # QEMU start → /init's first line
    modules: float = 90.0      # /init → modules loaded
    stall: float = 300.0       # longest silence on the console while the selftest runs
    total: float = 1500.0      # QEMU start → L1 powered off
    poweroff: float = 60.0     # the selftest's end → QEMU exited


def vendor_timeouts(vendor: str, total: float) -> Timeouts:
    """Bochs is the slower machine: it reads the CD at ~11 MB/s (a 200 MB initramfs takes ~50 s)
    and `insmod kvm` alone took ~15 s; host-side deadlines must cover that (guest time runs far
    slower than host time there, so L1's own timeouts seldom fire). Its console stays quiet while
    a run's windows go (inner._QuietStream), and the catalogue's kernel run there is silent for
    ~10 minutes (tscdeadline alone waits 2^20 emulated cycles per iteration): stall at 20."""
    if vendor == "intel":
        return Timeouts(boot=420.0, modules=300.0, stall=1200.0, total=total, poweroff=120.0)
    return Timeouts(total=total)


@dataclass
class L1Result:
    summary: dict                  # inner's summary.json
    out_dir: Path                  # what L1 wrote (bundles/, summary.json, capture/)
    console_log: Path
    timings: dict = field(default_factory=dict)




def isolation_args(smp: int) -> list[str]:
    """L1's cores for L2's vCPUs (1, and 2 for a second vCPU) isolated at boot as
    docs/isolation.md tells a user to (isolcpus, nohz_full, rcu_nocbs, device interrupts on
    core 0). Without it L1's 250 Hz tick ran on the vCPU's core, and under TCG's slow emulated
    time that was 0.2-0.6 interrupt exits per traced iteration: enough, with the side exits each
    may cause, for the verifier to call a window unverified ("too much background")."""
    if smp < 2:
        return []
    cores = "1" if smp == 2 else f"1-{smp - 1}"
    return [f"isolcpus=managed_irq,domain,{cores}", f"nohz_full={cores}", f"rcu_nocbs={cores}",
            "irqaffinity=0"]


# -- the QEMU command line ----------------------------------------------------------------------

def l1_argv(qemu: Path, vmlinuz: Path, initrd: Path, disk: Path, console: Path,
            smp: int = 2, mem: str = "3G") -> list[str]:
    """L0's QEMU for L1: TCG, an AMD EPYC with SVM and nested paging, the console to a file, the
    output disk as virtio-blk. -smp 2 so bench can pin L2's vCPU to core 1 (3 for the IPI
    kinds' second vCPU, on core 2).

    One TCG thread per vCPU (thread=multi), not the round-robin single thread: QEMU's VMRUN
    (target/i386/tcg/system/svm_helper.c, helper_vmrun) injects an EVENTINJ interrupt but leaves
    cs->exception_index set to its vector, and the next round-robin kick (exit_request) makes
    cpu_exec deliver that vector a second time, with IF=0, inside L2's handler of the first: L2
    deadlocks on hrtimer_bases.lock or timekeeper_lock (seen in 5 of 15 L2 boots with
    thread=single, 0 of 30 with thread=multi)."""
    return [
        str(qemu), "-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm,+npt",
        "-machine", "pc", "-smp", str(smp), "-m", mem,
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-nic", "none",
        "-no-reboot",
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", " ".join(L1_KERNEL_ARGS + isolation_args(smp)),
        "-serial", f"file:{console}",
        "-drive", f"file={disk},format=raw,if=none,id=out,cache=unsafe",
        "-device", "virtio-blk-pci,drive=out",
    ]


# -- the output disk --------------------------------------------------------------------------------


# -- following the console ------------------------------------------------------------------------

class ConsoleFollower:
    """Reads new complete lines of a growing log file."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [l.decode("utf-8", "replace").rstrip("\r") for l in lines]


def parse_marker(line: str) -> tuple[str, str] | None:
    """('init'|'modules'|'error'|'event'|'exit', rest) for an `exitlat-l1:` line, else None."""
    i = line.find(MARK)
    if i < 0:
        return None
    rest = line[i + len(MARK):].strip()
    word, _, tail = rest.partition(" ")
    if word == "modules" and tail.startswith("ok"):
        return "modules", tail[2:].strip()
    if word == "error:":
        return "error", tail
    if word in ("init", "event", "exit"):
        return word, tail
    return None


class L1Boot:
    """One boot of L1: start QEMU, follow the console through the phases, collect the disk."""

    def __init__(self, qemu: Path, image, build: Path, config: dict, workdir: Path,
                 console_log: Path, progress: Progress, timeouts: Timeouts | None = None,
                 echo=None, vendor: str = "amd", bochs_image: str | None = None):
        self.qemu, self.image, self.build, self.config = qemu, image, build, config
        self.vendor, self.bochs_image = vendor, bochs_image
        self.workdir, self.console_log, self.progress = workdir, console_log, progress
        self.t = timeouts or Timeouts()
        self.echo = echo or (lambda line: progress.say(f"L1 | {line}"))
        self.timings: dict = {}
        self._run_t0: dict = {}
        self._l2_t0: float | None = None
        self.fatal = ""

    def prepare(self) -> tuple[Path, Path]:
        initrd = self.workdir / "l1-initrd.cpio"
        disk = self.workdir / "out.img"
        t0 = time.monotonic()
        shutil.copyfile(self.image.initramfs, initrd)
        with open(initrd, "ab") as out:
            size = write_run_archive(out, self.build, self.image.manifest["modules"][self.vendor],
                                     self.config, kvm_module=KVM_MODULE[self.vendor])
        with open(disk, "wb") as f:
            f.truncate(DISK_BYTES if self.vendor == "amd" else bochs.disk_bytes(DISK_BYTES))
        self.timings["prepare_s"] = round(time.monotonic() - t0, 2)
        self.timings["run_archive_bytes"] = size
        return initrd, disk

    def run(self) -> L1Result:
        initrd, disk = self.prepare()
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        if self.vendor == "intel":
            t0 = self._run_bochs(initrd)
        else:
            t0 = self._run_qemu(initrd, disk)
        self.timings["l1_total_s"] = round(time.monotonic() - t0, 1)
        out_dir = self.workdir / "out"
        read_output_disk(disk, out_dir)
        summary_path = out_dir / "summary.json"
        if not summary_path.is_file():
            raise ExitlatError("L1 finished but wrote no summary.json")
        summary = json.loads(summary_path.read_text())
        return L1Result(summary, out_dir, self.console_log, self.timings)

    def _run_qemu(self, initrd: Path, disk: Path) -> float:
        # a third CPU only when a run needs it (the IPI kinds' receiving vCPU): L1 stays as
        # every other selftest had it
        smp = 3 if any(r.get("two_vcpus") for r in self.config.get("runs", [])) else 2
        argv = l1_argv(self.qemu, self.image.vmlinuz, initrd, disk, self.console_log, smp=smp)
        stderr_path = self.workdir / "qemu-l1-stderr.log"
        self.progress.say(f"L1: booting under TCG (console: {self.console_log})")
        t0 = time.monotonic()
        with open(stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise ExitlatError(f"cannot start L1's QEMU ({argv[0]}): {e.strerror or e}") from None
            try:
                self._follow(proc, t0, stderr_path)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        return t0

    def _run_bochs(self, initrd: Path) -> float:
        """L1 under Bochs: the CD made by xorriso in the Bochs image, then Bochs in a container of
        it with the work folder mounted, its console (a file there) followed like QEMU's."""
        from exitlat.build.images import docker_client

        client = docker_client()
        work = {str(self.workdir): {"bind": bochs.WORK, "mode": "rw"},
                str(self.console_log.parent): {"bind": bochs.LOGS, "mode": "rw"}}
        t_cd = time.monotonic()
        shutil.copyfile(self.image.vmlinuz, self.workdir / "vmlinuz")
        os.replace(initrd, self.workdir / "initrd")
        try:
            client.containers.run(self.bochs_image, ["sh", "-c", bochs.cd_script(" ".join(L1_KERNEL_ARGS))],
                                  volumes=work, remove=True, network_disabled=True)
        except Exception as err:
            raise ExitlatError(f"L1's boot CD: {str(err).splitlines()[0][:200]}") from None
        (self.workdir / "initrd").unlink()
        self.timings["cd_s"] = round(time.monotonic() - t_cd, 1)
        (self.workdir / "bochsrc").write_text(bochs.bochsrc((self.workdir / "out.img").stat().st_size,
                                                            console=self.console_log.name))
        (self.workdir / "bochs.rc").write_text("c\n")      # its debugger: continue, at once
        self.progress.say(f"L1: booting under Bochs ({bochs.CPU_MODEL}; console: {self.console_log})")
        t0 = time.monotonic()
        container = client.containers.run(
            self.bochs_image, ["bochs-bin", "-q", "-f", f"{bochs.WORK}/bochsrc", "-rc",
                               f"{bochs.WORK}/bochs.rc"],
            volumes=work, detach=True, stdin_open=False, tty=False,
            ports={"5900/tcp": ("127.0.0.1", None)},
            labels={"exitlat.role": "selftest-bochs", "exitlat.owner_pid": str(os.getpid())})
        proc = bochs.ContainerProc(container)
        drain = None
        try:
            port = bochs.published_port(container, 5900, deadline=time.monotonic() + 30)
            drain = bochs.RfbDrain("127.0.0.1", port)
            drain.connect(deadline=time.monotonic() + 90, alive=lambda: proc.poll() is None)
            self._follow(proc, t0, self.workdir / "bochs.log")
        finally:
            proc.kill()
            if drain is not None:
                drain.close()
        return t0

    def _follow(self, proc, t0: float, stderr_path: Path, console: Path | None = None) -> None:
        st = _FollowState(phase="boot", phase_t0=t0, deadline=t0 + self.t.boot, last_line_t=t0)
        console = console or self.console_log
        follower = ConsoleFollower(console)
        hb_state: dict = {}
        while True:
            code = proc.poll()     # before reading: every line QEMU wrote is then in the file
            now = time.monotonic()
            for line in follower.lines():
                self._line(line, now, t0, st)
                hb_state["last"] = now      # a heartbeat only after 20 s of silence
            if code is not None:
                if st.phase == "poweroff":
                    self.timings["l1_poweroff_s"] = round(now - st.phase_t0, 1)
                    return
                panic = _panic_line(console)
                if panic:
                    raise ExitlatError(f"L1 did not {'boot' if st.phase == 'boot' else 'survive'}: "
                                       f"{panic[:200]} (console: {self.console_log})")
                raise ExitlatError(self._died(code, st, stderr_path))
            if now > st.deadline:
                raise ExitlatError(_timeout_message(st.phase, now - st.phase_t0, self.console_log,
                                                    st.last_line))
            if st.phase == "inner" and now - st.last_line_t > self.t.stall:
                raise ExitlatError(f"L1 stalled: no console output for {now - st.last_line_t:.0f} s "
                                   f"while the selftest ran (last: {st.last_line[:100]!r}; console: "
                                   f"{self.console_log})")
            self.progress.heartbeat(f"L1 {_PHASES[st.phase]}", st.phase_t0, st.last_line, hb_state)
            time.sleep(0.2)

    def _died(self, code: int, st: "_FollowState", stderr_path: Path) -> str:
        """The line for an emulator that exited on its own: how (a signal by name), its own last
        words (an assertion names the emulator's bug), and its output kept beside the console,
        since the work folder goes."""
        how = f"killed by {_signal_name(-code)}" if code < 0 else f"code {code}"
        words = _tail(stderr_path)
        kept = self.console_log.with_name(self.console_log.stem + "-emulator.log")
        try:
            shutil.copyfile(stderr_path, kept)
        except OSError:
            kept = None
        said = f"it said: {words[:200]}; console's last line: " if words else ""
        return (f"L1: {'Bochs' if self.vendor == 'intel' else 'QEMU'} exited ({how}) during "
                f"{_PHASES[st.phase]}: {said}{(st.last_line or 'no output')[:160]} "
                f"(console: {self.console_log}" + (f"; its output: {kept})" if kept else ")"))

    def _line(self, line: str, now: float, t0: float, st: "_FollowState") -> None:
        st.last_line_t = now
        if line.strip():
            st.last_line = line.strip()
        m = parse_marker(line)
        if m is None:
            if line.strip() and not _KERNEL_LINE.match(line) and st.phase == "inner":
                self.echo(line.rstrip())
            return
        kind, rest = m
        if kind == "error":
            raise ExitlatError(f"L1: {rest} (console: {self.console_log})")
        if kind == "init" and st.phase == "boot":
            self.timings["l1_boot_s"] = round(now - t0, 1)
            self.timings["l1_uptime_at_init_s"] = _num(rest)
            self.progress.say(f"L1: /init running after {fmt_duration(now - t0)}; loading modules")
            st.phase, st.phase_t0, st.deadline = "modules", now, now + self.t.modules
        elif kind == "modules" and st.phase == "modules":
            self.timings["l1_modules_s"] = round(now - st.phase_t0, 1)
            self.progress.say(f"L1: {KVM_MODULE[self.vendor]} loaded ({fmt_duration(now - st.phase_t0)}); "
                              "running the selftest inside L1")
            st.phase, st.phase_t0, st.deadline = "inner", now, t0 + self.t.total
        elif kind == "event":
            self._event(rest)
        elif kind == "exit" and st.phase == "inner":
            self.timings["l1_inner_s"] = round(now - st.phase_t0, 1)
            code = rest.split()[0] if rest else "?"
            if code != "0":
                raise ExitlatError(f"L1: the selftest inside L1 failed (exit {code}): "
                                   f"{self.fatal or 'see the console'} (console: {self.console_log})")
            st.phase, st.phase_t0, st.deadline = "poweroff", now, now + self.t.poweroff

    def _event(self, text: str) -> None:
        try:
            ev = json.loads(text)
        except json.JSONDecodeError:
            return
        self.timings.setdefault("events", []).append(ev)
        if ev.get("event") == "fatal":
            self.fatal = str(ev.get("message"))
        elif ev.get("event") == "l2-boot-start":
            self._l2_t0 = time.monotonic()
        elif ev.get("event") == "l2-boot-done" and self._l2_t0 is not None:
            self.timings.setdefault("l2_boot_host_s", []).append(round(time.monotonic() - self._l2_t0, 1))
            self._l2_t0 = None
        elif ev.get("event") == "run-start":
            self._run_t0[ev.get("name")] = time.monotonic()
            self.progress.say(f"L1: run {ev.get('index')}/{ev.get('of')}: {ev.get('name')} "
                              f"(cases {ev.get('cases')}, {ev.get('instr')}, tracing {ev.get('tracing')})")
        elif ev.get("event") == "run-retry":
            self.progress.say(f"L1: run {ev.get('name')}: L2 hung ({ev.get('reason')}); "
                              f"retrying with a fresh VM (attempt {ev.get('attempt')})")
        elif ev.get("event") == "run-done":
            # host time: L1's own clock runs slower than the host's under emulation
            t0 = self._run_t0.get(ev.get("name"))
            wall = round(time.monotonic() - t0, 1) if t0 is not None else None
            self.timings.setdefault("run_host_s", {})[ev.get("name")] = wall
            self.progress.say(f"L1: run {ev.get('name')}: {ev.get('status')} in "
                              f"{fmt_duration(wall if wall is not None else ev.get('wall_s') or 0)}"
                              + (f" ({ev['error']})" if ev.get("error") else ""))


@dataclass
class _FollowState:
    phase: str
    phase_t0: float
    deadline: float
    last_line_t: float
    last_line: str = ""


_PHASES = {"boot": "boot", "modules": "module loading", "inner": "the selftest",
           "poweroff": "power-off"}


def _timeout_message(phase: str, waited: float, log: Path, last: str) -> str:
    last = f"; last console line: {last[:100]!r}" if last else "; its console stayed empty"
    if phase == "boot":
        return f"L1 did not boot within {waited:.0f} s (no line from /init{last}; console: {log})"
    if phase == "modules":
        return f"L1: the kernel modules did not load within {waited:.0f} s{last} (console: {log})"
    if phase == "inner":
        return f"L1: the selftest did not finish within the overall limit{last} (console: {log})"
    return f"L1 did not power off within {waited:.0f} s after the selftest (console: {log})"


def _num(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def _panic_line(console: Path) -> str:
    """'Kernel panic - not syncing: ...' plus the line before it (often the cause), if any."""
    try:
        lines = console.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for i, line in enumerate(lines):
        if "Kernel panic" in line:
            text = _KERNEL_LINE.sub("", line).strip()
            before = _KERNEL_LINE.sub("", lines[i - 1]).strip() if i else ""
            return f"{before}; {text}" if before else text
    return ""


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _tail(path: Path) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def console_log_path(root: Path, vendor: str = "amd") -> Path:
    return root / "logs" / (f"selftest-l1-{vendor}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
                            f"-{os.getpid()}.log")
