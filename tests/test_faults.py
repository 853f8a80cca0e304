"""Faults done to real TCG runs in the runtime container, as operators and machines do them:
SIGTERM and SIGHUP (twice), kill -9 of the bench then a new run, two runs on one core, a results
folder that fills up, `docker kill` of the container, kill -9 of QEMU alone, the build folder
removed mid-run. Each asserts what the user sees (the one line, the exit code), what is left on
the host (containers, processes, run folders of that bench: none) and the bundle's state.

Each test prints one FIGURE line (fault, seconds from the fault to the bench's exit, leftovers):
`python3 -m pytest -s -m slow tests/test_faults.py | grep FIGURE`. The runs use core 0 (the
default is the last core, where other test runs go)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from exitlat.paths import REPO_ROOT

pytestmark = pytest.mark.slow

CORE = "0"
LONG = ["--case", "1-6", "--iterations", "3000000"]       # minutes under TCG: interrupted in case 1
SHORT = ["--case", "1", "--warmup", "100", "--no-baselines"]        # with --iterations N


@pytest.fixture(scope="module")
def built():
    res = subprocess.run([sys.executable, "-m", "invoke", "build"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(res.stdout.strip().splitlines()[-1])


def bench_argv(out: Path, *args, core=CORE) -> list[str]:
    return [sys.executable, "-m", "invoke", "bench", "--accel", "tcg", "--core", core,
            "--output", str(out), *args]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def stop_started():
    """A failed test stops the benches it started (they would hold core 0 for minutes)."""
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.terminate()
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def start(out: Path, *args, core=CORE, env=None) -> subprocess.Popen:
    STARTED.append(subprocess.Popen(bench_argv(out, *args, core=core), cwd=REPO_ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, **(env or {}))))
    return STARTED[-1]


def run(out: Path, *args, core=CORE, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(bench_argv(out, *args, core=core), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def until(proc: subprocess.Popen, needle: str, seen: list, timeout: float = 300) -> None:
    """Read the bench's output until a line holds `needle`."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"never saw {needle!r}:\n" + "".join(seen[-30:]))


