"""One verdict per window, and one per case from its two windows (docs/verification.md).

The rules themselves live in exitlat.verify.rules; this module feeds them what each window recorded and
adds what only the run knows: whether tracing was provably off during a timed window, and whether
a traced window was recorded at all. Verdicts are ordered failed > unverified > passed: a case is
only "passed" when both of its windows are.
"""

from __future__ import annotations

from dataclasses import dataclass

ORDER = {"failed": 3, "unverified": 2, "passed": 1}


@dataclass(frozen=True)
class VerdictContext:
    vendor: str          # "intel", "amd" or "unknown": which exit-reason names to expect
    port: int            # the S port
    kvm_params: dict | None = None   # the host's KVM module parameters (timer_backing)


def _port(spec, ctx: VerdictContext) -> int | None:
    if spec.port is not None:
        return spec.port
    return ctx.port if spec.instruction == "outb" else None


def run_port(spec, ctx: VerdictContext, hello: dict | None) -> int | None:
    """The port a case's port I/O used in one VM run: the S port, the kind's own, or for the pio_*
    kinds pci-testdev's register in the I/O BAR the guest reported (`testdev_io` of its hello: the
    firmware assigns the BAR at boot); None where the guest did not report it."""
    from exitlat.instructions import TABLE

    row = TABLE.get(spec.instruction)
    if row is not None and row.io and row.testdev is not None:
        base = (hello or {}).get("testdev_io")
        ok = isinstance(base, int) and not isinstance(base, bool) and 0 < base <= 0xFF00
        return base + row.testdev_reg if ok else None
    return _port(spec, ctx)


def _with_tracing(v: dict, timed) -> dict:
    """A timed window whose freedom from tracing is unknown is unverified; one with tracing on fails."""
    problem = timed.tracing_problem() if timed is not None else "no timed window recorded"
    if problem is None:
        return v
    status = "unverified" if timed is not None and timed.tracing == "unknown" else "failed"
    if ORDER[status] > ORDER.get(v["status"], 0):
        v = dict(v, status=status)
    v["detail"] = f"{v['detail']}; {problem}"
    return v


def timed_verdict(spec, timed, n: int, ctx: VerdictContext, console_io: int | None = None) -> dict:
    """The timed window, from KVM's binary stats alone (nothing traced it); `console_io`: the
    console's I/O exits per window as the same boot's baselines measured them (console_io_of)."""
    from .timed import verify_timed_window

    v = verify_timed_window(timed.kvm_stats if timed else None, n, spec.expected_path,
                            spec.instruction, console_io=console_io,
                            second_exit=getattr(spec, "second_exit", None))
    if getattr(spec, "receiver_path", None):
        v = with_timed_receiver(v, spec, timed, n, ctx)
    return _with_tracing(v, timed)


def with_timed_receiver(v: dict, spec, timed, n: int, ctx: VerdictContext) -> dict:
    """A two-vCPU kind's timed verdict: the sender's (v) and the receiver's from its own KVM
    stats over the same window, the worse of them."""
    from .receiver import verify_receiver_timed

    r = verify_receiver_timed(getattr(timed, "receiver_kvm_stats", None), n, spec.receiver_path,
                              spec.instruction, ctx.vendor)
    return _worse_with(v, r)


def console_io_of(timed_windows: dict, traced=None, port: int | None = None) -> int | None:
    """The console's I/O exits per window in one VM run: the median over its baseline windows'
    io_exits (keys "baseline_*" of VmResult.timed: no exiting instruction, the same handshake);
    without baselines, the port I/O on other ports than the case's that the case's own traced
    window counted (the same handshake, told apart by port); None when neither exists."""
    from .timed import console_io_estimate

    est = console_io_estimate([w.kvm_stats for k, w in timed_windows.items()
                               if k.startswith("baseline_") and w is not None])
    counts = getattr(traced, "counts", None)
    if est is None and counts is not None and not counts.lost and not counts.unparsed:
        est = sum(c for (p, _d), c in counts.pio.items() if p != port)
    return est


