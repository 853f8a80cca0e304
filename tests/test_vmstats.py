"""exitlat.report.vmruns: the VM run as the statistical unit (headline, spread, CI across VM runs,
stability warnings), on hand-made per-VM statistics, raw samples and real bundles."""

import json
import math

import numpy as np
import pytest

from bundle_fixtures import example_doc, example_samples, make_bundle, with_stats
from exitlat.bundle.read import load_bundle
from exitlat.bundle.write import write_bundle
from exitlat.stats.summary import summarize
from exitlat.report.vmruns import (QUANTUM, RECOMMENDED_REPEAT, SPREAD_WARN_KVM, case_summaries,
                             combine_runs, median_factor, repeats_needed, stability_warnings,
                             summarize_runs, summary_rows, t975)


def vm(median, half=0.0, p99=None, mx=None, n=10_000):
    """Per-VM statistics as exitlat.stats.summarize stores them (only what vmstats reads)."""
    return {"n": n, "median": median, "median_ci95": [median - half, median + half],
            "p99": median * 1.1 if p99 is None else p99, "max": median * 3 if mx is None else mx}


def test_headline_spread_and_ci_by_hand():
    s = combine_runs([vm(100.0), vm(102.0), vm(101.0)], tsc_hz=2e9)
    assert s["R"] == 3 and s["vm_medians"] == [100.0, 102.0, 101.0]
    assert s["median"] == 101.0 and s["spread"] == [100.0, 102.0]
    assert s["rel_spread"] == pytest.approx(2 / 101)
    assert s["sd"] == pytest.approx(1.0)
    se = 1.161 * 1.0 / math.sqrt(3)                 # c_3 * s / sqrt(R)
    assert s["se"] == pytest.approx(se) and s["df"] == 2
    assert s["ci95"] == pytest.approx([101 - 4.302653 * se, 101 + 4.302653 * se])
    assert s["ns"]["median"] == 50.5 and s["ns"]["ci95"] == pytest.approx([v / 2 for v in s["ci95"]])
    assert s["note"] is None
    json.dumps(s, allow_nan=False)


def test_even_r_headline_is_the_middle_pair():
    s = combine_runs([vm(10.0), vm(40.0), vm(20.0), vm(30.0)])
    assert s["median"] == 25.0 and s["df"] == 3


def test_single_run_has_no_ci_and_says_why():
    s = combine_runs([vm(1150.0, half=2.0)])
    assert s["R"] == 1 and s["median"] == 1150.0 and s["ci95"] is None and s["se"] is None
    assert s["note"] == "run-to-run variation unknown (R=1)"
    assert [w["kind"] for w in s["warnings"]] == ["single_run"]
    assert s["suggested_repeat"] == RECOMMENDED_REPEAT
    line = stability_warnings([dict(s, entry="case1 cpuid rdtscp")])
    assert len(line) == 1 and "R=1" in line[0] and f"--repeat {RECOMMENDED_REPEAT}" in line[0]


def test_two_runs_use_t_with_one_degree_of_freedom():
    s = combine_runs([vm(1000.0), vm(1010.0)])
    half = 12.706205 * 1.0 * (10 / math.sqrt(2)) / math.sqrt(2)
    assert s["ci95"] == pytest.approx([1005 - half, 1005 + half])


def test_missing_runs_are_left_out():
    s = combine_runs([vm(100.0), None, vm(104.0)], labels=["r0", "r1", "r2"])
    assert s["R"] == 2 and s["runs"] == ["r0", "r2"] and s["missing_runs"] == ["r1"]
    assert combine_runs([None, None])["note"] == "no samples"


def test_floors_of_the_spread():
    # identical VM medians: s is not 0 but the larger of the 1-cycle resolution and the runs' own
    # sampling error
    s = combine_runs([vm(1000.0)] * 3)
    assert s["sd"] == 0 and s["ci95"][1] - s["ci95"][0] == pytest.approx(
        2 * 4.302653 * 1.161 * QUANTUM / math.sqrt(3))
    s = combine_runs([vm(1000.0, half=1.959963984540054 * 5)] * 3)
    assert s["se"] == pytest.approx(1.161 * 5 / math.sqrt(3))


def test_tables():
    assert [round(t975(d), 3) for d in (1, 2, 4, 10, 30)] == [12.706, 4.303, 2.776, 2.228, 2.042]
    assert t975(31) < t975(30) and t975(31) == pytest.approx(2.0395, abs=1e-4)
    assert t975(1000) == pytest.approx(1.9623, abs=1e-4)
    assert median_factor(2) == 1.0 and median_factor(3) == pytest.approx(1.161, abs=1e-3)
    assert median_factor(100) == pytest.approx(math.sqrt(math.pi / 2), abs=1e-3)
    # variance of the median of 3 normals, by simulation, against the table
    x = np.random.default_rng(0).standard_normal((200_000, 3))
    assert math.sqrt(3 * np.var(np.median(x, axis=1))) == pytest.approx(1.1602, abs=0.01)


def test_repeats_needed():
    assert repeats_needed(0.001) == 3
    r1, r2 = repeats_needed(0.005), repeats_needed(0.01)
    assert 3 <= r1 < r2
    assert repeats_needed(0.2) is None


