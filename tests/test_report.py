"""report, compare, results, validate, plot on fixture bundles, through the real invoke CLI too."""

import json
import os
from pathlib import Path

import pytest

from bundle_fixtures import edit_json, make_bundle
from cli_support import invoke
from exitlat.bundle.read import load_bundle
from exitlat.bundle.format import SCHEMA_VERSION, TCG_BANNER
from exitlat.report.compare import compare, render_compare
from exitlat.report.text import fmt_cycles, render_report, report_json

REPO = Path(__file__).resolve().parent.parent


def test_report_text_and_json(tmp_path):
    b = load_bundle(make_bundle(tmp_path, "A"))
    text = render_report(b)
    c1 = b.doc["cases"][0]["stats"]
    assert "case1-r0" in text and "cpuid" in text and "outb 0xe9" in text
    assert fmt_cycles(c1['median']) in text and "passed (exit 1.00, user 0.00)" in text
    assert "Xeon(R) Gold 6338" in text and "6.8.0-45-generic" in text and "9.0.2" in text
    assert "baseline_syscall-r0" in text and TCG_BANNER not in text and "warning" not in text
    js = report_json(b)
    assert js["banner"] is None and js["cases"][0]["stats"]["median"] == c1["median"]
    json.dumps(js)


def test_report_warnings_and_tcg_banner(tmp_path):
    def edit(d):
        d["isolation"] = {"isolated": False, "items": [{"name": "governor", "ok": False, "detail": "powersave"}]}
        d["cases"][0]["verification"]["status"] = "failed"
        d["status"] = {"state": "incomplete", "reason": "interrupted (Ctrl-C)"}
    b = load_bundle(make_bundle(tmp_path, "T", accel="tcg", edit=edit))
    text = render_report(b, verbose=True)
    assert text.startswith(f"*** {TCG_BANNER} ***") and text.rstrip().endswith(f"*** {TCG_BANNER} ***")
    for w in ("NOT isolated", "isolation: governor: powersave", "run INCOMPLETE: interrupted",
              "verification FAILED"):
        assert w in text
    short = render_report(b)
    for w in ("not isolated: 1 item, see `invoke doctor", "run INCOMPLETE: interrupted",
              "exit path FAILED: case1-r0"):
        assert w in short, (w, short)
    assert "isolation: governor" not in short
    assert report_json(b)["banner"] == TCG_BANNER


def test_report_on_an_unisolated_tcg_machine_fits_one_screen(tmp_path):
    """Verdict and numbers first; the many isolation items of an ordinary machine become one line;
    at most 5 warning lines; a long kernel command line is cut (whole in --verbose and the bundle)."""
    items = [{"name": f"item{i}", "ok": False, "detail": "not tuned"} for i in range(14)]

    def edit(d):
        d["isolation"] = {"isolated": False, "items": items}
        d["host"]["kernel"]["cmdline"] = "console=ttyS0 " + "x" * 400
        d["guest"]["invariant_tsc"] = False
        for e in d["cases"][:3]:
            e["verification"] = {"status": "unverified", "detail": "n=20 is too small " + "y" * 300}
        for e in d["cases"] + d["baselines"]:
            e["tsc_backwards"] = 2
    b = load_bundle(make_bundle(tmp_path, "T", accel="tcg", edit=edit))
    lines = render_report(b).splitlines()
    table_end = max(i for i, ln in enumerate(lines) if ln.startswith("case"))
    assert table_end < 25, "\n".join(lines[:table_end + 1])
    assert lines[2].startswith("verdict: complete · core NOT isolated · paths:")
    warns = [ln for ln in lines if ln.startswith(("warning:", "stability:", "… "))]
    assert len(warns) <= 5, warns
    assert any(w.startswith("warning: the measured core not isolated: 14 items, see `invoke doctor")
               for w in warns), warns
    assert all(len(ln) < 260 for ln in warns), warns
    assert not any("x" * 100 in ln for ln in lines)
    full = render_report(b, verbose=True)
    assert "x" * 400 in full and full.count("isolation: item") == 14


