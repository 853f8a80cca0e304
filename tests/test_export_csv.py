"""`invoke export --format csv` (one row per bundle and case entry) and `invoke compare --csv`,
read back with the csv module and checked against the bundles' own statistics; through the real
invoke CLI, as the fleet playbook runs it."""

import csv
import io
import os
import re
from pathlib import Path

import pytest

from bundle_fixtures import edit_json, make_bundle
from cli_support import invoke, one_line_error
from exitlat.bundle.read import load_bundle
from exitlat.report.compare import compare
from exitlat.report.csvexport import COMPARE_COLUMNS, EXPORT_COLUMNS
from exitlat.report.vmruns import case_summaries

REPO = Path(__file__).resolve().parent.parent


def read(path_or_text) -> tuple[list[str], list[dict]]:
    text = path_or_text if isinstance(path_or_text, str) else Path(path_or_text).read_text()
    r = csv.reader(io.StringIO(text))
    header = next(r)
    return header, [dict(zip(header, row)) for row in r]


def _net(d):
    for e in d["cases"]:
        e["net_cycles"] = {"baseline": "baseline_timer-r0", "median": 1118.0, "ci95": [1110.0, 1125.0]}


def _amd(d):
    d["host"]["hostname"] = "bench02"
    d["host"]["cpu"].update(vendor="AuthenticAMD", model_name="AMD EPYC 7763 64-Core Processor",
                            microcode="0xa0011d1")
    d["host"]["kvm"]["module"] = "kvm_amd"
    d["label"] = 'comma, "quote"\nand newline'


def test_columns_are_documented():
    doc = (REPO / "docs" / "bundles.md").read_text()
    section = doc[doc.index("## CSV export"):doc.index("## Refused input")]
    documented = set(re.findall(r"`([a-z0-9_]+)`", section))
    assert set(EXPORT_COLUMNS) <= documented, sorted(set(EXPORT_COLUMNS) - documented)
    assert set(COMPARE_COLUMNS) <= documented, sorted(set(COMPARE_COLUMNS) - documented)
    assert 'pd.read_csv("results.csv")' in section and "duckdb.sql(" in section


