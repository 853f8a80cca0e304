import json
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from exitlat.errors import ExitlatError
from exitlat.run.guestio import BASELINE_KEYS, HEADER_SIZE, GuestPlan, parse_console_line, read_samples
from exitlat.paths import REPO_ROOT

# ---- GuestPlan ----------------------------------------------------------------------------------


def test_kernel_args_full():
    plan = GuestPlan(cases=[1, 2, 5], instr="vmcall", port=0x80, timer="lfence", iterations=5000,
                     warmup=100, baselines=False, handshake=True, msr=0x3B, vendor="amd")
    assert plan.kernel_args() == [
        "exitlat.cases=1,2,5", "exitlat.instr=vmcall", "exitlat.port=0x80", "exitlat.timer=lfence",
        "exitlat.iters=5000", "exitlat.warmup=100", "exitlat.baselines=0", "exitlat.handshake=1",
        "exitlat.msr=0x3b", "exitlat.vendor=amd",
    ]


def test_kernel_args_optional_extras():
    plan = GuestPlan(cases=[5], batch=500, handshake_timeout=10, timeout=99)
    args = plan.kernel_args()
    assert not any(a.startswith(("exitlat.msr", "exitlat.vendor")) for a in args)
    assert args[-3:] == ["exitlat.batch=500", "exitlat.handshake_timeout=10", "exitlat.timeout=99"]


@pytest.mark.parametrize("kwargs,match", [
    ({"cases": []}, "no case"),
    ({"cases": [1, 1]}, "twice"),
    ({"cases": [1], "iterations": 0}, "iterations"),
    ({"cases": [1], "iterations": 50_000_001}, "iterations"),
    ({"cases": [1], "warmup": -1}, "warm-up"),
    ({"cases": [1], "timer": "hpet"}, "timer"),
    ({"cases": [2], "port": 0x10000}, "port"),
    ({"cases": [1], "vendor": "via"}, "vendor"),
])
def test_plan_refusals(kwargs, match):
    with pytest.raises(ExitlatError, match=match):
        GuestPlan(**kwargs).kernel_args()


def test_kernel_args_verify_iterations():
    plan = GuestPlan(cases=[1, 5], vendor="intel", batch=500, verify_iterations=2000)
    args = plan.kernel_args()
    assert args.count("exitlat.viters=2000") == 1
    # after the fixed words and msr/vendor, before the optional extras
    assert args.index("exitlat.viters=2000") == args.index("exitlat.vendor=intel") + 1
    assert args[-1] == "exitlat.batch=500"
    assert not any(a.startswith("exitlat.viters") for a in GuestPlan(cases=[1]).kernel_args())
    assert not any(a.startswith("exitlat.viters")
                   for a in GuestPlan(cases=[1], verify_iterations=0).kernel_args())


@pytest.mark.parametrize("bad", [-1, 50_000_001, 1.5, True, "10", None])
def test_verify_iterations_refusals(bad):
    with pytest.raises(ExitlatError, match="verification iterations"):
        GuestPlan(cases=[1], verify_iterations=bad).kernel_args()


def test_verify_iterations_limits_accepted():
    assert "exitlat.viters=50000000" in GuestPlan(cases=[1], verify_iterations=50_000_000).kernel_args()
    assert "exitlat.viters=1" in GuestPlan(cases=[1], verify_iterations=1).kernel_args()


def test_keys_order_with_traced_windows():
    plan = GuestPlan(cases=[5, 1], iterations=1000, verify_iterations=300)
    assert plan.keys() == list(BASELINE_KEYS) + ["case5", "case5_traced", "case1", "case1_traced"]
    assert BASELINE_KEYS[-2:] == ("baseline_kernel_timer", "baseline_kernel_nonexiting")
    counts = plan.key_counts()
    assert counts["case5_traced"] == counts["case1_traced"] == 300
    assert all(counts[k] == 1000 for k in plan.keys() if not k.endswith("_traced"))
    # the guest runs no traced window for baselines
    assert not any(k.startswith("baseline") and k.endswith("_traced") for k in plan.keys())
    no_base = GuestPlan(cases=[2], baselines=False, verify_iterations=1)
    assert no_base.keys() == ["case2", "case2_traced"]


