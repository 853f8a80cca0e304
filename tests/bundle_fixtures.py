"""Helpers that write real bundles (seeded samples) and tamper with them, for the results tests."""

import copy
import hashlib
import json
from pathlib import Path

import numpy as np

from exitlat.bundle.format import SUMS, tsc_hz_of
from exitlat.bundle.write import write_bundle
from exitlat.stats.summary import summarize


def make_bundle(root: Path, name: str = "A", seed: int = 1, scale: float = 1.0,
                edit=None, files=None, **doc_kw) -> Path:
    """A realistic bundle under root/name; `edit(doc)` may change the document first."""
    doc = example_doc(**doc_kw)
    if edit:
        edit(doc)
    samples = example_samples(doc, seed=seed, scale=scale)
    files = {"console-r0.log": b"EXITLAT-INIT-READY\n"} if files is None else files
    return write_bundle(Path(root), with_stats(doc, samples), samples, files, name=name)


def with_stats(doc: dict, samples: dict) -> dict:
    """A copy of doc whose entries carry the statistics of their samples, as exitlat.bundle.assemble
    computes them before storage (entries without samples are left without)."""
    doc = copy.deepcopy(doc)
    hz = tsc_hz_of(doc)
    for e in doc["cases"] + doc["baselines"]:
        arr = samples.get(e["samples_key"])
        if arr is not None and len(arr):
            e["stats"] = summarize(np.asarray(arr, dtype=np.uint64), hz)
    return doc


def reseal(bundle: Path) -> None:
    """Recompute SHA256SUMS after tampering, so that the checks behind the checksums are reached."""
    lines = []
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != SUMS:
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
    (bundle / SUMS).write_text("".join(lines))


