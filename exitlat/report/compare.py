"""`invoke compare A B [C...]`: the same cases side by side, pooled over each bundle's VM runs; the
ratio of each headline median to the first bundle's with a confidence interval from both sides'
VM-to-VM variation; a significance marker only for differences that are real; and a warning for
every difference in setup that makes the comparison unfair.

Each bundle's repeats of a case are samples of its configuration (exitlat.report.vmruns): the headline
is the median of the per-VM medians, with standard error se = c_R · s / √R (s: sd of the per-VM
medians). The ratio X/A = headline_X / headline_A gets Fieller's 95% interval for a ratio of two
independent estimates — the roots ρ of (x − ρa)² = t² (se_x² + ρ² se_a²) — with t from Student's t
at the Welch–Satterthwaite degrees of freedom of the two relative variances (floored: conservative).
It is exact for normal estimates, needs no random numbers and is unbounded (reported as null) when
A's own interval reaches 0.

'*' only when the whole interval lies beyond a minimum effect (default 1%, `min_effect`): both
ends above 1 + min_effect or both below 1 − min_effect. With enough VM runs any shift becomes
"significant", and one far below a percent is rarely what a reader is after; a point estimate past
the threshold with an interval reaching back towards 1 does not show an effect of that size.
With R = 1 on either side there is no interval and no '*': run-to-run variation is unknown.
docs/statistics.md has the method and its simulated false-positive rate and power. The ratio is taken in ns when the TSC rates differ
(cycles of different clocks are not comparable), else in cycles.
"""

import math

from .reference import compare_lines
from tabulate import tabulate

from exitlat.bundle.read import Bundle
from exitlat.errors import ExitlatError
from .meta import column, letter
from .text import fmt_cycles
from exitlat.stats import otherpath
from exitlat.report.vmruns import (DEFAULT_MIN_EFFECT, RECOMMENDED_REPEAT, case_summaries, group_entries, label,
                      pool_issues, stability_warnings, t975, welch_df)


def _diff(what: str, a, b, name_a: str, name_b: str) -> str | None:
    return None if a == b else f"{what} differs: {name_a}: {a!r} vs {name_b}: {b!r}"


def _dict_diff(what: str, a: dict, b: dict, name_b: str) -> str | None:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not keys:
        return None
    shown = ", ".join(f"{k} {a.get(k)!r}→{b.get(k)!r}" for k in keys[:4])
    return f"{what} differ in {name_b}: {shown}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def _fields_diff(what: str, a: dict, b: dict, keys: tuple, name_b: str) -> str | None:
    """Only the fields that differ: a line a reader can take in (CPU: microcode, model name)."""
    diff = [k for k in keys if a.get(k) != b.get(k)]
    if not diff:
        return None
    return f"{what} differs in {name_b}: " + ", ".join(f"{k} {a.get(k)!r}→{b.get(k)!r}" for k in diff)


def _debugcon(doc: dict) -> str | None:
    """How the debugcon port's bytes left QEMU: "file" (a write(2) in every S exit) or "null",
    from the QEMU command line, else from the options (auto: file under TCG, null under KVM)."""
    argv = (doc.get("qemu") or {}).get("command_line") or []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-chardev" and "id=dbg" in value.split(","):
            return value.split(",", 1)[0]
        if flag == "-debugcon":
            return value.split(":", 1)[0]
    opt = (doc.get("options") or {}).get("debugcon")
    if opt == "auto":
        return "file" if doc.get("accel") == "tcg" else "null"
    return opt


def _vapic(doc: dict) -> str | None:
    """QEMU's kvm-apic vapic (TPR patching: exits of its own), from the command line."""
    argv = (doc.get("qemu") or {}).get("command_line") or []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-global" and value.startswith("kvm-apic.vapic="):
            return value.split("=", 1)[1]
    return "QEMU default (on)" if argv and doc.get("accel") == "kvm" else None


def _backends(doc: dict) -> str | None:
    """The tracing backends the traced windows used, else the option as given."""
    used = sorted({(e.get("verification_window") or {}).get("backend") for e in doc.get("cases", [])}
                  - {None})
    if used:
        return ", ".join(used)
    return (doc.get("options") or {}).get("tracing")


