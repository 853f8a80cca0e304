"""Negative controls: real traced windows from the selftest's bundles, verified again with a
deliberately wrong expectation or with deliberately damaged counts. The verifier must fail every
one; a control it passes means it cannot tell a wrong path (or broken evidence) from a right one.

Each control first re-verifies its window with the case's own expectation, which must pass: so a
failure of the control comes from the one thing the control changed, not from the window.

* outb-as-kvm      an OUTB window (a real QEMU round trip) verified as "handled in KVM"
* cpuid-as-qemu    a CPUID window (handled in KVM) verified as a QEMU round trip (OUTB on its port)
* lost-events      a real window with lost trace events added (the counts become lower bounds)
* unparsed-line    a streamed window plus one torn trace_pipe line, parsed by the real parser
* qemu-extra-exit  an OUTB window with one more exit per iteration (NPF/EPT_MISCONFIG, as an MMIO
                   access would add): the round trip must be one exit
* no-kvm-exit      a KVM window whose kvm_exit events are removed: handler events alone are no
                   evidence of the path (must not pass: unverified)
* read-as-write    an RDMSR window verified as a WRMSR (on SVM one MSR reason covers both: only
                   the kvm_msr event's read/write field tells them apart)
* noexit-as-kvm    a window of a kind that did not exit (path "none": MOV from CR8, PAUSE, ...)
                   verified as handled in KVM: its missing exits must fail it
* kvm-as-noexit    a CPUID window verified as "no exit": its exits must fail it
* mmio-eventfd-as-qemu  an MMIO window KVM completed through an ioeventfd verified as a QEMU
                   round trip (mmio_no_eventfd): its missing userspace MMIO exits must fail it
* mmio-qemu-as-eventfd  an MMIO window QEMU completed verified as an ioeventfd write: its
                   userspace exits must fail it
* halt-as-running  the receiving vCPU of an ipi_halt window (woken from HLT each time) verified
                   as ipi's running receiver (kicked out of guest mode): its HLTs must fail it
* running-as-halt  the receiving vCPU of an ipi window verified as ipi_halt's halted receiver

Two more come from a real run of their own (inner.CONTROL_RUN): cases 1 and 2 with 20
iterations, while another tracefs instance traces every syscall:
* small-n          its traced windows must not pass (their allowance is not small against n)
* tracing-elsewhere its timed windows must fail: tracing was on, in an instance not exitlat's

Windows are stored in each bundle as `ExitCounts.to_dict()` (verification_window.counts) and
rebuilt with `ExitCounts.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass

from exitlat.errors import ExitlatError
from exitlat.instructions import TABLE
from exitlat.verify.trace.counts import ExitCounts
from exitlat.verify.trace.traceparse import parse_trace_text
from exitlat.verify.traced import verify_case

# One trace_pipe line cut off in the middle of its event name, as a torn read would leave it.
TORN_LINE = "       CPU 0/KVM-{tid}    [001] d..2.  4242.424242: kvm_ex"
CONTROL_NAMES = ("outb-as-kvm", "cpuid-as-qemu", "lost-events", "unparsed-line",
                 "qemu-extra-exit", "no-kvm-exit", "read-as-write", "noexit-as-kvm",
                 "kvm-as-noexit", "mmio-eventfd-as-qemu", "mmio-qemu-as-eventfd",
                 "halt-as-running", "running-as-halt", "small-n", "tracing-elsewhere")
MUST_FAIL, MUST_NOT_PASS = "failed", "not passed"


@dataclass(frozen=True)
class Window:
    """One real traced window of a bundle's case."""
    bundle: str
    key: str
    case: int
    instruction: str
    expected_path: str
    port: int | None
    backend: str | None
    vendor: str
    n: int
    counts: ExitCounts
    tid: int | None
    receiver_counts: ExitCounts | None = None    # a two-vCPU kind's receiving vCPU
    receiver_path: str | None = None
    second_exit: str | None = None               # a kind's second exit (its reason)
    exit_reason: str | None = None               # its exit's reason where the host's differs


def counts_from_dict(d: dict) -> ExitCounts:
    return ExitCounts.from_dict(d)


