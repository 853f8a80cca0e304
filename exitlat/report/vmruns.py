"""Statistics across VM runs: the VM run (one `--repeat`) is the statistical unit.

Samples of one VM are not independent of each other (consecutive exits share caches, timer phase,
the host's state), and a fresh VM gets a new memory layout, new host-side allocations and a new
timer phase, so two VM runs of the same configuration differ by more than one run's own
order-statistic interval says. What a configuration *is* shows in how its VM runs scatter. So for
each case (and baseline) of a bundle with R repeats:

- each VM run is reduced to its median (the within-run statistics stay in each entry's `stats`);
- the **headline** is the median of the R per-VM medians;
- the **spread** is their min–max, and the relative spread (max − min) / headline;
- the **95% CI of the headline** is headline ± t(R−1) · c_R · s / √R, where s is the standard
  deviation of the per-VM medians and c_R = sqrt(R · Var(median of R standard normals)) turns the
  standard error of a mean into that of a median (c_2 = 1, c_3 = 1.161, → √(π/2)). s is never taken
  below what each VM's own sampling error implies (the rms of the per-VM median standard errors,
  from their order-statistic intervals) nor below the 1-cycle resolution of a median (1/√12).
  Student's t with R−1 degrees of freedom makes it honest for small R: coverage is ≥ 95% for
  normal VM-to-VM variation and stays above it for heavy-tailed variation (scripts/simulate_stats.py,
  docs/statistics.md).
- With R = 1 there is no CI: run-to-run variation is unknown, and the summary says so.

Everything here is +, −, ×, ÷, sqrt and math.fsum on floats from the bundle, with t quantiles from
a table: the same bits on every machine, so a summary stored in a document can be recomputed and
compared exactly.
"""

from __future__ import annotations

import math

import numpy as np

from exitlat.run.plan import RECOMMENDED_REPEAT

from exitlat.stats import otherpath
from exitlat.stats.summary import summarize

CI_METHOD = ("median of per-VM medians; 95% CI: headline ± t(R−1)·c_R·s/√R over the R VM runs "
             "(s: sd of the per-VM medians)")
DEFAULT_MIN_EFFECT = 0.01       # compare's '*' needs |ratio − 1| above this (1%)
SPREAD_WARN_KVM = 0.01          # relative spread of VM medians above this: host noise (KVM)
SPREAD_WARN_EMULATED = 0.10     # the same for TCG / emulated hosts (their timings are not exits)
TAIL_WARN_P99 = 1.5             # a VM's p99 / median above this: frequent interference
STALL_WARN_MAX = 1000.0         # a VM's max / median above this: a long stall (vCPU descheduled?)
MAX_SUGGESTED_REPEAT = 50
QUANTUM = 1.0 / math.sqrt(12.0)  # sd of rounding to whole cycles: the floor of s (cycles)
_Z975 = 1.959963984540054

# Student's t, 97.5% quantile, df 1..30 (to 6 decimals, rounded up); above 30 a Cornish–Fisher
# expansion (error < 3e-8 at df 31, smaller beyond).
_T975 = (12.706205, 4.302653, 3.182447, 2.776446, 2.570582, 2.446912, 2.364625, 2.306005,
         2.262158, 2.228139, 2.200986, 2.178813, 2.160369, 2.144787, 2.131450, 2.119906,
         2.109816, 2.100923, 2.093025, 2.085964, 2.079614, 2.073874, 2.068658, 2.063899,
         2.059539, 2.055530, 2.051831, 2.048408, 2.045230, 2.042273)

# c_R = sqrt(R * Var(median of R iid N(0, 1))), R = 1..20, rounded up to 3 decimals (numerical
# integration of the order-statistic densities; `scripts/simulate_stats.py --constants` recomputes
# them). Odd R approach sqrt(pi/2) = 1.2533 from below, even R more slowly; above 20 that limit is
# used (conservative).
_C_MEDIAN = (1.0, 1.0, 1.161, 1.093, 1.198, 1.136, 1.214, 1.160, 1.223, 1.177, 1.229,
             1.188, 1.233, 1.196, 1.236, 1.203, 1.238, 1.208, 1.239, 1.212)