def test_sizes_with_traced_windows():
    plain = GuestPlan(cases=[1, 3], iterations=1000)
    plan = GuestPlan(cases=[1, 3], iterations=1000, verify_iterations=600)
    # 4800 bytes of traced samples per case -> two 4 KiB pages each, on top of the plain plan
    assert plan.disk_size_bytes() == plain.disk_size_bytes() + 2 * 8192
    assert plan.disk_size_bytes() == 4096 + 8 * 8192 + 2 * 8192
    big = GuestPlan(cases=[1, 2, 3, 4, 5, 6], iterations=1000, verify_iterations=10_000_000)
    assert big.disk_size_bytes() == 4096 + 12 * 8192 + 6 * 19532 * 4096
    assert big.guest_mem_mb() * 2**20 > 6 * 80_000_000 + 256 * 2**20
    assert big.guest_mem_mb() > GuestPlan(cases=[1, 2, 3, 4, 5, 6], iterations=1000).guest_mem_mb()


def test_a_guest_plan_is_checked_once_where_it_is_made():
    # no invalid plan exists to be sent; negative guest tests send bad words through `extra`
    with pytest.raises(ExitlatError, match="iterations"):
        GuestPlan(cases=[1], iterations=0)
    assert "exitlat.bogus=1" in GuestPlan(cases=[1], extra=["exitlat.bogus=1"]).kernel_args()


def test_sizes():
    plan = GuestPlan(cases=[1, 3], iterations=1000, baselines=True)
    assert plan.keys() == list(BASELINE_KEYS) + ["case1", "case3"]
    assert plan.disk_size_bytes() == 4096 + 8 * 8192          # 8000 bytes -> two 4 KiB pages each
    big = GuestPlan(cases=[1, 2, 3, 4, 5, 6], iterations=10_000_000)
    assert big.disk_size_bytes() == 4096 + 12 * 19532 * 4096  # 80 MB rounded up to 4 KiB
    assert big.guest_mem_mb() % 64 == 0
    assert big.guest_mem_mb() * 2**20 > 12 * 80_000_000 + 256 * 2**20


# ---- console ------------------------------------------------------------------------------------


def test_parse_console_lines():
    assert parse_console_line('EXITLAT {"event":"ready","key":"case1"}\n') == {"event": "ready", "key": "case1"}
    assert parse_console_line(b'[    1.2] x EXITLAT {"event":"done","key":"case2","n":5}\r\n')["n"] == 5
    assert parse_console_line("EXITLAT-INIT-READY\r\n") == {"event": "init_ready"}
    assert parse_console_line("Run /init as init process") is None
    assert parse_console_line("") is None
    assert parse_console_line("go") is None
    garbled = parse_console_line('EXITLAT {"event":"error","mess')
    assert garbled["event"] == "garbled" and "mess" in garbled["raw"]
    assert parse_console_line("EXITLAT [1,2]") is None
    assert parse_console_line('EXITLAT {"no_event":1}')["event"] == "garbled"


# ---- sample disk --------------------------------------------------------------------------------


def write_disk(path: Path, arrays: dict, header: str | None = None, size: int | None = None) -> Path:
    off, lines, blobs = HEADER_SIZE, ["exitlat-samples 1"], []
    for key, arr in arrays.items():
        lines.append(f"{key} {off} {len(arr)}")
        blobs.append((off, np.asarray(arr, dtype="<u8").tobytes()))
        off += (len(arr) * 8 + 4095) // 4096 * 4096
    lines.append("end")
    text = (header if header is not None else "\n".join(lines) + "\n").encode()
    with open(path, "wb") as f:
        f.truncate(size if size is not None else off)
        f.write(text.ljust(HEADER_SIZE, b"\0")[:HEADER_SIZE])
        for o, b in blobs:
            f.seek(o)
            f.write(b)
    return path


def test_read_samples_roundtrip(tmp_path):
    a = np.arange(1, 1001, dtype=np.uint64)
    b = np.array([2**63 + 5, 7], dtype=np.uint64)
    got = read_samples(write_disk(tmp_path / "d", {"baseline_timer": a, "case5": b, "case6": []}))
    assert list(got) == ["baseline_timer", "case5", "case6"]
    assert got["baseline_timer"].dtype == np.dtype("<u8")
    assert np.array_equal(got["baseline_timer"], a) and np.array_equal(got["case5"], b)
    assert len(got["case6"]) == 0


def test_read_samples_no_keys(tmp_path):
    assert read_samples(write_disk(tmp_path / "d", {})) == {}