def merge_counts(a: dict, b: dict) -> dict:
    """Two to_dict() forms added together (counters per key, integers summed, lists joined): a
    window plus what extra trace text produced, whatever fields ExitCounts has."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            merged = dict(out[k])
            for kk, vv in v.items():
                merged[kk] = merged.get(kk, 0) + vv
            out[k] = merged
        elif isinstance(v, bool) or not isinstance(v, (int, list)):
            continue
        elif isinstance(v, int) and isinstance(out[k], int):
            out[k] = out[k] + v
        elif isinstance(v, list) and isinstance(out[k], list):
            out[k] = out[k] + v
    return out


def windows_of(bundle_name: str, doc: dict) -> list[Window]:
    """Every case of a bundle that has a traced window with counts."""
    vendor = (doc.get("run") or {}).get("exit_vendor") or "amd"
    tids = [int(t) for t, core in ((doc.get("run") or {}).get("pinned_threads") or {}).items()
            if core == (doc.get("run") or {}).get("core")]
    out = []
    for c in doc.get("cases", []):
        vw = c.get("verification_window") or {}
        if not vw.get("counts"):
            continue
        verdict = vw.get("verdict") or {}
        n = verdict.get("iterations_total") or vw.get("iterations_requested")
        if not n:
            continue
        out.append(Window(bundle_name, c["key"], c["case"], c["instruction"], c["expected_path"],
                          c.get("port"), vw.get("backend"), vendor, int(n),
                          counts_from_dict(vw["counts"]), tids[0] if tids else None,
                          counts_from_dict(vw["receiver_counts"]) if vw.get("receiver_counts")
                          else None, c.get("receiver_path"), c.get("second_exit"),
                          c.get("exit_reason")))
    return out


def _verdict(w: Window, counts: ExitCounts, path: str, instruction: str, port: int | None) -> dict:
    try:
        same = instruction == w.instruction
        return verify_case(counts, w.n, path, instruction, port, w.vendor,
                           second_exit=w.second_exit if same else None,
                           exit_reason=w.exit_reason if same else None)
    except ExitlatError as err:   # refusing the question is not a verdict
        return {"status": "error", "detail": str(err)}


def _pick(windows: list[Window], pred, prefer_backend: str | None = None) -> Window | None:
    cands = [w for w in windows if pred(w)]
    if prefer_backend:
        cands.sort(key=lambda w: w.backend != prefer_backend)
    for w in cands:   # the first whose own expectation passes
        if _verdict(w, w.counts, w.expected_path, w.instruction, w.port)["status"] == "passed":
            return w
    return cands[0] if cands else None


def _held(status: str, must: str) -> bool:
    return status == "failed" if must == MUST_FAIL else status in ("failed", "unverified")


def run_controls(windows: list[Window], control_doc: dict | None = None) -> list[dict]:
    """Every negative control, each a dict: name, what, must ("failed" or "not passed"), window,
    baseline (the window with its own expectation: must pass), verdict, ok (both held), detail."""
    results = []

    def record(name: str, what: str, w: Window | None, counts_fn, path_fn,
               must: str = MUST_FAIL) -> None:
        row = {"name": name, "what": what, "must": must, "window": None, "backend": None,
               "baseline": None, "verdict": "missing", "ok": False, "detail": ""}
        if w is None:
            row["detail"] = "no suitable window in the bundles (did the runs complete?)"
            results.append(row)
            return
        row["window"] = f"{w.bundle}:{w.key}"
        row["backend"] = w.backend
        base = _verdict(w, w.counts, w.expected_path, w.instruction, w.port)
        counts = counts_fn(w)
        path, instr, port = path_fn(w)
        v = _verdict(w, counts, path, instr, port)
        row["baseline"] = base["status"]
        row["verdict"] = v["status"]
        row["detail"] = v.get("detail", "")
        row["ok"] = base["status"] == "passed" and _held(v["status"], must)
        if base["status"] != "passed":
            row["detail"] = (f"the window does not pass with its own expectation "
                             f"({base.get('detail', '')}); the control proves nothing")
        results.append(row)

    record("outb-as-kvm", "an OUTB window (QEMU round trip) verified as handled in KVM",
           _pick(windows, lambda w: w.instruction == "outb"),
           lambda w: w.counts, lambda w: ("kvm", "outb", w.port))
    record("cpuid-as-qemu", "a CPUID window (handled in KVM) verified as a QEMU round trip",
           _pick(windows, lambda w: w.instruction == "cpuid" and w.expected_path == "kvm"),
           lambda w: w.counts, lambda w: ("qemu", "outb", 0xE9))
    record("lost-events", "a real window with 3 lost trace events injected",
           _pick(windows, lambda w: w.expected_path == "kvm", prefer_backend="hist"),
           lambda w: counts_from_dict(dict(w.counts.to_dict(), lost=w.counts.lost + 3)),
           lambda w: (w.expected_path, w.instruction, w.port))

    def with_torn_line(w: Window) -> ExitCounts:
        extra = parse_trace_text(TORN_LINE.format(tid=w.tid or 4242) + "\n")
        return counts_from_dict(merge_counts(w.counts.to_dict(), extra.to_dict()))

    record("unparsed-line", "a streamed window with one torn trace_pipe line injected",
           _pick(windows, lambda w: w.backend == "stream" and w.expected_path == "kvm"),
           with_torn_line, lambda w: (w.expected_path, w.instruction, w.port))

    def with_extra_exit(w: Window) -> ExitCounts:
        reason = "EPT_MISCONFIG" if w.vendor == "intel" else "NPF"
        d = w.counts.to_dict()
        return counts_from_dict(merge_counts(d, {"exits": {reason: w.n}}))

    record("qemu-extra-exit", "an OUTB window with one more exit (NPF/EPT_MISCONFIG) per iteration",
           _pick(windows, lambda w: w.instruction == "outb"), with_extra_exit,
           lambda w: (w.expected_path, w.instruction, w.port))
    record("no-kvm-exit", "a KVM window with its kvm_exit events removed (handler events kept)",
           _pick(windows, lambda w: w.instruction == "cpuid" and w.expected_path == "kvm"),
           lambda w: counts_from_dict(dict(w.counts.to_dict(), exits={})),
           lambda w: (w.expected_path, w.instruction, w.port), must=MUST_NOT_PASS)
    record("read-as-write", "an RDMSR window verified as a WRMSR",
           _pick(windows, lambda w: w.instruction == "rdmsr"),
           lambda w: w.counts, lambda w: ("kvm", "wrmsr", None))
    record("noexit-as-kvm", "a window of a kind that did not exit verified as handled in KVM",
           _pick(windows, lambda w: w.expected_path == "none" and not TABLE[w.instruction].rearm),
           lambda w: w.counts, lambda w: ("kvm", w.instruction, w.port))
    record("kvm-as-noexit", "a CPUID window (one exit per iteration) verified as no exit",
           _pick(windows, lambda w: w.instruction == "cpuid" and w.expected_path == "kvm"),
           lambda w: w.counts, lambda w: ("none", "cpuid", None))
    record("mmio-eventfd-as-qemu", "an ioeventfd MMIO window (no userspace exit) verified as a "
           "QEMU round trip",
           _pick(windows, lambda w: TABLE[w.instruction].mmio and w.expected_path == "kvm"),
           lambda w: w.counts, lambda w: ("qemu", "mmio_no_eventfd", None))
    record("mmio-qemu-as-eventfd", "a QEMU MMIO window (KVM_EXIT_MMIO per write) verified as an "
           "ioeventfd write",
           _pick(windows, lambda w: TABLE[w.instruction].mmio and w.expected_path == "qemu"),
           lambda w: w.counts, lambda w: ("kvm", "mmio_eventfd", None))
    for name, kind, as_kind in (("halt-as-running", "ipi_halt", "ipi"),
                                ("running-as-halt", "ipi", "ipi_halt")):
        results.append(_receiver_control(
            name, f"the receiving vCPU of an {kind} window verified as {as_kind}'s", windows,
            kind, as_kind))
    results += control_run_rows(control_doc)
    return results


def _receiver_control(name: str, what: str, windows: list[Window], kind: str, as_kind: str) -> dict:
    """A two-vCPU window's receiver, verified with its own rule (must pass) and with the other
    kind's (must fail): a halted receiver is not a running one, nor the other way round."""
    from exitlat.verify.receiver import verify_receiver

    row = {"name": name, "what": what, "must": MUST_FAIL, "window": None, "backend": None,
           "baseline": None, "verdict": "missing", "ok": False,
           "detail": "no suitable window in the bundles (did the runs complete?)"}
    w = next((w for w in windows if w.instruction == kind and w.receiver_counts is not None
              and w.receiver_path == "kvm"), None)
    if w is None:
        return row
    base = verify_receiver(w.receiver_counts, w.n, w.receiver_path, kind, w.vendor)
    v = verify_receiver(w.receiver_counts, w.n, "kvm", as_kind, w.vendor)
    row.update(window=f"{w.bundle}:{w.key}", backend=w.backend, baseline=base["status"],
               verdict=v["status"], detail=v["detail"],
               ok=base["status"] == "passed" and _held(v["status"], MUST_FAIL))
    if base["status"] != "passed":
        row["detail"] = (f"the receiver does not pass with its own expectation ({base['detail']});"
                         " the control proves nothing")
    return row


