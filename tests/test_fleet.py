"""fleet/bench.yml end to end: two inventory hosts on this machine (local connection), each with
its own install folder and virtual environment, both benched under TCG in the runtime container,
their bundles exported, fetched, imported (checked) and compared on one page. Then a second run in
which one host's bench fails and another host is unreachable: the play fails, naming both, and
what the remaining host measured is still fetched and imported.

Both "hosts" are this machine, so they share one build: the inventory points bench at it with
`exitlat_build_dir` (bench --build), the variable a user sets for a build already on a server,
instead of letting each copy build its own (minutes). Each bundle's build manifest is then checked
to be that build's, so nothing is hidden by the sharing. TCG numbers are not exit timings: only
the flow and the artifacts are asserted."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exitlat.bundle.read import load_bundle, recheck_stats

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HOSTS = ("server-a", "server-b")


def current_build() -> Path:
    """The build of the current inputs, made if missing: `invoke build` prints its folder."""
    r = subprocess.run([sys.executable, "-m", "invoke", "build"], cwd=REPO, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


def write_inventory(tmp: Path, build: Path, **extra_hosts) -> Path:
    hosts = {h: {"exitlat_dir": str(tmp / h / "exitlat")} for h in HOSTS}
    for host, hostvars in extra_hosts.items():
        hosts[host] = {**hosts.get(host, {}), **hostvars}
    inventory = {"all": {
        "vars": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            # A virtual environment per host that sees this Python's packages: pip installs the
            # copy into it (nothing to download but the build backend) and the checkout's own
            # editable install stays untouched.
            "exitlat_python": sys.executable,
            "exitlat_venv_system_site_packages": True,
            "exitlat_build_dir": str(build),
            "exitlat_cases": "1-2",
            "exitlat_iterations": 200,
            "exitlat_repeat": 1,
            "exitlat_accel": "tcg",
            "exitlat_bench_extra": ["--warmup", "50"],
            "fleet_results_dir": str(tmp / "controller"),
        },
        "hosts": hosts,
    }}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def run_playbook(tmp: Path, inventory: Path) -> subprocess.CompletedProcess:
    playbook = shutil.which("ansible-playbook") or pytest.fail(
        "ansible-playbook not found: install the test extra (pip install -e '.[test]')")
    ansible = tmp / "ansible"   # Ansible's own files (temp, async job status) stay in tmp
    env = dict(os.environ, ANSIBLE_HOME=str(ansible), ANSIBLE_LOCAL_TEMP=str(ansible / "local"),
               ANSIBLE_REMOTE_TEMP=str(ansible / "remote"), ANSIBLE_ASYNC_DIR=str(ansible / "async"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_HOST_KEY_CHECKING="0")
    return subprocess.run([playbook, "-i", str(inventory), str(REPO / "fleet" / "bench.yml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def imported(controller: Path, name: str):
    """An imported bundle, every statistic recomputed from its samples (what `validate` does)."""
    bundle = load_bundle(controller / "bundles" / name)
    recheck_stats(bundle)
    return bundle


def importing_python_file(python: str, cwd: Path) -> Path:
    out = subprocess.run([python, "-c", "import exitlat; print(exitlat.__file__)"], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout
    return Path(out.strip())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    build = current_build()
    r = run_playbook(tmp, write_inventory(tmp, build))
    return tmp, build, r


def test_two_hosts_benched_fetched_imported_compared(first_run):
    tmp, build, r = first_run
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-3000:]

    controller = tmp / "controller"
    manifest = json.loads((build / "manifest.json").read_text())
    names = {}
    for host in HOSTS:
        # fetched: one archive, with doctor's report and the bench log beside it
        archives = sorted((controller / host).glob("*.tar.gz"))
        assert len(archives) == 1, archives
        doctor = json.loads(next((controller / host).glob("*.doctor.json")).read_text())
        assert "isolated" in doctor and doctor["items"]
        assert "invoke bench --case 1-2" in next((controller / host).glob("*.bench.log")).read_text()
        name = names[host] = archives[0].name.removesuffix(".tar.gz")

        doc = imported(controller, name).doc
        assert doc["status"]["state"] == "complete" and doc["accel"] == "tcg"
        assert sorted({c["case"] for c in doc["cases"]}) == [1, 2]
        assert all(c["iterations_requested"] == 200 for c in doc["cases"])
        assert host in doc["label"] and doc["label"].startswith("fleet ")
        assert doc["build_manifest"] == manifest     # the shared build, and nothing else

        # measured from the host's own copy, into its own run folder
        install = tmp / host / "exitlat"
        assert len(list((install / "results" / "fleet").glob(f"*/{name}/bundle.json"))) == 1
        venv_python = str(install / ".venv" / "bin" / "python")
        assert importing_python_file(venv_python, tmp).is_relative_to(install)

    assert names["server-a"] != names["server-b"]
    html = (controller / "compare.html").read_text()
    text = (controller / "compare.txt").read_text()
    table = (controller / "compare.csv").read_text()
    for name in names.values():
        assert name in html and name in text and name in table
    summary = (controller / "summary.txt").read_text()
    for host, name in names.items():
        assert f"{host}: ok: {controller / 'bundles' / name}" in summary

    # the checkout's own install was not replaced by a host's copy
    assert importing_python_file(sys.executable, tmp).is_relative_to(REPO)


def test_failed_and_unreachable_hosts_fail_the_play_others_still_delivered(first_run):
    tmp, build, _ = first_run
    controller = tmp / "controller"
    before = set((controller / "server-b").glob("*.tar.gz"))
    inventory = write_inventory(
        tmp, build,
        **{"server-a": {"exitlat_core": 4095},     # a core this host does not have
           "server-down": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1",
                           "ansible_port": 9, "ansible_ssh_common_args": "-o ConnectTimeout=5"}})
    r = run_playbook(tmp, inventory)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-6000:]

    summary = (controller / "summary.txt").read_text()
    reason = "server-a: FAILED: bench failed (rc 2): error: --core 4095 does not exist"
    assert reason in summary, summary
    assert "warning: doctor did not run (rc 2)" in summary     # recorded, not what failed it
    assert "server-down: FAILED: unreachable: " in summary
    # the play's own failure names both, one line each reason
    assert "server-a: bench failed (rc 2): error: --core 4095" in out
    assert "server-down: unreachable: " in out

    # server-b measured again: its new archive was fetched and imported; alone, it is not compared
    new = set((controller / "server-b").glob("*.tar.gz")) - before
    assert len(new) == 1
    name = new.pop().name.removesuffix(".tar.gz")
    assert imported(controller, name).doc["status"]["state"] == "complete"
    assert f"server-b: ok: {controller / 'bundles' / name}" in summary
    assert "comparison: none (needs two measured hosts; 1 delivered)" in summary
    assert not (controller / "compare.html").exists()