@pytest.mark.parametrize("header,match", [
    ("", "empty header"),
    ("hello world\n", "not an exitlat sample disk"),
    ("exitlat-samples 2\nend\n", "unsupported format"),
    ("exitlat-samples 1\ncase1 4096 10\n", "no 'end'"),
    ("exitlat-samples 1\ncase1 4096\nend\n", "malformed"),
    ("exitlat-samples 1\ncase1 4096 -3\nend\n", "malformed"),
    ("exitlat-samples 1\nCase 1 4096 3\nend\n", "malformed"),
    ("exitlat-samples 1\ncase1 0 10\nend\n", "4096-aligned"),
    ("exitlat-samples 1\ncase1 5000 10\nend\n", "4096-aligned"),
    ("exitlat-samples 1\ncase1 4096 10\ncase1 8192 10\nend\n", "twice"),
    ("exitlat-samples 1\ncase1 4096 1000\ncase2 8192 10\nend\n", "overlaps"),
    ("exitlat-samples 1\ncase1 4096 100000\nend\n", "truncated"),
    ("exitlat-samples 1\nend\ncase1 4096 1\n", "after the header's 'end'"),
])
def test_read_samples_bad_headers(tmp_path, header, match):
    disk = write_disk(tmp_path / "d", {}, header=header, size=3 * 4096)
    with pytest.raises(ExitlatError, match=match) as err:
        read_samples(disk)
    assert "\n" not in str(err.value)


def test_read_samples_short_and_missing(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"exitlat-samples 1\nend\n")
    with pytest.raises(ExitlatError, match="truncated"):
        read_samples(short)
    with pytest.raises(ExitlatError, match="cannot read"):
        read_samples(tmp_path / "absent")
    junk = tmp_path / "junk"
    junk.write_bytes(b"exitlat-samples 1\nend\n" + b"\0" * 100 + b"x" + b"\0" * 5000)
    with pytest.raises(ExitlatError, match="zero padding"):
        read_samples(junk)


# ---- the real probe, user-mode pieces only (cpuid, vmcall, baselines; never outb) --------------

@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if platform.machine() != "x86_64" or not shutil.which("make") or not shutil.which("gcc"):
        pytest.skip("needs x86_64 with gcc and make")
    from exitlat.build.guestgen import generated_files

    out = tmp_path_factory.mktemp("probe")
    for name, text in generated_files().items():       # what the initramfs stage generates
        (out / name).write_text(text)
    r = subprocess.run(["make", "-s", "-C", str(REPO_ROOT / "guest" / "probe"), "CC=gcc", f"O={out}"],
                       capture_output=True, text=True, env={**os.environ, "CPATH": str(out)})
    if r.returncode != 0:
        pytest.skip(f"cannot build the static probe here: {r.stderr.strip()[-300:]}")
    return out / "exitlat-probe"