def test_stability_warnings_kvm_and_loose():
    noisy = [vm(1000.0), vm(1030.0), vm(1010.0)]         # 3% spread
    kvm = combine_runs(noisy)
    kinds = {w["kind"] for w in kvm["warnings"]}
    assert kinds == {"spread", "ci_width"}
    assert kvm["rel_spread"] > SPREAD_WARN_KVM and kvm["suggested_repeat"] > 5
    lines = stability_warnings([dict(kvm, entry="case1 cpuid rdtscp")])
    assert any("VM medians differ by more than 1%" in w and "case1 cpuid rdtscp 3.0%" in w
               and f"--repeat {kvm['suggested_repeat']}" in w for w in lines), lines
    assert combine_runs(noisy, loose=True)["warnings"] == []      # TCG: 10%, no CI-width warning
    tails = combine_runs([vm(1000.0, p99=2500.0), vm(1000.0, mx=5e6), vm(1000.0)])
    assert {w["kind"] for w in tails["warnings"]} == {"tail", "stall"}
    assert combine_runs([vm(1000.0, p99=2500.0)] * 3, loose=True)["warnings"] == []
    quiet = combine_runs([vm(1000.0), vm(1001.0), vm(1000.5)])
    assert quiet["warnings"] == [] and stability_warnings([dict(quiet, entry="x")]) == []


def test_resolution_limited_baseline_gets_no_ci_width_warning():
    s = combine_runs([vm(32.0)] * 3)
    assert s["ci_rel"] > 0.01 and s["warnings"] == []


def test_deterministic_and_order_free():
    runs = [vm(1000.0 + d, half=1.5) for d in (0.5, 7.0, -3.0, 11.0, 2.0)]
    a = combine_runs(runs, 2e9)
    b = combine_runs(runs[::-1], 2e9)
    for k in ("median", "spread", "sd", "se", "ci95", "rel_spread"):
        assert json.dumps(a[k]) == json.dumps(b[k]), k


def test_summarize_runs_from_raw_samples_matches_the_bundle(tmp_path):
    doc = example_doc(cases=(1,), repeats=4, baselines=False)
    samples = example_samples(doc, seed=3)
    per_vm = [samples[f"case1-r{r}"] for r in range(4)]
    raw = summarize_runs(per_vm, 2e9)
    assert raw["R"] == 4 and len(raw["vm_stats"]) == 4
    assert raw["vm_stats"][0] == summarize(per_vm[0], 2e9)
    b = load_bundle(write_bundle(tmp_path, with_stats(doc, samples), samples, {}, name="A"))
    (s,) = case_summaries(b)
    assert s["entry"] == "case1 cpuid rdtscp" and s["keys"] == [f"case1-r{r}" for r in range(4)]
    assert s["kind"] == "case" and s["case"] == 1 and s["repeats"] == [0, 1, 2, 3]
    for k in ("median", "ci95", "spread", "vm_medians", "se"):
        assert s[k] == raw[k], k
    assert case_summaries(b.doc) == case_summaries(b)      # a document works as well as a bundle


def test_case_summaries_of_a_bundle(tmp_path):
    b = load_bundle(make_bundle(tmp_path, "A", repeats=3))
    sums = case_summaries(b)
    assert [s["entry"] for s in sums][:2] == ["case1 cpuid rdtscp", "case2 outb rdtscp"]
    assert "baseline_timer" in [s["entry"] for s in sums] and all(s["R"] == 3 for s in sums)
    rows = summary_rows(sums)
    assert len(rows) == len(sums) and rows[0][1] == 3 and "±" in rows[0][-1]
    one = case_summaries(load_bundle(make_bundle(tmp_path, "B", repeats=1)))
    assert summary_rows(one)[0][-1] == "run-to-run variation unknown (R=1)"


def test_tcg_bundle_uses_loose_thresholds(tmp_path):
    doc = example_doc(cases=(1,), repeats=3, baselines=False, accel="tcg")
    samples = example_samples(doc, seed=1)
    for r, f in enumerate((1.0, 1.05, 0.97)):            # 8% spread: noisy, but TCG
        samples[f"case1-r{r}"] = np.rint(samples[f"case1-r{r}"] * f).astype(np.uint64)
    (s,) = case_summaries(load_bundle(write_bundle(tmp_path, with_stats(doc, samples), samples, {}, name="T")))
    assert s["rel_spread"] > 0.05 and s["warnings"] == []


@pytest.mark.parametrize("r", [3, 5, 8])
def test_coverage_on_a_small_fixed_simulation(r):
    """Known true median, 1% sd between VMs, a little within-VM noise: the 95% CI must cover the
    truth in >= 92% of 500 simulated bundles (a normal-quantile interval would cover ~75% at R=3;
    the within-VM intervals alone, far less)."""
    rng = np.random.default_rng(100 + r)
    truth, hits, widths = 1150.0, 0, []
    for _ in range(500):
        meds = truth * np.exp(rng.normal(0, 0.01, r) + rng.normal(0, 0.002, r))
        s = combine_runs([vm(float(m), half=0.3) for m in meds])
        lo, hi = s["ci95"]
        hits += lo <= truth <= hi
        widths.append((hi - lo) / 2 / truth)
    assert hits / 500 >= 0.92
    assert np.mean(widths) < {3: 0.035, 5: 0.02, 8: 0.013}[r]       # honest, not uselessly wide


def test_net_summary():
    from exitlat.report.vmruns import net_summary
    case = dict(combine_runs([vm(1100.0), vm(1110.0), vm(1105.0)]), entry="case1 cpuid rdtscp")
    base = dict(combine_runs([vm(32.0), vm(33.0), vm(32.0)]), entry="baseline_timer")
    net = net_summary(case, base)
    assert net["baseline"] == "baseline_timer" and net["median"] == 1105.0 - 32.0
    half = math.sqrt(case["se"] ** 2 + base["se"] ** 2)
    assert net["ci95"][0] < 1073 - 2 * half and net["ci95"][1] > 1073 + 2 * half
    assert net_summary(case, None) is None
    assert net_summary(dict(combine_runs([vm(1100.0)])), base)["ci95"] is None
