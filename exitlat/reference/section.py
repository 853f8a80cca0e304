"""The bundle's `reference` section: what vmexit.flat said on this host, core and QEMU, what each of
its loops really exited with, and exitlat's own figures of the same exits beside it.

Apples to apples: vmexit.flat prints a mean, (t2 − t1) / iterations of its last round, so exitlat's
side is the *mean* of its case-5 samples of the same kind (its median beside it, as the report
shows it elsewhere). Both sides are taken per VM run; the ratio exitlat / vmexit.flat is the ratio of
the means over VM runs, with a Fieller 95 % interval from their run-to-run scatter (R ≥ 2 on both
sides). A test whose loop takes more exits than its name says is not compared raw: where its extra
exits have a clean vmexit.flat figure of their own (cpuid), a corrected figure is given with how it
was corrected, and the ratio uses that."""

from __future__ import annotations

import math
import statistics

from .perloop import console_io, corrected_value, describe, per_iteration
from .tests import COMPARED_CASE

SUITE = "kvm-unit-tests"
# The band inside which exitlat / vmexit.flat needs no explanation (docs/measuring.md): exitlat's
# sample adds one timer read (RDTSCP, ~20–60 cycles, 2–6 % of a ~1,000-cycle exit) that
# vmexit.flat's amortized loop does not, and the two guests differ (a Linux kernel with IRQs off
# against a bare test OS with IRQs on); beyond ±10 % / +20 % something else differs.
BAND = (0.9, 1.2)
LIKELY_CAUSES = {
    "above": ["exitlat's per-sample timer read (RDTSCP serializes; vmexit.flat reads RDTSC twice per "
              "round)", "interrupts or preemption inside exitlat's window (see its verdicts and "
              "other-path notes)", "a different guest state: the Linux guest's XCR0, MSRs, PMU "
              "or mitigations make KVM's entry/exit dearer", "extra exits in exitlat's loop"],
    "below": ["extra exits in vmexit.flat's loop not attributed (see its exits per iteration)",
              "host interrupts or frequency changes during the reference runs",
              "vmexit.flat's mean includes interrupts taken with IRQs on (exitlat's case 5 runs "
              "with IRQs off)"],
}


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def ratio_ci(ref: list[float], ours: list[float]) -> tuple[float | None, list | None, str | None]:
    """mean(ours) / mean(ref) with its 95 % interval over VM runs (Fieller), or a note why none."""
    from exitlat.report.compare import fieller
    from exitlat.report.vmruns import t975, welch_df

    a, se_a = _mean_se(ref)
    b, se_b = _mean_se(ours)
    if a is None or b is None:
        return None, None, "no figure on one side"
    if a <= 0:
        return None, None, "vmexit.flat's (corrected) figure is not positive"
    ratio = b / a
    if se_a is None or se_b is None:
        return ratio, None, "one VM run on a side: run-to-run variation unknown, no CI"
    ra, rb = se_a / a, se_b / b
    t = t975(welch_df(ra * ra, len(ref), rb * rb, len(ours)))
    ci = fieller(a, se_a, b, se_b, t)
    if ci:          # a ratio of two positive figures: Fieller's lower end may dip below 0
        ci = [max(0.0, ci[0]), ci[1]]
    return ratio, ci, (None if ci else "ratio CI unbounded: vmexit.flat's runs scatter too much")


def exitlat_side(doc: dict, kind: str) -> dict | None:
    """exitlat's case-5 entries of `kind`: per VM run its mean and median, and over the runs."""
    entries = [c for c in doc.get("cases", []) if c["case"] == COMPARED_CASE
               and c["instruction"] == kind and c.get("stats")]
    if not entries:
        return None
    means = [float(c["stats"]["mean"]) for c in entries]
    medians = [float(c["stats"]["median"]) for c in entries]
    return {"case": COMPARED_CASE, "keys": [c["key"] for c in entries], "means": means,
            "medians": medians, "mean": statistics.fmean(means),
            "median": statistics.median(medians), "timer": entries[0].get("timer"),
            "expected_path": entries[0].get("expected_path")}


def _band_warning(test: str, ratio: float, compared: str) -> str | None:
    lo, hi = BAND
    if lo <= ratio <= hi:
        return None
    side = "above" if ratio > hi else "below"
    return (f"exitlat / vmexit.flat for {test} is {ratio:.2f} ({compared}), {side} the band "
            f"{lo}–{hi}; likely causes: " + "; ".join(LIKELY_CAUSES[side]))