def has_rdtscp() -> bool:
    try:
        return " rdtscp" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def run_probe(probe, tmp_path, words, timeout=60, console=None):
    out = tmp_path / "disk"
    argv = [str(probe), "--cmdline", " ".join(["console=ttyS0"] + words), "--out", str(out)]
    if console:
        argv += ["--console", str(console)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    events = [parse_console_line(line) for line in r.stdout.splitlines()]
    assert all(e is not None and e["event"] != "garbled" for e in events), r.stdout
    return r.returncode, events, out


TIMER = "exitlat.timer=rdtscp" if has_rdtscp() else "exitlat.timer=lfence"


def test_probe_case1_cpuid(probe, tmp_path):
    plan = GuestPlan(cases=[1], iterations=2000, warmup=100, baselines=False, handshake=False,
                     timer=TIMER.split("=")[1])
    rc, events, disk = run_probe(probe, tmp_path, plan.kernel_args())
    assert rc == 0, events
    kinds = [e["event"] for e in events]
    assert kinds == ["hello", "error", "ready", "done", "finished"] or \
        kinds == ["hello", "ready", "done", "finished"]  # the error: /dev/exitlat absent here
    hello = events[0]
    assert isinstance(hello["tsc_khz"], int) and isinstance(hello["invariant_tsc"], bool)
    assert hello["cpu"] == 0 and hello["timer"] == plan.timer
    assert events[-1]["status"] == "ok" and events[-1]["bytes_written"] == 2000 * 8
    samples = read_samples(disk)
    assert list(samples) == ["case1"] and len(samples["case1"]) == 2000
    assert samples["case1"].min() > 0 and samples["case1"].max() < 2**40
    ready, done = [e for e in events if e["event"] in ("ready", "done")]
    assert ready == {"event": "ready", "key": "case1", "window": "timed"}
    assert done == {"event": "done", "key": "case1", "window": "timed", "n": 2000, "tsc_backwards": 0}


def test_probe_traced_window(probe, tmp_path):
    """exitlat.viters: case1 then case1_traced, its own count, no warm-up, its own array."""
    plan = GuestPlan(cases=[1], iterations=700, warmup=50, baselines=True, handshake=False,
                     timer=TIMER.split("=")[1], verify_iterations=300)
    rc, events, disk = run_probe(probe, tmp_path, plan.kernel_args())
    assert events[-1]["event"] == "finished"
    samples = read_samples(disk)
    # no exitlat.ko on this host: the module baselines fail, the rest is written in run order
    assert list(samples) == ["baseline_timer", "baseline_nonexiting", "baseline_syscall",
                             "case1", "case1_traced"]
    assert len(samples["case1_traced"]) == 300
    assert all(len(samples[k]) == 700 for k in samples if k != "case1_traced")
    for k, arr in samples.items():
        assert arr.min() > 0 and arr.max() < 2**62, k
    assert not np.shares_memory(samples["case1"], samples["case1_traced"])
    keyed = [(e["event"], e["key"]) for e in events if e["event"] in ("ready", "done")]
    assert keyed[-4:] == [("ready", "case1"), ("done", "case1"),
                          ("ready", "case1_traced"), ("done", "case1_traced")]
    by = {(e["event"], e["key"]): e for e in events if e["event"] in ("ready", "done")}
    assert by[("ready", "case1_traced")] == {"event": "ready", "key": "case1_traced",
                                             "window": "traced", "of": "case1"}
    assert by[("done", "case1_traced")] == {"event": "done", "key": "case1_traced", "window": "traced",
                                            "of": "case1", "n": 300, "tsc_backwards": 0}
    assert by[("done", "case1")] == {"event": "done", "key": "case1", "window": "timed", "n": 700,
                                     "tsc_backwards": 0}
    for (ev, key), e in by.items():
        if key.startswith("baseline"):
            assert e["window"] == "timed" and "of" not in e, e
    errors = {e["key"] for e in events if e["event"] == "error"}
    assert {"baseline_module_call", "baseline_kernel_timer", "baseline_kernel_nonexiting"} <= errors
    assert events[-1]["bytes_written"] == (4 * 700 + 300) * 8


def test_probe_baselines_without_module(probe, tmp_path):
    plan = GuestPlan(cases=[1], iterations=1000, warmup=10, handshake=False, timer="lfence")
    rc, events, disk = run_probe(probe, tmp_path, plan.kernel_args())
    samples = read_samples(disk)
    assert list(samples) == ["baseline_timer", "baseline_nonexiting", "baseline_syscall", "case1"]
    assert all(len(v) == 1000 for v in samples.values())
    # No exitlat.ko on this host: the module baselines are structured per-key errors, the rest runs.
    errors = [e for e in events if e["event"] == "error"]
    assert {e["key"] for e in errors} >= {"baseline_module_call", "baseline_kernel_timer",
                                          "baseline_kernel_nonexiting"}
    assert not any(e["event"] in ("ready", "done") and e["key"].startswith("baseline_k")
                   for e in events)
    assert rc == 1 and events[-1] == {**events[-1], "event": "finished", "status": "error"}
    assert np.median(samples["baseline_syscall"]) > np.median(samples["baseline_timer"])


def test_probe_vmcall_user_mode(probe, tmp_path):
    """Under KVM: -KVM_EPERM (-1) in RAX; elsewhere #UD -> a clean error, never a crash."""
    plan = GuestPlan(cases=[1], instr="vmcall", iterations=100, warmup=1, baselines=False,
                     handshake=False, timer="lfence")
    rc, events, disk = run_probe(probe, tmp_path, plan.kernel_args())
    done = [e for e in events if e["event"] == "done"]
    if done:
        assert rc == 0 and done[0]["rax"] == -1
    else:
        assert rc == 1 and any("#UD" in e.get("message", "") for e in events)
    assert events[-1]["event"] == "finished"


@pytest.mark.parametrize("words,match", [
    (["exitlat.cases=7", "exitlat.iters=10"], "unknown case '7'"),
    (["exitlat.cases=0", "exitlat.iters=10"], "valid cases: 1-6"),
    (["exitlat.cases=a", "exitlat.iters=10"], "unknown case 'a'"),
    (["exitlat.cases=", "exitlat.iters=10"], "empty"),
    (["exitlat.cases=1", "exitlat.iters=0"], "out of range"),
    (["exitlat.cases=1", "exitlat.iters=50000001"], "out of range"),
    (["exitlat.cases=1", "exitlat.iters=ten"], "not a number"),
    (["exitlat.cases=1"], "no exitlat.iters"),
    (["exitlat.iters=5"], "no exitlat.cases"),
    (["exitlat.cases=2", "exitlat.iters=5", "exitlat.port=0x10000"], "out of range"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.instr=nop"], "unknown instruction"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.instr=rdmsr"], "#GP"),
    (["exitlat.cases=3", "exitlat.iters=5", "exitlat.instr=wrmsr_tsc_deadline"], "case 5"),
    (["exitlat.cases=3", "exitlat.iters=5", "exitlat.instr=rdmsr", "exitlat.msr=0xc0000100"], "passed through"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.timer=hpet"], "unknown timer"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.vendor=via"], "unknown vendor"),
    (["exitlat.cases=1,1", "exitlat.iters=5"], "twice"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.bogus=1"], "unknown key"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.viters=50000001"], "out of range"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.viters=-1"], "not a number"),
    (["exitlat.cases=1", "exitlat.iters=5", "exitlat.viters=x"], "not a number"),
])
def test_probe_bad_plans(probe, tmp_path, words, match):
    rc, events, disk = run_probe(probe, tmp_path, words, timeout=10)
    assert rc == 1
    assert events[-1] == {"event": "finished", "status": "error"}
    (err,) = [e for e in events if e["event"] == "error"]
    assert err["key"] is None and match in err["message"] and "bad plan" in err["message"]
    assert not disk.exists()


