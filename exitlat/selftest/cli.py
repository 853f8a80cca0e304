"""`invoke selftest`: argument strings in; for each vendor asked for (AMD-V: L1 under QEMU's TCG;
VT-x: L1 under Bochs) the L1 image of the chosen kernel series, one boot of L1, the bundles imported
into results/, the negative controls, a verdict table (or one JSON document) out.

Exit status: 0 when every case of every run passed its path verification and every negative
control failed; 3 when one did not (CheckFailed); 2 for anything that kept the selftest from
running (one line, no traceback).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from exitlat.run.plan import parse_int
from exitlat.errors import CheckFailed, ExitlatError
from exitlat.instructions import F_INSTRUCTIONS, PATH_KVM, PATH_NONE, PATH_QEMU, TABLE
from exitlat.limits import SELFTEST_MAX_ITERATIONS, SELFTEST_MIN_ITERATIONS
from exitlat.paths import build_root, results_root
from exitlat.progress import Progress, fmt_duration
from .host import MACHINE
from .inner import (CAPTURE_RUNS, CATALOGUE_NAMES, CATALOGUE_RUNS, CONTROL_RUN, RUN_NAMES,
                    TWO_VCPU_NAMES, TWO_VCPU_RUNS, run_config)
from .inner import EMULATED_CPU_LACKS, HOST_NAMES, HOST_RUNS, REFERENCE_NAMES, REFERENCE_RUNS
from .inner import RUNS as DEFAULT_RUNS

# every run --runs may name ("all": the default and the catalogue's; the reference's and the
# emulated host's own by name)
RUNS = DEFAULT_RUNS + CATALOGUE_RUNS + TWO_VCPU_RUNS + REFERENCE_RUNS + HOST_RUNS
GROUPS = {"catalogue": CATALOGUE_NAMES + TWO_VCPU_NAMES}

SHOWN_RATE = 0.005        # exit reasons below this many per iteration are left out of the table
DEFAULT_TIMEOUT = {"amd": 1500, "intel": 2400}    # seconds, QEMU/Bochs start → L1 powered off
# `--vendor` default: AMD-V, the fast host (about 1 min on 2 cores, every window verifies); the VT-x
# host under Bochs takes ~9 min, so CI runs it as a test of its own (tests/test_selftest.py) rather
# than twice.
DEFAULT_VENDOR = "amd"
VENDOR_CHOICES = ("amd", "intel", "all")
EXIT_FAMILY = {"amd": "SVM", "intel": "VMX"}
# Per vendor: the core bench pins L2's vCPU to (L1 has two CPUs on both hosts), L2's boot deadline
# inside L1 (L2 boots in 1-2 s under QEMU's TCG and in ~10 s under Bochs), and the note every
# bundle carries.
VENDOR_RUN = {
    "amd": {"core": 1, "l2_boot_timeout": 20.0,
            "emulated_note": "emulated AMD-V host (nested under TCG): timings are not exit costs"},
    "intel": {"core": 0, "l2_boot_timeout": 90.0, "quiet_console": True,
              "emulated_note": "emulated VT-x host (nested under Bochs): timings are not exit costs"},
}


def parse_vendor(text: str | None) -> list[str]:
    v = str(text or DEFAULT_VENDOR).strip().lower()
    if v not in VENDOR_CHOICES:
        raise ExitlatError(f"unknown --vendor {text!r}; choose {', '.join(VENDOR_CHOICES)}")
    return ["amd", "intel"] if v == "all" else [v]


def parse_runs(text: str | None) -> list[str]:
    """'all' (default: every run, the exit catalogue's too) or a comma list of run names, in the
    order given, no repeats; 'catalogue' stands for the exit catalogue's runs (inner.CATALOGUE_RUNS)."""
    if text is None or str(text).strip() in ("", "all"):
        return list(RUN_NAMES + CATALOGUE_NAMES)
    if str(text).strip() == "default":         # all but the catalogue
        return list(RUN_NAMES)
    names = []
    for t in str(text).split(","):
        t = t.strip()
        names += list(GROUPS[t]) if t in GROUPS else [t] if t else []
    every = RUN_NAMES + CATALOGUE_NAMES + TWO_VCPU_NAMES + REFERENCE_NAMES + HOST_NAMES
    bad = [n for n in names if n not in every]
    if bad or not names:
        raise ExitlatError(f"unknown --runs {', '.join(bad) or repr(text)}; choose all, default, catalogue "
                           f"or a comma list of {', '.join(every)}")
    if len(set(names)) != len(names):
        raise ExitlatError(f"--runs names a run twice: {text}")
    return names


def check_machine() -> None:
    if platform.machine() not in ("x86_64", "amd64"):
        raise ExitlatError(f"selftest needs an x86_64 machine (the L1 kernel and the project's QEMU "
                           f"are x86_64); this one is {platform.machine()}")


def per_iteration(counts: dict, n: int) -> dict:
    """{reason: exits per iteration} of a window's counts (to_dict form), largest first."""
    return {k: round(v / n, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def _fmt_rates(rates: dict) -> str:
    shown = [f"{k} {v:.3f}" for k, v in rates.items() if v >= SHOWN_RATE]
    return ", ".join(shown) or "-"


def case_rows(run: dict, doc: dict) -> list[dict]:
    """One row per case of a run's bundle: verdict and the exit reasons (SVM or VMX) per iteration."""
    rows = []
    for c in doc.get("cases", []):
        vw = c.get("verification_window") or {}
        verdict = (vw.get("verdict") or {})
        counts = vw.get("counts") or {}
        n = verdict.get("iterations_total") or vw.get("iterations_requested") or 0
        rows.append({
            "run": run["name"], "case": c["case"], "key": c["key"], "instruction": c["instruction"],
            "expected_path": c["expected_path"], "backend": vw.get("backend") or run.get("tracing"),
            "verdict": c["verification"]["status"],
            "timed_window": (c.get("timed_window") or {}).get("verdict", {}).get("status"),
            "traced_window": verdict.get("status"),
            "n": n,
            "exits_per_iter": per_iteration(counts.get("exits", {}), n) if n else {},
            # a two-vCPU kind's receiving vCPU, its own window
            "receiver_per_iter": (per_iteration(vw["receiver_counts"].get("exits", {}), n)
                                  if n and vw.get("receiver_counts") else None),
            "userspace_per_iter": per_iteration(counts.get("userspace", {}), n) if n else {},
            "lost": counts.get("lost"),
            "detail": c["verification"].get("detail", ""),
            "refused": c["verification"].get("refused"),
        })
    return rows


def import_bundles(out_dir: Path, runs: list[dict], dest: Path) -> dict[str, Path]:
    """Import every run's exported bundle into dest (each checked by the import); name -> path."""
    from exitlat.bundle.archive import import_bundle

    paths = {}
    for r in runs:
        if not r.get("archive"):
            continue
        paths[r["name"]] = import_bundle(out_dir / "bundles" / r["archive"], dest)
    return paths


def cpu_lacks(row: dict) -> bool:
    """A case the guest left out because the vCPU lacks the feature it needs, where the emulated
    hosts are known to lack it; any other refusal is a problem."""
    return bool(row.get("refused")) and row["instruction"] in EMULATED_CPU_LACKS and \
        "the vCPU lacks" in row["refused"]


def evaluate(summary: dict, docs: dict[str, dict], wanted: list[str],
             control_docs: dict[str, dict] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(case rows, control rows, problems) from what L1 reported and the imported bundles."""
    from .controls import run_controls, windows_of

    problems = []
    if summary.get("error"):
        problems.append(f"inside L1: {summary['error']}")
    by_name = {r["name"]: r for r in summary.get("runs", [])}
    rows: list[dict] = []
    windows = []
    for name in wanted:
        r = by_name.get(name)
        if r is None:
            problems.append(f"run {name}: did not run")
            continue
        if r["status"] != "ok":
            problems.append(f"run {name}: {r.get('error') or r['status']}")
        doc = docs.get(name)
        if doc is None:
            continue
        rows += case_rows(r, doc)
        windows += windows_of(r.get("bundle") or name, doc)
    for row in rows:
        if row["verdict"] != "passed" and not cpu_lacks(row):
            problems.append(f"{row['run']} {row['key']}: {row['verdict']}: {row['detail'][:200]}")
    controls = run_controls(windows, (control_docs or {}).get(CONTROL_RUN["name"]))
    possible = controls_possible(wanted)
    for c in controls:
        if c["verdict"] == "missing" and not possible[c["name"]]:
            c["verdict"], c["detail"] = "not run", "the selected runs have no window for it"
            continue
        if not c["ok"]:
            problems.append(f"negative control {c['name']}: verdict {c['verdict']} "
                            f"(must be {c['must']}): {c['detail'][:200]}")
    return rows, controls, problems


def baseline_rows(docs: dict[str, dict]) -> list[dict]:
    """Every baseline window's ≈0-exit check (KVM stats of a window nothing traced): the proof
    that the timer, the NOP, the syscall and the module call do not exit."""
    return [{"run": name, "key": e["key"], "status": (e.get("exit_check") or {}).get("status", "missing"),
             "exits_per_iter": (e.get("exit_check") or {}).get("exits_per_iter"),
             "detail": (e.get("exit_check") or {}).get("detail") or "no exit check recorded"}
            for name, doc in docs.items() for e in doc.get("baselines", [])]


def controls_possible(wanted: list[str]) -> dict[str, bool]:
    """Which negative controls the selected runs can feed (a subset of runs may leave some out;
    the full selftest feeds them all): a control needs a window of a kind some run runs in one
    of its F cases (or, for outb, an S case)."""
    # "all" as bench reads it without a second core: the one-vCPU kinds
    every = [k for k in F_INSTRUCTIONS if TABLE[k].vcpus == 1]
    specs = [(i.split(",") if i != "all" else every, c, b) for n, i, c, b in RUNS if n in wanted]
    ran = {k for instrs, cases, _b in specs for k in instrs if set(TABLE[k].cases) & set(cases)}
    s_cases = any(set(cases) & {2, 4, 6} for _i, cases, _b in specs)
    none_kinds = {n for n, i in TABLE.items() if i.path == PATH_NONE and not i.rearm}
    kvm_kinds = {n for n, i in TABLE.items() if i.path == PATH_KVM}
    mmio_qemu = {n for n, i in TABLE.items() if i.mmio and i.path == PATH_QEMU}
    mmio_kvm = {n for n, i in TABLE.items() if i.mmio and i.path == PATH_KVM}
    return {"outb-as-kvm": s_cases, "cpuid-as-qemu": "cpuid" in ran,
            "lost-events": bool(kvm_kinds & ran),      # it injects into a KVM-path window
            "unparsed-line": any(b == "stream" for _i, _c, b in specs),
            "qemu-extra-exit": s_cases, "no-kvm-exit": "cpuid" in ran,
            "read-as-write": "rdmsr" in ran, "noexit-as-kvm": bool(none_kinds & ran),
            "kvm-as-noexit": "cpuid" in ran,
            "mmio-eventfd-as-qemu": bool(mmio_kvm & ran),
            "mmio-qemu-as-eventfd": bool(mmio_qemu & ran),
            "halt-as-running": "ipi_halt" in ran, "running-as-halt": "ipi" in ran,
            "small-n": True, "tracing-elsewhere": True}


# kvm_intel turns the VMX preemption timer off at load when it would tick faster than this (Hz):
# TSC Hz >> IA32_VMX_MISC's rate above 2^32 / 10 (arch/x86/kvm/vmx/vmx.c, hardware_setup).
PREEMPTION_TIMER_MAX_HZ = 0xFFFFFFFF // 10


def timer_rows(docs: dict[str, dict], l1: dict | None = None) -> list[dict]:
    """Case 5's WRMSR TSC-deadline windows: the tier the run expected (KVM's irq-off fastpath only
    where the VMX preemption timer can back the deadline), what the verifier found, and which timer
    backed the writes (exitlat.verify.timerbacking), with why the fastpath is unavailable where it
    is."""
    from exitlat.verify.timerbacking import timer_backing

    rows = []
    for name, doc in docs.items():
        vendor = (doc.get("run") or {}).get("exit_vendor") or "unknown"
        params = ((doc.get("host") or {}).get("kvm") or {}).get("parameters") or {}
        for c in doc.get("cases", []):
            if c.get("instruction") != "wrmsr_tsc_deadline":
                continue
            vw = c.get("verification_window") or {}
            verdict = vw.get("verdict") or {}
            n = verdict.get("iterations_total") or vw.get("iterations_requested")
            backing = timer_backing(vw.get("counts"), vendor, params, n)
            if c["expected_path"] == "kvm_fastpath":
                why = ""
            elif vendor == "amd":
                why = "SVM has no preemption timer: KVM's fastpath declines every TSC-deadline write"
            else:
                why = (f"kvm_intel.preemption_timer={params.get('kvm_intel.preemption_timer')}: "
                       "without the VMX preemption timer KVM's fastpath declines the write "
                       "(kvm_can_use_hv_timer() is false) and the normal handler arms an hrtimer")
                khz = (l1 or {}).get("tsc_khz")
                if khz and khz * 1000 > PREEMPTION_TIMER_MAX_HZ:
                    why += (f"; kvm_intel turned the timer off at load: it ticks at the TSC's "
                            f"{khz / 1000:.0f} MHz >> IA32_VMX_MISC's rate (0 on Bochs 2.7), above "
                            f"the {PREEMPTION_TIMER_MAX_HZ / 1e6:.0f} MHz KVM accepts")
            rows.append({"run": name, "key": c["key"], "expected_path": c["expected_path"],
                         "verdict": c["verification"]["status"],
                         "fastpath": verdict.get("fastpath"), "fastpath_unavailable": why,
                         "timer": backing["timer"], "timer_evidence": backing["evidence"]})
    return rows


def vendor_problems(vendor: str, l1: dict, docs: dict[str, dict]) -> list[str]:
    """The emulated host must be the one asked for: L1's KVM module, and every bundle's exit
    names (VMX or SVM)."""
    from .host import KVM_MODULE

    problems = []
    if l1 and l1.get("kvm_module") != KVM_MODULE[vendor]:
        problems.append(f"L1 loaded {l1.get('kvm_module')}, not {KVM_MODULE[vendor]}")
    for name, doc in docs.items():
        got = (doc.get("run") or {}).get("exit_vendor")
        if got != vendor:
            problems.append(f"{name}: the bundle names its exits as {got!r}, not {vendor!r}")
    return problems


def apic_mode_problems(docs: dict[str, dict]) -> list[str]:
    """Every bundle must name the APIC mode its guest really ran in: xAPIC for a run of the xAPIC
    kinds (bench booted it nox2apic), x2APIC for every other (both emulated CPUs offer x2APIC, and
    the guest's kernel turns it on)."""
    problems = []
    for name, doc in docs.items():
        xapic = any(TABLE[c["instruction"]].xapic for c in doc.get("cases", [])
                    if c.get("instruction") in TABLE)
        want, got = ("xapic" if xapic else "x2apic"), (doc.get("guest") or {}).get("apic_mode")
        if got != want:
            problems.append(f"{name}: the bundle says the guest's APIC ran in {got!r} mode, "
                            f"not {want!r}")
    return problems


def render_text(result: dict) -> str:
    from tabulate import tabulate

    out = []
    t = result["timings"]
    vendor = result.get("vendor", "amd")
    out.append(f"exitlat selftest — {MACHINE[vendor]}, L1 kernel series {result.get('kernel')}; "
               "timings are not exit costs, correctness is what this proves")
    l1 = result.get("l1") or {}
    if l1:
        params = l1.get("kvm_parameters") or {}
        shown = (("nested", "npt", "nrips") if vendor == "amd" else
                 ("nested", "ept", "unrestricted_guest", "vpid", "enable_apicv", "preemption_timer"))
        out.append(f"L1: kernel {l1.get('kernel')}, {l1.get('cpus')} vCPUs, flags "
                   f"{' '.join(l1.get('cpu_flags') or [])}; {l1.get('kvm_module')} "
                   + " ".join(f"{k}={params.get(k)}" for k in shown)
                   + f"; tracing: {(l1.get('tracing') or {}).get('detail')}")
    rows = [[r["run"], r["case"], r["instruction"], r["expected_path"], r["backend"],
             r["verdict"].upper(),
             f"refused: {r['refused'].removeprefix('module refused ')}" if r.get("refused")
             else _fmt_rates(r["exits_per_iter"])
             + (f"; receiver {_fmt_rates(r['receiver_per_iter'])}" if r.get("receiver_per_iter")
                else ""), _fmt_rates(r["userspace_per_iter"])]
            for r in result["cases"]]
    if rows:
        out.append("")
        out.append(tabulate(rows, headers=["run", "case", "instr", "path", "tracing", "verdict",
                                           f"{EXIT_FAMILY[vendor]} exits per iteration (traced window)",
                                           "userspace exits/iter"],
                            tablefmt="simple", disable_numparse=True))
    crows = [[c["name"], c["window"] or "-", c["backend"] or "-", c["baseline"] or "-",
              c["verdict"].upper(),
              "ok" if c["ok"] else "-" if c["verdict"] == "not run" else "NOT OK"]
             for c in result["controls"]]
    if crows:
        out.append("")
        out.append(tabulate(crows, headers=["negative control", "window", "tracing",
                                            "own expectation", "verdict (must not pass)", ""],
                            tablefmt="simple", disable_numparse=True))
    bases = result.get("baselines") or []
    if bases:
        worst = max((b["exits_per_iter"] or 0) for b in bases)
        bad = [b for b in bases if b["status"] != "passed"]
        out.append("")
        out.append(f"baselines (timer, NOP, syscall, module call, kernel timer/NOP): {len(bases)} windows, "
                   f"{'all' if not bad else len(bases) - len(bad)} ≈0 exits/iter (KVM stats; at most "
                   f"{worst:.3f}): the timer does not exit"
                   + ("" if not bad else f"; FAILED: {', '.join(b['run'] + ' ' + b['key'] for b in bad)}"))
    from .reference import render_rows

    out += render_rows(result.get("reference") or [])
    for tr in result.get("timer") or []:
        out.append(f"WRMSR TSC-deadline ({tr['run']} {tr['key']}): expected {tr['expected_path']}, "
                   f"{tr['verdict']}; timer: {tr['timer']}"
                   + (f"; fastpath unavailable: {tr['fastpath_unavailable']}"
                      if tr["fastpath_unavailable"] else ""))
    out.append("")
    img = t.get("l1_image") or {}
    out.append(f"timings: L1 image {'built in ' if img.get('built_now') else 'cached (built in '}"
               f"{fmt_duration(img.get('build_s') or 0)}{'' if img.get('built_now') else ')'}, "
               + (f"boot CD {t.get('cd_s')} s, " if t.get("cd_s") is not None else "")
               + f"L1 boot {t.get('l1_boot_s')} s (+ modules {t.get('l1_modules_s')} s), "
               f"runs {', '.join(f'{r[0]} {r[1]} s' for r in t.get('run_wall_s', []))}, "
               f"L2 boot {', '.join(f'{b} s' for b in t.get('l2_boot_host_s') or t.get('l2_boot_s', []))}, "
               f"selftest inside L1 {t.get('l1_inner_s')} s, total {fmt_duration(t.get('total_s') or 0)}")
    hangs = [(r["name"], h) for r in result.get("runs", []) for h in r.get("hangs", [])]
    if hangs:
        out.append("L2 hangs of the emulated host, each retried with a fresh VM: "
                   + "; ".join(f"{name} attempt {h['attempt']}: {h['reason']}" for name, h in hangs))
    out.append(f"bundles: {', '.join(str(p) for p in result['bundles'].values()) or 'none'}")
    out.append(f"L1 console: {result['console_log']}")
    if result["problems"]:
        out.append("")
        out.append(f"SELFTEST FAILED ({len(result['problems'])} problem(s)):")
        out += [f"  - {p}" for p in result["problems"]]
    else:
        ran = [c for c in result["controls"] if c["verdict"] != "not run"]
        out.append(f"SELFTEST PASSED: {len(result['cases'])} case windows verified, "
                   f"{len(ran)} negative controls failed as they must"
                   + (f" ({len(result['controls']) - len(ran)} not run: the selected runs "
                      "have no window for them)" if len(ran) < len(result["controls"]) else ""))
    return "\n".join(out)


def capture_header(l1: dict, instr: str, cases, backend: str, status: str, date: str,
                   vendor: str = "amd") -> str:
    """Where and how a capture was made: the first lines of every fixture file made from it."""
    p = l1.get("kvm_parameters") or {}
    if vendor == "intel":
        host = (f"kvm_intel (nested={p.get('nested')}, ept={p.get('ept')}, "
                f"enable_apicv={p.get('enable_apicv')}, preemption_timer={p.get('preemption_timer')}), "
                "under Debian's Bochs 2.7 (cpu model corei7_skylake_x, emulated VT-x)")
    else:
        host = (f"kvm_amd (nested={p.get('nested')}, npt={p.get('npt')}, nrips={p.get('nrips')}), "
                "under the project's QEMU with TCG (-cpu EPYC,+svm,+npt)")
    return (f"Captured inside the {MACHINE[vendor].split(' (')[0]} of `invoke selftest --vendor "
            f"{vendor} --capture` ({date}): L1 = Debian kernel {l1.get('kernel')}, {host}; "
            f"L2 = the exitlat guest, `bench` {instr} cases "
            f"{','.join(map(str, cases))}, 100+10 iterations, traced windows of 100, {backend} "
            f"backend (run {status}).\n"
            "Raw trace_pipe text of a private tracefs instance with kvm_exit, kvm_userspace_exit, "
            "kvm_pio, kvm_msr, kvm_cpuid and kvm_hypercall enabled for the whole run (every vCPU "
            "thread; the hist files come from a second instance over the same events).")


def save_captures(src: Path, dest: Path, summary: dict, progress: Progress,
                  vendor: str = "amd") -> None:
    """--capture: the raw capture of each capture run under dest/raw/, and the fixture files
    (tests/fixtures/trace/captured-svm-* or captured-vmx-*) made from it in dest."""
    from .capture import write_fixtures

    l1 = summary.get("l1") or {}
    tag = ".".join(str(l1.get("kernel") or "unknown").split(".")[:2])
    date = time.strftime("%Y-%m-%d", time.gmtime())
    family = EXIT_FAMILY[vendor].lower()
    for n, instr, cases, backend in CAPTURE_RUNS:
        raw = src / n
        if not (raw / "trace_pipe.txt").is_file():
            raise ExitlatError(f"--capture: L1 wrote no capture for {n} (see the console log)")
        shutil.copytree(raw, dest / "raw" / n, dirs_exist_ok=True)
        run = next((r for r in summary.get("runs", []) if r["name"] == n), {})
        header = capture_header(l1, instr, cases, backend, run.get("status", "?"), date, vendor)
        made = write_fixtures(raw, dest, f"captured-{family}-{tag}-{n.removeprefix('capture-')}", header)
        progress.say(f"capture {n}: {len(made)} fixture files in {dest}")


def selftest_main(runs=None, iterations="1000", warmup="100", verify_iterations=None,
                  as_json=False, keep=False, capture=None, timeout=None, mirror=None,
                  retries="2", vendor=None, kernel=None) -> int:
    t_start = time.monotonic()
    vendors = parse_vendor(vendor)
    wanted = parse_runs(runs)
    iters = parse_int(iterations, "--iterations", SELFTEST_MIN_ITERATIONS, SELFTEST_MAX_ITERATIONS)
    warm = parse_int(warmup, "--warmup", 0, SELFTEST_MAX_ITERATIONS)
    viters = None if verify_iterations is None else parse_int(
        verify_iterations, "--verify-iterations", SELFTEST_MIN_ITERATIONS, SELFTEST_MAX_ITERATIONS)
    limit = None if timeout is None else parse_int(timeout, "--timeout", 60, 24 * 3600)
    n_retries = parse_int(retries, "--retries", 0, 10)
    capture_dir = Path(capture) if capture else None
    if capture_dir is not None and capture_dir.exists() and any(capture_dir.iterdir()):
        raise ExitlatError(f"--capture {capture_dir}: folder exists and is not empty")
    check_machine()

    from exitlat.build.pins import load_pins
    from exitlat.run.placement import ensure_build

    progress = Progress()
    pins = load_pins()
    series = kernel or pins.emulated_host.default_kernel
    pins.emulated_host.kernel(series)   # an unknown series is one line, before anything is built
    build = ensure_build(progress)
    results = []
    for v in vendors:
        results.append(run_vendor(v, series, pins, build, progress, wanted, iters, warm, viters,
                                  limit, n_retries, keep, mirror,
                                  None if capture_dir is None else
                                  (capture_dir / v if len(vendors) > 1 else capture_dir)))
    problems = [f"{r['vendor']}: {p}" if len(results) > 1 else p
                for r in results for p in r["problems"]]
    if as_json:
        doc = results[0] if len(results) == 1 else {
            "ok": not problems, "problems": problems, "results": results,
            "timings": {"total_s": round(time.monotonic() - t_start, 1)}}
        print(json.dumps(doc, indent=2, default=str))
    else:
        print("\n\n".join(render_text(r) for r in results))
    if problems:
        raise CheckFailed(f"selftest failed: {problems[0]}" +
                          (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return 0


def run_vendor(vendor: str, series: str, pins, build: Path, progress: Progress, wanted: list[str],
               iters: int, warm: int, viters: int, limit: int | None, n_retries: int, keep: bool,
               mirror, capture_dir: Path | None) -> dict:
    """One emulated host, start to verdicts: the result document of that vendor."""
    from exitlat.bundle.read import load_bundle
    from exitlat.run.qemu import qemu_binary
    from .host import L1Boot, console_log_path, vendor_timeouts
    from .l1disk import l1_build_path
    from .image import ensure_l1_image

    t_start = time.monotonic()
    t_img = time.monotonic()
    image = ensure_l1_image(pins, progress, mirror=mirror, series=series)
    img_timing = {"built_now": image.built_now, "build_s": image.build_s,
                  "this_run_s": round(time.monotonic() - t_img, 1), "folder": str(image.folder)}
    if not image.built_now:
        progress.say(f"L1 image {series}: cached ({image.folder.name}, built in "
                     f"{fmt_duration(image.build_s)})")
    bochs_image = None
    if vendor == "intel":
        from .bochs import ensure_bochs_image

        t_bx = time.monotonic()
        bochs_image = ensure_bochs_image(pins, progress, build_root() / "logs" / "image-bochs.log")
        img_timing["bochs_image_s"] = round(time.monotonic() - t_bx, 1)
    run_list = [run_config(n, i, c, tr, vendor=vendor) for n, i, c, tr in RUNS if n in wanted]
    if vendor == "intel":       # Bochs's L1 has one CPU (bochs.CPUS); IPIs need three
        for r in [r for r in run_list if r["two_vcpus"]]:
            progress.say(f"{r['name']}: left out on the {MACHINE[vendor]}: its L1 has one CPU, "
                         "the two-vCPU kinds need three (measured, receiver, housekeeping)")
            run_list.remove(r)
    run_list.sort(key=lambda r: wanted.index(r["name"]))
    run_list.append(dict(CONTROL_RUN))
    if capture_dir is not None:
        for n, i, c, tr in CAPTURE_RUNS:
            run_list.append(dict(run_config(n, i, c, tr, capture=True), iterations=100, warmup=10,
                                 verify_iterations=100))
    config = {"build": l1_build_path(build), "iterations": iters, "warmup": warm,
              "retries": n_retries, "runs": run_list, "machine": MACHINE[vendor].split(" (")[0],
              **VENDOR_RUN[vendor]}
    config["verify_iterations"] = viters if viters is not None else \
        VENDOR_RUN[vendor].get("verify_iterations", iters)
    workdir = Path(tempfile.mkdtemp(prefix=f"exitlat-selftest-{vendor}-"))
    console = console_log_path(build_root(), vendor)
    total = float(limit if limit is not None else DEFAULT_TIMEOUT[vendor])
    try:
        boot = L1Boot(qemu_binary(build), image, build, config, workdir, console, progress,
                      vendor_timeouts(vendor, total), vendor=vendor, bochs_image=bochs_image)
        res = boot.run()
        progress.say(f"L1: powered off; {len(res.summary.get('runs', []))} run(s) reported")
        runs_done = res.summary.get("runs", [])
        paths = import_bundles(res.out_dir, [r for r in runs_done if r["name"] in wanted],
                               results_root())
        docs = {name: load_bundle(p).doc for name, p in paths.items()}
        control = import_bundles(res.out_dir, [r for r in runs_done
                                               if r["name"] == CONTROL_RUN["name"]], results_root())
        control_doc = {k: load_bundle(p).doc for k, p in control.items()}
        if capture_dir is not None:
            save_captures(res.out_dir / "capture", capture_dir, res.summary, progress, vendor)
        rows, controls, problems = evaluate(res.summary, docs, wanted, control_doc)
        base_rows = baseline_rows(docs)
        problems += [f"{b['run']} {b['key']}: baseline exit check {b['status']}: {b['detail'][:200]}"
                     for b in base_rows if b["status"] != "passed"]
        problems += vendor_problems(vendor, res.summary.get("l1") or {}, docs)
        problems += apic_mode_problems(docs)
        from .reference import reference_problems, reference_rows

        problems += reference_problems(docs)
        timings = dict(res.timings)
        timings.pop("events", None)
        timings["l1_image"] = img_timing
        timings["l2_boot_s"] = [round(t.get("boot_s"), 1) for d in docs.values()
                                for t in (d.get("run") or {}).get("timings", []) if t.get("boot_s")]
        timings["run_wall_s"] = [(r["name"], (res.timings.get("run_host_s") or {}).get(r["name"]))
                                 for r in runs_done]
        timings["total_s"] = round(time.monotonic() - t_start, 1)
        result = {"ok": not problems, "problems": problems, "vendor": vendor, "kernel": series,
                  "timings": timings, "l1": res.summary.get("l1"), "runs": runs_done, "cases": rows,
                  "baselines": base_rows, "timer": timer_rows(docs, res.summary.get("l1")),
                  "reference": reference_rows(docs),
                  "controls": controls, "bundles": {k: str(v) for k, v in paths.items()},
                  "control_bundles": {k: str(v) for k, v in control.items()},
                  "console_log": str(console),
                  "config": {k: v for k, v in config.items() if k != "runs"} | {"runs": wanted}}
    finally:
        if keep:
            progress.say(f"kept the work folder: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result