def build_section(runs, doc: dict, vendor: str, manifest: dict, emulated: str | None = None) -> dict:
    """The `reference` section from the reference's VM runs (exitlat.reference.runner) and the
    bundle document of the cases."""
    version = (manifest.get("versions") or {}).get("kvm_unit_tests") or {}
    timed = runs.timed
    complete = [vm for vm in timed if vm.status == "complete"]
    per_loop = {}
    base = runs.baseline
    base_exits = ((base.counts or {}).get("exits") or {}) if base and base.status == "complete" else None
    for t in runs.tests:
        vm = runs.traced.get(t.test)
        named = t.reason(vendor)
        if base_exits is None or vm is None or vm.status != "complete" or not vm.counts:
            why = (runs.error or (vm.reason if vm is not None and vm.reason else None)
                   or (base.reason if base is not None and base.reason else None)
                   or "no traced run (TCG or --no-verify)")
            per_loop[t.test] = {"named_reason": named, "measured": False, "as_named": False,
                                "detail": f"not measured: {why}"}
            continue
        console = console_io(vm.counts.get("pio")) - console_io((base.counts or {}).get("pio"))
        per_loop[t.test] = per_iteration(vm.counts.get("exits") or {}, base_exits, named, console,
                                         t.per_iteration)
        c = vm.counts
        if c.get("lost") or c.get("unparsed") or (base.counts or {}).get("lost"):
            per_loop[t.test].update(measured=False, as_named=False,
                                    detail="events were lost or unparsed: counts are lower bounds")
    # a clean test's figure costs the extra exits of the others (vmcall − 2 × cpuid)
    values = {t.test: [vm.values[t.test] for vm in complete if t.test in vm.values] for t in runs.tests}
    clean = {per_loop[t.test]["named_reason"]: (t.test, values[t.test])
             for t in runs.tests if per_loop[t.test].get("as_named") and values[t.test]}

    def costs(i=None) -> dict:
        """The clean figures by reason: of VM run i (a correction within one VM run), or the means."""
        return {r: (name, vals[i] if i is not None else statistics.fmean(vals))
                for r, (name, vals) in clean.items()}
    tests, warnings = [], []
    for t in runs.tests:
        vals = values[t.test]
        loop = per_loop[t.test]
        ours = exitlat_side(doc, t.kind) if t.kind else None
        entry = {"test": t.test, "kind": t.kind, "values": vals,
                 "mean": statistics.fmean(vals) if vals else None,
                 "skipped": any(t.test in vm.skipped for vm in complete),
                 "exits": loop, "note": t.note or None, "exitlat": ours,
                 "compared": None, "corrected": None, "ratio": None, "ratio_ci95": None,
                 "ratio_note": None, "in_band": None}
        if vals and ours and ours.get("expected_path") == "none":
            entry["ratio_note"] = ("not compared: exitlat's case 5 expects no VM exit for this kind "
                                   "on this host (path none): nothing to calibrate")
        elif vals and ours:
            if loop.get("as_named"):
                ref_vals, entry["compared"] = vals, "raw"
            elif loop.get("measured"):
                per, named = loop["per_iteration"], loop["named_reason"]
                corr, how = corrected_value(entry["mean"], per, named, costs())
                ref_vals = None
                if corr is None:
                    entry["ratio_note"] = (f"not compared: its loop takes "
                                           f"{describe(per, named)} exits per iteration ({how})")
                else:       # each VM run corrected with the clean figures of the same VM run
                    ref_vals = [corrected_value(v, per, named, costs(i))[0] for i, v in enumerate(vals)]
                    entry["corrected"] = {"mean": corr, "values": ref_vals, "how": how}
                    entry["compared"] = "corrected"
            else:
                ref_vals = None
                entry["ratio_note"] = f"not compared: its exits per iteration are unknown ({loop['detail']})"
            if ref_vals:
                r, ci, note = ratio_ci(ref_vals, ours["means"])
                entry.update(ratio=r, ratio_ci95=ci, ratio_note=note)
                if r is not None:
                    entry["in_band"] = BAND[0] <= r <= BAND[1]
                    w = _band_warning(t.test, r, f"exitlat mean vs vmexit.flat's "
                                      f"{'corrected ' if entry['compared'] == 'corrected' else ''}figure")
                    if w:
                        warnings.append(w + (f"; here above all: {emulated}" if emulated else ""))
        elif vals and t.kind and not ours:
            entry["ratio_note"] = f"no exitlat case {COMPARED_CASE} of {t.kind} in this bundle"
        if loop.get("measured") and not loop.get("as_named") and \
                not (ours and ours.get("expected_path") == "none"):
            warnings.append(f"vmexit.flat's {t.test} loop is not what its name says: {loop['detail']}; "
                            "its raw figure is not compared")
        tests.append(entry)
    state = "complete" if timed and len(complete) == len(timed) and not runs.error else "incomplete"
    reason = runs.error or next((vm.reason for vm in timed if vm.status != "complete"), None)
    return {
        "suite": SUITE, "test_binary": "x86/vmexit.flat",
        "version": version.get("version"), "tag": version.get("tag"), "commit": version.get("commit"),
        "git_tree": version.get("git_tree"),
        "sha256": (manifest.get("artifacts") or {}).get("vmexit.flat"),
        "command_line": timed[0].argv if timed else None,
        "compared_case": COMPARED_CASE, "band": list(BAND),
        "state": state, "reason": reason,
        "runs": [vm.to_dict() for vm in timed],
        "traced_runs": {"baseline": base.to_dict() if base else None,
                        **{k: v.to_dict() for k, v in runs.traced.items()}},
        "tests": tests, "warnings": warnings, "emulated": emulated,
    }