def finish(proc: subprocess.Popen, seen: list, timeout: float = 120) -> tuple[int, str, float]:
    """The exit code, the last line, the seconds it took to exit."""
    t0 = time.monotonic()
    rest, _ = proc.communicate(timeout=timeout)
    secs = time.monotonic() - t0
    seen.append(rest)
    lines = [ln for ln in "".join(seen).splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else "", secs


def error_line(text: str) -> str:
    """The one error line: the last line, starting with "error:", and no traceback anywhere."""
    assert "Traceback" not in text, text[-3000:]
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    assert last.startswith("error: "), text[-3000:]
    return last


def bench_processes(pid: int) -> list[int]:
    """Processes (QEMU, the container's watcher) whose command line names a run folder of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"exitlat-run-{pid}-".encode() in cmd:
                out.append(int(entry.name))
    return out


def qemu_of(pid: int) -> int:
    for p in bench_processes(pid):      # the bundled loader running qemu-system-x86_64
        argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        if argv[0] != b"perl" and any(a.endswith(b"/qemu-system-x86_64") for a in argv):
            return p
    pytest.fail(f"no QEMU of bench {pid}")


def containers_of(pid: int) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=exitlat.owner_pid={pid}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def folders_of(pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"exitlat-run-{pid}-*"))


def left_by(pid: int) -> dict:
    return {"containers": len(containers_of(pid)), "processes": len(bench_processes(pid)),
            "folders": len(folders_of(pid))}


def assert_nothing_left(pid: int) -> dict:
    deadline = time.monotonic() + 5        # a killed process may take a moment to be reaped
    while any(left_by(pid).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = left_by(pid)
    assert left == {"containers": 0, "processes": 0, "folders": 0}, left
    return left


def figure(fault: str, secs: float, left: dict) -> None:
    print(f"\nFIGURE fault={fault!r} exit_s={secs:.2f} containers={left['containers']} "
          f"processes={left['processes']} folders={left['folders']}")


def the_bundle(out: Path) -> Path:
    bundles = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(bundles) == 1, bundles
    return bundles[0]


def doc_of(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


# -- signals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("signame, times", [("SIGTERM", 1), ("SIGHUP", 2)])
def test_stop_signal_stops_the_run_and_keeps_an_incomplete_bundle(built, tmp_path, signame, times):
    sig = getattr(signal, signame)
    proc, seen = start(tmp_path, *LONG), []
    until(proc, "case1: running", seen)
    t0 = time.monotonic()
    proc.send_signal(sig)
    if times == 2:                 # the second arrives while the first one's cleanup runs
        time.sleep(0.02)
        proc.send_signal(sig)
    code, last, _ = finish(proc, seen)
    secs = time.monotonic() - t0
    bundle = the_bundle(tmp_path)
    assert code == 128 + sig, "".join(seen)[-3000:]
    assert error_line("".join(seen)) == f"error: interrupted ({signame}); incomplete bundle kept: {bundle}"
    if times == 2:
        assert f"{signame} again: still stopping" in "".join(seen)
    doc = doc_of(bundle)
    assert doc["status"] == {"state": "incomplete", "reason": f"interrupted ({signame})"}
    assert b"EXITLAT" in (bundle / "console-r0.log").read_bytes()     # the VM's console is kept
    left = assert_nothing_left(proc.pid)
    assert secs < 30
    figure(f"{signame} x{times}", secs, left)


# -- kill -9 of the bench -------------------------------------------------------------------------

def test_sigkill_of_the_bench_ends_qemu_and_the_next_run_cleans_up(built, tmp_path):
    proc, seen = start(tmp_path / "killed", *LONG), []
    until(proc, "case1: running", seen)
    qemu = qemu_of(proc.pid)
    t0 = time.monotonic()
    proc.kill()
    proc.wait(10)
    # QEMU dies with its bench (the owner pipe): no VM keeps spinning on the core
    while Path(f"/proc/{qemu}").exists() and time.monotonic() - t0 < 10:
        if Path(f"/proc/{qemu}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    qemu_gone_s = time.monotonic() - t0
    assert qemu_gone_s < 5, "QEMU outlived its bench"

    def running() -> list[int]:
        out = []
        for p in bench_processes(proc.pid):
            try:
                if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(p)
            except OSError:             # gone between the listing and the read
                pass
        return out

    # the container's watcher follows QEMU (it sees the owner's pipe close): within the same bound
    while running() and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert not running(), "a process of the killed run outlived it"
    # what a kill -9 leaves: the stopped container and the run folder; doctor and cleanup see them
    assert len(containers_of(proc.pid)) == 1 and len(folders_of(proc.pid)) == 1
    doctor = subprocess.run([sys.executable, "-m", "invoke", "doctor", "--core", CORE], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert "left by killed runs" in doctor.stdout and f"owner pid {proc.pid}" in doctor.stdout, doctor.stdout
    dry = subprocess.run([sys.executable, "-m", "invoke", "cleanup", "--dry-run"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and f"would remove: container {containers_of(proc.pid)[0][:10]}" in dry.stdout, dry.stdout
    assert len(containers_of(proc.pid)) == 1          # a dry run removes nothing
    # the next run on the core: the lock died with the bench, the leftovers are removed
    res = run(tmp_path / "next", *SHORT, "--iterations", "2000")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed what a killed exitlat run left: container" in res.stderr
    assert str(folders_of(proc.pid) or "") == "" and doc_of(the_bundle(tmp_path / "next"))["status"]["state"] == "complete"
    left = assert_nothing_left(proc.pid)
    figure("SIGKILL of the bench (QEMU gone after)", qemu_gone_s, left)


# -- two runs, one core ------------------------------------------------------------------------------

def test_second_run_on_a_busy_core_is_refused_or_waits(built, tmp_path):
    first, seen = start(tmp_path / "first", *LONG), []
    until(first, "case1: running", seen)
    # refused at once, naming the holder
    busy = run(tmp_path / "busy", *SHORT, "--iterations", "2000", timeout=120)
    line = error_line(busy.stderr)
    assert busy.returncode == 2
    assert line.startswith(f"error: core {CORE} is busy: exitlat run pid {first.pid} started ")
    assert "invoke bench" in line and "--wait" in line
    assert not (tmp_path / "busy").exists() or not list((tmp_path / "busy").iterdir())
    # on another core it runs, and its bundle records the first run; compare warns about it
    other = run(tmp_path / "other", *SHORT, "--iterations", "2000", "--wait", core="1")
    assert other.returncode == 0, other.stderr[-3000:]
    bundle = the_bundle(tmp_path / "other")
    seen_runs = doc_of(bundle)["run"]["other_runs_seen"]
    assert [(r["pid"], r["core"]) for r in seen_runs] == [(first.pid, int(CORE))]
    cmp = subprocess.run([sys.executable, "-m", "invoke", "compare", str(bundle), str(bundle)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert f"1 other exitlat run(s) on the host during this run (pid {first.pid} on core {CORE})" \
        in cmp.stdout + cmp.stderr
    # --wait: waits for the first run, then runs
    waiter, wseen = start(tmp_path / "waiter", *SHORT, "--iterations", "2000", "--wait"), []
    until(waiter, f"core {CORE} is busy", wseen, timeout=120)
    time.sleep(1)
    assert waiter.poll() is None
    first.send_signal(signal.SIGTERM)
    assert finish(first, seen)[0] == 143
    code, last, _ = finish(waiter, wseen, timeout=300)
    assert code == 0, "".join(wseen)[-3000:]
    assert doc_of(the_bundle(tmp_path / "waiter"))["run"]["other_runs_seen"] == []
    for p in (first, waiter):
        assert_nothing_left(p.pid)


# -- the results folder fills up -------------------------------------------------------------------

@pytest.fixture
def small_folder(tmp_path):
    """A 256 KiB tmpfs (a filler then leaves as little of it free as a test wants)."""
    folder = tmp_path / "small"
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("free_kib", [16, 96])
def test_results_folder_that_fills_up(built, tmp_path, small_folder, free_kib):
    """16 KiB free: full at the samples file (64 KiB); 96 KiB: the samples fit, the bundle.json
    does not. Either way nothing half-written stays, the old bundle there is untouched, and the
    bundle goes to the rescue folder, named in the one line."""
    old = small_folder / "20200101T000000Z-old-000000"
    old.mkdir()
    (old / "bundle.json").write_text("{}")
    with open(small_folder / ".filler", "wb") as f:
        f.write(b"\0" * (256 - free_kib - 4) * 1024)
    rescue = tmp_path / "rescue"
    proc, seen = start(small_folder, *SHORT, "--iterations", "8000",
                       env={"EXITLAT_RESCUE_DIR": str(rescue)}), []
    until(proc, "case1: done", seen)
    t0 = time.monotonic()
    code, last, _ = finish(proc, seen)
    secs = time.monotonic() - t0
    line = error_line("".join(seen))
    (saved,) = list(rescue.iterdir())
    assert code == 2
    assert line == (f"error: cannot write the bundle in {small_folder}: No space left on device "
                    f"(nothing half-written is left there); the bundle was written to {saved} instead")
    assert sorted(p.name for p in small_folder.iterdir()) == [".filler", old.name]
    assert (old / "bundle.json").read_text() == "{}"
    from exitlat.bundle.read import load_bundle

    assert load_bundle(saved).doc["status"]["state"] == "complete"
    left = assert_nothing_left(proc.pid)
    figure(f"results folder full ({free_kib} KiB free)", secs, left)


# -- the container or QEMU killed --------------------------------------------------------------------

@pytest.mark.parametrize("how", ["docker kill", "kill -9 QEMU"])
def test_container_or_qemu_killed_mid_run(built, tmp_path, how):
    proc, seen = start(tmp_path, *LONG), []
    until(proc, "case1: running", seen)
    t0 = time.monotonic()
    if how == "docker kill":
        (cid,) = containers_of(proc.pid)
        subprocess.run(["docker", "kill", cid], check=True, capture_output=True)
    else:
        os.kill(qemu_of(proc.pid), signal.SIGKILL)
    code, last, _ = finish(proc, seen)
    secs = time.monotonic() - t0
    bundle = the_bundle(tmp_path)
    assert code == 2, "".join(seen)[-3000:]
    reason = "QEMU exited (killed by SIGKILL (code 137): QEMU or its container was killed) before the guest finished"
    assert error_line("".join(seen)) == f"error: run incomplete: {reason} (bundle kept: {bundle})"
    assert doc_of(bundle)["status"] == {"state": "incomplete", "reason": reason}
    left = assert_nothing_left(proc.pid)
    figure(how, secs, left)


# -- the build folder removed ------------------------------------------------------------------------

def test_build_folder_removed_mid_run(built, tmp_path):
    """The VM that runs keeps what it opened; the next one is not started, with one line."""
    build = tmp_path / "build"
    shutil.copytree(built, build, symlinks=True)
    proc, seen = start(tmp_path / "out", *SHORT, "--iterations", "200000", "--repeat", "2",
                       "--build", str(build)), []
    until(proc, "VM 1/2: starting QEMU", seen)
    until(proc, "case1: running", seen)
    t0 = time.monotonic()
    shutil.rmtree(build)
    code, last, _ = finish(proc, seen, timeout=300)
    bundle = the_bundle(tmp_path / "out")
    reason = (f"the build folder {build} changed during the run (manifest.json, bzImage, "
              "initramfs.cpio.gz, qemu/bin/qemu missing)")
    assert code == 2, "".join(seen)[-3000:]
    assert error_line("".join(seen)) == f"error: run incomplete: {reason} (bundle kept: {bundle})"
    doc = doc_of(bundle)
    assert doc["status"] == {"state": "incomplete", "reason": reason}
    (case,) = doc["cases"][:1]
    assert case["repeat"] == 0 and case["stats"]["n"] == 200000      # VM 1 measured in full
    assert not build.exists(), "the engine must not make an empty folder in its place"
    left = assert_nothing_left(proc.pid)
    figure("build folder removed", time.monotonic() - t0, left)
