"""`compare`: repeats pooled per case, ratio CIs from both sides' VM-to-VM variation, '*' only for
real differences, R = 1 explained, several bundles as columns; on real bundles."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle_fixtures import example_doc, example_samples, make_bundle, with_stats
from exitlat.bundle.read import load_bundle
from exitlat.bundle.format import TCG_BANNER
from exitlat.bundle.write import write_bundle
from exitlat.report.compare import compare, fieller, ratio_cell, render_compare
from exitlat.report.vmruns import combine_runs

V1 = Path(__file__).parent / "fixtures" / "bundle-v1"


def vm_bundle(root, name, seed, vm_sd=0.01, scale=1.0, repeats=3, **kw):
    """A bundle whose VM runs differ like real ones: every entry of every repeat is scaled by its
    own VM factor, normal with sd vm_sd (on top of the fixture's within-VM noise)."""
    doc = example_doc(repeats=repeats, **kw)
    samples = example_samples(doc, seed=seed, scale=scale)
    rng = np.random.default_rng(seed + 10_000)
    for k in sorted(samples):
        samples[k] = np.rint(samples[k] * rng.normal(1.0, vm_sd)).astype(np.uint64)
    return load_bundle(write_bundle(Path(root), with_stats(doc, samples), samples, {"console-r0.log": b""}, name=name))


def significant(res, col=1):
    return [r["entry"] for r in res["rows"] if r["cells"][col]["significant"]]


def marked_lines(text):
    """Table rows of a rendered compare that carry a '*'."""
    return [line for line in text.splitlines()
            if line.startswith(("case", "baseline")) and line.rstrip().endswith(" *")]


def test_a_a_from_fixture_generator_marks_nothing(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", seed=1, repeats=3))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=3))
    res = compare([a, b])
    assert len(res["rows"]) == 10                          # one row per case/baseline, not per repeat
    assert all(r["cells"][0]["R"] == 3 and r["cells"][1]["R"] == 3 for r in res["rows"])
    assert len(significant(res)) <= 1, significant(res)
    assert all(r["cells"][1]["ratio_ci95"][0] <= r["cells"][1]["ratio"] <= r["cells"][1]["ratio_ci95"][1]
               for r in res["rows"])
    assert res["rows"][0]["entry"] == "case1 cpuid rdtscp r0-2"


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6)])
def test_a_a_with_between_vm_spread_marks_at_most_one_row(tmp_path, seeds):
    a = vm_bundle(tmp_path, "A", seeds[0])
    b = vm_bundle(tmp_path, "B", seeds[1])
    res = compare([a, b])
    assert len(significant(res)) <= 1, significant(res)
    # the same with no minimum effect: the CI alone must hold the line
    assert len(significant(compare([a, b], min_effect=0.0))) <= 1


