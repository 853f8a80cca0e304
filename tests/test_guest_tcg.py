"""The built guest under QEMU TCG: every case returns exactly the samples asked for, every OUTB of
the S cases reaches QEMU's debugcon (a real count of exits taken), and bad plans end in a
structured error, never a hang. TCG values are not VM-exit timings: only counts are asserted."""

from pathlib import Path

import numpy as np
import pytest

from exitlat.bench import BenchOptions, VmRun
from exitlat.build import find_build
from exitlat.cases import case_specs
from exitlat.guestio import GuestPlan
from exitlat.pins import load_pins
from exitlat.progress import Progress

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build():
    folder = find_build()
    if folder is None:
        from exitlat.build import build as do_build
        folder, _ = do_build()
    return folder


def run_plan(build: Path, plan: GuestPlan, **opts):
    o = BenchOptions(cases=plan.cases, iterations=plan.iterations, warmup=plan.warmup,
                     instr=plan.instr, port=plan.port, timer=plan.timer, accel="tcg",
                     container=False, debugcon="file", baselines=plan.baselines, **opts)
    specs = case_specs(plan.cases, plan.instr, plan.port) if plan.instr != "bogus" else []
    return VmRun(o, build, "tcg", 0, 0, plan, specs, Progress(), load_pins().base).run()


def test_all_cases_exact_counts_and_debugcon_bytes(build):
    plan = GuestPlan(cases=[1, 2, 3, 4, 5, 6], iterations=500, warmup=50)
    r = run_plan(build, plan)
    assert r.status == "complete", r.reason
    assert set(r.samples) == set(plan.keys())
    for key, arr in r.samples.items():
        assert arr.dtype == np.uint64 and len(arr) == 500, key
        assert arr.min() > 0, key
    assert r.debugcon_bytes == 3 * 550
    assert r.hello["kernel"].startswith("6.12.") and r.hello["tsc_khz"] > 0


def test_without_handshake_and_with_lfence_timer(build):
    plan = GuestPlan(cases=[2, 5], iterations=300, warmup=0, handshake=False, timer="lfence",
                     baselines=False)
    r = run_plan(build, plan)
    assert r.status == "complete", r.reason
    assert sorted(r.samples) == ["case2", "case5"]
    assert all(len(a) == 300 for a in r.samples.values())
    assert r.debugcon_bytes == 300


def test_rdmsr_in_kernel_cases(build):
    plan = GuestPlan(cases=[3, 5], instr="rdmsr", iterations=200, warmup=10, baselines=False)
    r = run_plan(build, plan)
    assert r.status == "complete", r.reason
    assert all(len(a) == 200 for a in r.samples.values())
    assert r.debugcon_bytes == 0


def test_unknown_plan_word_is_a_structured_error(build):
    plan = GuestPlan(cases=[1], iterations=10, warmup=0, extra=["exitlat.bogus=1"])
    r = run_plan(build, plan)
    assert r.status == "incomplete"
    assert r.errors and "bogus" in " ".join(e.get("message", "") for e in r.errors)


def test_vmcall_under_tcg_is_reported_not_crashed(build):
    plan = GuestPlan(cases=[2, 1], instr="vmcall", iterations=10, warmup=0, baselines=False)
    r = run_plan(build, plan)
    assert r.status == "incomplete"
    # the case that worked keeps its samples, the one that failed has none
    assert list(r.samples) == ["case2"] and len(r.samples["case2"]) == 10
    assert "vmcall" in (r.reason or "").lower() or any("vmcall" in e.get("message", "").lower()
                                                      for e in r.errors)