def edit_json(bundle: Path, fn, seal: bool = True) -> None:
    doc = json.loads((bundle / "bundle.json").read_text())
    fn(doc)
    (bundle / "bundle.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    if seal:
        reseal(bundle)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- a realistic document and seeded samples ------------------------------------------------

OMIT = object()      # example_doc(other_path_max=OMIT): verdicts without the key (older bundles)

# Typical medians (cycles) on a recent Intel host: KVM-handled exits ~1-2k, QEMU round trips ~8-10k.
_MEDIAN = {1: 1150, 2: 8900, 3: 1450, 4: 9300, 5: 1050, 6: 8700,
           "timer": 32, "nonexiting": 44, "syscall": 160, "module_call": 310}
_FLOW = {1: "user", 2: "user", 3: "user→kernel (ioctl)", 4: "user→kernel (ioctl)", 5: "kernel", 6: "kernel"}

_BASE = {
    "tool": {"name": "exitlat", "version": "0.1.0", "commit": "0123456789abcdef0123456789abcdef01234567"},
    "created_utc": "2025-01-15T10:20:30Z",
    "command_line": ["invoke", "bench", "--case", "1-6"],
    "options": {"cases": [1, 2, 3, 4, 5, 6], "iterations": 2000, "warmup": 100, "instr": "cpuid",
                "port": 233, "timer": "rdtscp", "accel": "kvm", "repeat": 1},
    "label": None,
    "status": {"state": "complete", "reason": None},
    "accel": "kvm",
    "host": {
        "hostname": "bench01",
        "cpu": {"vendor": "GenuineIntel", "model_name": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
                "family": 6, "model": 106, "stepping": 6, "microcode": "0xd0003a5", "cores": 64,
                "threads_per_core": 2, "smt": True},
        "tsc": {"hz": 2000000000, "source": "sysfs tsc_freq_khz"},
        "kernel": {"release": "6.8.0-45-generic", "version": "#45-Ubuntu SMP PREEMPT_DYNAMIC",
                   "cmdline": "BOOT_IMAGE=/vmlinuz isolcpus=31 nohz_full=31 rcu_nocbs=31"},
        "kvm": {"module": "kvm_intel", "parameters": {"kvm_intel.ept": "Y", "kvm_intel.enable_apicv": "Y",
                                                        "kvm_intel.ple_gap": "128", "kvm.halt_poll_ns": "200000"}},
        "vulnerabilities": {"spectre_v2": "Mitigation: Enhanced / Automatic IBRS",
                            "mds": "Not affected", "retbleed": "Not affected"},
        "docker_version": "24.0.7",
    },
    "guest": {"kernel_release": "6.6.30-exitlat", "kernel_config_sha256": "ab" * 32,
              "busybox_version": "1.36.1", "tsc_khz": 2000000, "invariant_tsc": True,
              "cpu": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"},
    "qemu": {"version": "9.0.2", "command_line": ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host",
                                                  "-smp", "1", "-m", "256", "-debugcon", "null"]},
    "build_manifest": {"inputs_hash": "cd" * 32, "artifacts": {"bzImage": "ef" * 32}},
    "isolation": {"isolated": True, "core": 31,
                  "items": [{"name": "isolcpus", "ok": True, "detail": "core 31 in isolcpus"},
                            {"name": "governor", "ok": True, "detail": "performance"}]},
}


def example_doc(cases=(1, 2, 3, 4, 5, 6), repeats: int = 1, accel: str = "kvm",
                baselines: bool = True, iterations: int = 2000, other_path_max=0.0005) -> dict:
    """other_path_max: what every KVM verdict states (the verifier's bound on the share of
    iterations that may have taken another path); the default covers no published percentile;
    OMIT leaves the key out, as bundles made before the verifier stated it."""
    doc = copy.deepcopy(_BASE)
    doc["accel"] = accel
    doc["options"]["accel"] = accel
    doc["options"]["iterations"] = iterations
    doc["options"]["repeat"] = repeats
    if accel == "tcg":
        doc["qemu"]["command_line"][2] = "tcg"
    doc["cases"], doc["baselines"] = [], []
    for rep in range(repeats):
        for n in cases:
            s_case = n % 2 == 0
            key = f"case{n}-r{rep}"
            ver = ({"status": "not_applicable", "detail": "TCG: no VM exits to verify"} if accel == "tcg" else
                   {"status": "passed", "expected_reason_per_iter": 1.0,
                    "userspace_exits_per_iter": 1.0 if s_case else 0.0,
                    "port_exits_per_iter": 1.0 if s_case else None,
                    "exit_reasons": {"IO_INSTRUCTION" if s_case else "CPUID": 2100}, "detail": None})
            timed_ver = {"status": ver["status"], "detail": "example"}
            if accel != "tcg" and other_path_max is not OMIT:
                ver["other_path_max"] = timed_ver["other_path_max"] = other_path_max
            doc["cases"].append({
                "key": key, "case": n, "repeat": rep, "flow": _FLOW[n],
                "instruction": "outb" if s_case else "cpuid", "msr": None,
                "port": 0xE9 if s_case else None, "timer": "rdtscp",
                "expected_path": "qemu" if s_case else "kvm", "verification": ver,
                "iterations_requested": iterations, "samples_kept": iterations, "warmup": 100,
                "samples_key": key,
                "tsc_backwards": 0,
                "timed_window": {"tracing": "off", "tracing_enabled": [],
                                 "kvm_stats": {"exits": iterations + 100,
                                               "io_exits": iterations + 100 if s_case else 0},
                                 "verdict": timed_ver},
                "verification_window": None, "tracing_overhead_cycles": None, "net_cycles": None})
        if baselines:
            for name in ("timer", "nonexiting", "syscall", "module_call"):
                key = f"baseline_{name}-r{rep}"
                doc["baselines"].append({"key": key, "name": name,
                                         "flow": "user→kernel" if name == "module_call" else "user",
                                         "iterations_requested": iterations,
                                         "samples_kept": iterations, "samples_key": key, "repeat": rep,
                                         "tsc_backwards": 0,
                                         "exit_check": {"status": "passed", "detail": "example"}})
    return doc


def example_samples(doc: dict, seed: int = 1, scale: float = 1.0) -> dict:
    """Seeded samples for every entry: a floor, gamma-shaped body and a few rare long outliers;
    `scale` multiplies the medians (to fake a slower or faster host)."""
    rng = np.random.default_rng(seed)
    out = {}
    for e in doc["cases"] + doc["baselines"]:
        med = _MEDIAN[e["case"] if "case" in e else e["name"]] * scale
        n = e["samples_kept"]
        body = med * 0.9 + rng.gamma(4.0, med * 0.025, n)
        spikes = rng.random(n) < 0.002
        body[spikes] += rng.exponential(med * 5, int(spikes.sum()))
        out[e["samples_key"]] = np.rint(body).astype(np.uint64)
    return out