def test_compare_ratio_significance_and_unfairness(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A", repeats=3))

    def edit(d):
        h = d["host"]
        h["cpu"]["microcode"] = "0xd0003b9"
        h["kernel"]["release"] = "6.9.1"
        h["kvm"]["parameters"]["kvm_intel.ple_gap"] = "0"
        h["vulnerabilities"]["spectre_v2"] = "Vulnerable"
        d["isolation"]["isolated"] = False
        d["qemu"]["version"] = "8.2.0"
        d["guest"]["kernel_release"] = "6.1.0"
    b = load_bundle(make_bundle(tmp_path, "B", seed=2, scale=1.5, edit=edit, repeats=3))
    res = compare([a, b])
    row = next(r for r in res["rows"] if r["entry"] == "case1 cpuid rdtscp r0-2")
    ca, cb = row["cells"]
    assert cb["ratio"] == pytest.approx(cb["median"] / ca["median"]) and 1.4 < cb["ratio"] < 1.6
    assert cb["ratio_ci95"][0] <= cb["ratio"] <= cb["ratio_ci95"][1] and cb["significant"] is True
    unfair = " | ".join(res["unfair"]["B"])
    for what in ("CPU differs", "host kernel differs", "KVM parameters differ in B: kvm_intel.ple_gap '128'→'0'",
                 "mitigations differ in B: spectre_v2", "isolation (isolated) differs", "QEMU version differs",
                 "guest kernel differs"):
        assert what in unfair, what
    text = render_compare(res)
    assert "1.5" in text and " *" in text and text.count("unfair:") == len(res["unfair"]["B"])
    # the same run against itself: ratio 1, nothing significant, nothing unfair
    same = compare([a, a])
    assert all(r["cells"][1]["ratio"] == 1.0 and not r["cells"][1]["significant"] for r in same["rows"])
    assert same["unfair"]["A"] == [] and "unfair" not in render_compare(same)


def test_compare_different_tsc_uses_ns_and_flags_tcg(tmp_path):
    a = load_bundle(make_bundle(tmp_path, "A"))
    b = load_bundle(make_bundle(tmp_path, "B", accel="tcg",
                                edit=lambda d: d["host"]["tsc"].update(hz=3_000_000_000)))
    res = compare([a, b])
    assert res["unit"] == "ns" and res["tcg"] == ["B"]
    assert any("TSC frequency differs" in w for w in res["unfair"]["B"])
    assert any("accel differs" in w for w in res["unfair"]["B"])
    assert TCG_BANNER in render_compare(res)


def test_cli_tasks(tmp_path):
    res_dir = tmp_path / "results"
    make_bundle(res_dir, "A", cases=(1, 2), baselines=False)
    make_bundle(res_dir, "B", cases=(1, 2), baselines=False, seed=3, scale=1.2)
    (res_dir / "junk").mkdir()                 # not a bundle at all (e.g. results/fleet/)
    (res_dir / "broken").mkdir()               # a bundle, damaged
    (res_dir / "broken" / "bundle.json").write_text("{")
    r = invoke("results", results=res_dir)
    assert r.returncode == 0 and "A " in r.stdout and "B " in r.stdout
    assert "invalid: broken" in r.stdout and "not bundles (no bundle.json): junk/" in r.stdout
    r = invoke("report", "A", "--json", results=res_dir)
    assert r.returncode == 0 and json.loads(r.stdout)["bundle"] == "A"
    r = invoke("compare", "A", "B", results=res_dir)
    assert r.returncode == 0 and "B/A" in r.stdout, r.stderr
    r = invoke("compare", "A", "B", "--more", str(res_dir / "A"), "--json", results=res_dir)
    assert r.returncode == 0 and json.loads(r.stdout)["bundles"] == ["A", "B", "A"]
    r = invoke("validate", "A", results=res_dir)
    assert r.returncode == 0 and r.stdout.startswith("ok:")
    out = tmp_path / "A.tar.gz"
    assert invoke("export", "A", "--output", str(out), results=res_dir).returncode == 0
    r = invoke("import", str(out), "--output", str(tmp_path / "other"), results=res_dir)
    assert r.returncode == 0 and (tmp_path / "other" / "A" / "bundle.json").is_file()


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    res_dir = tmp_path / "results"
    p = make_bundle(res_dir, "A", cases=(1,), baselines=False)
    edit_json(p, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    for args in (("report", "A"), ("validate", "A"), ("compare", "A", "A"), ("plot", "A"),
                 ("report", "nosuch"), ("export", "A")):
        r = invoke(*args, results=res_dir, cwd=tmp_path)
        assert r.returncode != 0, args
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)
    assert sorted(os.listdir(tmp_path)) == ["results"] and os.listdir(res_dir) == ["A"]
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    r = invoke("import", str(tmp_path / "bad.tar.gz"), results=res_dir)
    assert r.returncode != 0 and "truncated or corrupt" in r.stderr and os.listdir(res_dir) == ["A"]


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_plot_files(tmp_path, fmt, magic):
    p = make_bundle(tmp_path / "results", "A", cases=(1, 2), baselines=False, accel="tcg")
    r = invoke("plot", str(p), "--format", fmt, "--output", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    files = sorted(f.name for f in (tmp_path / "plots").iterdir())
    assert files == [f"case1-r0.{fmt}", f"case2-r0.{fmt}", f"overview.{fmt}"]
    for f in files:
        data = (tmp_path / "plots" / f).read_bytes()
        assert data.startswith(magic) and len(data) > 10_000
    if fmt == "svg":
        svg = (tmp_path / "plots" / "case1-r0.svg").read_text()
        assert "cycles" in svg and "ns" in svg and "NOT VM-exit timings" in svg
    assert TCG_BANNER in r.stdout
    load_bundle(p)                                    # plotting did not touch the bundle


def test_report_html_beside_json(tmp_path):
    res_dir = tmp_path / "results"
    make_bundle(res_dir, "A", cases=(1, 2), baselines=False, accel="tcg")
    page = tmp_path / "a.html"
    r = invoke("report", "A", "--json", "--html", str(page), results=res_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["banner"] == TCG_BANNER                # stdout stays JSON
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and f"⚠ {TCG_BANNER}" in html and "case2-r0" in html
    load_bundle(res_dir / "A")                                        # the bundle is untouched


def test_the_report_says_why_a_host_dependent_path_was_expected():
    """A kind whose path depends on the host shows the rule (and facts) it was judged by, once per
    kind and case; kinds with one path for every host add nothing."""
    from exitlat.report.text import path_basis_lines

    basis = "no exit (virtualized in hardware or passed through) on this host (intel, ept): x"
    doc = {"cases": [
        {"case": 5, "instruction": "toggle_cr4_pge", "path_basis": basis, "key": "a-r0"},
        {"case": 5, "instruction": "toggle_cr4_pge", "path_basis": basis, "key": "a-r1"},
        {"case": 5, "instruction": "cpuid", "path_basis": "KVM", "key": "b-r0"}]}
    lines = path_basis_lines(doc)
    assert lines[2:] == [f"  case5 toggle_cr4_pge: {basis}"]
    assert path_basis_lines({"cases": doc["cases"][2:]}) == []