def run_setup(doc: dict) -> dict:
    """The run options that change what a window costs or counts, as the run used them (None:
    the bundle does not say)."""
    o = doc.get("options") or {}
    run = doc.get("run") or {}
    return {"--debugcon": _debugcon(doc), "--port": o.get("port"), "--timer": o.get("timer"),
            "--tracing": _backends(doc), "--repeat": o.get("repeat"),
            "--iterations": o.get("iterations"), "--warmup": o.get("warmup"),
            "--verify-iterations": run.get("verify_iterations", o.get("verify_iterations")),
            "--instr": o.get("instr"), "vapic": _vapic(doc),
            "receiver core": _receiver(run)}


def _receiver(run: dict) -> str | None:
    """A two-vCPU run's receiving core, as where it sits from the sender's and whether it was
    isolated (None: a one-vCPU run, nothing to compare)."""
    if run.get("receiver_core") is None:
        return None
    relation = (run.get("topology") or {}).get("relation") or "unknown"
    isolated = (run.get("receiver_isolation") or {}).get("isolated")
    return f"{relation}, {'isolated' if isolated else 'not isolated'}"


_SETUP_WHY = {
    "--debugcon": "file puts a write(2) in every QEMU exit",
    "--port": "another port is another device model in QEMU",
    "--timer": "the timer's own cost is in every sample",
    "--tracing": "the traced windows, tracing overhead and decomposition differ",
    "--repeat": "a different number of VM runs per headline",
    "--iterations": "windows of another length",
    "--warmup": "another warm-up before each timed window",
    "--verify-iterations": "traced windows of another length",
    "--instr": "another exiting instruction",
    "vapic": "TPR-access patching adds userspace exits of its own",
    "receiver core": "an IPI between SMT siblings, one LLC or two sockets costs multiples apart",
}


def setup_unfairness(da: dict, db: dict, na: str, nb: str) -> list[str]:
    """One line per run option that differs (only where both bundles record it)."""
    a, b = run_setup(da), run_setup(db)
    return [f"run option {k} differs: {na}: {a[k]!r} vs {nb}: {b[k]!r} ({_SETUP_WHY[k]})"
            for k in a if a[k] is not None and b[k] is not None and a[k] != b[k]]


def unfairness(a: Bundle, b: Bundle) -> list[str]:
    """Every setup difference between bundle a (reference) and b, one line each."""
    da, db = a.doc, b.doc
    na, nb = a.name, b.name
    ha, hb = da["host"], db["host"]
    cpu_keys = ("vendor", "model_name", "family", "model", "stepping", "microcode", "smt")
    out = [
        _fields_diff("CPU", ha["cpu"], hb["cpu"], cpu_keys, nb),
        _diff("TSC frequency", a.tsc_hz, b.tsc_hz, na, nb),
        _diff("host kernel", ha["kernel"]["release"], hb["kernel"]["release"], na, nb),
        _diff("host kernel cmdline", ha["kernel"].get("cmdline"), hb["kernel"].get("cmdline"), na, nb),
        _diff("KVM module", ha["kvm"].get("module"), hb["kvm"].get("module"), na, nb),
        _dict_diff("KVM parameters", ha["kvm"].get("parameters", {}), hb["kvm"].get("parameters", {}), nb),
        _dict_diff("mitigations", ha.get("vulnerabilities", {}), hb.get("vulnerabilities", {}), nb),
        _diff("isolation (isolated)", da["isolation"].get("isolated"), db["isolation"].get("isolated"), na, nb),
        _diff("QEMU version", da["qemu"].get("version"), db["qemu"].get("version"), na, nb),
        _diff("guest kernel", (da["guest"].get("kernel_release"), da["guest"].get("kernel_config_sha256")),
              (db["guest"].get("kernel_release"), db["guest"].get("kernel_config_sha256")), na, nb),
        _diff("busybox", da["guest"].get("busybox_version"), db["guest"].get("busybox_version"), na, nb),
        # bundles before the field have none: a difference only where both say
        None if None in (da["guest"].get("apic_mode"), db["guest"].get("apic_mode")) else
        _diff("guest APIC mode", da["guest"].get("apic_mode"), db["guest"].get("apic_mode"), na, nb),
        _diff("accel", da["accel"], db["accel"], na, nb),
    ]
    return [w for w in out if w] + setup_unfairness(da, db, na, nb)


