"""`invoke report B --html FILE` and `invoke compare A B [C…] --html FILE`: one self-contained HTML
page to read offline or attach to a ticket: no script, no external style sheet, font or image
(figures are inline SVG). Top to bottom: the verdict (TCG / emulated host first and loud: those
numbers are not VM-exit timings; then incomplete runs, isolation, failed verification: the
report's warnings_for), the bundles with their colours, one table of every entry × bundle, one
section per case (table, distributions, VM runs), the setup side by side with differences
highlighted and compare's unfair-difference warnings, and how the numbers were made.

Every string taken from a bundle is escaped (html.escape); the numbers are the ones the terminal
report and compare print (exitlat.report.compare.comparison)."""

from exitlat.bundle.read import Bundle
from .compare import comparison
from exitlat.stats import otherpath
from .htmlcase import case_section, esc, host_html, marked_html, num, pool_note, swatch
from .meta import meta_rows
from .text import warnings_for
from .svgplots import palette
from exitlat.report.vmruns import DEFAULT_MIN_EFFECT, stability_warnings, case_summaries

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:1.2em 2em;
 color:#1d1d1f;font-size:14px;line-height:1.4;max-width:1500px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .3em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1em 0 .3em}
.sub{color:#555;margin:0 0 1em}.unit{color:#555;font-size:.88em;margin:.2em 0}
.banner{border:3px solid #b00020;background:#fde7ea;color:#7a0014;padding:.8em 1em;margin:.8em 0;
 font-size:1.25em;font-weight:700;border-radius:6px}
.banner small{display:block;font-size:.7em;font-weight:400;color:#5a0010;margin-top:.3em}
.verdict{border-radius:6px;padding:.6em 1em;margin:.8em 0;border:2px solid}
.v-ok{background:#e8f5e9;border-color:#2e7d32}.v-warn{background:#fff8e1;border-color:#c77c00}
.v-bad{background:#fde7ea;border-color:#b00020}
.verdict ul{margin:.2em 0 .4em;padding-left:2.2em}.vline{margin:.15em 0}
.chip{display:inline-block;padding:0 .45em;margin:0 .25em .15em 0;border-radius:4px;font-size:.9em;
 border:1px solid #bbb;background:#fff}
.chip.bad,.bad{color:#b00020;font-weight:600}.chip.bad{border-color:#b00020}
.chip.warn,.warn{color:#8a5300;font-weight:600}.chip.warn{border-color:#c77c00}
.chip.ok,.ok{color:#2e7d32}.muted{color:#777}
table{border-collapse:collapse;margin:.4em 0;font-size:.92em}
th,td{border:1px solid #d6d6d6;padding:.22em .5em;text-align:right;vertical-align:top;
 white-space:nowrap}
th{background:#f3f3f3;font-weight:600;text-align:center}
td.lab,th.lab,td.txt{text-align:left;white-space:nowrap}
td.lab{position:sticky;left:0;background:#fff}
td.big{font-weight:700}
.scroll{overflow-x:auto;max-width:100%}
.sw{display:inline-block;width:.85em;height:.85em;border-radius:2px;margin-right:.3em;
 vertical-align:-.1em;border:1px solid #0003}
.cpu{color:#555;font-size:.9em}
td.sig,tr.sigrow td.sig{background:#fff0c2;font-weight:600}
.ev{color:#444;font-size:.85em;text-align:left;max-width:30em;white-space:normal}
td.wrap{white-space:normal}table.case{font-size:.88em}table.case td.wrap .ev{max-width:22em}
tr.differs td,tr.differs th{background:#fff8e1}
tr.differs td.neq{background:#ffd54f;font-weight:600}
table.meta td{text-align:left;max-width:26em;overflow-wrap:anywhere;white-space:normal}
table.meta th.grp{background:#e9eef5;text-align:left}
.fig svg{width:100%;max-width:1200px;height:auto}
details{margin:.3em 0 1em}summary{cursor:pointer;color:#333}
ul.warn-list li{margin:.1em 0}
footer{margin-top:2em;color:#555;font-size:.9em;border-top:1px solid #ddd;padding-top:.5em}
"""


def _banners(res: dict, cols: list[dict]) -> list[str]:
    """The loud line for every kind of bundle whose numbers are not VM-exit timings."""
    out = []
    by_name = {c["bundle"]: c for c in cols}
    for text in sorted(set(res["not_exit_timings"].values())):
        who = [by_name[n] for n, t in res["not_exit_timings"].items() if t == text]
        names = ", ".join(f"{c['letter']} ({c['bundle']})" for c in who)
        out.append(f'<div class="banner" role="alert">⚠ {esc(text)}<small>bundles: {esc(names)}. '
                   "These numbers measure an emulated machine, not the cost of a VM exit on real "
                   "hardware; do not compare them with, or quote them as, exit costs.</small></div>")
    return out


def _chips(b: Bundle) -> str:
    d = b.doc
    chips = []
    if b.banner:
        chips.append(("bad", "TCG" if b.is_tcg else "emulated host"))
    st = d["status"]
    chips.append(("ok", "complete") if st["state"] == "complete" else ("bad", f"INCOMPLETE: {st.get('reason')}"))
    iso = (d.get("isolation") or {}).get("isolated")
    chips.append(("ok", "core isolated") if iso else ("warn", "core NOT isolated"))
    counts: dict[str, int] = {}
    for e in d["cases"]:
        counts[e["verification"]["status"]] = counts.get(e["verification"]["status"], 0) + 1
    for s, n in sorted(counts.items()):
        chips.append(({"passed": "ok", "failed": "bad", "unverified": "warn"}.get(s, ""),
                      f"{n} {s.upper() if s in ('failed', 'unverified') else s}"))
    return "".join(f'<span class="chip {k}">{esc(t)}</span>' for k, t in chips)


def _verdict(bundles: list[Bundle], cols: list[dict], colors: list[str]) -> str:
    """One line per bundle (chips) and its warnings (the terminal report's warnings_for)."""
    lines, level = [], "ok"
    for b, col, color in zip(bundles, cols, colors):
        warns = warnings_for(b.doc)
        warns += [f"stability: {w}" for w in stability_warnings(case_summaries(b))]
        if b.banner or b.doc["status"]["state"] != "complete" or any(
                e["verification"]["status"] == "failed" for e in b.doc["cases"]):
            level = "bad"
        elif warns and level == "ok":
            level = "warn"
        head = f"{swatch(col, color)} {_chips(b)}"
        if not warns:
            lines.append(f"<div class=vline>{head}</div>")
            continue
        items = "".join(f"<li>{esc(w)}</li>" for w in warns)
        opened = " open" if len(bundles) == 1 else ""      # several bundles: one line each
        lines.append(f"<details class=vline{opened}><summary>{head} <span class=muted>"
                     f"{len(warns)} warning{'s' if len(warns) > 1 else ''}</span></summary>"
                     f'<ul class="warn-list">{items}</ul></details>')
    every = " (every bundle)" if len(bundles) > 1 else ""
    title = {"ok": f"verdict: measured on real hardware, complete, isolated, every path verified{every}",
             "warn": "verdict: read the warnings before trusting these numbers",
             "bad": "verdict: these numbers are not (all) trustworthy VM-exit timings"}[level]
    return f'<div class="verdict v-{level}"><b>{esc(title)}</b>' + "".join(lines) + "</div>"


def _bundles_table(bundles: list[Bundle], cols: list[dict], colors: list[str]) -> str:
    head = ["", "bundle", "host", "CPU model", "label", "accel", "created (UTC)", "status", "VM runs"]
    out = ["<div class=scroll><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for b, col, color in zip(bundles, cols, colors):
        reps = sorted({e.get("repeat", 0) for e in b.doc["cases"]})
        out.append("<tr>" + "".join([
            f"<td class=lab>{swatch(col, color, with_host=False)}</td>",
            f"<td class=txt>{esc(b.name)}</td>", f"<td class=txt>{esc(col['host'])}</td>",
            f"<td class=txt>{esc(col['cpu_model'])}</td>", f"<td class=txt>{esc(b.doc.get('label') or '')}</td>",
            f"<td class=txt>{esc(b.doc['accel'].upper())}</td>",
            f"<td class=txt>{esc(b.doc['created_utc'])}</td>",
            f"<td class=txt>{esc(b.doc['status']['state'])}</td>", f"<td>{len(reps)}</td>"]) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _matrix(res: dict, cols: list[dict], colors: list[str]) -> str:
    """Every entry × bundle: the headline median, and for compare the ratio to A with '*'."""
    compare = len(cols) > 1
    out = ["<div class=scroll><table class=matrix><tr><th class=lab>entry</th>"]
    out += [f"<th>{swatch(c, color, with_host=False)}<br>{host_html(c)}<br>"
            f"<span class=cpu>{esc(c['cpu'])}</span></th>" for c, color in zip(cols, colors)]
    out.append("</tr>")
    for i, r in enumerate(res["rows"]):
        anchor = f'<a href="#case-{i}">{esc(r["entry"])}</a>' if r["identity"][0] == "case" else esc(r["entry"])
        cells = [f"<td class=lab>{anchor}</td>"]
        for j, c in enumerate(r["cells"]):
            if c["median"] is None:
                cells.append("<td class=muted>-</td>")
                continue
            ci = f" ±{100 * (c['ci95'][1] - c['median']) / c['median']:.1f}%" \
                if c["ci95"] is not None and c["median"] else ""
            text = f"{marked_html(num(c['median']), 'median', c.get('other_path_max'))}" \
                f"<span class=muted>{esc(ci)}</span>"
            if compare and j > 0 and c["ratio"] is not None:
                text += f"<br>×{c['ratio']:.3f}" + (" <b>*</b>" if c["significant"] else "")
            text += pool_note(c)
            cells.append(f'<td{" class=sig" if c["significant"] else ""}>{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _metadata(bundles: list[Bundle], cols: list[dict], colors: list[str]) -> str:
    rows = meta_rows(bundles)
    out = ["<div class=scroll><table class=meta><tr><th class=lab>field</th>"]
    out += [f"<th>{swatch(c, color, with_host=False)}<br>{host_html(c)}</th>"
            for c, color in zip(cols, colors)]
    out.append("</tr>")
    group = None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            out.append(f'<tr><th class=grp colspan="{len(cols) + 1}">{esc(group)}</th></tr>')
        ref = r["values"][0]
        cells = "".join(f'<td{" class=neq" if r["differs"] and v != ref else ""}>{esc(v)}</td>'
                        for v in r["values"])
        tr = ' class="differs"' if r["differs"] and len(cols) > 1 else ""
        out.append(f"<tr{tr}><td class=lab>{esc(r['field'])}</td>{cells}</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _notes(res: dict, compare: bool) -> str:
    eff = 100 * res["min_effect"]
    lines = ["median: the headline, the median of the per-VM medians of R VM runs; CI95 across VMs "
             "from their spread (docs/statistics.md). Percentiles and net in the case tables: "
             "each VM run's own (one value, or min–max over the runs).",
             "cycles are TSC ticks; net: median minus the same-mode timer baseline."]
    lines.append("headline: a VM run whose exit path verification FAILED is left out of it; "
                 "UNVERIFIED, skipped and unchecked runs are pooled; each is named beside the number.")
    lines.append(f"{otherpath.MARK} beside a percentile: its tail (1 − X/100 of the iterations) is "
                 "not larger than the share of iterations that may have taken another path or been "
                 "disturbed (the verdict's other_path_max): it is not proven to be the case's path.")
    if compare:
        lines += [res["method"] + ".",
                  f"* = the whole ratio CI95 lies beyond ±{eff:g}% (the minimum effect), on one "
                  "side of 1."]
    if res["unit"] == "ns":
        lines.append("TSC frequencies differ: medians and ratios are in ns, not cycles.")
    return "".join(f"<p>{esc(t)}</p>" for t in lines)


def render_page(bundles: list[Bundle], min_effect: float = DEFAULT_MIN_EFFECT) -> str:
    """The whole page for one bundle (report) or several (compare, ratios against the first)."""
    from exitlat import __version__

    res = comparison(bundles, min_effect)
    cols, colors = res["columns"], palette(len(bundles))
    hzs = [b.tsc_hz for b in bundles]
    compare = len(bundles) > 1
    if compare:
        title = f"exitlat compare: {len(bundles)} bundles"
        sub = f"ratios against A ({bundles[0].name}); unit: {res['unit']}"
    else:
        title = f"exitlat report: {bundles[0].name}"
        sub = f"{cols[0]['host']}, {cols[0]['cpu_model']}, {bundles[0].doc['accel'].upper()}; unit: {res['unit']}"
    parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1><p class=sub>{esc(sub)}</p>"]
    parts += _banners(res, cols)
    parts.append(_verdict(bundles, cols, colors))
    if compare:
        extra = [f"unfair: {w}" for ws in res["unfair"].values() for w in ws] + \
                [f"note: {n}" for n in res["notes"]]
        if extra:      # about the comparison, not the bundles: a box of its own
            parts.append('<div class="verdict v-warn"><b>the setups differ: a difference in the '
                         'numbers may come from these, not from what you changed</b>'
                         '<ul class="warn-list">' + "".join(f"<li>{esc(w)}</li>" for w in extra)
                         + "</ul></div>")
    parts += ["<h2>bundles</h2>", _bundles_table(bundles, cols, colors),
              "<h2>every entry" + (" × bundle" if compare else "") + f" ({esc(res['unit'])})</h2>",
              _matrix(res, cols, colors)]
    for i, row in enumerate(res["rows"]):
        if row["identity"][0] == "case":
            parts.append(case_section(i, row, bundles, cols, colors, res["unit"], hzs))
    from .reference import reference_html

    parts.append(reference_html(bundles))
    parts += ["<h2>setup" + (" side by side (differences highlighted)" if compare else "") + "</h2>",
              _metadata(bundles, cols, colors)]
    parts += ["<footer>", _notes(res, compare),
              f"<p>made by exitlat {esc(__version__)}; self-contained: no script, no external "
              "files.</p></footer>"]
    parts += _banners(res, cols)
    parts.append("</body></html>")
    return "\n".join(parts)
