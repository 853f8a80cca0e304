"""The selftest's judgement of a run with `--reference` (inner.REFERENCE_RUNS): the reference ran
complete beside the cases, every test's exits per iteration were measured, and the known shape of
the pinned tag's loops holds on the real KVM of the emulated host: `cpuid` is one CPUID per
iteration, `vmcall` one VMCALL/VMMCALL plus two CPUIDs (kvm-unit-tests 542ecfdb: is_intel() in the
loop). Figures and ratios are reported, never judged: under nested emulation they are not costs."""

from __future__ import annotations

from .inner import EMULATED_CPU_LACKS

# test -> {reason or "<named>": exits per iteration} the pinned vmexit.flat must show
EXPECTED = {"cpuid": {"<named>": 1.0}, "vmcall": {"<named>": 1.0, "CPUID": 2.0}}
TOLERANCE = 0.05     # per iteration: the baseline run subtracts boot and setup, not interrupts


def reference_problems(docs: dict[str, dict]) -> list[str]:
    out = []
    for name, doc in docs.items():
        if not (doc.get("options") or {}).get("reference"):
            continue
        ref = doc.get("reference")
        if not ref:
            out.append(f"{name}: --reference ran but the bundle has no reference section")
            continue
        if ref["state"] != "complete":
            out.append(f"{name}: reference incomplete: {ref.get('reason')}")
        for t in ref["tests"]:
            e = t["exits"]
            if t.get("skipped") and t.get("kind") in EMULATED_CPU_LACKS:
                continue        # vmexit.flat skipped it as exitlat's guest refused it: no feature
            if not e.get("measured") and (t.get("exitlat") or {}).get("expected_path") == "none":
                continue        # exitlat proved it does not exit here: no exits to count a loop by
            if not e.get("measured"):
                out.append(f"{name}: reference {t['test']}: exits per iteration {e.get('detail')}")
                continue
            per = dict(e["per_iteration"])
            for reason, want in EXPECTED.get(t["test"], {}).items():
                reason = e["named_reason"] if reason == "<named>" else reason
                got = per.get(reason, 0.0)
                if abs(got - want) > TOLERANCE:
                    out.append(f"{name}: reference {t['test']}: {got:.3f} {reason} exits per "
                               f"iteration, expected {want:g} ({e['detail']})")
            if not t.get("values"):
                out.append(f"{name}: reference {t['test']}: no figure from vmexit.flat")
    return out


def reference_rows(docs: dict[str, dict]) -> list[dict]:
    """Per run with a reference and per vmexit.flat test: what its loop exited with and the ratio
    (reported, never judged: nested emulation)."""
    from exitlat.report.reference import ci_text, exits_text, ratio_text

    rows = []
    for name, doc in docs.items():
        for t in (doc.get("reference") or {}).get("tests", []):
            rows.append({"run": name, "test": t["test"], "exits_per_iter": exits_text(t),
                         "vmexit_flat": t.get("mean"), "compared": t.get("compared"),
                         "corrected": (t.get("corrected") or {}).get("mean"),
                         "exitlat_mean": (t.get("exitlat") or {}).get("mean"),
                         "ratio": ratio_text(t), "ratio_ci95": ci_text(t)})
    return rows


def render_rows(rows: list[dict]) -> list[str]:
    from tabulate import tabulate

    if not rows:
        return []
    n = lambda v: "-" if v is None else f"{v:,.0f}"
    table = [[r["run"], r["test"], r["exits_per_iter"], n(r["vmexit_flat"])
              + (f" (corrected {n(r['corrected'])})" if r["corrected"] is not None else ""),
              n(r["exitlat_mean"]), r["ratio"], r["ratio_ci95"]] for r in rows]
    return ["", tabulate(table, headers=["run", "vmexit.flat test", "exits per iteration (traced run)",
                                         "vmexit.flat", "exitlat case 5 mean", "exitlat / vmexit.flat",
                                         "CI95"], tablefmt="simple", disable_numparse=True),
            "vs kvm-unit-tests: the exits per iteration are checked; the figures and ratios are "
            "the emulated host's, never exit costs"]