def test_probe_disk_too_small(probe, tmp_path):
    r = subprocess.run([str(probe), "--cmdline", "exitlat.cases=1 exitlat.iters=10 exitlat.timer=lfence",
                        "--out", "/dev/null"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "the plan needs" in r.stdout


def test_probe_handshake(probe, tmp_path):
    fifo = tmp_path / "console"
    os.mkfifo(fifo)
    plan = GuestPlan(cases=[1], iterations=500, warmup=5, baselines=True, handshake=True, timer="lfence",
                     handshake_timeout=20, verify_iterations=40)
    disk = tmp_path / "disk"
    argv = [str(probe), "--cmdline", " ".join(plan.kernel_args()), "--out", str(disk), "--console", str(fifo)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    # Keep a writer open all along, like the host's serial socket.
    writer = open(fifo, "w")
    seen = []
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            ev = parse_console_line(line)
            seen.append(ev)
            if ev["event"] in ("ready", "done"):
                writer.write("noise\r\ngo\r\n" if ev["event"] == "ready" else "go\n")
                writer.flush()
    finally:
        timer.cancel()
        writer.close()
    proc.wait()
    pairs = [(e["event"], e.get("key")) for e in seen if e["event"] in ("ready", "done")]
    run = ["baseline_timer", "baseline_nonexiting", "baseline_syscall", "case1", "case1_traced"]
    assert pairs == [(ev, k) for k in run for ev in ("ready", "done")]
    assert seen[-1]["event"] == "finished"
    samples = read_samples(disk)
    assert list(samples) == run
    assert len(samples["case1_traced"]) == 40 and len(samples["case1"]) == 500


def test_probe_handshake_timeout(probe, tmp_path):
    fifo = tmp_path / "console"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # an open but silent host
    try:
        words = GuestPlan(cases=[1], iterations=10, baselines=False, handshake=True, timer="lfence",
                          handshake_timeout=1).kernel_args()
        rc, events, _ = run_probe(probe, tmp_path, words, timeout=20, console=fifo)
    finally:
        os.close(fd)
    assert rc == 1
    assert [e["event"] for e in events][-3:] == ["ready", "error", "finished"]
    assert events[-2]["key"] == "case1" and "no 'go' within 1 s" in events[-2]["message"]
    assert json.dumps(events[-1]) == '{"event": "finished", "status": "error"}'