def baseline_verdict(timed, n: int) -> dict:
    """A baseline must not exit: ≈0 exits per iteration is the proof that the timer never exits."""
    from .timed import verify_baseline

    return _with_tracing(verify_baseline(timed.kvm_stats if timed else None, n), timed)


def traced_verdict(spec, traced, n: int, ctx: VerdictContext, hello: dict | None = None) -> dict:
    """The traced window: exit reasons, userspace exits, port writes, fastpath probes, and the
    agreement of KVM's stats with the trace."""
    from exitlat.instructions import TABLE

    from .traced import verify_case

    if traced is None or traced.counts is None:
        why = (traced.error if traced is not None and traced.error else "no traced window recorded")
        return {"status": "failed", "detail": f"failed: {why}"}
    port = run_port(spec, ctx, hello)
    if port is None and TABLE[spec.instruction].io:
        return {"status": "failed", "detail": f"failed: the guest did not report the port of "
                                              f"{spec.instruction} (pci-testdev's I/O BAR): its "
                                              "writes cannot be told from others"}
    v = verify_case(traced.counts, n, spec.expected_path, spec.instruction, port,
                    ctx.vendor, kvm_stats=traced.kvm_stats, kvm_params=ctx.kvm_params,
                    second_exit=getattr(spec, "second_exit", None),
                    exit_reason=getattr(spec, "exit_reason", None))
    if getattr(spec, "receiver_path", None):
        v = with_receiver(v, spec, traced, n, ctx)
    return v


def with_receiver(v: dict, spec, traced, n: int, ctx: VerdictContext) -> dict:
    """A two-vCPU kind's traced verdict: the sender's (v) and the receiver's, the worse of them."""
    from .receiver import verify_receiver

    counts = getattr(traced, "receiver_counts", None)
    if counts is None:
        r = {"status": "failed", "detail": "failed: the receiving vCPU's exits were not traced"}
    else:
        r = verify_receiver(counts, n, spec.receiver_path, spec.instruction, ctx.vendor)
    return _worse_with(v, r, "receiver ")


def _worse_with(v: dict, r: dict, label: str = "") -> dict:
    """The sender's verdict v with the receiver's r beside it (`receiver`), the worse status."""
    out = dict(v, receiver=r)
    if ORDER.get(r["status"], 3) > ORDER.get(v["status"], 0):
        out["status"] = r["status"]
    out["detail"] = f"{v['detail']}; {label}{r['detail']}"
    return out


def combine(timed: dict, traced: dict) -> dict:
    """The case's verdict: the worse of its two windows, with both details."""
    worst = max((timed, traced), key=lambda v: ORDER.get(v["status"], 0))
    out = {k: v for k, v in traced.items() if k not in ("status", "detail")}
    out["status"] = worst["status"]
    fractions = [v.get("other_path_max") for v in (timed, traced)]
    out["other_path_max"] = (None if any(f is None for f in fractions) else max(fractions))
    out["detail"] = f"timed window: {timed['detail']} | traced window: {traced['detail']}"
    return out


@dataclass(frozen=True)
class Verdicts:
    """Every window's verdict of one run, from what a VM run recorded (a VmResult: `timed`,
    `windows`): the one place they are computed, for the live progress lines and the bundle."""
    ctx: VerdictContext
    n_timed: int         # iterations of a timed window, warm-up included
    n_traced: int        # iterations of a traced window

    def console_io(self, res, spec=None) -> int | None:
        """The console's I/O exits per window: the run's baselines, else the case's traced window."""
        traced = res.windows.get(spec.key) if spec is not None else None
        port = run_port(spec, self.ctx, getattr(res, "hello", None)) if spec is not None else None
        return console_io_of(res.timed, traced, port)

    def timed(self, spec, res) -> dict:
        return timed_verdict(spec, res.timed.get(spec.key), self.n_timed, self.ctx,
                             console_io=self.console_io(res, spec))

    def traced(self, spec, res) -> dict:
        return traced_verdict(spec, res.windows.get(spec.key), self.n_traced, self.ctx,
                              getattr(res, "hello", None))

    def baseline(self, key: str, res) -> dict:
        return baseline_verdict(res.timed.get(key), self.n_timed)
