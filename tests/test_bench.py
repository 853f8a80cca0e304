"""bench's own logic without a VM: the live path verdict, the trace buffer size, and the bundle an
incomplete run assembles (every requested case listed, real schema, real files)."""

import numpy as np

from dataclasses import replace

from exitlat.run.plan import BenchOptions, Placement, make_plan
from exitlat.run.runrecord import VmResult
from exitlat.run.vm import VmRun, trace_buffer_kb
from exitlat.bundle.read import load_bundle
from exitlat.bundle.write import write_bundle
from exitlat.bundle.assemble import DocumentBuilder
from exitlat.host.facts import collect_host
from exitlat.verify.trace.counts import ExitCounts
from exitlat.verify.trace.tracepipe import DEFAULT_BUFFER_KB
from exitlat.progress import Progress
from exitlat.run.windows import TimedWindow, TracedWindow


INTEL = {"cpu": {"vendor": "GenuineIntel"}}


def window(exits=None, userspace=None, pio=None, handled=None):
    return ExitCounts(exits=exits or {}, userspace=userspace or {}, pio=pio or {},
                      handled=handled or {}, lost=0, backend="stream")


def test_live_verdicts_of_both_windows_pass_and_fail_on_real_counts():
    o = BenchOptions(cases=[1, 2], iterations=10000, warmup=1000, verify_iterations=5000)
    plan = make_plan(o, INTEL, "kvm")
    assert plan.guest.vendor == "intel" and plan.guest.verify_iterations == 5000
    vm = VmRun(plan, Progress())
    quiet = dict(tracing_before=[], tracing_after=[])
    # the same boot's baseline measured the console: 2 I/O exits per window
    vm.result.timed["baseline_timer"] = TimedWindow(kvm_stats={"exits": 4, "io_exits": 2}, **quiet)
    vm.result.timed["case1"] = TimedWindow(kvm_stats={"exits": 11003, "io_exits": 2}, **quiet)
    vm.result.timed["case2"] = TimedWindow(kvm_stats={"exits": 11010, "io_exits": 11008}, **quiet)
    assert "PASSED" in vm._live_verdict("case1")
    assert "PASSED" in vm._live_verdict("case2")
    # a QEMU case whose KVM stats show no I/O exits did not take its path
    vm.result.timed["case2"] = TimedWindow(kvm_stats={"exits": 11010, "io_exits": 3}, **quiet)
    assert "FAILED" in vm._live_verdict("case2")
    # tracing left enabled by someone else during the timed window fails it
    vm.result.timed["case1"] = TimedWindow(kvm_stats={"exits": 11003, "io_exits": 2},
                                           tracing_before=["kvm/kvm_exit"], tracing_after=[])
    assert "FAILED" in vm._live_verdict("case1")
    # tracefs unreadable: nobody can say the window was untraced, so it is not a pass
    vm.result.timed["case1"] = TimedWindow(kvm_stats={"exits": 11003, "io_exits": 2},
                                           tracing_before=None, tracing_after=[])
    assert "UNVERIFIED" in vm._live_verdict("case1")
    vm.result.windows["case1"] = TracedWindow(counts=window({"CPUID": 5000}, handled={"cpuid": 5000}),
                                              kvm_stats={"exits": 5000, "io_exits": 0})
    vm.result.windows["case2"] = TracedWindow(
        counts=window({"IO_INSTRUCTION": 5000}, {"IO": 5000}, {(0xE9, "out"): 5000}),
        kvm_stats={"exits": 5000, "io_exits": 5000})
    assert "PASSED" in vm._live_verdict("case1_traced")
    assert "PASSED" in vm._live_verdict("case2_traced")
    vm.result.windows["case2"] = TracedWindow(counts=window({"CPUID": 5000}),
                                              kvm_stats={"exits": 5000, "io_exits": 0})
    assert "FAILED" in vm._live_verdict("case2_traced")
    vm.result.timed["baseline_timer"] = TimedWindow(kvm_stats={"exits": 4, "io_exits": 2}, **quiet)
    assert "PASSED" in vm._live_verdict("baseline_timer")
    vm.result.timed["baseline_timer"] = TimedWindow(kvm_stats={"exits": 11000, "io_exits": 0}, **quiet)
    assert "FAILED" in vm._live_verdict("baseline_timer")


def test_live_timed_verdict_without_baselines_waits_for_the_traced_window():
    plan = make_plan(BenchOptions(cases=[1], iterations=10000, warmup=1000, baselines=False,
                                  verify_iterations=5000), INTEL, "kvm")
    vm = VmRun(plan, Progress())
    vm.result.timed["case1"] = TimedWindow(kvm_stats={"exits": 11400, "io_exits": 400},
                                           tracing_before=[], tracing_after=[])
    assert "after its traced window" in vm._live_verdict("case1")
    vm.result.windows["case1"] = TracedWindow(
        counts=window({"CPUID": 5000, "IO_INSTRUCTION": 390}, {"IO": 390}, {(0x3F8, "out"): 390},
                      handled={"cpuid": 5000}),
        kvm_stats={"exits": 5390, "io_exits": 390})
    line = vm._live_verdict("case1_traced")
    assert line.startswith("; PASSED") and "timed window PASSED" in line, line


def test_trace_buffer_holds_a_case_within_bounds():
    assert trace_buffer_kb(1000) == DEFAULT_BUFFER_KB
    assert trace_buffer_kb(1_000_000) == 1_000_000 * 256 // 1024
    assert trace_buffer_kb(10**9) <= 2 << 20


def test_incomplete_run_lists_every_case_and_writes_a_valid_bundle(tmp_path):
    o = BenchOptions(cases=[1, 2, 5], iterations=100, warmup=0, accel="tcg", container=False)
    res = VmResult(status="incomplete", reason="guest reported an error: boom",
                   samples={"case2": np.arange(1, 101, dtype=np.uint64)},
                   errors=[{"event": "error", "key": "case1", "message": "boom"}],
                   console=b"EXITLAT {}\n")
    state = {"core": 1, "items": [], "isolated": False}
    plan = replace(make_plan(o, INTEL, "tcg", Placement(1, 0, state)),
                   manifest={"versions": {}, "artifacts": {}})
    doc, samples, files = DocumentBuilder(plan, 2e9).build(
        ["invoke", "bench"], collect_host(with_docker=False), [res])
    b = load_bundle(write_bundle(tmp_path, doc, samples, files))
    by_case = {c["case"]: c for c in b.doc["cases"]}
    assert sorted(by_case) == [1, 2, 5]
    assert by_case[1]["verification"] == {"status": "skipped", "detail": "no samples: boom"}
    assert by_case[2]["stats"]["n"] == 100 and by_case[5]["samples_kept"] == 0
    assert b.doc["status"] == {"state": "incomplete", "reason": "guest reported an error: boom"}