def general_warnings(bundles: list[Bundle]) -> list[str]:
    out = []
    for b in bundles:
        if b.banner:
            out.append(f"{b.name}: {b.banner}")
        if b.doc["status"]["state"] != "complete":
            out.append(f"{b.name}: run INCOMPLETE: {b.doc['status']['reason']}")
        if not b.doc["isolation"].get("isolated"):
            out.append(f"{b.name}: measured core was NOT isolated")
        others = (b.doc.get("run") or {}).get("other_runs_seen") or []
        if others:
            out.append(f"{b.name}: {len(others)} other exitlat run(s) on the host during this run ("
                       + "; ".join(f"pid {o.get('pid')} on core {o.get('core')}" for o in others)
                       + "): their noise may be in these numbers")
        for status, text in (("failed", "exit path verification FAILED"),
                             ("unverified", "exit path UNVERIFIED"),
                             ("skipped", "exit path not verified (skipped)")):
            keys = [e["key"] for e in b.doc["cases"] if e["verification"]["status"] == status]
            if keys and (status != "skipped" or b.doc.get("accel") == "kvm"):
                out.append(f"{b.name}: {text} for {_keys_text(keys)}")
    return out


def _keys_text(keys: list[str], most: int = 8) -> str:
    return ", ".join(keys[:most]) + (f" (+{len(keys) - most} more)" if len(keys) > most else "")


METHOD = ("ratio = X's headline / A's headline (median of per-VM medians); CI95: Fieller interval "
          "from both sides' VM-to-VM variation, Welch df")


