"""Bundle writing and every way loading must refuse a bad bundle, on real (tampered) files."""

import json
import os
import re

import numpy as np
import pytest

from bundle_fixtures import edit_json, make_bundle, reseal, tree
from bundle_fixtures import example_doc, example_samples, with_stats
from exitlat.bundle.read import load_bundle, recheck_stats
from exitlat.bundle.format import SCHEMA_VERSION
from exitlat.bundle.write import write_bundle
from exitlat.errors import ExitlatError


def one_line_error(fn, *args, match: str):
    with pytest.raises(ExitlatError) as ei:
        fn(*args)
    msg = str(ei.value)
    assert "\n" not in msg and re.search(match, msg), msg
    return msg


def test_round_trip(tmp_path):
    doc = example_doc(repeats=2)
    samples = example_samples(doc)
    p = write_bundle(tmp_path, with_stats(doc, samples), samples, {"console-r0.log": b"log\n", "qemu-cmdline.txt": "qemu -accel kvm"})
    assert re.fullmatch(r"\d{8}T\d{6}Z-bench01-[0-9a-f]{6}", p.name)
    assert sorted(os.listdir(tmp_path)) == [p.name]            # no temp folder left
    b = load_bundle(p)
    assert b.doc["schema_version"] == SCHEMA_VERSION
    assert len(b.doc["cases"]) == 12 and len(b.doc["baselines"]) == 8
    for e in b.entries():
        got = b.samples(e["key"])
        assert got.dtype == np.uint64 and np.array_equal(got, samples[e["samples_key"]])
        assert np.load(p / e["samples_file"]).dtype == np.uint64      # plain numpy can read it
        assert e["stats"]["n"] == len(got) and e["stats"]["median"] == np.median(got)
        assert e["stats"]["ns"]["median"] == pytest.approx(float(np.median(got)) / 2)  # 2 GHz TSC
    listed = [ln.split("  ", 1)[1] for ln in (p / "SHA256SUMS").read_text().splitlines()]
    assert sorted(listed) == sorted(r for r in tree(p) if r != "SHA256SUMS")
    assert (p / "qemu-cmdline.txt").read_text() == "qemu -accel kvm"
    recheck_stats(b)
    assert "samples_file" not in doc["cases"][0]          # the caller's doc is not modified


def test_never_overwrites(tmp_path):
    p = make_bundle(tmp_path, "A")
    before = tree(p)
    one_line_error(make_bundle, tmp_path, "A", match="already exists")
    assert tree(p) == before and sorted(os.listdir(tmp_path)) == ["A"]


def test_failed_write_leaves_nothing(tmp_path):
    def bad(doc):
        doc["cases"][0]["instruction"] = "hlt"
    one_line_error(make_bundle, tmp_path, "A", 1, 1.0, bad, match=r"schema violation at cases/0/instruction")
    one_line_error(make_bundle, tmp_path, "B", 1, 1.0, None, {"../x": b""}, match="bad extra file name")
    # an error in the middle of writing (a Path that does not exist) removes the temp folder
    with pytest.raises(FileNotFoundError):
        make_bundle(tmp_path, "C", files={"x.log": tmp_path / "nope"})
    assert os.listdir(tmp_path) == []


def test_incomplete_bundle_with_missing_samples(tmp_path):
    doc = example_doc(cases=(1, 2))
    doc["status"] = {"state": "incomplete", "reason": "QEMU exited with status -9"}
    samples = example_samples(doc)
    del samples["case2-r0"]
    samples["case1-r0"] = samples["case1-r0"][:17]
    b = load_bundle(write_bundle(tmp_path, with_stats(doc, samples), samples, {}))
    c1, c2 = b.doc["cases"]
    assert c1["stats"]["n"] == 17 and c2["stats"] is None and c2["samples_file"] is None
    assert len(b.samples("case2-r0")) == 0
    doc["status"] = {"state": "complete", "reason": None}
    one_line_error(write_bundle, tmp_path, with_stats(doc, samples), samples, {},
                   match="no samples but the run is marked complete")
    doc["status"] = {"state": "incomplete", "reason": ""}
    one_line_error(write_bundle, tmp_path, with_stats(doc, samples), samples, {},
                   match="schema violation at status/reason")


def test_write_refuses_unreferenced_or_bad_samples(tmp_path):
    doc = example_doc(cases=(1,), baselines=False)
    s = example_samples(doc)
    one_line_error(write_bundle, tmp_path, doc, {**s, "stray": np.arange(3)}, {}, match="not referenced.*stray")
    one_line_error(write_bundle, tmp_path, doc, {"case1-r0": np.array([1.5, 2.0])}, {}, match="integer")
    one_line_error(write_bundle, tmp_path, doc, {"case1-r0": np.array([1, -1])}, {}, match="negative")
    # statistics are computed before storage: the storage layer refuses an entry without them
    one_line_error(write_bundle, tmp_path, doc, s, {}, match="no statistics")
    write_bundle(tmp_path, with_stats(doc, s), s, {})
    assert len(os.listdir(tmp_path)) == 1


# -- refusing bad bundles -----------------------------------------------------------------------

