"""The command line: every task has --help; bad input is one line on stderr, non-zero, no traceback."""

import subprocess
import sys

import pytest

from cli_support import invoke, one_line_error
from exitlat.paths import REPO_ROOT


def test_every_task_has_help():
    import json

    listing = json.loads(invoke("--list", "--list-format=json").stdout)
    tasks = [t["name"] for t in listing["tasks"]]
    assert {"build", "bench", "doctor", "isolate"} <= set(tasks)
    for t in tasks:
        shown = []
        for args in (("--help", t), (t, "--help")):     # both forms, also for tasks with positionals
            res = invoke(*args)
            assert res.returncode == 0 and "Usage:" in res.stdout, (args, res.stderr)
            assert "\n  --, " not in res.stdout, (t, "a dash taken as a short flag")
            shown.append(res.stdout)
        assert shown[0] == shown[1], (t, "`TASK --help` must show what `--help TASK` does")
        options = shown[0].split("Options:", 1)[1]
        bare = [ln.strip() for ln in options.splitlines()
                if ln.startswith("  -") and len(ln.rstrip()) <= len(ln.split("=")[0]) + 8
                and "  " not in ln.strip()]
        assert not bare, (t, "options shown with no text", bare)


@pytest.mark.parametrize("bad", ["0", "7", "3-1", "a", "", "1,,2"])
def test_bad_case_values_are_refused(bad):
    one_line_error(invoke("bench", "--case", bad, "--accel", "tcg"), "1-6")


@pytest.mark.parametrize("args, needle", [
    (["--iterations", "0"], "--iterations"),
    (["--iterations", "lots"], "--iterations"),
    (["--port", "0x10000"], "--port"),
    (["--instr", "hlt"], "--instr"),
    (["--timer", "hpet"], "--timer"),
    (["--accel", "hvf"], "--accel"),
    (["--repeat", "0"], "--repeat"),
    (["--core", "4096"], "--core"),
])
def test_bad_bench_options(args, needle):
    accel = [] if "--accel" in args else ["--accel", "tcg"]
    one_line_error(invoke("bench", "--case", "1", *accel, *args), needle)


def test_rdmsr_refused_in_user_cases():
    one_line_error(invoke("bench", "--case", "1", "--instr", "rdmsr", "--accel", "tcg"), "rdmsr")


def test_bad_pins_file(tmp_path):
    bad = tmp_path / "pins.yaml"
    bad.write_text("schema: 1\n")
    one_line_error(invoke("build", "--pins", str(bad)), "pins.yaml")


def test_missing_mirror(tmp_path):
    one_line_error(invoke("build", "--mirror", str(tmp_path / "nope"), "--force"), "mirror")


def test_stopped_docker_daemon_is_one_line(tmp_path):
    import os

    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
               EXITLAT_BUILD_DIR=str(tmp_path / "build"))
    res = subprocess.run([sys.executable, "-m", "invoke", "build"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "Docker engine" in last and "Traceback" not in res.stderr
    assert not any((tmp_path / "build").glob("[0-9a-f]*")), "no folder may look like a finished build"


@pytest.mark.parametrize("args, needle", [
    (["doctor", "--core", "x"], "--core"),
    (["doctor", "--core", "1,2,3"], "one core or two"),
    (["doctor", "--core", "0,4096"], "--core's second core"),
    (["doctor", "--core", "0,1", "--json"], "--json"),
    (["isolate", "--core", "x", "--dry-run"], "--core"),
    (["isolate", "--core", "1,2", "--dry-run"], "one core"),
])
def test_bad_cores_of_doctor_and_isolate(args, needle):
    """A core that is not one (or, for doctor, two) numbers is one line, never a traceback."""
    one_line_error(invoke(*args), needle)
