"""`invoke compare A B [C...]`: the same cases side by side, the ratio of each median to the first
bundle's with a confidence interval, a significance marker, and a warning for every difference in
setup that makes the comparison unfair.

Ratio CI: [lo_X / hi_A, hi_X / lo_A] from the two 95% median CIs. It is conservative, and so is the
marker: '*' only when the two median CIs do not overlap (roughly p < 0.01 for two independent
intervals). The ratio is taken in ns when the TSC rates differ (cycles of different clocks are not
comparable), else in cycles.
"""

from tabulate import tabulate

from .bundle import Bundle
from .errors import ExitlatError
from .report import fmt_cycles


def _identity(e: dict) -> tuple:
    """What must match for two entries to measure the same thing."""
    if "case" in e:
        return ("case", e["case"], e["instruction"], e["msr"], e["timer"], e["repeat"])
    return ("baseline", e["name"], e["repeat"])


def _label(ident: tuple) -> str:
    if ident[0] == "case":
        _, n, instr, msr, timer, rep = ident
        return f"case{n} {instr}{' ' + msr if msr else ''} {timer} r{rep}"
    return f"{ident[1]} r{ident[2]}"


def _diff(what: str, a, b, name_a: str, name_b: str) -> str | None:
    return None if a == b else f"{what} differs: {name_a}: {a!r} vs {name_b}: {b!r}"


def _dict_diff(what: str, a: dict, b: dict, name_b: str) -> str | None:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not keys:
        return None
    shown = ", ".join(f"{k} {a.get(k)!r}→{b.get(k)!r}" for k in keys[:4])
    return f"{what} differ in {name_b}: {shown}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def unfairness(a: Bundle, b: Bundle) -> list[str]:
    """Every setup difference between bundle a (reference) and b, one line each."""
    da, db = a.doc, b.doc
    na, nb = a.name, b.name
    ha, hb = da["host"], db["host"]
    cpu_keys = ("vendor", "model_name", "family", "model", "stepping", "microcode", "smt")
    out = [
        _diff("CPU", {k: ha["cpu"].get(k) for k in cpu_keys}, {k: hb["cpu"].get(k) for k in cpu_keys}, na, nb),
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
        _diff("accel", da["accel"], db["accel"], na, nb),
    ]
    return [w for w in out if w]


def general_warnings(bundles: list[Bundle]) -> list[str]:
    out = []
    for b in bundles:
        if b.banner:
            out.append(f"{b.name}: {b.banner}")
        if b.doc["status"]["state"] != "complete":
            out.append(f"{b.name}: run INCOMPLETE: {b.doc['status']['reason']}")
        if not b.doc["isolation"].get("isolated"):
            out.append(f"{b.name}: measured core was NOT isolated")
        failed = [e["key"] for e in b.doc["cases"] if e["verification"]["status"] == "failed"]
        if failed:
            out.append(f"{b.name}: exit path verification FAILED for {', '.join(failed)}")
    return out


def _pick(stats: dict, unit: str):
    src = stats if unit == "cycles" else stats["ns"]
    return src["median"], src["median_ci95"]


def compare(bundles: list[Bundle]) -> dict:
    if len(bundles) < 2:
        raise ExitlatError("compare needs at least two bundles")
    hzs = [b.tsc_hz for b in bundles]
    unit = "ns" if len(set(hzs)) > 1 and all(hzs) else "cycles"
    order: list[tuple] = []
    table: dict[tuple, list] = {}
    for i, b in enumerate(bundles):
        for e in b.entries():
            ident = _identity(e)
            if ident not in table:
                table[ident] = [None] * len(bundles)
                order.append(ident)
            table[ident][i] = e
    rows = []
    for ident in order:
        ref = table[ident][0]
        cells = []
        for i, e in enumerate(table[ident]):
            st = None if e is None else e["stats"]
            cell = {"key": None if e is None else e["key"], "n": None, "median": None, "ci95": None,
                    "ratio": None, "ratio_ci95": None, "significant": None}
            if st is not None:
                cell["n"] = st["n"]
                cell["median"], cell["ci95"] = _pick(st, unit)
            rs = None if ref is None else ref["stats"]
            if st is not None and rs is not None and i > 0:
                m0, (lo0, hi0) = _pick(rs, unit)
                m1, (lo1, hi1) = cell["median"], cell["ci95"]
                if m0 > 0 and lo0 > 0:
                    cell["ratio"] = m1 / m0
                    cell["ratio_ci95"] = [lo1 / hi0, hi1 / lo0]
                cell["significant"] = hi1 < lo0 or lo1 > hi0
            cells.append(cell)
        rows.append({"entry": _label(ident), "cells": cells})
    unfair = {b.name: unfairness(bundles[0], b) for b in bundles[1:]}
    return {"unit": unit, "reference": bundles[0].name, "bundles": [b.name for b in bundles],
            "tcg": [b.name for b in bundles if b.is_tcg],
            "not_exit_timings": {b.name: b.banner for b in bundles if b.banner}, "rows": rows,
            "unfair": unfair, "warnings": general_warnings(bundles)}


def _ratio_text(c: dict) -> str:
    if c["ratio"] is None:
        return "-"
    mark = " *" if c["significant"] else ""
    lo, hi = c["ratio_ci95"]
    return f"{c['ratio']:.3f} [{lo:.3f}, {hi:.3f}]{mark}"


def render_compare(res: dict) -> str:
    names = res["bundles"]
    out = []
    banners = sorted(set(res.get("not_exit_timings", {}).values()))
    for text in banners:
        who = [n for n, t in res["not_exit_timings"].items() if t == text]
        out += [f"*** {text} ({', '.join(who)}) ***"]
    if banners:
        out.append("")
    for i, n in enumerate(names):
        out.append(f"{'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[i] if i < 26 else i}: {n}")
    out.append("")
    headers = ["entry", f"A median ({res['unit']})"]
    for i in range(1, len(names)):
        letter = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i] if i < 26 else str(i)
        headers += [f"{letter} median", f"{letter}/A [CI95]"]
    rows = []
    for r in res["rows"]:
        c0 = r["cells"][0]
        row = [r["entry"], fmt_cycles(c0["median"]) if c0["median"] is not None else "-"]
        for c in r["cells"][1:]:
            row += [fmt_cycles(c["median"]) if c["median"] is not None else "-", _ratio_text(c)]
        rows.append(row)
    out.append(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    out += ["", "ratio = median / A's median; * = the two medians' 95% CIs do not overlap (significant)"]
    if res["unit"] == "ns":
        out.append("TSC frequencies differ: medians and ratios are in ns, not cycles")
    lines = [f"unfair: {w}" for ws in res["unfair"].values() for w in ws]
    lines += [f"warning: {w}" for w in res["warnings"]]
    if lines:
        out += [""] + lines
    if banners:
        out.append("")
        out += [f"*** {text} ***" for text in banners]
    return "\n".join(out)
