"""The bundle document of one `invoke bench` run, assembled in one place from what the VM runs
recorded: per case its timed window (the samples, the statistics, KVM stats), its traced window
(exit counts, verdict, the tracing overhead) and its cost net of the same-mode timer baseline.
Statistics are computed here, before storage; exitlat.bundle.read only stores and checks them."""

from __future__ import annotations

import io
import sys
import time

import numpy as np

from exitlat import __version__
from .format import tsc_hz_of
from exitlat.run.runrecord import VmResult, git_commit
from exitlat.stats.summary import summarize
from exitlat.verify.verdicts import combine, run_port
from exitlat.run.windows import traced_key

# The timer-only baseline that runs in the same mode as each case's timed window.
SAME_MODE_BASELINE = {
    "user": "baseline_timer",                         # cases 1, 2
    "user→kernel (ioctl)": "baseline_module_call",    # cases 3, 4: the ioctl without the instruction
    "kernel": "baseline_kernel_timer",                # cases 5, 6: kernel loop, IRQs off
}
BASELINE_FLOWS = {
    "timer": "user", "nonexiting": "user", "syscall": "user→kernel",
    "module_call": "user→kernel (ioctl)", "kernel_timer": "kernel", "kernel_nonexiting": "kernel",
}
EMULATED_HOST_NOTE = "emulated AMD-V host (nested under TCG): timings are not exit costs"


def emulated_note(emulated_host) -> str | None:
    """The bundle's `emulated` note: the selftest passes its own (which machine) or True."""
    if not emulated_host:
        return None
    return emulated_host if isinstance(emulated_host, str) else EMULATED_HOST_NOTE


def valid_samples(arr) -> tuple[np.ndarray, int]:
    """The samples without the guest's 0 markers (the TSC went backwards: t1 < t0), and how many
    were dropped. A 0 can never be a real round trip: the timer alone costs tens of cycles."""
    a = np.asarray(arr, dtype=np.uint64)
    bad = int(np.count_nonzero(a == 0))
    return (a[a != 0] if bad else a), bad


def without_traced_window(timed: dict) -> dict:
    """A case's verdict under --no-verify, from its timed window alone. "skipped" stands only for
    the traced window that was not run: a timed window that failed (tracing was on, KVM's stats
    show another path) or is unverified keeps its status, so no failure hides behind "skipped"."""
    status = timed["status"] if timed["status"] in ("failed", "unverified") else "skipped"
    return {"status": status, "other_path_max": timed.get("other_path_max"),
            "detail": f"timed window: {timed['detail']} | traced window: skipped (--no-verify)"}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype="<u8"), allow_pickle=False)
    return buf.getvalue()


def tracing_overhead(timed_stats: dict | None, traced_stats: dict | None) -> dict | None:
    """Median of the traced window against the untraced one: what tracing adds to each exit."""
    if not timed_stats or not traced_stats or not timed_stats["median"]:
        return None
    a, b = float(timed_stats["median"]), float(traced_stats["median"])
    return {"timed_median": a, "traced_median": b, "difference": b - a, "ratio": round(b / a, 6)}


def net_cost(case_stats: dict | None, base_key: str, base_stats: dict | None) -> dict | None:
    """median(case) − median(same-mode timer baseline), with a conservative 95 % interval from the
    two medians' intervals ([lo_case − hi_base, hi_case − lo_base]): the exit's cost net of the timer."""
    if not case_stats or not base_stats:
        return None
    (clo, chi), (blo, bhi) = case_stats["median_ci95"], base_stats["median_ci95"]
    return {"baseline": base_key, "median": float(case_stats["median"]) - float(base_stats["median"]),
            "ci95": [float(clo) - float(bhi), float(chi) - float(blo)]}