def test_known_difference_is_marked(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", seed=1, repeats=3))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=3, scale=1.07))
    res = compare([a, b])
    assert len(significant(res)) == len(res["rows"]) == 10
    row = res["rows"][0]["cells"][1]
    assert 1.06 < row["ratio"] < 1.08 and row["ratio_ci95"][0] > 1.0
    text = render_compare(res)
    assert len(marked_lines(text)) == 10 and "B/A" in text
    # with between-VM variation of 1%, a 10% difference is still found in (nearly) every case row
    a2, b2 = vm_bundle(tmp_path, "A2", 11), vm_bundle(tmp_path, "B2", 12, scale=1.10)
    res2 = compare([a2, b2])
    assert sum(r["cells"][1]["significant"] for r in res2["rows"] if r["entry"].startswith("case")) >= 5


def test_min_effect_parameter(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", seed=1, repeats=3))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=3, scale=1.03))
    case_rows = lambda res: [r for r in res["rows"] if r["entry"].startswith("case")]  # noqa: E731
    assert all(r["cells"][1]["significant"] for r in case_rows(compare([a, b])))
    strict = compare([a, b], min_effect=0.05)
    assert strict["min_effect"] == 0.05
    assert not any(r["cells"][1]["significant"] for r in case_rows(strict))
    assert all(r["cells"][1]["ratio_ci95"][0] > 1.0 for r in case_rows(strict))   # the CI alone would
    assert "beyond ±5%" in render_compare(strict)


def test_single_run_gives_no_star_and_says_why(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", seed=1, repeats=1))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=1, scale=1.5))
    c = load_bundle(make_bundle(tmp_path, "C", seed=3, repeats=3, scale=1.5))
    for res in (compare([a, b]), compare([c, a])):
        for r in res["rows"]:
            cell = r["cells"][1]
            assert cell["significant"] is False and cell["ratio_ci95"] is None
            assert cell["ratio"] is not None and "R=1" in cell["note"]
        text = render_compare(res)
        assert marked_lines(text) == [] and "[no CI]" in text
        assert "note: run-to-run variation unknown (R=1)" in text and "--repeat 5" in text
    assert compare([a, b])["rows"][0]["entry"] == "case1 cpuid rdtscp r0"


def test_three_bundles_one_column_each_ratios_against_the_first(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", seed=1, repeats=3))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=3))
    c = load_bundle(make_bundle(tmp_path, "C", seed=3, repeats=5, scale=1.08))
    res = compare([a, b, c])
    assert res["bundles"] == ["A", "B", "C"] and res["reference"] == "A"
    for r in res["rows"]:
        ca, cb, cc = r["cells"]
        assert ca["ratio"] is None and ca["significant"] is None
        assert cb["ratio"] == pytest.approx(cb["median"] / ca["median"])
        assert cc["ratio"] == pytest.approx(cc["median"] / ca["median"]) and cc["R"] == 5
        assert not cb["significant"] and cc["significant"]
    text = render_compare(res)
    header = next(line for line in text.splitlines() if line.startswith("entry"))
    for col in ("A median (cycles)", "B median, B/A [CI95]", "C median, C/A [CI95]"):
        assert col in header
    first = next(line for line in text.splitlines() if line.startswith("case1 "))
    assert first.count("[") == 2 and first.rstrip().endswith("*") and first.count("*") == 1
    assert first.startswith("case1 cpuid rdtscp r0-4")
    json.dumps(res, allow_nan=False)


def test_fieller_and_ratio_cell():
    lo, hi = fieller(100.0, 1.0, 110.0, 1.0, 2.0)
    assert lo < 1.1 < hi and lo == pytest.approx(1.0713, abs=1e-3) and hi == pytest.approx(1.1292, abs=1e-3)
    assert fieller(100.0, 60.0, 110.0, 1.0, 2.0) is None          # A's interval reaches 0: unbounded
    ref = combine_runs([{"n": 10, "median": m, "median_ci95": [m, m], "p99": m, "max": m}
                        for m in (1000.0, 1010.0, 990.0)])
    same = ratio_cell(ref, ref)
    assert same["ratio"] == 1.0 and not same["significant"]
    assert same["ratio_ci95"][0] < 1 < same["ratio_ci95"][1]
    far = ratio_cell(ref, dict(ref, median=2000.0, se=ref["se"] * 2))
    assert far["significant"] and far["ratio_ci95"][0] > 1.5
    assert ratio_cell(ref, far | {"median": 1200.0, "R": 1, "se": None})["note"].startswith("R=1")


def test_false_positive_rate_of_the_ratio_ci():
    """600 simulated A/A pairs, R=3 and R=5, 1% sd between VMs, no minimum effect: the CI must
    exclude 1 in at most ~5% of them (the old non-overlap rule on single VM runs: most of them)."""
    rng = np.random.default_rng(42)

    def side(r):
        meds = 1150 * np.exp(rng.normal(0, 0.01, r))
        return combine_runs([{"n": 10_000, "median": float(m), "p99": float(m), "max": float(m),
                              "median_ci95": [float(m) - 0.5, float(m) + 0.5]} for m in meds])
    for r in (3, 5):
        fp = sum(ratio_cell(side(r), side(r), min_effect=0.0)["significant"] for _ in range(600))
        assert fp / 600 <= 0.07, (r, fp)


def test_unfair_warnings_banners_and_ns_kept(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", repeats=3))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=3, accel="tcg",
                                edit=lambda d: d["host"]["tsc"].update(hz=3_000_000_000)))
    res = compare([a, b])
    assert res["unit"] == "ns" and res["tcg"] == ["B"] and res["not_exit_timings"] == {"B": TCG_BANNER}
    assert any("TSC frequency differs" in w for w in res["unfair"]["B"])
    row = res["rows"][0]["cells"]
    # same cycle counts, a 1.5x faster clock: B is 2/3 of A in ns
    assert row[1]["ratio"] == pytest.approx(2 / 3, rel=0.01)
    assert row[1]["median"] == pytest.approx(row[1]["ratio"] * row[0]["median"])
    text = render_compare(res)
    assert text.startswith(f"*** {TCG_BANNER} (B) ***") and text.rstrip().endswith(f"*** {TCG_BANNER} ***")
    assert "unfair: TSC frequency differs" in text and "in ns, not cycles" in text


def test_stability_lines(tmp_path):
    a = vm_bundle(tmp_path, "A", 1, vm_sd=0.04)
    b = vm_bundle(tmp_path, "B", 2)
    res = compare([a, b])
    assert res["stability"]["A"] and any("--repeat" in w for w in res["stability"]["A"])
    assert "stability: A: VM medians differ by more than 1%" in render_compare(res)


def test_schema_1_bundle_compares_with_r3(tmp_path):
    old = load_bundle(shutil.copytree(V1, tmp_path / "v1"))
    new = load_bundle(make_bundle(tmp_path, "B", cases=(1, 2, 5), repeats=3))
    res = compare([old, new])
    assert {"case1", "case2", "case5"} <= {r["entry"].split()[0] for r in res["rows"]}
    assert not any(r["cells"][1]["significant"] for r in res["rows"])
    assert "R=1" in render_compare(res)


def test_parse_min_effect():
    from exitlat.report.compare import parse_min_effect
    from exitlat.errors import ExitlatError
    assert parse_min_effect("1%") == 0.01 and parse_min_effect("0.02") == 0.02 and parse_min_effect(0) == 0.0
    assert parse_min_effect(" 2.5% ") == pytest.approx(0.025)
    for bad in ("x", "-1%", "150%", "1.5", True):
        with pytest.raises(ExitlatError):
            parse_min_effect(bad)


def _host(i):
    def edit(d):
        d["host"]["hostname"] = f"node{i:02d}.rack{i // 10}.example.net"
        if i % 3 == 1:
            d["host"]["cpu"].update(vendor="AuthenticAMD", model_name="AMD EPYC 7763 64-Core Processor")
    return edit


def test_fifty_bundles_one_table_in_linear_time(tmp_path, monkeypatch):
    import exitlat.report.compare as cmp

    bundles = [load_bundle(make_bundle(tmp_path, f"S{i:02d}", seed=i, scale=1 + 0.003 * i, cases=(1, 2),
                                       baselines=False, repeats=2, iterations=300, edit=_host(i)))
               for i in range(50)]
    calls = {"unfairness": 0, "case_summaries": 0}
    for name in calls:
        real = getattr(cmp, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(cmp, name, counted)
    res = compare(bundles)
    assert calls == {"unfairness": 49, "case_summaries": 50}          # each bundle once, against A only
    assert [c["letter"] for c in res["columns"][24:28]] == ["Y", "Z", "AA", "AB"]
    assert res["columns"][1]["cpu"] == "AMD EPYC 7763" and res["columns"][0]["cpu"] == "Intel Xeon Gold 6338"
    assert len(res["rows"]) == 2 and all(len(r["cells"]) == 50 for r in res["rows"])
    text = render_compare(res)
    assert "A median (cycles)" not in text                            # not 50 columns wide
    lines = text.splitlines()
    block = lines[lines.index("case1 cpuid rdtscp r0-1") + 1:]
    assert block[0].split()[:2] == ["host", "CPU"]
    for i in (0, 1, 27, 49):
        row = next(x for x in block if x.startswith(f"{res['columns'][i]['letter']} "))
        assert f"node{i:02d}.rack" in row and res["columns"][i]["cpu"] in row
    far = next(x for x in block if x.startswith("AX "))                # 15% slower than A
    assert far.rstrip().endswith("*")
    table_lines = [x for x in lines if x[:1].isupper() and "rack" in x]
    assert max(map(len, table_lines)) < 140
    assert sum(1 for x in lines if x.startswith("unfair: CPU differs in")) == 17
    json.dumps(res, allow_nan=False)


def test_compare_cli_takes_bundles_positionally(tmp_path):
    from test_report import invoke

    res_dir = tmp_path / "results"
    for i, name in enumerate("ABCD"):
        make_bundle(res_dir, name, cases=(1,), baselines=False, seed=i + 1, edit=_host(i))
    r = invoke("compare", "--json", "A", "B", "C", "D", "--min-effect", "2%", results=res_dir)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["bundles"] == ["A", "B", "C", "D"] and out["min_effect"] == 0.02
    assert [c["host"] for c in out["columns"]] == [f"node0{i}.rack0.example.net" for i in range(4)]
    r = invoke("compare", "A", "B", "C", "D", results=res_dir)          # more than 3: one block per entry
    assert r.returncode == 0 and "D   node03.rack0.example.net" in r.stdout, r.stdout
    r = invoke("compare", "A", results=res_dir)
    assert r.returncode != 0


def test_no_ratio_where_the_paths_differ(tmp_path):
    """The same instruction verified on another path (an exit on one host, none on another) is
    not the same thing: the row gets no ratio, and a note names it."""
    def no_exit(doc):
        for e in doc["cases"]:
            if e["case"] == 5:
                e["expected_path"] = "none"
    a = load_bundle(make_bundle(tmp_path, "A", seed=1, repeats=3))
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, repeats=3, edit=no_exit))
    res = compare([a, b])
    rows = {r["entry"].split(" r")[0]: r["cells"][1] for r in res["rows"]}
    case5 = [c for e, c in rows.items() if e.startswith("case5")]
    assert case5 and all(c["ratio"] is None and "no exit" in c["note"] for c in case5)
    assert all(c["ratio"] is not None for e, c in rows.items() if e.startswith("case3"))
    assert any("paths differ" in n and "B no exit" in n for n in res["notes"])