_C_LIMIT = 1.2534


def t975(df: int) -> float:
    """97.5% quantile of Student's t with df degrees of freedom (df >= 1; fractional df are floored,
    which is conservative)."""
    df = int(df)
    if df < 1:
        raise ValueError("t975 needs df >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def median_factor(r: int) -> float:
    """c_R: standard error of the median of R normal values, in units of sigma / sqrt(R)."""
    return _C_MEDIAN[r - 1] if 1 <= r <= len(_C_MEDIAN) else _C_LIMIT


def welch_df(var_a: float, r_a: int, var_b: float, r_b: int) -> int:
    """Welch–Satterthwaite degrees of freedom of a difference of two estimates with variances
    var_a, var_b from r_a − 1 and r_b − 1 degrees of freedom, floored (>= 1)."""
    num = (var_a + var_b) ** 2
    den = var_a ** 2 / (r_a - 1) + var_b ** 2 / (r_b - 1)
    if den <= 0:
        return r_a + r_b - 2
    return max(1, min(r_a + r_b - 2, int(math.floor(num / den))))


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def repeats_needed(rel_sd: float, min_effect: float = DEFAULT_MIN_EFFECT) -> int | None:
    """The smallest R (>= 3) for which two bundles of R VM runs each, with this relative sd of the
    VM medians, give a ratio CI of about ±min_effect; None when more than MAX_SUGGESTED_REPEAT."""
    for r in range(3, MAX_SUGGESTED_REPEAT + 1):
        if t975(2 * (r - 1)) * median_factor(r) * rel_sd * math.sqrt(2.0 / r) <= min_effect:
            return r
    return None


def _to_ns(v, hz):
    if v is None or not hz:
        return None
    if isinstance(v, list):
        return [_to_ns(x, hz) for x in v]
    return float(v) * 1e9 / hz


def _within_se(st: dict) -> float:
    """Standard error of one VM's median from its order-statistic interval (assumes independent
    samples, so it is a lower bound: consecutive samples of one VM are correlated)."""
    lo, hi = st["median_ci95"]
    return (float(hi) - float(lo)) / (2 * _Z975)


def combine_runs(runs: list[dict], tsc_hz: float | None = None, *, loose: bool = False,
                 min_effect: float = DEFAULT_MIN_EFFECT, labels: list[str] | None = None,
                 excluded: dict | None = None) -> dict:
    """Combine the per-VM statistics of one case (exitlat.stats.summarize dicts, one per VM run,
    None for a run without samples) into the across-VM summary; see the module docstring.

    loose: TCG or emulated host (their numbers are not exit timings): a looser spread threshold
    and no tail warnings. labels name the runs in warnings (default r0, r1, ...). excluded: label →
    why, runs left out of the headline although they have samples (a failed verification).
    Every run that is not pooled is named: `missing_runs` (no samples) and `excluded_runs`, each
    with a warning, so that no run leaves the headline silently."""
    labels = labels or [f"r{i}" for i in range(len(runs))]
    excluded = excluded or {}
    have = [(lab, st) for lab, st in zip(labels, runs) if st is not None and lab not in excluded]
    missing = [lab for lab, st in zip(labels, runs) if st is None]
    left_out = [{"run": lab, "why": excluded[lab]} for lab, st in zip(labels, runs)
                if st is not None and lab in excluded]
    r = len(have)
    out: dict = {"R": r, "runs": [lab for lab, _ in have], "missing_runs": missing,
                 "excluded_runs": left_out,
                 "vm_medians": [st["median"] for _, st in have],
                 "vm_n": [st["n"] for _, st in have], "n": sum(st["n"] for _, st in have),
                 "median": None, "spread": None, "rel_spread": None, "sd": None, "se": None,
                 "df": None, "ci95": None, "ci_rel": None, "ci_method": CI_METHOD, "note": None,
                 "suggested_repeat": None, "warnings": [], "tsc_hz": float(tsc_hz) if tsc_hz else None,
                 "ns": None}
    warns = out["warnings"]
    if missing:
        warns.append({"kind": "missing", "repeat": None, "detail": ", ".join(missing)})
    for x in left_out:
        warns.append({"kind": "excluded", "repeat": None, "detail": f"{x['run']} {x['why']}"})
    if r == 0:
        out["note"] = "no samples" if not left_out else "no VM run to pool: " + "; ".join(
            f"{x['run']} {x['why']}" for x in left_out)
        return out
    meds = [float(m) for m in out["vm_medians"]]
    head = _median(meds)
    out["median"] = head
    out["spread"] = [min(meds), max(meds)]
    if r == 1:
        out["note"] = "run-to-run variation unknown (R=1)"
        out["suggested_repeat"] = RECOMMENDED_REPEAT
        warns.append({"kind": "single_run", "repeat": RECOMMENDED_REPEAT,
                      "detail": "run-to-run variation unknown (R=1): no CI across VM runs"})
    else:
        mean = math.fsum(meds) / r
        sd = math.sqrt(math.fsum((m - mean) ** 2 for m in meds) / (r - 1))
        within = math.sqrt(math.fsum(_within_se(st) ** 2 for _, st in have) / r)
        noise = max(sd, within)
        s = max(noise, QUANTUM)
        se = median_factor(r) * s / math.sqrt(r)
        half = t975(r - 1) * se
        out.update(sd=sd, se=se, df=r - 1, ci95=[max(0.0, head - half), head + half])
        if head > 0:
            out["rel_spread"] = (max(meds) - min(meds)) / head
            out["ci_rel"] = half / head
            need = repeats_needed(s / head, min_effect)
            out["suggested_repeat"] = need
            limit = SPREAD_WARN_EMULATED if loose else SPREAD_WARN_KVM
            if out["rel_spread"] > limit:
                warns.append({"kind": "spread", "repeat": need, "limit": limit,
                              "detail": f"{100 * out['rel_spread']:.1f}%"})
            # a CI as wide as the 1-cycle resolution of a short baseline is not noise: no warning
            if not loose and half / head > min_effect and noise >= QUANTUM:
                warns.append({"kind": "ci_width", "repeat": need,
                              "detail": f"±{100 * half / head:.1f}% at R={r}"})
    if not loose:
        rep_hint = max(RECOMMENDED_REPEAT, out["suggested_repeat"] or 0)
        for lab, st in have:
            m = float(st["median"])
            if m <= 0:
                continue
            if float(st["p99"]) / m > TAIL_WARN_P99:
                warns.append({"kind": "tail", "repeat": rep_hint,
                              "detail": f"{lab} p99 {float(st['p99']) / m:.1f}× median"})
            if float(st["max"]) / m > STALL_WARN_MAX:
                warns.append({"kind": "stall", "repeat": rep_hint,
                              "detail": f"{lab} max {float(st['max']) / m:,.0f}× median"})
    if tsc_hz:
        out["ns"] = {k: _to_ns(out[k], tsc_hz)
                     for k in ("vm_medians", "median", "spread", "sd", "se", "ci95")}
    return out


def summarize_runs(per_vm_samples: list, tsc_hz: float | None = None, **kw) -> dict:
    """The across-VM summary straight from raw samples (one uint64 array per VM run), e.g. before
    a bundle exists; `vm_stats` holds each run's full within-VM statistics."""
    stats = [summarize(np.asarray(s), tsc_hz) if len(s) else None for s in per_vm_samples]
    out = combine_runs(stats, tsc_hz, **kw)
    out["vm_stats"] = stats
    return out


# -- bundles --------------------------------------------------------------------------------------

def identity(e: dict) -> tuple:
    """What the repeats of one case (or baseline) share: they are samples of one configuration."""
    if "case" in e:
        return ("case", e["case"], e["instruction"], e["msr"], e["timer"])
    return ("baseline", e["name"])


def label(ident: tuple) -> str:
    if ident[0] == "case":
        _, n, instr, msr, timer = ident
        return f"case{n} {instr}{' ' + msr if msr else ''} {timer}"
    return f"baseline_{ident[1]}"


def group_entries(entries: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Entries grouped by identity() in order of first appearance, each group by repeat."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault(identity(e), []).append(e)
    return [(k, sorted(v, key=lambda e: e.get("repeat", 0))) for k, v in groups.items()]


def _doc_of(bundle_or_doc) -> dict:
    return bundle_or_doc.doc if hasattr(bundle_or_doc, "doc") else bundle_or_doc


def is_loose(doc: dict) -> bool:
    """TCG or an emulated host: timings that are not exit costs get the loose thresholds."""
    from exitlat.bundle.format import banner_for
    return banner_for(doc) is not None


# -- which VM runs a headline pools ----------------------------------------------------------------

EXCLUDED_VERDICTS = ("failed",)     # left out of a headline unless case_summaries(pool_failed=True)
_VERDICT_WORDS = {"passed": "passed", "failed": "FAILED: pooled", "unverified": "UNVERIFIED: pooled",
                  "skipped": "not verified (skipped): pooled",
                  "not_applicable": "nothing to verify (TCG)", None: "not checked"}
_ALL_WORDS = {"passed": "all passed", "skipped": "none verified (skipped): all pooled",
              "not_applicable": "nothing to verify (TCG)"}     # the others: "all " + the word


def entry_verdict(e: dict) -> str | None:
    """The verdict of one entry's VM run: a case's verification, a baseline's exit check (None
    where an older bundle has none)."""
    v = e.get("verification") if "case" in e else e.get("exit_check")
    return (v or {}).get("status")


def run_ranges(labels: list[str]) -> str:
    """r0, r1, r2, r4 → 'r0–r2, r4'."""
    nums = sorted({int(x[1:]) for x in labels if x[1:].isdigit()})
    if len(nums) != len(labels):
        return ", ".join(labels)
    parts, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(f"r{nums[i]}" if i == j else f"r{nums[i]}, r{nums[j]}" if j == i + 1
                     else f"r{nums[i]}–r{nums[j]}")
        i = j + 1
    return ", ".join(parts)


def pooled_text(s: dict) -> str:
    """Which VM runs a headline pools, and why any run of the entry is not pooled or not clean:
    'median of 5 VM runs (r0–r4, all passed)', 'median of 4 VM runs (r0, r1, r3, r4 passed; r2
    failed: excluded)', 'median of 5 VM runs (r0–r3 passed; r4 UNVERIFIED: pooled)'."""
    verdicts = s.get("verdicts") or {}
    by_word: dict[str, list[str]] = {}
    for lab in s["runs"]:
        by_word.setdefault(_VERDICT_WORDS.get(verdicts.get(lab), str(verdicts.get(lab))), []).append(lab)
    left = [f"{x['run']} {x['why']}" for x in s.get("excluded_runs", [])]
    left += [f"{run_ranges(s['missing_runs'])} no samples: left out"] if s["missing_runs"] else []
    r = s["R"]
    head = f"median of {r} VM run{'' if r == 1 else 's'}" if r else "no headline"
    if len(by_word) == 1 and not left:
        (word, labs), = by_word.items()
        if word == "not checked":
            return f"{head} ({run_ranges(labs)})"
        if r > 1:
            status = verdicts.get(labs[0])
            word = _ALL_WORDS.get(status, f"all {word}")
        return f"{head} ({run_ranges(labs)}, {word})"
    parts = [f"{run_ranges(labs)} {word}" for word, labs in by_word.items()] + left
    return f"{head} ({'; '.join(parts)})"


def pool_issues(s: dict) -> bool:
    """True when a headline leaves a run out or pools one that did not pass (or was not checked)."""
    verdicts = s.get("verdicts") or {}
    return bool(s.get("excluded_runs") or s["missing_runs"] or any(
        verdicts.get(lab) not in ("passed", "not_applicable", None) for lab in s["runs"]))


def pooling_warnings(summaries: list[dict]) -> list[str]:
    """One line per entry whose headline leaves a VM run out or pools a run that did not pass."""
    return [f"headline {s['entry']}: {pooled_text(s)}" for s in summaries if pool_issues(s)]


def case_summaries(bundle_or_doc, min_effect: float = DEFAULT_MIN_EFFECT, *,
                   pool_failed: bool = False) -> list[dict]:
    """One across-VM summary per case and baseline of a bundle (a Bundle, or a bundle document:
    it needs only the entries' `stats` and verdicts, so a document can use it before it is
    written). Each is combine_runs()'s dict plus: entry (label; baselines are named like their keys,
    baseline_timer), identity (what the pooled entries share), kind (case|baseline), case,
    instruction, msr, timer and flow for a case, name for a baseline, keys (the entries, by
    repeat), repeats, verdicts (run → verdict status), pooled (pooled_text), other_path_max (the
    largest over the pooled runs of a case; exitlat.stats.otherpath) and other_path_unknown (the
    pooled keys whose verdict states none).

    A VM run whose verification FAILED took (or may have taken) another path: it is left out of
    the headline (excluded_runs, a warning) unless pool_failed; unverified and unchecked runs are
    pooled and named in `pooled`."""
    from exitlat.bundle.format import entries, tsc_hz_of

    doc = _doc_of(bundle_or_doc)
    hz = tsc_hz_of(doc)
    loose = is_loose(doc)
    out = []
    for ident, group in group_entries(entries(doc)):
        labels = [f"r{e.get('repeat', 0)}" for e in group]
        verdicts = {lab: entry_verdict(e) for lab, e in zip(labels, group)}
        excluded = {} if pool_failed else {
            lab: f"{verdicts[lab]}: excluded" for lab, e in zip(labels, group)
            if verdicts[lab] in EXCLUDED_VERDICTS and e["stats"] is not None}
        s = combine_runs([e["stats"] for e in group], hz, loose=loose, min_effect=min_effect,
                         labels=labels, excluded=excluded)
        pooled_entries = [e for lab, e in zip(labels, group) if lab in s["runs"]]
        head = {"entry": label(ident), "identity": list(ident), "kind": ident[0],
                "keys": [e["key"] for e in group],
                "repeats": [e.get("repeat", 0) for e in group], "verdicts": verdicts,
                "other_path_max": otherpath.pooled(pooled_entries),
                "other_path_unknown": [e["key"] for e in pooled_entries
                                       if otherpath.unknown(e, doc.get("accel"))]}
        if ident[0] == "case":
            head.update(case=ident[1], instruction=ident[2], msr=ident[3], timer=ident[4],
                        flow=group[0].get("flow"))
        else:
            head["name"] = ident[1]
        summary = {**head, **s}
        summary["pooled"] = pooled_text(summary)
        out.append(summary)
    return out


def net_summary(case: dict, base: dict | None) -> dict | None:
    """headline(case) − headline(baseline), both case_summaries() dicts, with a 95% CI from both
    standard errors (Welch df; treating the two as independent is conservative, since a VM that
    is slow for the case tends to be slow for its baseline too). ci95 is None when either has R=1."""
    if base is None or case["median"] is None or base["median"] is None:
        return None
    out = {"baseline": base.get("entry"), "median": case["median"] - base["median"], "ci95": None}
    if case["se"] is not None and base["se"] is not None:
        va, vb = case["se"] ** 2, base["se"] ** 2
        half = t975(welch_df(va, case["R"], vb, base["R"])) * math.sqrt(va + vb)
        out["ci95"] = [out["median"] - half, out["median"] + half]
    return out


_KIND_TEXT = {
    "single_run": "run-to-run variation unknown (R=1): no CI across VM runs, and compare marks no "
                  "difference",
    "spread": "VM medians differ by more than {limit:g}% (host noise: see `invoke doctor`)",
    "ci_width": "CI95 across VM runs wider than the {effect:g}% difference compare can call real",
    "tail": "frequent interference (p99 above {tail:g}× the median: isolate the core, see "
            "`invoke doctor`)",
    "stall": "long stalls (max above {stall:g}× the median: the vCPU was descheduled?)",
}


def stability_warnings(summaries: list[dict], skip: tuple = (),
                       min_effect: float = DEFAULT_MIN_EFFECT) -> list[str]:
    """One line per kind of stability problem over a bundle's summaries, naming the entries and
    the --repeat that would help; kinds in `skip` are left out."""
    lines = []
    for kind, text in _KIND_TEXT.items():
        if kind in skip:
            continue
        hits = [(s, w) for s in summaries for w in s["warnings"] if w["kind"] == kind]
        if not hits:
            continue
        limit = max(w.get("limit", 0) for _, w in hits)
        text = text.format(limit=100 * limit, effect=100 * min_effect, tail=TAIL_WARN_P99,
                           stall=STALL_WARN_MAX)
        if kind == "single_run":
            what = ", ".join(s["entry"] for s, _ in hits[:4])
            if len(hits) > 4:
                what += f" (+{len(hits) - 4} more)"
            lines.append(f"{text}: {what}; measure with --repeat {RECOMMENDED_REPEAT} or more")
            continue
        what = ", ".join(f"{s['entry']} {w['detail']}" for s, w in hits[:4])
        if len(hits) > 4:
            what += f" (+{len(hits) - 4} more)"
        reps = [w["repeat"] for _, w in hits]
        if any(r is None for r in reps):
            hint = (f"even --repeat {MAX_SUGGESTED_REPEAT} would not resolve {100 * min_effect:g}%: "
                    "quiet the host first")
        else:
            hint = f"use --repeat {max(reps)} or more"
        lines.append(f"{text}: {what}; {hint}")
    return lines


SUMMARY_HEADERS = ["entry", "R", "VM runs pooled", "median", "median ns", "VM medians min–max",
                   "spread", "CI95 (across VMs)"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{int(v):,}" if float(v).is_integer() else f"{v:,.1f}"


def summary_rows(summaries: list[dict]) -> list[list]:
    """Rows for a report table of the across-VM summaries (SUMMARY_HEADERS)."""
    rows = []
    for s in summaries:
        ns = s["ns"] or {}
        spread = "-" if s["spread"] is None else f"{_fmt(s['spread'][0])}–{_fmt(s['spread'][1])}"
        rel = "-" if s["rel_spread"] is None else f"{100 * s['rel_spread']:.2f}%"
        if s["ci95"] is not None:
            ci = f"[{_fmt(s['ci95'][0])}, {_fmt(s['ci95'][1])}] ±{100 * s['ci_rel']:.2f}%" \
                if s["ci_rel"] is not None else f"[{_fmt(s['ci95'][0])}, {_fmt(s['ci95'][1])}]"
        else:
            ci = s["note"] or "-"
        med_ns = ns.get("median")
        pooled = s.get("pooled") or pooled_text(s)
        pooled = pooled[pooled.index("(") + 1:-1] if pooled.endswith(")") else pooled
        mark = ""
        if "median" in otherpath.covered(s.get("other_path_max"), ("median",)):
            mark = otherpath.MARK
        rows.append([s["entry"], s["R"], pooled, _fmt(s["median"]) + mark,
                     "-" if med_ns is None else f"{med_ns:,.1f}", spread, rel, ci])
    return rows
