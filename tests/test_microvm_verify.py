"""Ground truth for the path verifier: a raw-KVM micro-VM runs N OUTs, then N CPUIDs, while
ExitCounter traces its vCPU thread. The counts must be exact, and verify_case must tell the two
paths apart. Skipped only where /dev/kvm or tracefs is unusable."""

import threading
import time

import pytest

from exitlat.errors import ExitlatError
from exitlat.kvmtrace import ExitCounter, find_tracefs, tracing_available
from exitlat.microvm import MicroVM, kvm_usable, run_microvm_phases
from exitlat.verify import verify_case

pytestmark = pytest.mark.kvm

_kvm_ok, _kvm_why = kvm_usable()
_tr_ok, _tr_why = tracing_available()
needs_kvm = pytest.mark.skipif(not _kvm_ok, reason=_kvm_why)
needs_trace = pytest.mark.skipif(not _tr_ok, reason=_tr_why)

N = 5000
PORT = 0xE9


def _vendor() -> str:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    return "amd" if "AuthenticAMD" in text else "intel" if "GenuineIntel" in text else "unknown"


def _instances():
    root = find_tracefs(mount=False)
    return sorted(p.name for p in (root / "instances").glob("exitlat-*")) if root else []


@needs_kvm
def test_microvm_runs_phases_without_tracing():
    with MicroVM() as vm:
        out = vm.run_phase("out", 100, PORT)
        cpuid = vm.run_phase("cpuid", 100)
    assert out.io_exits == 100 and out.other_exits == {"HLT": 1} and out.rsi_left == 0
    assert cpuid.io_exits == 0 and cpuid.other_exits == {"HLT": 1} and cpuid.rsi_left == 0
    with pytest.raises(ExitlatError):
        MicroVM().run_phase("nop", 1)


@needs_kvm
@needs_trace
@pytest.mark.parametrize("backend", ["auto", "stream"])
def test_ground_truth_counts_and_verdicts(backend):
    before = _instances()
    tid = threading.get_native_id()
    with ExitCounter([tid], backend=backend) as tr:
        if backend == "stream" and tr.backend != "stream":
            pytest.skip("stream backend not selected")
        runs = run_microvm_phases(N, PORT, tr)
        idle = tr.snapshot()
        assert (tr.snapshot() - idle).to_dict()["userspace"] == {}   # nothing happens in between
    assert _instances() == before                                   # instance removed

    out, cpuid = runs["out"]["window"], runs["cpuid"]["window"]
    print(f"\n[{tr.backend}] OUT window: {out.to_dict()}\n[{tr.backend}] CPUID window: {cpuid.to_dict()}")
    print(f"time per exit: OUT {runs['out']['result'].seconds / N * 1e6:.2f} us (KVM_RUN round trip "
          f"from Python), CPUID {runs['cpuid']['result'].seconds / N * 1e6:.2f} us")
    assert out.lost == 0 and cpuid.lost == 0

    # OUT phase: exactly N userspace exits for the OUTs (+1 HLT, the stop), N pio writes on PORT.
    assert runs["out"]["result"].io_exits == N
    assert out.userspace == {"IO": N, "HLT": 1}
    assert out.pio == {(PORT, "out"): N}
    assert out.handled.get("cpuid", 0) == 0
    # CPUID phase: no userspace exit but the stop, no port I/O, N CPUIDs handled inside KVM.
    assert cpuid.userspace == {"HLT": 1}
    assert cpuid.pio == {}
    decodable = "CPUID" in cpuid.exits or "IO_INSTRUCTION" in out.exits
    if decodable:                                      # VMX / SVM host
        assert cpuid.exits["CPUID"] == N
        assert out.exits["IO_INSTRUCTION"] == N
    else:                                              # PVM: emulated or own vectors
        print(f"kvm_exit reasons on this host: OUT {out.exits or 'none'}, CPUID {cpuid.exits or 'none'}")
    if (find_tracefs() / "events/kvm/kvm_cpuid").is_dir():
        assert cpuid.handled.get("cpuid") == N

    for vendor in ("unknown", _vendor()):
        ok_q = verify_case(out, N, "qemu", "outb", PORT, vendor)
        assert ok_q["status"] == "passed", ok_q["detail"]
        assert ok_q["port_exits_per_iter"] == 1.0
        assert verify_case(out, N, "kvm", "cpuid", None, vendor)["status"] == "failed"
        assert verify_case(out, N, "kvm", "outb", PORT, vendor)["status"] == "failed"
        ok_k = verify_case(cpuid, N, "kvm", "cpuid", None, vendor)
        assert ok_k["status"] == "passed", ok_k["detail"]
        assert ok_k["userspace_exits_per_iter"] == round(1 / N, 6)
        assert verify_case(cpuid, N, "qemu", "outb", PORT, vendor)["status"] == "failed"
        print(ok_q["detail"]); print(ok_k["detail"])


@needs_kvm
@needs_trace
def test_lost_events_are_reported_not_hidden():
    """A tiny buffer and a stalled reader: the overrun must show up in `lost` and fail the case."""
    tid = threading.get_native_id()
    with ExitCounter([tid], backend="stream", buffer_kb=8) as tr:
        with MicroVM() as vm:
            a = tr.snapshot()
            with tr._cond:                    # the reader blocks on this lock: the buffer overruns
                res = vm.run_phase("out", 20000, PORT)
                time.sleep(0.05)
            w = tr.snapshot() - a
    assert res.io_exits == 20000
    assert w.lost > 0, w.to_dict()
    assert w.userspace.get("IO", 0) + w.lost >= 20000 // 2
    r = verify_case(w, 20000, "qemu", "outb", PORT, "unknown")
    assert r["status"] == "failed" and "lost" in r["detail"]


@needs_trace
def test_instance_removed_on_error():
    before = _instances()
    with pytest.raises(RuntimeError):
        with ExitCounter([threading.get_native_id()]) as tr:
            assert tr.instance is not None and tr.instance.exists()
            raise RuntimeError("boom")
    assert _instances() == before
    with pytest.raises(ExitlatError):
        tr.snapshot()


@needs_kvm
@needs_trace
def test_pinned_vcpu_gets_its_own_large_buffer_and_exact_counts():
    """bench pins the vCPU and gives only that core's ring buffer the size of a whole case."""
    import os

    core = max(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        with ExitCounter([threading.get_native_id()], backend="stream", cpu=core,
                         buffer_kb=65536) as tr:
            sizes = {p.parent.name: int(p.read_text().split()[0])
                     for p in tr.instance.glob("per_cpu/cpu*/buffer_size_kb")}
            runs = run_microvm_phases(N, PORT, tr)
    finally:
        os.sched_setaffinity(0, old)
    assert sizes[f"cpu{core}"] >= 65536          # the kernel rounds up to whole pages
    assert all(v < 65536 for k, v in sizes.items() if k != f"cpu{core}")
    out = runs["out"]["window"]
    assert out.pio_count(PORT) == N and out.lost == 0
