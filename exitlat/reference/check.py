"""`invoke validate` on a bundle's `reference` section, beyond its schema: every figure it states is
recomputed from what it rests on (exitlat's side from the cases' statistics, the mean and the
ratio from vmexit.flat's per-run figures), so an edited section fails closed, in one line."""

from __future__ import annotations

import math
import statistics

from exitlat.errors import ExitlatError

from .section import exitlat_side, ratio_ci
from .tests import TESTS

REL_TOL = 1e-6


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-9)


def check_reference(doc: dict) -> None:
    ref = doc.get("reference")
    if ref is None:
        return
    for t in ref["tests"]:
        name = t["test"]
        where = f"reference test {name}"
        if name not in TESTS:
            raise ExitlatError(f"{where}: not a vmexit.flat test exitlat knows")
        if t["kind"] != TESTS[name].kind:
            raise ExitlatError(f"{where}: kind {t['kind']!r}, but {name} is exitlat's {TESTS[name].kind!r}")
        runs = [vm["values"][name] for vm in ref["runs"] if vm["status"] == "complete"
                and name in vm["values"]]
        if [float(v) for v in runs] != [float(v) for v in t["values"]]:
            raise ExitlatError(f"{where}: values {t['values']} are not the runs' figures {runs}")
        if not _close(t["mean"], statistics.fmean(runs) if runs else None):
            raise ExitlatError(f"{where}: mean {t['mean']} is not the mean of its values")
        if t["kind"] and t["exitlat"] is not None:
            ours = exitlat_side(doc, t["kind"])
            if ours is None or not _close(ours["mean"], t["exitlat"]["mean"]) or \
                    [round(m, 6) for m in ours["means"]] != [round(m, 6) for m in t["exitlat"]["means"]]:
                raise ExitlatError(f"{where}: exitlat's means do not match the cases' statistics")
        if t["compared"] == "corrected":
            _check_corrected(ref, t, where)
        if t["ratio"] is not None:
            ref_vals = t["values"] if t["compared"] == "raw" else (t.get("corrected") or {}).get("values")
            if not ref_vals or t["exitlat"] is None:
                raise ExitlatError(f"{where}: a ratio without the figures it rests on")
            r, _ci, _ = ratio_ci(ref_vals, t["exitlat"]["means"])
            if not _close(r, t["ratio"]):
                raise ExitlatError(f"{where}: ratio {t['ratio']} is not exitlat's mean over "
                                   f"vmexit.flat's ({r})")
            if t["compared"] == "raw" and not t["exits"].get("as_named"):
                raise ExitlatError(f"{where}: a raw comparison of a loop that is not what its name says")


def _check_corrected(ref: dict, t: dict, where: str) -> None:
    """A corrected figure is the test's figure less its extra exits per iteration, each costed at
    the same VM run's figure of a clean test of that reason (perloop.corrected_value)."""
    from .perloop import corrected_value

    corr = t.get("corrected") or {}
    e = t["exits"]
    clean = {o["exits"]["named_reason"]: (o["test"], o["values"]) for o in ref["tests"]
             if o["exits"].get("as_named") and o["values"]}
    want = []
    for i, v in enumerate(t["values"]):
        costs = {r: (n, vals[i]) for r, (n, vals) in clean.items() if i < len(vals)}
        value, _ = corrected_value(v, e.get("per_iteration") or {}, e["named_reason"], costs)
        want.append(value)
    if None in want or len(want) != len(corr.get("values") or []) or \
            not all(_close(a, b) for a, b in zip(want, corr["values"])):
        raise ExitlatError(f"{where}: corrected figures {corr.get('values')} are not its figures "
                           f"less its extra exits at the clean tests' figures ({want})")
