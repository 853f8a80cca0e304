"""`invoke report`: one bundle as tables (cases, baselines) with a host/guest/QEMU summary and
every warning a reader needs before trusting the numbers."""

from tabulate import tabulate

from exitlat.stats import otherpath
from exitlat.bundle.read import Bundle
from exitlat.bundle.format import banner_for
from exitlat.report.reference import reference_lines, reference_warnings
from exitlat.report.vmruns import (SUMMARY_HEADERS, case_summaries, pooling_warnings, run_ranges,
                      stability_warnings, summary_rows)


def fmt_cycles(v) -> str:
    if v is None:
        return "-"
    return f"{int(v):,}" if float(v).is_integer() else f"{v:,.1f}"


def fmt_ns(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


def fmt_ci(ci) -> str:
    return "-" if not ci else f"[{fmt_cycles(ci[0])}, {fmt_cycles(ci[1])}]"


def _item_problem(item) -> str | None:
    """An isolation item that is not in its wanted state, as text (items come from doctor; only
    their usual fields are read, anything else is ignored)."""
    if not isinstance(item, dict):
        return None
    bad = item.get("ok") is False or str(item.get("status", "")).lower() in (
        "warn", "warning", "fail", "failed", "bad", "not_tuned", "error")
    if not bad:
        return None
    name = item.get("name") or item.get("id") or "?"
    detail = item.get("detail") or item.get("message") or item.get("current") or ""
    return f"{name}: {detail}" if detail else str(name)


def warnings_for(doc: dict) -> list[str]:
    """Every warning, one line each (the bundle's whole list: report --verbose, JSON, HTML)."""
    return [text for _group, text in tagged_warnings(doc)]


def tagged_warnings(doc: dict) -> list[tuple[str, str]]:
    """Every warning with its group (WARNING_GROUPS), in the order of the groups' importance."""
    out = []
    if banner_for(doc):
        out.append(("accel", banner_for(doc)))
    st = doc["status"]
    if st["state"] != "complete":
        out.append(("incomplete", f"run INCOMPLETE: {st['reason']}"))
    for e in doc["cases"]:
        v = e["verification"]["status"]
        detail = e["verification"].get("detail")
        if v == "failed":
            out.append(("path failed", f"{e['key']}: exit path verification FAILED"
                        + (f" ({detail})" if detail else "")))
        elif v == "unverified":
            out.append(("path unverified", f"{e['key']}: exit path UNVERIFIED ({detail})"))
        elif v == "skipped" and e["verification"].get("refused"):
            out.append(("left out", f"{e['key']}: left out by the guest "
                                    f"({e['verification']['refused']})"))
        elif v == "skipped" and doc.get("accel") == "kvm":
            out.append(("path skipped", f"{e['key']}: exit path not verified (skipped)"))
    for e in doc["baselines"]:
        chk = e.get("exit_check") or {}
        if chk.get("status") in ("failed", "unverified"):
            out.append(("baseline", f"{e['key']}: baseline exit check {chk['status'].upper()} "
                                    f"({chk.get('detail')})"))
    iso = doc.get("isolation") or {}
    if not iso.get("isolated"):
        out.append(("isolation", "measured core was NOT isolated (see `invoke doctor`)"))
    items = iso.get("items") or []
    for item in items.values() if isinstance(items, dict) else items:
        p = _item_problem(item)
        if p:
            out.append(("isolation", f"isolation: {p}"))
    for e in doc["cases"] + doc["baselines"]:
        if e.get("tsc_backwards"):
            out.append(("samples", f"{e['key']}: {e['tsc_backwards']} samples dropped: the TSC "
                                   "went backwards"))
    out += [("samples", w) for w in tsc_backwards_warnings(doc)]
    # a kind the guest refused (--instr all) is said once, as "left out", not again as missing
    refused = [e for e in doc["cases"] if e["verification"].get("refused")]
    for e in doc["cases"] + doc["baselines"]:
        if e["stats"] is None and e not in refused:
            out.append(("samples", f"{e['key']}: no samples"))
    gone = tuple(f"headline case{e['case']} {e['instruction']} " for e in refused)
    out += [("headline", w) for w in pooling_warnings(case_summaries(doc))
            if not (w.startswith(gone) and "no samples" in w)]
    out += [("tails", w) for w in other_path_warnings(doc)]
    if not (doc["host"].get("tsc") or {}).get("hz") and not doc["guest"].get("tsc_khz"):
        out.append(("tsc", "TSC frequency unknown: no ns values"))
    if doc["guest"].get("invariant_tsc") is False:
        out.append(("tsc", "guest reports no invariant TSC: cycle counts may not be comparable"))
    return out


MAX_WARNING_LINES = 5       # the terminal report's warnings, grouped; --verbose shows them all
SHORT_DETAIL = 110          # characters of a verdict's detail shown in a grouped line


def _keys(lines: list[str]) -> str:
    keys = [ln.split(":", 1)[0] for ln in lines]
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def _first_detail(line: str) -> str:
    inner = line.split(" (", 1)[1].rstrip(")") if " (" in line else ""
    return inner if len(inner) <= SHORT_DETAIL else inner[:SHORT_DETAIL - 1] + "…"


def grouped_warnings(doc: dict, stability: list[str], name: str) -> list[str]:
    """At most MAX_WARNING_LINES lines: one per group, the most important first (the banner
    stands above the report already), and where more exist, where to find them all."""
    groups: dict[str, list[str]] = {}
    for group, text in tagged_warnings(doc):
        groups.setdefault(group, []).append(text)
    core = (doc.get("run") or {}).get("core")
    lines = []
    for group, texts in groups.items():
        if group == "accel":
            continue
        if group == "isolation":
            items = len([t for t in texts if t.startswith("isolation: ")])
            where = f"core {core}" if core is not None else "the measured core"
            lines.append(f"warning: {where} not isolated: {items} item{'s' * (items != 1)}, see "
                         f"`invoke doctor{f' --core {core}' if core is not None else ''}`")
        elif group.startswith("path ") or group == "baseline":
            what = {"path failed": "exit path FAILED", "path unverified": "exit path UNVERIFIED",
                    "path skipped": "exit path not verified (skipped)",
                    "baseline": "baseline exit check not passed"}[group]
            detail = _first_detail(texts[0])
            lines.append(f"warning: {what}: {_keys(texts)}"
                         + (f" — {texts[0].split(':', 1)[0]}: {detail}" if detail else ""))
        elif len(texts) == 1:
            lines.append(f"warning: {texts[0]}")
        else:
            lines.append(f"warning: {texts[0]} (+{len(texts) - 1} more like it)")
    lines += [f"stability: {w}" for w in stability]
    if len(lines) > MAX_WARNING_LINES:
        hidden = len(lines) - (MAX_WARNING_LINES - 1)
        lines = lines[:MAX_WARNING_LINES - 1] + [
            f"… {hidden} more warning lines: `invoke report {name} --verbose` (all of them are in "
            "the bundle and on its HTML page)"]
    return lines


_UNKNOWN = object()


def _guest_zeros(doc: dict, e: dict, suffix: str = ""):
    """What the guest said it stored as 0 in one window of this entry (its `done` event's
    tsc_backwards, kept per VM run and window key in run.tsc_backwards): an int, None where the
    guest did not say, _UNKNOWN where the bundle does not record it."""
    per_run = (doc.get("run") or {}).get("tsc_backwards")
    rep = e.get("repeat", 0)
    tail = f"-r{rep}"
    if not isinstance(per_run, list) or rep >= len(per_run) or not isinstance(per_run[rep], dict) \
            or not e["samples_key"].endswith(tail):
        return _UNKNOWN
    v = per_run[rep].get(e["samples_key"][: -len(tail)] + suffix)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def tsc_backwards_warnings(doc: dict) -> list[str]:
    """The zero samples dropped against the guest's own count of them: a difference means the
    samples read back are not the ones the guest stored (the guest stores 0 where the TSC went
    backwards; a 0 it did not count came from somewhere else)."""
    from exitlat.run.guestio import TRACED_SUFFIX

    out = []
    for e in doc["cases"] + doc["baselines"]:
        windows = []
        if e.get("stats") is not None or e.get("tsc_backwards"):
            windows.append((e["key"], e.get("tsc_backwards") or 0, _guest_zeros(doc, e)))
        vw = e.get("verification_window")
        if isinstance(vw, dict) and (vw.get("stats") is not None or vw.get("tsc_backwards")):
            windows.append((f"{e['key']} traced window", vw.get("tsc_backwards") or 0,
                            _guest_zeros(doc, e, TRACED_SUFFIX)))
        for what, dropped, guest in windows:
            if guest is _UNKNOWN:
                continue
            if guest is None:
                if dropped:
                    out.append(f"{what}: {dropped} zero samples dropped, but the guest did not say "
                               "how many it stored: they cannot be reconciled")
            elif guest != dropped:
                out.append(f"{what}: {dropped} zero samples dropped, but the guest counted {guest} "
                           "(tsc_backwards): the samples read back are not what the guest stored")
    return out


def other_path_warnings(doc: dict) -> list[str]:
    """Case entries whose verdict states no bound on other-path iterations (KVM)."""
    keys = [e["key"] for e in doc["cases"] if otherpath.unknown(e, doc.get("accel"))]
    if not keys:
        return []
    shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
    return [f"no bound on other-path iterations for {shown} (a bundle before the verifier stated "
            "one, or it could not): their p99 and p99.9 may include iterations that took another "
            "path"]


def other_path_notes(doc: dict) -> list[str]:
    """The footnotes of the case table's marked percentiles, one per case and footnote, naming
    its VM runs ('† case2-r0–r3 p99, p99.9: may include up to 1.2 % other-path iterations')."""
    runs: dict[tuple, list[str]] = {}
    for e in doc["cases"]:
        opm = otherpath.fraction(e)
        keys = otherpath.covered(opm, CASE_PERCENTILES) if e.get("stats") else []
        if keys:
            tail = f"-r{e.get('repeat', 0)}"
            name = e["key"][: -len(tail)] if e["key"].endswith(tail) else e["key"]
            runs.setdefault((name, otherpath.footnote(keys, opm)), []).append(tail[1:])
    return [f"{otherpath.MARK} {name}-{run_ranges(labels)} {note}"
            for (name, note), labels in runs.items()]


def path_label(path: str) -> str:
    """The expected path as the case table names it: "none" is a proven absence of exits, not a
    missing value."""
    return "no exit" if path == "none" else path


def verified_text(v: dict) -> str:
    """A verification verdict in a few words: status, per-iteration exits where known."""
    s = v["status"]
    if s == "unverified":
        return "UNVERIFIED"
    if s == "skipped" and v.get("refused"):
        return "left out (guest refused)"
    parts = []
    for k, short in (("expected_reason_per_iter", "exit"), ("userspace_exits_per_iter", "user")):
        if isinstance(v.get(k), (int, float)):
            parts.append(f"{short} {v[k]:.2f}")
    rv = (v.get("receiver") or {}).get("expected_reason_per_iter")    # ipi, ipi_halt
    if isinstance(rv, (int, float)):
        parts.append(f"receiver {rv:.2f}")
    return f"{s} ({', '.join(parts)})" if parts and s in ("passed", "failed") else s


def _ns(e, key):
    ns = (e["stats"] or {}).get("ns")
    return None if not ns else ns[key]


def case_rows(doc: dict) -> list[list]:
    rows = []
    for e in doc["cases"]:
        s = e["stats"] or {}
        instr = e["instruction"] + (f" {e['msr']}" if e["msr"] else "") + (
            f" {e['port']:#x}" if e["port"] is not None else "")
        net = e.get("net_cycles") or {}
        opm = otherpath.fraction(e) if s else None
        pcts = [otherpath.mark(fmt_cycles(s.get(k)), k, opm) for k in CASE_PERCENTILES]
        rows.append([e["key"], e["flow"], instr, path_label(e["expected_path"]),
                     verified_text(e["verification"]),
                     s.get("n", 0), *pcts, fmt_ns(_ns(e, "median")), fmt_ci(s.get("median_ci95")),
                     fmt_cycles(net.get("median")), fmt_overhead(e.get("tracing_overhead_cycles"))])
    return rows


CASE_PERCENTILES = ("median", "p99", "p99_9")      # the percentiles the case table publishes


CASE_HEADERS = ["case", "flow", "instruction", "path", "verified", "n", "median", "p99", "p99.9",
                "median ns", "median CI95 (this VM)", "net", "tracing adds"]


DECOMP_HEADERS = ["case", "exits", "guest (traced)", "KVM", "of it KVM_RUN", "QEMU",
                  "remainder", "minus baseline", "tracing adds", "KVM p99", "QEMU p99"]


def decomposition_rows(doc: dict) -> tuple[list[list], list[str]]:
    """Where the cycles go, per case with a decomposition (traced-window medians, cycles), and
    one line per case that was not decomposed, with the reason."""
    from exitlat.stats.decompose import of_case

    rows, notes = [], []
    for e in doc["cases"]:
        d = of_case(e)
        if not d:
            continue
        if d["status"] != "ok":
            rows.append([e["key"], "not decomposed"] + ["-"] * 9)
            notes.append(f"{e['key']}: not decomposed: {d['reason']}")
            continue

        def med(k, q="median"):
            return fmt_cycles((d.get(k) or {}).get(q))

        over = d.get("tracing_overhead_cycles")
        rows.append([e["key"], d["exits"], med("guest_round_trip_cycles"), med("kvm_cycles"),
                     med("kvm_run_cycles"), med("qemu_cycles"), fmt_cycles(d["remainder_cycles"]),
                     fmt_cycles(d.get("remainder_net_cycles")),
                     "-" if over is None else f"{over:+,.0f}", med("kvm_cycles", "p99"),
                     med("qemu_cycles", "p99")])
    return rows, notes


def fmt_overhead(o) -> str:
    if not o:
        return "-"
    return f"{o['difference']:+,.0f} (x{o['ratio']:.2f})"


def _exit_check(e: dict) -> str:
    chk = e.get("exit_check")
    if not chk:
        return "-"
    per = chk.get("exits_per_iter")
    return chk["status"] + (f" ({per:.3f} exits/iter)" if isinstance(per, (int, float)) else "")


def baseline_rows(doc: dict) -> list[list]:
    return [[e["key"], e["flow"], (e["stats"] or {}).get("n", 0), fmt_cycles((e["stats"] or {}).get("median")),
             fmt_cycles((e["stats"] or {}).get("p99")), fmt_ns(_ns(e, "median")),
             fmt_ci((e["stats"] or {}).get("median_ci95")), _exit_check(e)] for e in doc["baselines"]]


CMDLINE_SHOWN = 80          # characters of the host's kernel command line in the short report


def _cut(text: str, width: int, where: str) -> str:
    return text if len(text) <= width else f"{text[:width - 1]}… (whole: {where})"


def summary_lines(b: Bundle, verbose: bool = False) -> list[str]:
    d = b.doc
    h, g, q = d["host"], d["guest"], d["qemu"]
    cpu = h["cpu"]
    hz = b.tsc_hz
    return [
        f"bundle:  {b.name}  ({d['created_utc']}, exitlat {d['tool']['version']}"
        f"{' ' + d['tool']['commit'][:12] if d['tool'].get('commit') else ''}, schema {d['schema_version']})",
        f"status:  {d['status']['state']}" + (f" — {d['status']['reason']}" if d['status']['reason'] else ""),
        f"host:    {h['hostname']}: {cpu.get('model_name')} (family {cpu.get('family')} model "
        f"{cpu.get('model')} stepping {cpu.get('stepping')}, microcode {cpu.get('microcode')}, SMT "
        f"{'on' if cpu.get('smt') else 'off' if cpu.get('smt') is False else '?'})",
        f"TSC:     {hz / 1e9:.3f} GHz ({h['tsc'].get('source') if h['tsc'].get('hz') else 'guest tsc_khz'})"
        if hz else "TSC:     unknown",
        f"kernel:  {h['kernel']['release']}  cmdline: "
        + (h["kernel"].get("cmdline") or "?" if verbose else
           _cut(h["kernel"].get("cmdline") or "?", CMDLINE_SHOWN, "--verbose, bundle.json host.kernel.cmdline")),
        f"KVM:     {h['kvm'].get('module') or '?'} "
        + " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in sorted(h["kvm"].get("parameters", {}).items())
                   if k.split(".", 1)[-1] in ("ept", "enable_apicv", "ple_gap", "npt", "avic", "halt_poll_ns")),
        f"guest:   kernel {g.get('kernel_release')}, busybox {g.get('busybox_version')}, "
        + (f"APIC {g['apic_mode']}, " if g.get("apic_mode") else "") + f"accel {d['accel'].upper()}",
        f"QEMU:    {q.get('version')}",
    ]