class DocumentBuilder:
    """Turns the VM runs of one bench into (bundle document, samples, extra files)."""

    def __init__(self, plan, hz: float | None):
        self.plan, self.o, self.accel, self.specs = plan, plan.options, plan.accel, plan.specs
        self.ctx = plan.verdict_context()
        self.verdicts = plan.verdicts()
        self.viters = plan.verify_iterations
        self.hz = hz
        self.host_tsc_hz: float | None = None      # the host's own TSC rate (set by build())
        self.samples: dict = {}
        self.files: dict = {}

    # -- one entry ---------------------------------------------------------------------------
    def _store(self, key: str, arr) -> tuple[int, dict | None, int]:
        """Keep a timed window's valid samples under key; (count, stats, tsc_backwards)."""
        if arr is None:
            return 0, None, 0
        good, bad = valid_samples(arr)
        if good.size:
            self.samples[key] = good
        return int(good.size), (summarize(good, self.hz) if good.size else None), bad

    def baseline(self, name: str, rep: int, res) -> dict | None:
        gk = f"baseline_{name}"
        if gk not in res.samples:
            return None
        key = f"{gk}-r{rep}"
        n, stats, bad = self._store(key, res.samples[gk])
        if self.accel != "kvm":
            check = {"status": "not_applicable", "detail": "TCG: no VM exits to count"}
        else:
            check = self.verdicts.baseline(gk, res)
        return {"key": key, "name": name, "flow": BASELINE_FLOWS[name],
                "iterations_requested": self.o.iterations, "samples_kept": n,
                "samples_key": key, "repeat": rep, "stats": stats, "tsc_backwards": bad,
                "exit_check": check}

    def case(self, spec, rep: int, res, baselines: dict) -> dict:
        key = f"{spec.key}-r{rep}"
        got = res.samples.get(spec.key)
        n, stats, bad = self._store(key, got)
        timed = res.timed.get(spec.key)
        traced = res.windows.get(spec.key)
        traced_samples = res.samples.get(traced_key(spec.key))
        tw = {"tracing": "unknown", "tracing_enabled": [], "kvm_stats": None}
        if timed is not None:
            tw = timed.to_dict()
        vw = None
        if got is None:
            errs = [e.get("message", "") for e in res.errors if e.get("key") == spec.key]
            refused = getattr(res, "refused", {}).get(spec.key)
            ver = ({"status": "skipped", "detail": f"left out by the guest: {refused}",
                    "refused": refused} if refused else
                   {"status": "skipped", "detail": "no samples" + (f": {errs[0]}" if errs else "")})
            tw["verdict"] = dict(ver)
        elif self.accel != "kvm":
            ver = {"status": "not_applicable", "detail": "TCG: no VM exits to verify"}
            tw["verdict"] = dict(ver)
        else:
            tw["verdict"] = self.verdicts.timed(spec, res)
            if not self.o.verify:
                ver = without_traced_window(tw["verdict"])
            else:
                tv = self.verdicts.traced(spec, res)
                vw = self._traced_window(key, traced, traced_samples, tv)
                ver = combine(tw["verdict"], tv)
        base_key = SAME_MODE_BASELINE[spec.flow]
        base = baselines.get(base_key)
        overhead = tracing_overhead(stats, (vw or {}).get("stats"))
        if vw is not None:
            vw["decomposition"] = self._decomposition(spec, res, traced_samples, overhead, base)
        receiver = ({"receiver_path": spec.receiver_path, "receiver_basis": spec.receiver_basis}
                    if spec.receiver_path else {})
        if spec.second_exit:
            receiver["second_exit"] = spec.second_exit
        if spec.exit_reason:
            receiver["exit_reason"] = spec.exit_reason
        return {**receiver, "key": key, "case": spec.number, "repeat": rep, "flow": spec.flow,
                "instruction": spec.instruction,
                "msr": None if spec.msr is None else f"{spec.msr:#x}",
                "port": run_port(spec, self.ctx, res.hello),
                "timer": self.o.timer, "expected_path": spec.expected_path,
                "path_basis": spec.path_basis,
                "verification": ver, "iterations_requested": self.o.iterations, "samples_kept": n,
                "warmup": self.o.warmup, "samples_key": key,
                "stats": stats, "tsc_backwards": bad,
                "timed_window": tw, "verification_window": vw,
                "tracing_overhead_cycles": overhead,
                "net_cycles": net_cost(stats, base["key"] if base else base_key,
                                       base["stats"] if base else None)}

    def _decomposition(self, spec, res, traced_arr, overhead, base) -> dict:
        """Where the traced window's round trip goes (exitlat.stats.decompose); "not decomposed" with
        the reason whenever the pairing cannot be trusted."""
        from exitlat.stats.decompose import decompose

        tl = getattr(res, "timelines", {}).get(spec.key)
        why = None
        if not hasattr(tl, "kinds"):
            why, tl = (tl if isinstance(tl, str) else "no timeline recorded for the traced window"), None
        good = valid_samples(traced_arr)[0] if traced_arr is not None else None
        return decompose(tl, good, instruction=spec.instruction, expected_path=spec.expected_path,
                         vendor=self.ctx.vendor, exit_reason=spec.exit_reason,
                         port=run_port(spec, self.ctx, res.hello),
                         host_tsc_hz=self.host_tsc_hz, guest_tsc_khz=res.hello.get("tsc_khz"),
                         tracing_overhead=overhead,
                         baseline=({"key": base["key"], "median": base["stats"]["median"]}
                                   if base and base.get("stats") else None),
                         emulated=emulated_note(self.o.emulated_host),
                         unavailable=why,
                         counts=getattr(res.windows.get(spec.key), "counts", None))

    def _traced_window(self, key: str, traced, arr, verdict: dict) -> dict:
        out = {"iterations_requested": self.viters, "samples_kept": 0,
               "backend": traced.backend if traced else None,
               "kprobes": list(traced.kprobes) if traced else [],
               "counts": traced.counts.to_dict() if traced and traced.counts is not None else None,
               "kvm_stats": traced.kvm_stats if traced else None, "verdict": verdict,
               "stats": None, "samples_file": None, "tsc_backwards": 0}
        if traced is not None and traced.receiver_counts is not None:    # a two-vCPU kind
            out["receiver_counts"] = traced.receiver_counts.to_dict()
            out["receiver_kvm_stats"] = traced.receiver_kvm_stats
        if arr is not None:
            good, bad = valid_samples(arr)
            out["tsc_backwards"], out["samples_kept"] = bad, int(good.size)
            if good.size:
                name = f"traced-{key}.npy"
                self.files[name] = _npy_bytes(good)
                out["samples_file"] = name
                out["stats"] = summarize(good, self.hz)
        return out

    # -- the whole document -------------------------------------------------------------------
    def build(self, argv, host, results) -> tuple[dict, dict, dict]:
        """The document of the VM runs' results; where they ran (core, isolation, build) is the
        plan's."""
        cases, baselines = [], []
        manifest, isolation = self.plan.manifest, self.plan.isolation
        self.host_tsc_hz = (host.get("tsc") or {}).get("hz")
        incomplete = [r for r in results if r.status != "complete"]
        first = results[0] if results else VmResult()
        for rep, res in enumerate(results):
            base_by_name = {}
            for name in BASELINE_FLOWS:
                b = self.baseline(name, rep, res)
                if b is not None:
                    baselines.append(b)
                    base_by_name[f"baseline_{name}"] = b
            cases += [self.case(s, rep, res, base_by_name) for s in self.specs]
            self.files[f"console-r{rep}.log"] = res.console
            if res.qemu_stderr:
                self.files[f"qemu-stderr-r{rep}.log"] = res.qemu_stderr
        status = {"state": "complete", "reason": None}
        if incomplete:
            status = {"state": "incomplete", "reason": incomplete[0].reason}
        hello = first.hello
        versions = manifest.get("versions", {})
        if self.o.emulated_host:
            host = dict(host, emulated=emulated_note(self.o.emulated_host))
        doc = {
            "tool": {"name": "exitlat", "version": __version__, "commit": git_commit()},
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command_line": list(argv or sys.argv),
            "options": self.plan.options_doc(),
            "label": self.o.label,
            "status": status,
            "accel": self.accel,
            "host": host,
            "guest": {"kernel_release": hello.get("kernel") or versions.get("kernel_release"),
                      "kernel_config_sha256": manifest.get("artifacts", {}).get("kernel.config"),
                      "busybox_version": versions.get("busybox"),
                      "tsc_khz": hello.get("tsc_khz"), "invariant_tsc": hello.get("invariant_tsc"),
                      "cpu": hello.get("vendor"), "vcpu": hello.get("cpu"),
                      "vcpus": hello.get("vcpus"),
                      # x2apic or xapic (booted nox2apic): the exits an APIC access takes differ
                      "apic_mode": hello.get("apic_mode")},
            "qemu": {"version": first.qemu_version or versions.get("qemu"),
                     "command_line": first.argv, "container": self.o.container},
            "build_manifest": manifest,
            "isolation": isolation,
            "run": {"core": self.plan.core, "housekeeping_core": self.plan.housekeeping,
                    **self._receiver_placement(),
                    "tracing": first.tracing,
                    "verify_iterations": self.viters, "exit_vendor": self.ctx.vendor,
                    "pinned_threads": {str(k): v for r in results for k, v in r.pinned.items()},
                    "kvm_stats": first.kvm_stats, "mem_lock": first.mem_lock,
                    "debugcon_bytes": [r.debugcon_bytes for r in results],
                    "timings": [r.timings for r in results],
                    "guest_finished": [r.finished for r in results],
                    "tsc_backwards": [r.tsc_backwards for r in results],
                    "guest_errors": [e for r in results for e in r.errors]},
            "cases": cases,
            "baselines": baselines,
        }
        return doc, self.samples, self.files

    def _receiver_placement(self) -> dict:
        """A two-vCPU run's second vCPU: its core, that core's isolation state, and where the two
        cores sit (an IPI's cost changes by multiples between SMT siblings, one LLC and two
        packages)."""
        pl = self.plan.placement
        if pl.peer is None:
            return {}
        return {"vcpus": self.plan.vcpus, "receiver_core": pl.peer,
                "receiver_isolation": pl.peer_isolation, "topology": pl.topology}


def document_hz(host: dict, hello: dict) -> float | None:
    return tsc_hz_of({"host": host, "guest": {"tsc_khz": hello.get("tsc_khz")}})