def parse_min_effect(text) -> float:
    """The CLI's --min-effect: a fraction (0.01) or a percentage (1%); ExitlatError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        t = str(text).strip()
        try:
            value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
        except ValueError:
            raise ExitlatError(f"--min-effect: expected a fraction such as 0.01 or a percentage such "
                               f"as 1%, got {text!r}") from None
    if not 0 <= value < 1:
        raise ExitlatError(f"--min-effect must be at least 0 and below 1 (100%), got {text!r}")
    return value


def fieller(a: float, se_a: float, b: float, se_b: float, t: float) -> list[float] | None:
    """95% interval of b/a for independent estimates a, b with standard errors se_a, se_b (Fieller);
    None when it is unbounded (a's own interval reaches 0)."""
    va, vb = se_a * se_a, se_b * se_b
    q = a * a - t * t * va
    if a <= 0 or q <= 0:
        return None
    root = t * math.sqrt(vb * q + b * b * va)
    return [(a * b - root) / q, (a * b + root) / q]


def ratio_cell(ref: dict, x: dict, scale: float = 1.0, min_effect: float = DEFAULT_MIN_EFFECT) -> dict:
    """ratio, ratio_ci95, significant and a note for summary x against summary ref (combine_runs
    dicts); scale multiplies the ratio (TSC rates: cycles of B over cycles of A in ns)."""
    out = {"ratio": None, "ratio_ci95": None, "significant": False, "note": None}
    a, b = ref["median"], x["median"]
    if a is None or b is None or a <= 0:
        return out
    out["ratio"] = b / a * scale
    lonely = [w for w, s in (("A", ref), ("this bundle", x)) if s["R"] < 2]
    if lonely:
        out["note"] = f"R=1 in {' and '.join(lonely)}: run-to-run variation unknown, no CI"
        return out
    ra, rb = ref["se"] / a, x["se"] / b
    t = t975(welch_df(ra * ra, ref["R"], rb * rb, x["R"]))
    ci = fieller(a, ref["se"], b, x["se"], t)
    if ci is None:
        out["note"] = "ratio CI unbounded: A's VM medians scatter too much"
        return out
    out["ratio_ci95"] = [ci[0] * scale, ci[1] * scale]
    out["significant"] = beyond_min_effect(out["ratio_ci95"], min_effect)
    return out


def beyond_min_effect(ci: list[float], min_effect: float) -> bool:
    """The '*' rule: the whole ratio CI lies beyond the minimum effect on one side (both ends
    above 1 + min_effect, or both below 1 − min_effect). A point estimate past the threshold is
    not enough: [1.001, 1.02] at 1% is compatible with a 0.1% difference."""
    lo, hi = ci
    return lo > 1.0 + min_effect or hi < 1.0 - min_effect


def _repeat_text(reps: list[int]) -> str:
    reps = sorted(set(reps))
    if not reps:
        return ""
    if reps == list(range(reps[0], reps[-1] + 1)):
        return f" r{reps[0]}" if len(reps) == 1 else f" r{reps[0]}-{reps[-1]}"
    return " r" + ",".join(str(r) for r in reps)


def path_label(path: str) -> str:
    return "no exit" if path == "none" else path


def comparison(bundles: list[Bundle], min_effect: float = DEFAULT_MIN_EFFECT) -> dict:
    """compare()'s rows and columns for one or more bundles (the HTML report of one bundle uses
    it too: cells without ratios). Linear in the number of bundles: each is summarised once and
    compared with the first only."""
    if not bundles:
        raise ExitlatError("nothing to compare: no bundle")
    if not min_effect >= 0:
        raise ExitlatError(f"minimum effect must be >= 0, got {min_effect!r}")
    hzs = [b.tsc_hz for b in bundles]
    unit = "ns" if len(set(hzs)) > 1 and all(hzs) else "cycles"
    sums = [{tuple(s["identity"]): s for s in case_summaries(b, min_effect)} for b in bundles]
    order: dict[tuple, None] = {}          # identities in order of first appearance
    for b in bundles:
        for ident, _ in group_entries(b.entries()):
            order.setdefault(ident, None)
    # the path each bundle expected (and verified) for an identity: a ratio needs the same path
    paths = [{ident: es[0].get("expected_path") for ident, es in group_entries(b.entries())
              if "expected_path" in es[0]} for b in bundles]
    other_paths: list[str] = []
    rows = []
    for ident in order:
        cells = []
        ref = sums[0].get(ident)
        for i, b in enumerate(bundles):
            s = sums[i].get(ident)
            cell = {"key": None, "keys": [], "R": 0, "n": None, "median": None, "ci95": None,
                    "spread": None, "rel_spread": None, "ratio": None, "ratio_ci95": None,
                    "significant": None, "note": None, "pooled": None, "pool_issues": False,
                    "other_path_max": None}
            if s is not None:
                view = (s["ns"] if unit == "ns" else s) or {}    # no samples: no ns either
                cell.update(key=s["keys"][0], keys=s["keys"], R=s["R"], n=s["n"] or None,
                            median=view.get("median"), ci95=view.get("ci95"),
                            spread=view.get("spread"),
                            rel_spread=s["rel_spread"], note=s["note"] if s["R"] < 2 else None,
                            pooled=s["pooled"], pool_issues=pool_issues(s),
                            other_path_max=s["other_path_max"])
            path = paths[i].get(ident)
            if i > 0 and path != paths[0].get(ident) and None not in (path, paths[0].get(ident)):
                # the same instruction took another path there (host rules: docs/measuring.md):
                # no ratio, which would compare a VM exit with none, or KVM with QEMU
                cell["note"] = f"path {path_label(path)}, A: {path_label(paths[0][ident])}"
                other_paths.append(f"{label(ident)}: A {path_label(paths[0][ident])}, "
                                   f"{chr(65 + i)} {path_label(path)}")
            elif i > 0 and s is not None and ref is not None and s["median"] is not None:
                scale = hzs[0] / hzs[i] if unit == "ns" else 1.0
                cell.update(ratio_cell(ref, s, scale, min_effect))
            cells.append(cell)
        reps = [r for i in range(len(bundles)) if sums[i].get(ident) for r in sums[i][ident]["repeats"]]
        rows.append({"entry": label(ident) + _repeat_text(reps), "identity": list(ident),
                     "cells": cells})
    unfair = {b.name: unfairness(bundles[0], b) for b in bundles[1:]}
    single = [b.name for i, b in enumerate(bundles) if any(s["R"] == 1 for s in sums[i].values())]
    notes = []
    if other_paths:
        notes.append("no ratio where the bundles' paths differ (the same instruction exits on one "
                     "host and not on another, or goes to QEMU on one): " + "; ".join(other_paths))
    if single and len(bundles) > 1:
        notes.append(f"run-to-run variation unknown (R=1) in {', '.join(single)}: where a side has "
                     f"one VM run there is no CI and no '*'; measure with --repeat {RECOMMENDED_REPEAT}")
    stability = {b.name: stability_warnings(list(sums[i].values()), skip=("single_run",),
                                                min_effect=min_effect)
                 for i, b in enumerate(bundles)}
    return {"unit": unit, "reference": bundles[0].name, "bundles": [b.name for b in bundles],
            "columns": [column(b, i) for i, b in enumerate(bundles)],
            "min_effect": min_effect, "method": METHOD,
            "tcg": [b.name for b in bundles if b.is_tcg],
            "not_exit_timings": {b.name: b.banner for b in bundles if b.banner}, "rows": rows,
            "notes": notes, "stability": stability,
            "unfair": unfair, "warnings": general_warnings(bundles),
            "vs_kvm_unit_tests": compare_lines(bundles)}


def compare(bundles: list[Bundle], min_effect: float = DEFAULT_MIN_EFFECT) -> dict:
    """Rows (one per case/baseline, pooled over repeats) × cells (one per bundle); see the module
    docstring. Each cell: key (first entry), keys, R, n (samples over all runs), median (headline,
    in `unit`), ci95, spread, rel_spread, ratio, ratio_ci95, significant, note, pooled (which VM
    runs the headline pools: exitlat.report.vmruns.pooled_text), pool_issues (a run left out or
    not passed), other_path_max (the largest over the pooled runs). `columns` names
    each bundle (letter, host, CPU model: exitlat.report.meta.column)."""
    if len(bundles) < 2:
        raise ExitlatError("compare needs at least two bundles")
    return comparison(bundles, min_effect)


POOL_MARK = "!"     # beside R: the headline leaves a VM run out or pools one that did not pass


def _median_text(c: dict) -> str:
    if c["median"] is None:
        return "-"
    text = otherpath.mark(fmt_cycles(c["median"]), "median", c.get("other_path_max"))
    if c["R"] >= 2 and c["ci95"] is not None and c["median"]:
        text += f" ±{100 * (c['ci95'][1] - c['median']) / c['median']:.1f}%"
    return text + f" R={c['R']}" + (POOL_MARK if c.get("pool_issues") else "")


def pool_lines(res: dict) -> list[str]:
    """One line per headline that leaves a VM run out or pools one that did not pass."""
    letters = {name: letter(i) for i, name in enumerate(res["bundles"])}
    return [f"{letters[name]} {r['entry']}: {c['pooled']}" for r in res["rows"]
            for name, c in zip(res["bundles"], r["cells"]) if c.get("pool_issues")]


def other_path_lines(res: dict) -> list[str]:
    letters = {name: letter(i) for i, name in enumerate(res["bundles"])}
    return [f"{otherpath.MARK} {letters[name]} {r['entry']} "
            f"{otherpath.footnote(['median'], c['other_path_max'])}"
            for r in res["rows"] for name, c in zip(res["bundles"], r["cells"])
            if otherpath.covered(c.get("other_path_max"), ("median",))]


def _ratio_text(c: dict) -> str:
    if c["ratio"] is None:
        return "-"
    if c["ratio_ci95"] is None:
        return f"{c['ratio']:.3f} [no CI]"
    mark = " *" if c["significant"] else ""
    lo, hi = c["ratio_ci95"]
    return f"{c['ratio']:.3f} [{lo:.3f}, {hi:.3f}]{mark}"


WIDE_MAX = 3   # up to this many bundles one column each; more: one block of rows per entry


def _wide_table(res: dict) -> str:
    headers = ["entry", f"A median ({res['unit']})"]
    headers += [f"{letter(i)} median, {letter(i)}/A [CI95]" for i in range(1, len(res["bundles"]))]
    rows = []
    for r in res["rows"]:
        row = [r["entry"], _median_text(r["cells"][0])]
        for c in r["cells"][1:]:
            row.append("-" if c["median"] is None else f"{_median_text(c)}  {_ratio_text(c)}")
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _long_tables(res: dict, cols: list[dict]) -> list[str]:
    """Many bundles: per entry one row per bundle (what a terminal can show for 50 servers)."""
    out = []
    headers = ["", "host", "CPU", f"median ({res['unit']})", "±CI95", "R", "ratio to A",
               "ratio CI95"]
    for r in res["rows"]:
        rows = []
        for col, c in zip(cols, r["cells"]):
            ci = "-"
            if c["R"] >= 2 and c["ci95"] is not None and c["median"]:
                ci = f"±{100 * (c['ci95'][1] - c['median']) / c['median']:.1f}%"
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
            rci = "-" if c["ratio"] is None else "no CI" if c["ratio_ci95"] is None else \
                f"[{c['ratio_ci95'][0]:.3f}, {c['ratio_ci95'][1]:.3f}]" + (" *" if c["significant"] else "")
            med = "-" if c["median"] is None else otherpath.mark(
                fmt_cycles(c["median"]), "median", c.get("other_path_max"))
            reps = f"{c['R']}{POOL_MARK if c.get('pool_issues') else ''}" if c["R"] else "-"
            rows.append([col["letter"], col["host"], col["cpu"], med, ci, reps, ratio, rci])
        out += ["", r["entry"],
                tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)]
    return out