def control_run_rows(doc: dict | None) -> list[dict]:
    """small-n and tracing-elsewhere, from the control run's bundle (None: it did not run)."""
    rows = []
    for name, what, must in (
            ("small-n", "20-iteration traced windows (allowance far above 10 % of n)", MUST_NOT_PASS),
            ("tracing-elsewhere", "timed windows while another instance traced raw_syscalls",
             MUST_FAIL)):
        row = {"name": name, "what": what, "must": must, "window": None, "backend": None,
               "baseline": "-", "verdict": "missing", "ok": False,
               "detail": "the control run left no bundle (see the L1 console)"}
        cases = (doc or {}).get("cases") or []
        if cases:
            verdicts = []
            for c in cases:
                if name == "small-n":
                    v = (c.get("verification_window") or {}).get("verdict") or {}
                else:
                    v = (c.get("timed_window") or {}).get("verdict") or {}
                verdicts.append((c["key"], v.get("status", "missing"), v.get("detail", "")))
            worst = next((v for v in verdicts if not _held(v[1], must)), verdicts[0])
            row.update(window=", ".join(k for k, _s, _d in verdicts),
                       backend=(cases[0].get("verification_window") or {}).get("backend"),
                       verdict=worst[1], detail=worst[2],
                       ok=all(_held(s, must) for _k, s, _d in verdicts))
            if name == "tracing-elsewhere" and row["ok"] and not all(
                    "raw_syscalls" in d for _k, _s, d in verdicts):
                row.update(ok=False, detail="failed, but not for the foreign tracing: " + worst[2])
        rows.append(row)
    return rows
