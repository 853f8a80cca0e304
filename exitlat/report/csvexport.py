"""Tables for spreadsheets and data frames: `invoke export --format csv` (one row per bundle and
case entry, statistics and metadata; docs/bundles.md "CSV export") and `invoke compare --csv`
(one row per compared entry and bundle). Every number is one the bundle document or compare
already holds (entry `stats`, the across-VM summaries of exitlat.report.vmruns, compare's
cells): nothing is recomputed here. Empty cell: no value (null)."""

import csv
import io
import sys
from pathlib import Path

from exitlat.stats import otherpath
from exitlat.bundle.read import Bundle
from .meta import META_COLUMNS, meta_columns
from exitlat.report.vmruns import case_summaries, identity, label

STAT_KEYS = ["min", "p1", "p5", "p25", "p50", "p75", "p90", "p95", "p99", "p99_9", "max",
             "mean", "stdev", "mad"]

CASE_COLUMNS = (
    ["key", "entry", "case", "repeat", "flow", "instruction", "msr", "port", "timer",
     "expected_path", "iterations",
     "vm_runs", "headline_runs", "headline_median", "headline_ci95_low", "headline_ci95_high",
     "vm_median_min", "vm_median_max", "vm_rel_spread", "headline_median_ns",
     "n"] + STAT_KEYS +
    ["median_ci95_low", "median_ci95_high", "median_ns", "p99_ns",
     "net_baseline", "net_median", "net_ci95_low", "net_ci95_high",
     "verification", "verification_detail", "other_path_max", "exit_reason_per_iter",
     "userspace_exits_per_iter",
     "tracing_overhead", "tsc_backwards"])

EXPORT_COLUMNS = META_COLUMNS + CASE_COLUMNS


def _pair(v, i):
    return None if not v else v[i]


def case_rows(b: Bundle) -> list[dict]:
    """One row per case entry (each case of each VM run) of a bundle: EXPORT_COLUMNS."""
    meta = meta_columns(b)
    sums = {tuple(s["identity"]): s for s in case_summaries(b)}
    rows = []
    for e in b.doc["cases"]:
        s = sums[identity(e)]
        st = e["stats"] or {}
        ns = st.get("ns") or {}
        net = e.get("net_cycles") or {}
        ver = e["verification"]
        over = e.get("tracing_overhead_cycles") or {}
        row = dict(meta)
        row.update({
            "key": e["key"], "entry": label(identity(e)), "case": e["case"], "repeat": e.get("repeat", 0),
            "flow": e["flow"], "instruction": e["instruction"], "msr": e["msr"], "port": e["port"],
            "timer": e["timer"], "expected_path": e["expected_path"], "iterations": e["iterations_requested"],
            "vm_runs": s["R"], "headline_runs": s["pooled"], "headline_median": s["median"],
            "headline_ci95_low": _pair(s["ci95"], 0), "headline_ci95_high": _pair(s["ci95"], 1),
            "vm_median_min": _pair(s["spread"], 0), "vm_median_max": _pair(s["spread"], 1),
            "vm_rel_spread": s["rel_spread"], "headline_median_ns": (s["ns"] or {}).get("median"),
            "n": st.get("n"),
            **{k: st.get("median" if k == "p50" else k) for k in STAT_KEYS},
            "median_ci95_low": _pair(st.get("median_ci95"), 0),
            "median_ci95_high": _pair(st.get("median_ci95"), 1),
            "median_ns": ns.get("median"), "p99_ns": ns.get("p99"),
            "net_baseline": net.get("baseline"), "net_median": net.get("median"),
            "net_ci95_low": _pair(net.get("ci95"), 0), "net_ci95_high": _pair(net.get("ci95"), 1),
            "verification": ver["status"], "verification_detail": ver.get("detail"),
            "other_path_max": otherpath.fraction(e),
            "exit_reason_per_iter": ver.get("expected_reason_per_iter"),
            "userspace_exits_per_iter": ver.get("userspace_exits_per_iter"),
            "tracing_overhead": over.get("difference"), "tsc_backwards": e.get("tsc_backwards"),
        })
        rows.append(row)
    return rows


COMPARE_COLUMNS = ["entry", "kind", "case", "instruction", "msr", "timer", "column", "bundle",
                   "host", "cpu_model", "accel", "reference", "unit", "vm_runs", "pooled", "n", "median",
                   "ci95_low", "ci95_high", "vm_median_min", "vm_median_max", "vm_rel_spread",
                   "ratio", "ratio_ci95_low", "ratio_ci95_high", "significant", "min_effect",
                   "note", "other_path_max", "not_exit_timings"]


def compare_rows(res: dict) -> list[dict]:
    """compare()'s table in long form: one row per entry and bundle (pivot it for a matrix)."""
    rows = []
    for r in res["rows"]:
        ident = r.get("identity") or []
        kind = ident[0] if ident else None
        for col, c in zip(res["columns"], r["cells"]):
            rows.append({
                "entry": r["entry"], "kind": kind,
                "case": ident[1] if kind == "case" else None,
                "instruction": ident[2] if kind == "case" else None,
                "msr": ident[3] if kind == "case" else None,
                "timer": ident[4] if kind == "case" else None,
                "column": col["letter"], "bundle": col["bundle"], "host": col["host"],
                "cpu_model": col["cpu_model"], "accel": col["accel"], "reference": res["reference"],
                "unit": res["unit"], "vm_runs": c["R"], "pooled": c["pooled"], "n": c["n"],
                "median": c["median"],
                "ci95_low": _pair(c["ci95"], 0), "ci95_high": _pair(c["ci95"], 1),
                "vm_median_min": _pair(c["spread"], 0), "vm_median_max": _pair(c["spread"], 1),
                "vm_rel_spread": c["rel_spread"], "ratio": c["ratio"],
                "ratio_ci95_low": _pair(c["ratio_ci95"], 0),
                "ratio_ci95_high": _pair(c["ratio_ci95"], 1), "significant": c["significant"],
                "min_effect": res["min_effect"], "note": c["note"],
                "other_path_max": c["other_path_max"],
                "not_exit_timings": res["not_exit_timings"].get(col["bundle"])})
    return rows


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(v, exact: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        return str(int(v))
    if isinstance(v, str) and not exact and v.startswith(FORMULA_STARTS):
        # free text from a bundle (a label, a host name from someone else's server): shown, not
        # run; numbers are never text here, so no figure is touched
        return "'" + v
    return str(v)


def csv_text(columns: list[str], rows: list[dict], exact: bool = False) -> str:
    """The CSV of rows. Text cells that a spreadsheet would run as a formula get a leading ' unless
    `exact` (docs/bundles.md: the policy)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c), exact) for c in columns])
    return buf.getvalue()


def write_text(output, text: str) -> Path | None:
    """Write text to output ('-': stdout) through a temporary file and a rename, so a reader never
    sees half a file; an existing file is replaced (these are views, made again at will)."""
    if str(output) == "-":
        sys.stdout.write(text)
        return None
    out = Path(output)
    tmp = out.with_name(f".tmp-{out.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