def render_compare(res: dict, layout: str = "auto") -> str:
    """The comparison as text. layout: wide (one column per bundle), long (per entry one row per
    bundle) or auto (wide up to WIDE_MAX bundles)."""
    names = res["bundles"]
    cols = res.get("columns") or [{"letter": letter(i), "bundle": n, "host": "?", "cpu": "?",
                                   "accel": "?"} for i, n in enumerate(names)]
    out = []
    banners = sorted(set(res.get("not_exit_timings", {}).values()))
    for text in banners:
        who = [n for n, t in res["not_exit_timings"].items() if t == text]
        out += [f"*** {text} ({', '.join(who)}) ***"]
    if banners:
        out.append("")
    for c in cols:
        out.append(f"{c['letter']}: {c['bundle']}  ({c['host']}, {c['cpu']}, {str(c['accel']).upper()})")
    wide = layout == "wide" or (layout == "auto" and len(names) <= WIDE_MAX)
    if wide:
        out += ["", _wide_table(res)]
    else:
        out += _long_tables(res, cols)
    eff = 100 * res.get("min_effect", DEFAULT_MIN_EFFECT)
    out += ["",
            "median: median of the per-VM medians of R VM runs (±: its 95% CI across VM runs)",
            "ratio = median / A's median; CI95 from both sides' VM-to-VM variation (Fieller)",
            f"* = the whole ratio CI95 lies beyond ±{eff:g}% (the minimum effect), on one side of 1"]
    pools = pool_lines(res)
    if pools:
        out.append(f"{POOL_MARK} = the headline leaves a VM run out (failed verification: "
                   "excluded; no samples) or pools one that did not pass:")
        out += [f"  {line}" for line in pools]
    else:
        out.append("every headline pools all of its VM runs; none failed, unverified or skipped")
    others = other_path_lines(res)
    if others:
        out += others
    if res["unit"] == "ns":
        out.append("TSC frequencies differ: medians and ratios are in ns, not cycles")
    out += res.get("vs_kvm_unit_tests", [])
    lines = [f"note: {n}" for n in res.get("notes", [])]
    lines += [f"stability: {name}: {w}" for name, ws in res.get("stability", {}).items() for w in ws]
    lines += [f"unfair: {w}" for ws in res["unfair"].values() for w in ws]
    lines += [f"warning: {w}" for w in res["warnings"]]
    if lines:
        out += [""] + lines
    if banners:
        out.append("")
        out += [f"*** {text} ***" for text in banners]
    return "\n".join(out)