def verdict_line(doc: dict) -> str:
    """The run in one line: complete or not, isolated or not, and the cases' path verdicts."""
    from collections import Counter

    st = doc["status"]["state"]
    iso = "isolated" if (doc.get("isolation") or {}).get("isolated") else "core NOT isolated"
    counts = Counter(e["verification"]["status"] for e in doc["cases"])
    order = ("failed", "unverified", "skipped", "passed", "not_applicable")
    paths = ", ".join(f"{counts[k]} {k.replace('_', ' ').upper() if k in ('failed', 'unverified') else k.replace('_', ' ')}"
                      for k in order if counts.get(k))
    if doc.get("accel") == "tcg":
        paths += " (TCG: no VM exits)"
    return f"verdict: {st.upper() if st != 'complete' else st} · {iso} · paths: {paths or 'no cases'}"


def path_basis_lines(doc: dict) -> list[str]:
    """Why each host-dependent kind was expected on its path here (the case's `path_basis`, from
    the instruction table's host rules read against this host's facts), once per kind and case."""
    from exitlat.instructions import TABLE

    seen: dict[tuple, str] = {}
    for e in doc.get("cases", []):
        row = TABLE.get(e.get("instruction"))
        basis = e.get("path_basis")
        if row is None or not (row.host_paths or row.receiver) or not basis:
            continue
        if e.get("receiver_basis"):           # a two-vCPU kind: the receiving vCPU's rule too
            basis = f"{basis}; {e['receiver_basis']}"
        seen.setdefault((e.get("case"), e["instruction"]), basis)
    if not seen:
        return []
    lines = ["", "paths that depend on the host (exitlat/instructions.py host rules, this host's "
             "facts):"] + [f"  case{c} {name}: {basis}" for (c, name), basis in seen.items()]
    run = doc.get("run") or {}
    if run.get("receiver_core") is not None:
        topo = run.get("topology") or {}
        lines.append(f"  receiving vCPU on core {run['receiver_core']} (sender on core "
                     f"{run.get('core')}): {topo.get('relation', 'unknown')}"
                     + ("" if (run.get("receiver_isolation") or {}).get("isolated")
                        else "; that core is NOT isolated"))
    return lines


