"""What a reader sees of the verdicts (issue 19, holes 6, 7, 12, 13): a failed timed window is not
shown as "skipped", headlines name the VM runs they pool and leave failed ones out, compare warns on
every verdict that is not passed, percentiles the other-path fraction covers are marked, '*' needs
the whole ratio interval beyond the minimum effect, and nothing is dropped without a word (VM runs
without samples, zero samples the guest did not count, run options that differ). On real bundles
written and loaded through the real code, and on documents the real DocumentBuilder assembled."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

import pytest

from bundle_fixtures import OMIT, example_doc, example_samples, with_stats
from cli_support import invoke
from exitlat.host.facts import collect_host
from exitlat.bundle.read import load_bundle
from exitlat.bundle.write import write_bundle
from exitlat.report.compare import compare, ratio_cell, render_compare
from exitlat.bundle.assemble import DocumentBuilder
from exitlat.report.html import render_page
from exitlat.report.text import render_report, report_json, warnings_for
from exitlat.report.vmruns import case_summaries, combine_runs
from exitlat.run.plan import BenchOptions, Placement, make_plan
from exitlat.run.runrecord import VmResult
from exitlat.run.windows import TimedWindow

INTEL = {"cpu": {"vendor": "GenuineIntel"}}
CLEAN = dict(tracing_before=[], tracing_after=[])


def bundle(root, name="A", edit=None, drop=(), slow=None, seed=1, **kw):
    """A fixture bundle; `drop`: sample keys that get no samples (a VM run that produced none);
    `slow`: {key: factor} multiplies those samples (a VM run that measured something else)."""
    doc = example_doc(**kw)
    if edit:
        edit(doc)
    samples = example_samples(doc, seed=seed)
    for k, f in (slow or {}).items():
        samples[k] = np.rint(samples[k] * f).astype(np.uint64)
    for k in drop:
        del samples[k]
    return load_bundle(write_bundle(Path(root), with_stats(doc, samples), samples,
                                    {"console-r0.log": b""}, name=name))


def set_verdict(key, status, **fields):
    def edit(d):
        for e in d["cases"]:
            if e["key"] == key:
                e["verification"].update(status=status, **fields)
    return edit


def build_doc(o: BenchOptions, results: list[VmResult]) -> dict:
    plan = replace(make_plan(o, INTEL, "kvm", Placement(1, 0, {"core": 1, "items": [], "isolated": True})),
                   manifest={"versions": {}, "artifacts": {}})
    doc, _samples, _files = DocumentBuilder(plan, 2e9).build(
        ["invoke", "bench"], collect_host(with_docker=False), results)
    return doc


# -- hole 6: failures are not masked downstream ---------------------------------------------------

def _no_verify_run() -> VmResult:
    n = 11000
    res = VmResult(samples={k: np.full(10000, 1200, dtype=np.uint64) for k in ("case1", "case3", "case5")})
    stats = {"exits": n + 3, "io_exits": 2}
    # the same boot's baseline measured the console: 2 I/O exits per window
    res.timed["baseline_timer"] = TimedWindow(kvm_stats={"exits": 3, "io_exits": 2}, **CLEAN)
    res.timed["case1"] = TimedWindow(kvm_stats=stats, tracing_before=["kvm/kvm_exit"], tracing_after=[])
    res.timed["case3"] = TimedWindow(kvm_stats=stats, tracing_before=None, tracing_after=[])
    res.timed["case5"] = TimedWindow(kvm_stats=stats, **CLEAN)
    return res


def test_no_verify_keeps_the_timed_windows_failure():
    o = BenchOptions(cases=[1, 3, 5], iterations=10000, warmup=1000, verify=False, baselines=False)
    doc = build_doc(o, [_no_verify_run()])
    by = {e["case"]: e for e in doc["cases"]}
    assert by[1]["timed_window"]["verdict"]["status"] == "failed"       # tracing was on
    assert by[1]["verification"]["status"] == "failed"                  # not "skipped"
    assert "tracing was enabled" in by[1]["verification"]["detail"]
    assert "traced window: skipped (--no-verify)" in by[1]["verification"]["detail"]
    assert by[3]["verification"]["status"] == "unverified"              # tracefs unreadable
    assert by[5]["verification"]["status"] == "skipped"                 # only the traced window
    assert by[5]["verification"]["other_path_max"] == by[5]["timed_window"]["verdict"]["other_path_max"]
    warns = warnings_for(doc)
    assert any(w.startswith("case1-r0: exit path verification FAILED") for w in warns), warns
    assert any(w.startswith("case3-r0: exit path UNVERIFIED") for w in warns), warns


def test_compare_warns_on_unverified_and_skipped_too(tmp_path):
    a = bundle(tmp_path, "A", cases=(1, 2), repeats=1)
    b = bundle(tmp_path, "B", seed=2, cases=(1, 2), repeats=1,
               edit=lambda d: (set_verdict("case1-r0", "unverified", detail="n too small")(d),
                               set_verdict("case2-r0", "skipped", detail="--no-verify")(d)))
    text = render_compare(compare([a, b]))
    assert "warning: B: exit path UNVERIFIED for case1-r0" in text
    assert "warning: B: exit path not verified (skipped) for case2-r0" in text


def test_a_failed_vm_run_is_left_out_of_the_headline_and_named(tmp_path):
    b = bundle(tmp_path, "A", cases=(1,), repeats=5, baselines=False, slow={"case1-r2": 3.0},
               edit=set_verdict("case1-r2", "failed", detail="another path"))
    (s,) = case_summaries(b)
    others = sorted(e["stats"]["median"] for e in b.doc["cases"] if e["key"] != "case1-r2")
    assert s["R"] == 4 and s["runs"] == ["r0", "r1", "r3", "r4"]
    assert s["median"] == (others[1] + others[2]) / 2                   # the median of the four
    assert s["pooled"] == "median of 4 VM runs (r0, r1, r3, r4 passed; r2 failed: excluded)"
    assert s["excluded_runs"] == [{"run": "r2", "why": "failed: excluded"}]
    text = render_report(b)
    assert "r0, r1, r3, r4 passed; r2 failed: excluded" in text          # the summary table
    assert "warning: headline case1 cpuid rdtscp: median of 4 VM runs" in text
    # pooling it anyway is a choice the API offers, and then it says so
    (s_all,) = case_summaries(b, pool_failed=True)
    assert s_all["R"] == 5 and "r2 FAILED: pooled" in s_all["pooled"]
    # compare marks the cell and says which runs its headline pools
    ref = bundle(tmp_path, "R", cases=(1,), repeats=5, baselines=False, seed=7)
    res = compare([ref, b])
    cell = res["rows"][0]["cells"][1]
    assert cell["R"] == 4 and cell["pool_issues"] and "r2 failed: excluded" in cell["pooled"]
    out = render_compare(res)
    assert re.search(r"R=4!", out) and "B case1 cpuid rdtscp r0-4: median of 4 VM runs" in out
    page = render_page([b])
    assert "r0, r1, r3, r4 passed; r2 failed: excluded" in page


def test_unverified_runs_are_pooled_and_said(tmp_path):
    b = bundle(tmp_path, "A", cases=(1,), repeats=5, baselines=False,
               edit=set_verdict("case1-r4", "unverified", detail="allowance too large"))
    (s,) = case_summaries(b)
    assert s["R"] == 5 and s["pooled"] == "median of 5 VM runs (r0–r3 passed; r4 UNVERIFIED: pooled)"
    clean = bundle(tmp_path, "C", cases=(1,), repeats=5, baselines=False)
    (c,) = case_summaries(clean)
    assert c["pooled"] == "median of 5 VM runs (r0–r4, all passed)"
    assert "every headline pools all of its VM runs" in render_compare(compare([clean, clean]))


# -- hole 7: percentiles the other-path fraction covers are marked ---------------------------------

@pytest.mark.parametrize("opm, marked", [(0.012, ("p99", "p99.9")), (0.004, ("p99.9",)),
                                         (0.0005, ()), (0.0, ())])
def test_report_marks_the_percentiles_another_path_may_hold(tmp_path, opm, marked):
    b = bundle(tmp_path, "A", cases=(1,), baselines=False, other_path_max=opm)
    text = render_report(b)
    st = b.doc["cases"][0]["stats"]
    row = next(line for line in text.splitlines() if line.startswith("case1-r0"))
    cells = row.split()
    p99, p999 = cells[cells.index(f"{int(st['median']):,}") + 1:][:2]
    assert p99.endswith("†") == ("p99" in marked) and p999.endswith("†") == ("p99.9" in marked), row
    if marked:
        pct = f"{100 * opm:.3g} %"
        assert f"† case1-r0 {', '.join(marked)}: may include up to {pct} other-path iterations" in text
        assert report_json(b)["other_path_notes"]
    else:
        assert "†" not in text


def test_html_marks_case_and_run_percentiles(tmp_path):
    b = bundle(tmp_path, "A", cases=(1, 2), repeats=3, baselines=False, other_path_max=0.012)
    page = render_page([b])
    assert page.count("<sup class=warn") >= 2 * (2 + 2 * 3)        # p99, p99.9: case rows and runs
    assert "A: p99, p99.9: may include up to 1.2 % other-path iterations (the largest over its VM runs)" in page
    assert "† A case1-r0–r2 p99, p99.9: may include up to 1.2 % other-path iterations" in page
    quiet = render_page([bundle(tmp_path, "Q", cases=(1, 2), repeats=3, baselines=False)])
    assert "<sup class=warn" not in quiet


def test_a_case_takes_the_largest_fraction_of_its_pooled_runs(tmp_path):
    def edit(d):
        for e, f in zip(d["cases"], (0.0002, 0.006, 0.0004)):
            e["verification"]["other_path_max"] = f
    b = bundle(tmp_path, "A", cases=(1,), repeats=3, baselines=False, edit=edit)
    (s,) = case_summaries(b)
    assert s["other_path_max"] == 0.006
    # a median can only be marked when half of the window may be another path
    big = bundle(tmp_path, "B", cases=(1,), repeats=3, baselines=False, other_path_max=0.6,
                 edit=lambda d: [e["verification"].update(status="unverified") for e in d["cases"]])
    out = render_compare(compare([b, big]))
    assert "† B case1 cpuid rdtscp r0-2 median: may include up to 60 % other-path iterations" in out
    assert re.search(r"\d†", out)


def test_unknown_fraction_is_a_warning_not_a_silence(tmp_path):
    old = bundle(tmp_path, "A", cases=(1, 2), other_path_max=OMIT)
    warns = warnings_for(old.doc)
    assert any(w.startswith("no bound on other-path iterations for case1-r0, case2-r0") for w in warns)
    tcg = bundle(tmp_path, "T", cases=(1,), accel="tcg")
    assert not any("other-path" in w for w in warnings_for(tcg.doc))


# -- hole 12: '*' needs the whole interval beyond the minimum effect -------------------------------

def _summary(median, se, r=5):
    return {"median": median, "se": se, "R": r}


def test_star_needs_the_whole_interval_beyond_the_minimum_effect():
    t = 2.776446                       # t(4): se_a = 0 leaves R_b − 1 degrees of freedom
    a = _summary(1000.0, 0.0)
    # CI [1.001, 1.02]: point estimate 1.0105 beyond 1%, but the interval reaches 1.001
    c = ratio_cell(a, _summary(1010.5, 9.5 / t), min_effect=0.01)
    assert c["ratio_ci95"] == pytest.approx([1.001, 1.02]) and c["ratio"] > 1.01
    assert c["significant"] is False
    assert ratio_cell(a, _summary(1020.5, 9.5 / t), min_effect=0.01)["significant"] is True   # [1.011, 1.03]
    assert ratio_cell(a, _summary(980.0, 5.0 / t), min_effect=0.01)["significant"] is True    # [0.975, 0.985]
    assert ratio_cell(a, _summary(990.0, 5.0 / t), min_effect=0.01)["significant"] is False   # [0.985, 0.995]
    assert ratio_cell(a, _summary(1010.5, 9.5 / t), min_effect=0.0)["significant"] is True    # CI excludes 1


def test_star_on_bundles_through_the_command_line(tmp_path):
    """Bundles whose VM medians give a ratio of 1.011 with CI ≈ [1.0012, 1.0208]: no '*' at 1%."""
    res = tmp_path / "results"
    for name, meds in (("A", [1000] * 5), ("B", [998, 1001, 1011, 1011, 1012])):
        doc = example_doc(cases=(1,), repeats=5, baselines=False)
        samples = {f"case1-r{i}": np.full(2000, m, dtype=np.uint64) for i, m in enumerate(meds)}
        write_bundle(res, with_stats(doc, samples), samples, {"console-r0.log": b""}, name=name)
    cell = compare([load_bundle(res / "A"), load_bundle(res / "B")], min_effect=0.01)["rows"][0]["cells"][1]
    lo, hi = cell["ratio_ci95"]
    assert cell["ratio"] == pytest.approx(1.011) and 1.001 < lo < 1.002 and 1.02 < hi < 1.021
    assert cell["significant"] is False
    r = invoke("compare", "A", "B", "--min-effect", "1%", results=res)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("case1"))
    assert "1.011 [1.001, 1.021]" in row and not row.rstrip().endswith("*"), row
    r = invoke("compare", "A", "B", "--min-effect", "0%", results=res)
    row = next(line for line in r.stdout.splitlines() if line.startswith("case1"))
    assert row.rstrip().endswith("*"), row


# -- hole 13: nothing dropped silently --------------------------------------------------------------

def test_a_vm_run_without_samples_is_named(tmp_path):
    b = bundle(tmp_path, "A", cases=(1,), repeats=3, baselines=False, drop=("case1-r1",),
               edit=lambda d: d.update(status={"state": "incomplete", "reason": "VM r1 failed to boot"}))
    (s,) = case_summaries(b)
    assert s["R"] == 2 and s["missing_runs"] == ["r1"]
    assert s["pooled"] == "median of 2 VM runs (r0, r2 passed; r1 no samples: left out)"
    assert {"kind": "missing", "repeat": None, "detail": "r1"} in s["warnings"]
    assert "warning: headline case1 cpuid rdtscp: median of 2 VM runs (r0, r2 passed; r1 no samples: " \
           "left out)" in render_report(b)
    assert combine_runs([None, None])["warnings"][0]["kind"] == "missing"


def _run_with_zeros(zeros: int, guest_says):
    arr = np.full(1000, 1200, dtype=np.uint64)
    arr[:zeros] = 0
    res = VmResult(samples={"case1": arr})
    res.timed["case1"] = TimedWindow(kvm_stats={"exits": 1103, "io_exits": 2}, **CLEAN)
    res.tsc_backwards = {"case1": guest_says}
    return res


@pytest.mark.parametrize("guest_says, warned", [(3, None), (5, "the guest counted 5"),
                                                (None, "the guest did not say")])
def test_dropped_zeros_are_reconciled_with_the_guests_count(guest_says, warned):
    o = BenchOptions(cases=[1], iterations=1000, warmup=100, verify=False, baselines=False)
    doc = build_doc(o, [_run_with_zeros(3, guest_says)])
    assert doc["cases"][0]["tsc_backwards"] == 3 and doc["cases"][0]["stats"]["n"] == 997
    hits = [w for w in warnings_for(doc) if "zero samples dropped" in w]
    if warned is None:
        assert hits == []
    else:
        assert len(hits) == 1 and hits[0].startswith("case1-r0: 3 zero samples dropped") and warned in hits[0]


def test_traced_windows_zeros_are_reconciled_too(tmp_path):
    def edit(d):
        d["run"] = {"tsc_backwards": [{"case1": 0, "case1_traced": 4}]}
        d["cases"][0]["verification_window"] = {"stats": {"n": 498}, "tsc_backwards": 2, **TRACED}
    doc = example_doc(cases=(1,), baselines=False)
    edit(doc)
    doc = with_stats(doc, example_samples(doc))
    hits = [w for w in warnings_for(doc) if "zero samples dropped" in w]
    assert hits == ["case1-r0 traced window: 2 zero samples dropped, but the guest counted 4 "
                    "(tsc_backwards): the samples read back are not what the guest stored"]


TRACED = {"iterations_requested": 2000, "samples_kept": 0, "backend": "hist", "counts": None,
          "kvm_stats": None, "stats": None, "samples_file": None, "verdict": {"status": "passed", "detail": None}}


def _setup(debugcon="null", vapic=True, backend="hist", **opts):
    def edit(d):
        argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host,migratable=no,+invtsc"]
        if vapic:
            argv += ["-global", "kvm-apic.vapic=off"]
        argv += ["-chardev", "file,id=dbg,path=/run/x/debugcon.out" if debugcon == "file" else "null,id=dbg",
                 "-device", "isa-debugcon,iobase=0xe9,chardev=dbg"]
        d["qemu"]["command_line"] = argv
        d["options"].update(debugcon="auto", tracing="auto", verify_iterations=None, **opts)
        d["run"] = {"verify_iterations": 2000}
        for e in d["cases"]:
            e["verification_window"] = {**TRACED, "iterations_requested": 2000, "backend": backend}
    return edit


def test_compare_warns_when_run_options_differ(tmp_path):
    a = bundle(tmp_path, "A", cases=(1, 2), edit=_setup())
    assert not any("run option" in w for w in compare([a, bundle(tmp_path, "S", cases=(1, 2), seed=2,
                                                                   edit=_setup())])["unfair"]["S"])
    b = bundle(tmp_path, "B", cases=(1, 2), seed=2, edit=_setup(
        debugcon="file", vapic=False, backend="stream", port=0x80, timer="lfence", warmup=50,
        instr="vmcall"))
    def more(d):
        _setup()(d)
        d["options"]["iterations"] = 3000
        d["options"]["repeat"] = 3
        d["run"]["verify_iterations"] = 500
    c = bundle(tmp_path, "C", cases=(1, 2), seed=3, edit=more)
    res = compare([a, b, c])
    ub, uc = "\n".join(res["unfair"]["B"]), "\n".join(res["unfair"]["C"])
    for needle in ("run option --debugcon differs: A: 'null' vs B: 'file' (file puts a write(2) in every QEMU exit)",
                   "run option --port differs: A: 233 vs B: 128", "run option --timer differs",
                   "run option --tracing differs: A: 'hist' vs B: 'stream'", "run option --warmup differs",
                   "run option --instr differs: A: 'cpuid' vs B: 'vmcall'",
                   "run option vapic differs: A: 'off' vs B: 'QEMU default (on)'"):
        assert needle in ub, (needle, ub)
    for needle in ("run option --iterations differs: A: 2000 vs C: 3000", "run option --repeat differs",
                   "run option --verify-iterations differs: A: 2000 vs C: 500"):
        assert needle in uc, (needle, uc)
    assert "unfair: run option --debugcon differs" in render_compare(res)


def test_debugcon_auto_resolves_by_accel_without_a_command_line(tmp_path):
    def edit(d):
        d["qemu"]["command_line"] = None
        d["options"]["debugcon"] = "auto"
    a = bundle(tmp_path, "A", cases=(1,), edit=edit)
    b = bundle(tmp_path, "B", cases=(1,), seed=2, edit=lambda d: (edit(d), d["options"].update(debugcon="file")))
    assert any("--debugcon differs: A: 'null' vs B: 'file'" in w for w in compare([a, b])["unfair"]["B"])


# -- what a reader sees: the page in a real browser ------------------------------------------------

def test_page_with_an_unverified_run_and_marked_tails_in_browser(tmp_path):
    """report --html through the CLI, rendered by headless Chromium (skips without it, as
    test_html does): the verdicts, the pooled runs and the marks reach the rendered text."""
    from test_html import browse, self_contained, text_of

    def edit(d):
        set_verdict("case2-r1", "unverified", detail="allowance 26% of n")(d)
        set_verdict("case1-r2", "failed", detail="2.00 exits per iteration")(d)
        for e in d["cases"]:
            if e["case"] == 2:
                e["verification"]["other_path_max"] = 0.012
    res = tmp_path / "results"
    res.mkdir()
    bundle(res, "U", cases=(1, 2), repeats=3, edit=edit)
    page = tmp_path / "u.html"
    r = invoke("report", "U", "--html", page, results=res)
    assert r.returncode == 0, r.stderr
    assert "† case2-r0–r2 p99, p99.9: may include up to 1.2 % other-path iterations" in r.stdout
    self_contained(page.read_text())
    text = re.sub(r"\s+", " ", text_of(browse(page, tmp_path, "report-unverified-marked.png")))
    for needle in ("1 FAILED", "1 UNVERIFIED", "r0, r1 passed; r2 failed: excluded",
                   "r0, r2 passed; r1 UNVERIFIED: pooled",
                   "† A: p99, p99.9: may include up to 1.2 % other-path iterations (the largest over its VM runs)",
                   "† A case2-r0–r2 p99, p99.9: may include up to 1.2 % other-path iterations",
                   "case1-r2: exit path verification FAILED"):
        assert needle in text, needle


def test_the_guests_apic_mode_is_reported_and_compared(tmp_path):
    """guest.apic_mode: on the report's guest line, checked by the schema, and a setup difference
    for compare where both bundles record it (bundles before the field record none)."""
    x2 = bundle(tmp_path, "X2", cases=(5,), edit=lambda d: d["guest"].update(apic_mode="x2apic"))
    xa = bundle(tmp_path, "XA", cases=(5,), seed=2, edit=lambda d: d["guest"].update(apic_mode="xapic"))
    old = bundle(tmp_path, "OLD", cases=(5,), seed=3)
    assert "APIC xapic" in next(ln for ln in render_report(xa).splitlines() if ln.startswith("guest:"))
    assert "APIC" not in next(ln for ln in render_report(old).splitlines() if ln.startswith("guest:"))
    res = compare([x2, xa, old])
    assert "guest APIC mode differs: X2: 'x2apic' vs XA: 'xapic'" in res["unfair"]["XA"]
    assert not any("APIC" in w for w in res["unfair"]["OLD"])
    with pytest.raises(Exception, match="apic_mode"):
        bundle(tmp_path, "BAD", cases=(5,), edit=lambda d: d["guest"].update(apic_mode="x3apic"))
