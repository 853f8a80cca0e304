"""Bundles of schema 1 (written before timed and traced windows were separated) and 2 (one
`iterations` key of two meanings) still load, validate, report and compare; each fixture was
written by exitlat at its schema."""

import shutil
from pathlib import Path

from bundle_fixtures import make_bundle
from exitlat.bundle.read import load_bundle, recheck_stats
from exitlat.report.compare import compare, render_compare
from exitlat.report.text import render_report

V1 = Path(__file__).parent / "fixtures" / "bundle-v1"
V2 = Path(__file__).parent / "fixtures" / "bundle-v2"     # written by exitlat at schema 2


def test_schema_1_bundle_loads_validates_and_reports(tmp_path):
    b = load_bundle(shutil.copytree(V1, tmp_path / "v1"))
    assert b.doc["schema_version"] == 1
    recheck_stats(b)
    text = render_report(b)
    assert "case5-r0" in text and "passed" in text


def test_schema_1_2_and_3_bundles_compare(tmp_path):
    old = load_bundle(shutil.copytree(V1, tmp_path / "v1"))
    two = load_bundle(shutil.copytree(V2, tmp_path / "v2"))
    new = load_bundle(make_bundle(tmp_path, "B", cases=(1, 2, 5)))
    assert (old.doc["schema_version"], two.doc["schema_version"], new.doc["schema_version"]) == (1, 2, 3)
    res = compare([old, two, new])
    entries = {r["entry"] for r in res["rows"]}
    assert {"case1", "case2", "case5"} <= {e.split()[0] for e in entries}, entries
    assert "case1" in render_compare(res)


def test_older_bundles_read_with_the_current_names(tmp_path):
    """Versions 1-2 had one `iterations` key of two meanings: an entry's kept samples, a traced
    window's requested count. Readers get both meanings by name; the file is left as written."""
    raw = (V2 / "bundle.json").read_text()
    two = load_bundle(shutil.copytree(V2, tmp_path / "v2"))
    c1 = two.doc["cases"][0]
    assert "iterations" not in c1 and c1["samples_kept"] == c1["stats"]["n"] == 300
    assert c1["iterations_requested"] == two.doc["options"]["iterations"] == 300
    vw = c1["verification_window"]
    assert vw["iterations_requested"] == 250 and vw["samples_kept"] == 0 and "iterations" not in vw
    assert (tmp_path / "v2" / "bundle.json").read_text() == raw
    one = load_bundle(shutil.copytree(V1, tmp_path / "v1"))
    assert all("samples_kept" in e and "iterations" not in e for e in one.doc["cases"])


def test_a_current_bundle_says_which_count_it_means(tmp_path):
    b = load_bundle(make_bundle(tmp_path, "B", cases=(1,)))
    raw = (b.path / "bundle.json").read_text()
    assert '"iterations_requested"' in raw and '"samples_kept"' in raw
    assert '"iterations": 2000' in raw            # only the option keeps the bare name
    assert raw.count('"iterations":') == 1