def render_report(b: Bundle, verbose: bool = False) -> str:
    """The terminal report: the verdict and the numbers first, then at most MAX_WARNING_LINES
    grouped warnings (verbose: every one), then the tables of detail and the metadata."""
    d = b.doc
    out = []
    banner = banner_for(d)
    if banner:
        out += [f"*** {banner} ***", ""]
    out += [verdict_line(d), ""]
    out.append(tabulate(case_rows(d), headers=CASE_HEADERS, tablefmt="simple",
                        disable_numparse=True) if d["cases"] else "(no cases)")
    out += other_path_notes(d)
    out += path_basis_lines(d)
    sums = case_summaries(b)
    if verbose:
        warns = [f"warning: {w}" for w in warnings_for(d)] + \
            [f"stability: {w}" for w in stability_warnings(sums)]
    else:
        warns = grouped_warnings(d, stability_warnings(sums), b.name)
    warns += [f"reference: {w}" for w in reference_warnings(d)]
    if warns:
        out += [""] + warns
    out += reference_lines(d)
    drows, dnotes = decomposition_rows(d)
    if drows:
        out += ["", "where the cycles go (traced window; medians in cycles; docs/measuring.md):",
                tabulate(drows, headers=DECOMP_HEADERS, tablefmt="simple", disable_numparse=True)]
        out += dnotes
    out += [""] + summary_lines(b, verbose)
    if d["baselines"]:
        out += ["", "baselines:", tabulate(baseline_rows(d), headers=[
            "baseline", "flow", "n", "median", "p99", "median ns", "median CI95", "exits (must be ≈0)"],
            tablefmt="simple", disable_numparse=True)]
    if any(len(x["keys"]) > 1 for x in sums):   # with one VM the table would only repeat the above
        out += ["", "across VM runs (headline: median of the per-VM medians of the runs it pools; "
                "CI95 from their spread):",
                tabulate(summary_rows(sums), headers=SUMMARY_HEADERS, tablefmt="simple",
                         disable_numparse=True)]
        out += [f"{otherpath.MARK} {x['entry']} {otherpath.footnote(['median'], x['other_path_max'])}"
                for x in sums if otherpath.covered(x["other_path_max"], ("median",))]
        out.append("a VM run whose verification FAILED is excluded from its headline; UNVERIFIED "
                   "and unchecked runs are pooled and named")
    out.append("")
    out.append("cycles are TSC ticks; median CI95 (this VM): order-statistic interval within one VM "
               "run, blind to run-to-run variation; CI95 across VMs: see docs/statistics.md")
    if any(e.get("net_cycles") for e in d["cases"]):
        out.append("net: median minus the same-mode timer baseline (user: baseline_timer, ioctl: "
                   "baseline_module_call, kernel: baseline_kernel_timer)")
    if drows:
        out.append("where the cycles go: KVM = kvm_exit -> kvm_entry minus QEMU (of it KVM_RUN: its "
                   "return to QEMU and re-entry); QEMU = return of KVM_RUN -> its next call; "
                   "remainder = guest median - KVM - QEMU: the VM exit and entry plus what tracing "
                   "adds (compare 'tracing adds'); minus baseline: without the same-mode timer "
                   "baseline")
    if other_path_notes(d):
        out.append(f"{otherpath.MARK}: the percentile's tail (1 − X/100 of the iterations) is not "
                   "larger than the share of iterations that may have taken another path or been "
                   "disturbed (the verdict's other_path_max): it is not proven to be the case's path")
    if any(e.get("tracing_overhead_cycles") for e in d["cases"]):
        out.append("tracing adds: traced-window median minus timed-window median; the timed "
                   "window, which gives every other number, ran with no tracing")
    if banner:
        out += ["", f"*** {banner} ***"]
    return "\n".join(out)


def report_json(b: Bundle) -> dict:
    d = b.doc
    sums = case_summaries(b)
    keep = ("key", "case", "repeat", "name", "flow", "instruction", "msr", "port", "timer",
            "expected_path", "path_basis", "verification", "iterations", "warmup", "samples_file", "stats",
            "timed_window", "verification_window", "tracing_overhead_cycles", "net_cycles",
            "tsc_backwards", "exit_check")
    return {
        "bundle": b.name, "path": str(b.path), "schema_version": d["schema_version"],
        "accel": d["accel"], "banner": banner_for(d),
        "status": d["status"], "created_utc": d["created_utc"], "tsc_hz": b.tsc_hz,
        "host": d["host"], "guest": d["guest"], "qemu": {"version": d["qemu"].get("version")},
        "isolated": d["isolation"].get("isolated"),
        "warnings": warnings_for(d),
        "vm_summaries": sums,
        "stability": stability_warnings(sums),
        "other_path_notes": other_path_notes(d),
        "cases": [{k: e[k] for k in keep if k in e} for e in d["cases"]],
        "baselines": [{k: e[k] for k in keep if k in e} for e in d["baselines"]],
        "reference": d.get("reference"),
    }
