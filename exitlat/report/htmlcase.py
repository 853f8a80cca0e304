"""One case of an HTML page (exitlat.report.html): a table with one row per bundle (headline
median and its CI across VM runs, the spread of the VM medians, percentiles, net cost, ratio to
the first bundle, the verification verdict and its evidence), the overlaid distribution figure,
and each bundle's VM runs. The numbers are the ones `invoke report` and `invoke compare` print:
compare's cells and each entry's stored `stats`; nothing is recomputed."""

from html import escape

from exitlat.stats import otherpath
from exitlat.bundle.read import Bundle
from .text import fmt_ci, fmt_cycles, fmt_ns, fmt_overhead, verified_text
from .svgplots import case_figure
from exitlat.report.vmruns import run_ranges

PCTS = (("p50", "median"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99_9"))


def esc(v) -> str:
    """Any value as escaped HTML text ('-' for None)."""
    return "-" if v is None else escape(str(v), quote=True)


def num(v) -> str:
    return "-" if v is None else escape(fmt_cycles(v))


def short(text, width: int = 22) -> str:
    """A long host name cut for a column (the full one is in the bundles table)."""
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def host_html(col: dict) -> str:
    return f'<span title="{esc(col["host"])}">{esc(short(col["host"]))}</span>'


def swatch(col: dict, color: str, with_host: bool = True, with_cpu: bool = True) -> str:
    cpu = f" <span class=cpu>{esc(col['cpu'])}</span>" if with_cpu else ""
    host = f" {host_html(col)}{cpu}" if with_host else ""
    return (f'<span class="sw" style="background:{color}"></span><b>{esc(col["letter"])}</b>'
            f"{host}")


def _stat(st: dict | None, key: str, unit: str):
    if not st:
        return None
    if unit == "ns":
        return (st.get("ns") or {}).get(key)
    return st.get(key)


def _range(values: list, key: str | None = None, opm: float | None = None) -> str:
    """One value, or min–max over a bundle's VM runs; marked (†) when percentile `key` is covered
    by the other-path fraction opm."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    text = num(lo) if lo == hi else f"{num(lo)}–{num(hi)}"
    return marked_html(text, key, opm) if key else text


def marked_html(text: str, key: str, opm: float | None) -> str:
    if key not in otherpath.covered(opm, (key,)):
        return text
    return f'{text}<sup class=warn title="{esc(otherpath.footnote([key], opm))}">{otherpath.MARK}</sup>'


def pool_note(c: dict) -> str:
    """Which VM runs a headline pools, when it leaves one out or pools one that did not pass."""
    if not c.get("pool_issues") or not c.get("pooled"):
        return ""
    text = c["pooled"]
    text = text[text.index("(") + 1:-1] if text.endswith(")") else text
    return f"<div class=\"ev warn\">{esc(text)}</div>"


def evidence(v: dict, status: bool = True) -> str:
    """A verification verdict with what it rests on: per-iteration exits, exit reasons, detail
    (without the status word itself when status is False)."""
    text = verified_text(v)
    if not status:
        text = text[text.index("(") + 1:-1] if text.endswith(")") and "(" in text else ""
    parts = [text] if text else []
    reasons = v.get("exit_reasons")
    if isinstance(reasons, dict) and reasons:
        parts.append("exit reasons " + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items())))
    if isinstance(v.get("port_exits_per_iter"), (int, float)):
        parts.append(f"port exits/iter {v['port_exits_per_iter']:.2f}")
    if v.get("detail"):
        parts.append(str(v["detail"]))
    return "; ".join(parts)


def _verdict_cell(entries: list[dict]) -> str:
    statuses = [e["verification"]["status"] for e in entries]
    worst = next((s for s in ("failed", "unverified", "skipped", "not_applicable", "passed")
                  if s in statuses), statuses[0] if statuses else "-")
    texts = sorted({evidence(e["verification"], status=False) for e in entries} - {""})
    klass = {"passed": "ok", "failed": "bad", "unverified": "warn"}.get(worst, "muted")
    counts = ", ".join(f"{s} ×{statuses.count(s)}" for s in sorted(set(statuses))) \
        if len(set(statuses)) > 1 else worst
    ev = "<br>".join(esc(t) for t in texts[:3]) + (f" (+{len(texts) - 3} more)" if len(texts) > 3 else "")
    return f'<span class="{klass}">{esc(counts)}</span>' + (f"<div class=ev>{ev}</div>" if ev else "")


def _ratio(c: dict) -> str:
    if c["ratio"] is None:
        return "-"
    text = f"{c['ratio']:.3f}"
    if c["ratio_ci95"] is None:
        return f'{text} <span class=muted>no CI</span>'
    lo, hi = c["ratio_ci95"]
    mark = " <b>*</b>" if c["significant"] else ""
    return f"{text}{mark}<br>[{lo:.3f}, {hi:.3f}]"


def _ci(c: dict) -> str:
    if c["ci95"] is None:
        return f'<span class=muted>{esc(c["note"] or "-")}</span>'
    rel = f" ±{100 * (c['ci95'][1] - c['median']) / c['median']:.1f}%" if c["median"] else ""
    return f"[{num(c['ci95'][0])}, {num(c['ci95'][1])}]<br>{esc(rel.strip())}"


def case_table(row: dict, bundles: list[Bundle], cols: list[dict], colors: list[str], unit: str) -> str:
    compare = len(bundles) > 1
    head = ["bundle", "median", "CI95 (VMs)"] + (["ratio to A"] if compare else [])
    head += ["R", "n", "VM medians (spread)"] + [p for p, _ in PCTS[1:]]
    head += ["net", "verification (evidence)"]
    out = [f"<p class=unit>in {esc(unit)} (net: cycles); percentiles: each VM run's own, min–max "
           "over the runs</p><div class=scroll><table class=case><tr>"
           + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    notes = []
    for b, col, color, c in zip(bundles, cols, colors, row["cells"]):
        if c["median"] is None:
            why = "no samples (incomplete run)" if c["keys"] else "not in this bundle"
            out.append(f"<tr><td class=lab>{swatch(col, color)}</td>"
                       f'<td colspan="{len(head) - 1}" class=muted>{why}</td></tr>')
            continue
        es = [b.entry(k) for k in c["keys"]]
        spread = "-" if c["spread"] is None else f"{num(c['spread'][0])}–{num(c['spread'][1])}"
        if c["rel_spread"] is not None:
            spread += f"<br>({100 * c['rel_spread']:.2f}%)"
        runs_opm = otherpath.pooled(es)         # the percentiles span every run shown
        cells = [f"<td class=lab>{swatch(col, color, with_cpu=not compare)}</td>",
                 f"<td class=big>{marked_html(num(c['median']), 'median', c.get('other_path_max'))}</td>",
                 f"<td>{_ci(c)}</td>"]
        if compare:
            cells.append(f'<td{" class=sig" if c["significant"] else ""}>{_ratio(c)}</td>')
        cells += [f"<td>{c['R']}{pool_note(c)}</td>", f"<td>{num(c['n'])}</td>", f"<td>{spread}</td>"]
        cells += [f"<td>{_range([_stat(e['stats'], k, unit) for e in es], k, runs_opm)}</td>"
                  for _, k in PCTS[1:]]
        marked = otherpath.covered(runs_opm, [k for _, k in PCTS[1:]])
        if otherpath.covered(c.get("other_path_max"), ("median",)):
            marked = ["median"] + marked
        if marked:
            notes.append(f"{otherpath.MARK} {col['letter']}: "
                         f"{otherpath.footnote(marked, max(runs_opm or 0, c.get('other_path_max') or 0))}"
                         " (the largest over its VM runs)")
        cells.append(f"<td>{_range([(e.get('net_cycles') or {}).get('median') for e in es])}</td>")
        cells.append(f"<td class=\"wrap txt\">{_verdict_cell(es)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    out += [f"<p class=\"unit warn\">{esc(n)}</p>" for n in notes]
    return "\n".join(out)


def runs_table(row: dict, bundles: list[Bundle], cols: list[dict], colors: list[str]) -> str:
    """Every VM run of the case in every bundle, with its own within-VM statistics (cycles)."""
    head = ["bundle", "entry", "n", "median", "p90", "p99", "p99.9", "max", "median CI95 (this VM)",
            "median ns", "net", "tracing adds", "timed window", "verification (evidence)"]
    out = ["<div class=scroll><table class=runs><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    notes: dict[tuple, list[str]] = {}        # one footnote per bundle and text, naming its runs
    for b, col, color, c in zip(bundles, cols, colors, row["cells"]):
        for k in c["keys"]:
            e = b.entry(k)
            st = e["stats"] or {}
            opm = otherpath.fraction(e) if st else None
            marked = otherpath.covered(opm, ("median", "p90", "p99", "p99_9"))
            if marked:
                notes.setdefault((col["letter"], otherpath.footnote(marked, opm)), []).append(k)
            tw = e.get("timed_window") or {}
            tv = tw.get("verdict") or {}
            timed = f"tracing {tw.get('tracing', '?')}" + (
                f"; {tv.get('status')}" + (f": {tv['detail']}" if tv.get("detail") else "")
                if tv else "") if tw else "-"
            net = e.get("net_cycles") or {}
            out.append("<tr>" + "".join([
                f"<td class=lab>{swatch(col, color, with_host=False)}</td>", f"<td class=txt>{esc(e['key'])}</td>",
                f"<td>{num(st.get('n'))}</td>",
                *(f"<td>{marked_html(num(st.get(q)), q, opm)}</td>" for q in ("median", "p90", "p99", "p99_9")),
                f"<td>{num(st.get('max'))}</td>",
                f"<td>{esc(fmt_ci(st.get('median_ci95')))}</td>",
                f"<td>{esc(fmt_ns(_stat(st, 'median', 'ns')))}</td>",
                f"<td>{num(net.get('median'))}</td>",
                f"<td>{esc(fmt_overhead(e.get('tracing_overhead_cycles')))}</td>",
                f"<td>{esc(timed)}</td>", f"<td class=ev>{esc(evidence(e['verification']))}</td>"]) + "</tr>")
    out.append("</table></div>")
    out += [f"<p class=\"unit warn\">{esc(f'{otherpath.MARK} {letter} {_runs(keys)} {note}')}</p>"
            for (letter, note), keys in notes.items()]
    return "\n".join(out)


def _runs(keys: list[str]) -> str:
    """case2-r0, case2-r1, case2-r3 → 'case2-r0, r1, r3' (keys of one case)."""
    name, _, _ = keys[0].rpartition("-")
    labels = [k.rpartition("-")[2] for k in keys]
    if not name or any(k.rpartition("-")[0] != name for k in keys):
        return ", ".join(keys)
    return f"{name}-{run_ranges(labels)}"


def case_section(i: int, row: dict, bundles: list[Bundle], cols: list[dict], colors: list[str],
                 unit: str, hzs: list) -> str:
    """The section of one case: heading, table, figure, VM runs."""
    first = next(b.entry(c["keys"][0]) for b, c in zip(bundles, row["cells"]) if c["keys"])
    what = (f"case {first['case']}: {first['flow']}, {first['instruction']}"
            f"{' ' + first['msr'] if first.get('msr') else ''}, expected path {first['expected_path']}")
    scale = [1e9 / hz if unit == "ns" and hz else 1.0 for hz in hzs]
    series = [{"label": f"{col['letter']} {short(col['host'])}", "color": color, "bundle": b,
               "keys": c["keys"], "scale": s, "median": c["median"]}
              for b, col, color, c, s in zip(bundles, cols, colors, row["cells"], scale) if c["keys"]]
    svg = case_figure(series, unit, salt=f"case{i}", warning=_figure_warning(bundles, cols))
    few = sum(len(c["keys"]) for c in row["cells"]) <= 12
    return "\n".join([
        f'<section class=case id="case-{i}"><h2>{esc(row["entry"])}</h2>',
        f"<p class=what>{esc(what)}</p>",
        case_table(row, bundles, cols, colors, unit),
        f'<div class=fig>{svg}</div>',
        f"<details{' open' if few else ''}><summary>VM runs (within-VM statistics, cycles)</summary>",
        runs_table(row, bundles, cols, colors), "</details></section>"])


def _figure_warning(bundles, cols) -> str | None:
    """The banner line a figure carries (so that it stays with a copied picture): each distinct
    banner once, with the letters of the bundles it stands for, short enough for one line."""
    by_banner: dict[str, list[str]] = {}
    for b, col in zip(bundles, cols):
        if b.banner:
            by_banner.setdefault(b.banner, []).append(col["letter"])
    if not by_banner:
        return None
    parts = []
    for banner, letters in by_banner.items():
        who = letters[0] if len(letters) == 1 else (
            "all" if len(letters) == len(bundles) else f"{letters[0]}–{letters[-1]}"
            if len(letters) > 3 else ", ".join(letters))
        parts.append(f"{who}: {banner}")
    return "; ".join(parts)