def test_one_bundle_rows_match_its_statistics(tmp_path):
    res = tmp_path / "results"
    p = make_bundle(res, "A", cases=(1, 2, 5), repeats=3, edit=_net)
    out = tmp_path / "a.csv"
    r = invoke("export", "--format", "csv", "A", "--output", out, results=res)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    header, rows = read(out)
    assert header == EXPORT_COLUMNS
    b = load_bundle(p)
    assert [row["key"] for row in rows] == [e["key"] for e in b.doc["cases"]]     # 3 cases x 3 VM runs
    sums = {s["entry"]: s for s in case_summaries(b)}
    for row, e in zip(rows, b.doc["cases"]):
        st, s = e["stats"], sums[row["entry"]]
        assert row["bundle"] == "A" and row["host"] == "bench01" and row["cpu_vendor"] == "GenuineIntel"
        assert row["cpu_model"] == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
        assert row["cpu_microcode"] == "0xd0003a5" and row["host_kernel"] == "6.8.0-45-generic"
        assert row["kvm_module"] == "kvm_intel" and row["qemu_version"] == "9.0.2"
        assert row["guest_kernel"] == "6.6.30-exitlat" and row["accel"] == "kvm"
        assert row["isolated"] == "true" and row["created_utc"] == "2025-01-15T10:20:30Z"
        assert row["exitlat_version"] == "0.1.0" and row["not_exit_timings"] == "" and row["label"] == ""
        assert int(row["case"]) == e["case"] and int(row["repeat"]) == e["repeat"]
        assert int(row["n"]) == st["n"] and int(row["vm_runs"]) == 3
        for col, key in (("p50", "median"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99_9"),
                         ("min", "min"), ("max", "max"), ("mad", "mad")):
            assert float(row[col]) == pytest.approx(float(st[key]), abs=0), col
        assert float(row["median_ci95_low"]) == st["median_ci95"][0]
        assert float(row["median_ns"]) == pytest.approx(st["ns"]["median"])
        assert float(row["headline_median"]) == s["median"]
        assert [float(row["headline_ci95_low"]), float(row["headline_ci95_high"])] == s["ci95"]
        assert [float(row["vm_median_min"]), float(row["vm_median_max"])] == s["spread"]
        assert float(row["vm_rel_spread"]) == pytest.approx(s["rel_spread"])
        assert row["net_median"] == "1118" and row["net_ci95_high"] == "1125"
        assert row["net_baseline"] == "baseline_timer-r0"
        assert row["verification"] == "passed" and float(row["exit_reason_per_iter"]) == 1.0
    # the same numbers as `compare` uses for its headline
    assert {r_["entry"]: float(r_["headline_median"]) for r_ in rows} == \
        {k: v["median"] for k, v in sums.items() if k.startswith("case")}


def test_results_folder_gives_one_row_per_bundle_and_case(tmp_path):
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1, 2), repeats=2)
    make_bundle(res, "B", cases=(1, 2), repeats=2, seed=2, edit=_amd)
    make_bundle(res, "C", cases=(1, 2, 5), accel="tcg", seed=3)
    (res / ".tmp-D").mkdir()                                # a bundle being written: not read
    r = invoke("export", "--format", "csv", results=res, cwd=tmp_path)     # the playbook's call
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    header, rows = read(tmp_path / "results.csv")
    assert header == EXPORT_COLUMNS
    assert [(x["bundle"], x["key"]) for x in rows] == (
        [("A", k) for k in ("case1-r0", "case2-r0", "case1-r1", "case2-r1")]
        + [("B", k) for k in ("case1-r0", "case2-r0", "case1-r1", "case2-r1")]
        + [("C", k) for k in ("case1-r0", "case2-r0", "case5-r0")])
    b_rows = [x for x in rows if x["bundle"] == "B"]
    assert {x["host"] for x in b_rows} == {"bench02"} and {x["cpu_vendor"] for x in b_rows} == {"AuthenticAMD"}
    assert b_rows[0]["label"] == 'comma, "quote"\nand newline'             # quoted, read back whole
    c_rows = [x for x in rows if x["bundle"] == "C"]
    assert all("NOT VM-exit timings" in x["not_exit_timings"] for x in c_rows)
    assert all(x["verification"] == "not_applicable" and x["headline_ci95_low"] == "" for x in c_rows)
    # --root and explicit bundles, options after them, stdout
    r = invoke("export", "--root", res, "A", "C", "--format", "csv", "--output", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {x["bundle"] for x in read(r.stdout)[1]} == {"A", "C"}


def test_broken_bundle_is_skipped_with_a_warning_when_scanning(tmp_path):
    """Decision: scanning a results folder skips a broken bundle with a warning on stderr (one
    damaged copy must not stop a fleet's export; `invoke results` lists it as invalid too); a
    bundle named on the command line must load, or the export fails."""
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1,))
    bad = make_bundle(res, "B", cases=(1,), seed=2)
    edit_json(bad, lambda d: d["cases"][0]["stats"].update(n=5), seal=True)   # samples disagree
    out = tmp_path / "all.csv"
    r = invoke("export", "--format", "csv", "--output", out, results=res)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("warning: skipped B: ") and len(r.stderr.strip().splitlines()) == 1
    assert {x["bundle"] for x in read(out)[1]} == {"A"}
    one_line_error(invoke("export", "--format", "csv", "B", "--output", tmp_path / "b.csv", results=res), "B")
    assert not (tmp_path / "b.csv").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(invoke("export", "--format", "csv", "--root", empty, "--output", tmp_path / "e.csv"),
                   "no valid bundle")


