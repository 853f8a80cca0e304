"""The "vs kvm-unit-tests" view of a bundle's `reference` section (exitlat/reference/section.py):
vmexit.flat's figure and exitlat's case-5 mean and median side by side with the ratio, what each
reference loop really exited with, and the warnings. Used by the terminal report, the HTML page and
compare."""

from __future__ import annotations

HEADERS = ["vmexit.flat test", "exits per iteration", "vmexit.flat mean", "compared",
           "exitlat case 5 mean", "exitlat median", "exitlat / vmexit.flat", "CI95 (VM runs)"]


def _n(v, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio_text(t: dict) -> str:
    if t.get("ratio") is None:
        return "not compared" if t.get("ratio_note", "") and "not compared" in t["ratio_note"] else "-"
    mark = "" if t.get("in_band") in (True, None) else " (!)"
    return f"{t['ratio']:.3f}{mark}"


def ci_text(t: dict) -> str:
    ci = t.get("ratio_ci95")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def exits_text(t: dict) -> str:
    e = t.get("exits") or {}
    if not e.get("measured"):
        return "not measured"
    return e["detail"].split("; per iteration: ")[-1]


def rows(ref: dict) -> list[list]:
    out = []
    for t in ref.get("tests", []):
        ours = t.get("exitlat") or {}
        ref_fig = _n(t.get("mean"))
        if t.get("compared") == "corrected":
            ref_fig += f" (corrected {_n(t['corrected']['mean'])})"
        out.append([t["test"], exits_text(t), ref_fig, t.get("compared") or "no",
                    _n(ours.get("mean"), 1), _n(ours.get("median"), 1), ratio_text(t), ci_text(t)])
    return out


def per_run_lines(ref: dict) -> list[str]:
    """Each test's vmexit.flat figure per VM run (the unit of the CI)."""
    return [f"  {t['test']}: " + ", ".join(str(v) for v in t.get("values", [])) + " cycles per VM run"
            + (f"; exitlat case 5 means {', '.join(_n(m, 1) for m in t['exitlat']['means'])}"
               if t.get("exitlat") else "")
            for t in ref.get("tests", [])]


def notes(ref: dict) -> list[str]:
    out = []
    for t in ref.get("tests", []):
        if t.get("compared") == "corrected":
            out.append(f"{t['test']}: corrected figure = {t['corrected']['how']} (each extra exit "
                       "costed at vmexit.flat's own clean figure of that exit, per VM run)")
        if t.get("ratio_note"):
            out.append(f"{t['test']}: {t['ratio_note']}")
    return out


def reference_lines(doc: dict) -> list[str]:
    """The section of the terminal report; [] for a bundle without a reference."""
    from tabulate import tabulate

    ref = doc.get("reference")
    if not ref:
        return []
    head = (f"vs kvm-unit-tests ({ref.get('tag') or ref.get('version')} {ref['test_binary']}, "
            f"git tree {str(ref.get('git_tree') or '?')[:12]}; same QEMU, core and container; "
            f"{len(ref.get('runs', []))} VM run(s)"
            + ("" if ref["state"] == "complete" else f"; INCOMPLETE: {ref.get('reason')}") + "):")
    out = ["", head, tabulate(rows(ref), headers=HEADERS, tablefmt="simple", disable_numparse=True)]
    out += per_run_lines(ref)
    out += [f"  {n}" for n in notes(ref)]
    out.append(f"  exitlat / vmexit.flat: exitlat's case-5 mean over vmexit.flat's mean (both are "
               f"means of per-iteration cycles); the band {ref['band'][0]}–{ref['band'][1]} needs no "
               "explanation (docs/measuring.md); exits per iteration: from a traced run of each "
               "test less a run with no test")
    if ref.get("emulated"):
        out.append(f"  {ref['emulated']}: the ratios here prove the plumbing, not an exit cost")
    if ref.get("command_line"):
        out.append("  command line: " + " ".join(ref["command_line"]))
    return out


def reference_warnings(doc: dict) -> list[str]:
    ref = doc.get("reference") or {}
    out = list(ref.get("warnings", []))
    if ref and ref.get("state") != "complete":
        out.append(f"the kvm-unit-tests reference is incomplete: {ref.get('reason')}")
    for vm in ref.get("runs", []):
        tw = vm.get("timed_window") or {}
        if tw.get("tracing") == "on":
            out.append("tracing was enabled during a timed vmexit.flat run: "
                       + ", ".join(tw.get("tracing_enabled", [])[:5]))
    return out


def compare_lines(bundles) -> list[str]:
    """One line per bundle and reference test, for `invoke compare`."""
    out = []
    for b in bundles:
        ref = b.doc.get("reference")
        if not ref:
            continue
        for t in ref.get("tests", []):
            ours = t.get("exitlat") or {}
            out.append(f"  {b.name}: {t['test']}: vmexit.flat {_n(t.get('mean'))}"
                       + (f" (corrected {_n(t['corrected']['mean'])})" if t.get("corrected") else "")
                       + f", exitlat case 5 mean {_n(ours.get('mean'), 1)}, ratio {ratio_text(t)} "
                       f"{ci_text(t)}; exits per iteration: {exits_text(t)}")
    return (["", "vs kvm-unit-tests (each bundle's own reference run):"] + out) if out else []


def reference_html(bundles) -> str:
    """The HTML page's "vs kvm-unit-tests" section: per bundle with a reference, the table, the
    corrections and the warnings ('' when no bundle has one)."""
    from html import escape

    parts = []
    for b in bundles:
        ref = b.doc.get("reference")
        if not ref:
            continue
        parts.append(f"<h3>{escape(b.name)}: kvm-unit-tests {escape(str(ref.get('tag') or ref.get('version')))} "
                     f"{escape(ref['test_binary'])} ({len(ref.get('runs', []))} VM run(s), "
                     f"{escape(ref['state'])})</h3>")
        head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in rows(ref))
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        items = notes(ref) + [f"warning: {w}" for w in reference_warnings(b.doc)]
        if ref.get("emulated"):
            items.append(f"{ref['emulated']}: the ratios prove the plumbing, not an exit cost")
        if ref.get("command_line"):
            items.append("command line: " + " ".join(ref["command_line"]))
        parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
    if not parts:
        return ""
    return ("<h2>vs kvm-unit-tests</h2><p>vmexit.flat's figure (a mean of per-iteration cycles) "
            "beside exitlat's case-5 mean of the same exit; a loop that takes more exits than its "
            "name says is compared only through a corrected figure (docs/measuring.md).</p>"
            + "\n".join(parts))