def test_not_a_bundle(tmp_path):
    one_line_error(load_bundle, tmp_path / "missing", match="not a folder")
    (tmp_path / "empty").mkdir()
    one_line_error(load_bundle, tmp_path / "empty", match="has no bundle.json")
    p = make_bundle(tmp_path)
    (p / "SHA256SUMS").unlink()
    one_line_error(load_bundle, p, match="SHA256SUMS is missing")


def test_missing_extra_and_tampered_files(tmp_path):
    p = make_bundle(tmp_path, "A")
    (p / "console-r0.log").unlink()
    one_line_error(load_bundle, p, match="missing file console-r0.log")
    p = make_bundle(tmp_path, "B")
    (p / "notes.txt").write_text("hi")
    one_line_error(load_bundle, p, match="extra file notes.txt")
    p = make_bundle(tmp_path, "C")
    raw = bytearray((p / "samples/case3-r0.npy").read_bytes())
    raw[-1] ^= 1                                               # one bit of one sample
    (p / "samples/case3-r0.npy").write_bytes(bytes(raw))
    one_line_error(load_bundle, p, match="checksum mismatch for samples/case3-r0.npy")
    p = make_bundle(tmp_path, "D")
    edit_json(p, lambda d: d["host"].update(hostname="elsewhere"), seal=False)
    one_line_error(load_bundle, p, match="checksum mismatch for bundle.json")
    p = make_bundle(tmp_path, "E")
    os.symlink("/etc/passwd", p / "link")
    one_line_error(load_bundle, p, match="not a regular file")


def test_schema_violation_and_newer_version(tmp_path):
    p = make_bundle(tmp_path, "A")
    edit_json(p, lambda d: d["cases"][1]["stats"].pop("median"))
    one_line_error(load_bundle, p, match=r"schema violation at cases/1/stats.*median")
    p = make_bundle(tmp_path, "B")
    edit_json(p, lambda d: d.update(schema_version=SCHEMA_VERSION + 1, new_field={"x": 1}))
    one_line_error(load_bundle, p, match=f"schema_version {SCHEMA_VERSION + 1} is newer than this exitlat supports")
    p = make_bundle(tmp_path, "C")
    (p / "bundle.json").write_text("{not json")
    reseal(p)
    one_line_error(load_bundle, p, match="not valid JSON")


def test_future_metadata_fields_are_tolerated_but_case_fields_are_not(tmp_path):
    p = make_bundle(tmp_path, "A")
    edit_json(p, lambda d: (d.update(run={"core": 3}), d["host"].update(numa={"nodes": 2}),
                            d["host"]["cpu"].update(flags=["vmx"])))
    load_bundle(p)
    edit_json(p, lambda d: d["cases"][0].update(unit="ns"))
    one_line_error(load_bundle, p, match=r"schema violation at cases/0.*unit")


def test_sample_file_problems(tmp_path):
    p = make_bundle(tmp_path, "A")
    np.save(p / "samples/case1-r0.npy", np.zeros(0, dtype=np.uint64))
    reseal(p)
    one_line_error(load_bundle, p, match="samples/case1-r0.npy: (empty sample file|size)")
    p = make_bundle(tmp_path, "B")
    f = p / "samples/case2-r0.npy"
    f.write_bytes(f.read_bytes()[:-8])                         # one sample short
    reseal(p)
    one_line_error(load_bundle, p, match="truncated or padded")
    p = make_bundle(tmp_path, "C")
    np.save(p / "samples/case2-r0.npy", np.arange(5, dtype=np.int64))
    reseal(p)
    one_line_error(load_bundle, p, match="expected a 1-D uint64 array")
    p = make_bundle(tmp_path, "D")
    np.save(p / "samples/stray.npy", np.arange(5, dtype=np.uint64))
    reseal(p)
    one_line_error(load_bundle, p, match="extra sample file samples/stray.npy")
    p = make_bundle(tmp_path, "E")
    (p / "samples/case4-r0.npy").write_bytes(b"garbage, not numpy")
    reseal(p)
    one_line_error(load_bundle, p, match="not a valid .npy file")


def test_empty_npy_with_matching_stats_is_still_refused(tmp_path):
    p = make_bundle(tmp_path, "A", cases=(1,), baselines=False)
    np.save(p / "samples/case1-r0.npy", np.zeros(0, dtype=np.uint64))
    edit_json(p, lambda d: d["cases"][0]["stats"].update(n=0))
    one_line_error(load_bundle, p, match="(schema violation at cases/0/stats/n|empty sample file)")


def test_recheck_catches_edited_numbers_with_resealed_checksums(tmp_path):
    p = make_bundle(tmp_path, "A")
    edit_json(p, lambda d: d["cases"][0]["stats"].update(median=1.0))
    b = load_bundle(p)                       # consistent checksums and schema...
    one_line_error(recheck_stats, b, match=r"stats of 'case1-r0' do not match its samples \(median\)")


def test_bundle_json_is_utf8_and_stable(tmp_path):
    p = make_bundle(tmp_path, "A")
    text = (p / "bundle.json").read_text(encoding="utf-8")
    assert "user→kernel" in text and json.loads(text)["schema_version"] == SCHEMA_VERSION