def test_bad_export_inputs_are_one_line(tmp_path):
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1,), baselines=False)
    make_bundle(res, "B", cases=(1,), baselines=False, seed=2)
    one_line_error(invoke("export", "--format", "xyz", "A", results=res), "unknown export format 'xyz'")
    one_line_error(invoke("export", "A", "B", "--output", tmp_path / "x.tar.gz", results=res),
                   "exactly one bundle")
    one_line_error(invoke("export", results=res, cwd=tmp_path), "exactly one bundle")
    one_line_error(invoke("export", "--format", "csv", "--output", tmp_path / "missing" / "x.csv",
                          results=res), "does not exist")
    one_line_error(invoke("export", "--format", "csv", "--output", res / "A" / "x.csv", results=res),
                   "inside bundle A")
    one_line_error(invoke("export", "--format", "csv", "--root", tmp_path / "nope"), "--root")
    assert sorted(os.listdir(tmp_path)) == ["results"]
    # the archive export is unchanged: one bundle, positional, default format
    r = invoke("export", "A", "--output", tmp_path / "A.tar.gz", results=res)
    assert r.returncode == 0 and (tmp_path / "A.tar.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_compare_csv_long_form(tmp_path):
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1, 2), repeats=3)
    make_bundle(res, "B", cases=(1, 2), repeats=3, seed=2, scale=1.1, edit=_amd)
    make_bundle(res, "C", cases=(1, 2), repeats=3, seed=3)
    out = tmp_path / "cmp.csv"
    r = invoke("compare", "A", "B", "C", "--csv", out, "--min-effect", "2%", results=res)
    assert r.returncode == 0, r.stderr
    assert "B/A" in r.stdout and f"csv: {out}" in r.stderr
    header, rows = read(out)
    assert header == COMPARE_COLUMNS
    cmp = compare([load_bundle(res / n) for n in "ABC"], min_effect=0.02)
    assert len(rows) == len(cmp["rows"]) * 3
    for i, row in enumerate(cmp["rows"]):
        for j, cell in enumerate(row["cells"]):
            got = rows[3 * i + j]
            assert got["entry"] == row["entry"] and got["column"] == "ABC"[j] and got["bundle"] == "ABC"[j]
            assert float(got["median"]) == cell["median"] and int(got["vm_runs"]) == cell["R"]
            if j == 0:
                assert got["ratio"] == "" and got["significant"] == ""
            else:
                assert float(got["ratio"]) == cell["ratio"]
                assert got["significant"] == ("true" if cell["significant"] else "false")
            assert got["min_effect"] == "0.02" and got["reference"] == "A" and got["unit"] == "cycles"
    assert {x["host"] for x in rows if x["bundle"] == "B"} == {"bench02"}
    assert all(x["significant"] == "true" for x in rows if x["bundle"] == "B" and x["kind"] == "case")
    r = invoke("compare", "A", "B", "--csv", "-", results=res)                 # stdout: only the CSV
    assert r.returncode == 0 and r.stdout.startswith("entry,kind,") and "B/A" not in r.stdout


def test_incomplete_and_schema_1_bundles(tmp_path):
    """An entry without samples (incomplete run) is a row with empty statistics; a schema-1
    bundle exports with the fields it has."""
    import shutil

    from bundle_fixtures import example_doc, example_samples, with_stats
    from exitlat.bundle.write import write_bundle
    from exitlat.report.html import render_page

    doc = example_doc(cases=(1, 2), baselines=False)
    doc["status"] = {"state": "incomplete", "reason": "interrupted"}
    samples = example_samples(doc)
    del samples["case2-r0"]
    inc = load_bundle(write_bundle(tmp_path, with_stats(doc, samples), samples, {}, name="I"))
    v1 = load_bundle(shutil.copytree(REPO / "tests" / "fixtures" / "bundle-v1", tmp_path / "v1"))
    r = invoke("export", "--format", "csv", "--output", "-", inc.path, v1.path)
    assert r.returncode == 0, r.stderr
    rows = read(r.stdout)[1]
    case2 = next(x for x in rows if x["bundle"] == "I" and x["key"] == "case2-r0")
    assert case2["status"] == "incomplete" and case2["n"] == "" and case2["headline_median"] == ""
    assert case2["verification"] == "passed"        # the fixture's verdict, as stored
    assert {x["bundle"] for x in rows} == {"I", "v1"} and len(rows) == 2 + len(v1.doc["cases"])
    page = render_page([inc, v1])
    assert "no samples (incomplete run)" in page and "INCOMPLETE: interrupted" in page


def test_text_a_spreadsheet_would_run_is_quoted_unless_exact(tmp_path):
    """Free text from a bundle (the label, host names from other people's servers) must not run
    as a formula when the CSV is opened in a spreadsheet; --exact keeps it as is for pandas."""
    res = tmp_path / "results"

    def hostile(d):
        _net(d)
        d["label"] = "=HYPERLINK(\"http://x\",\"y\")"
        d["host"]["hostname"] = "@bench"
        for e in d["cases"]:
            e["net_cycles"]["median"] = -12.0        # a number: never touched
    make_bundle(res, "A", cases=(1,), repeats=1, edit=hostile)
    safe, exact = tmp_path / "safe.csv", tmp_path / "exact.csv"
    assert invoke("export", "--format", "csv", "A", "--output", safe, results=res).returncode == 0
    assert invoke("export", "--format", "csv", "A", "--exact", "--output", exact,
                  results=res).returncode == 0
    (_h, [s]), (_h2, [e]) = read(safe), read(exact)
    assert s["label"] == "'=HYPERLINK(\"http://x\",\"y\")" and s["host"] == "'@bench"
    assert e["label"] == "=HYPERLINK(\"http://x\",\"y\")" and e["host"] == "@bench"
    assert s["net_median"] == e["net_median"] == "-12"
