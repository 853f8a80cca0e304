"""Bundles of schema 1 (written before timed and traced windows were separated) still load,
validate, report and compare; the fixture was written by exitlat at schema 1."""

import shutil
from pathlib import Path

from bundle_fixtures import make_bundle
from exitlat.results.bundle import load_bundle, recheck_stats
from exitlat.results.compare import compare, render_compare
from exitlat.results.report import render_report

V1 = Path(__file__).parent / "fixtures" / "bundle-v1"


def test_schema_1_bundle_loads_validates_and_reports(tmp_path):
    b = load_bundle(shutil.copytree(V1, tmp_path / "v1"))
    assert b.doc["schema_version"] == 1
    recheck_stats(b)
    text = render_report(b)
    assert "case5-r0" in text and "passed" in text


def test_schema_1_and_2_bundles_compare(tmp_path):
    old = load_bundle(shutil.copytree(V1, tmp_path / "v1"))
    new = load_bundle(make_bundle(tmp_path, "B", cases=(1, 2, 5)))
    assert new.doc["schema_version"] == 2
    res = compare([old, new])
    entries = {r["entry"] for r in res["rows"]}
    assert {"case1", "case2", "case5"} <= {e.split()[0] for e in entries}, entries
    assert "case1" in render_compare(res)
