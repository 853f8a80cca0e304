"""Did each exit take the path the case claims? Verdicts from a window of host-side exit counts.

`verify_case(window, iterations_total, expected_path, instruction, port, vendor)` compares the
counts of one case's window (an `exitlat.kvmtrace.ExitCounts`, the difference of two snapshots
around the timed loop) with what `iterations_total` iterations (warm-up included) must produce:

* a KVM-handled case ("kvm", "kvm_fastpath"): ≈1 exit of the expected reason per iteration
  (cpuid→CPUID, rdmsr→MSR_READ, wrmsr_tsc_deadline→MSR_WRITE, vmcall→VMCALL/VMMCALL; on AMD
  MSR reads and writes share one reason, "MSR") and ≈0 userspace exits per iteration;
* a QEMU case ("qemu", instruction "outb"): ≈1 kvm_pio write on `port` per iteration and ≈1
  userspace exit (KVM_EXIT_IO) per iteration.

Tolerances (docs/verification.md explains the choice):

* "≈1 per iteration": between (1 - ONE_TOLERANCE)·n and (1 + ONE_TOLERANCE)·n + STRAY_EVENTS.
* "≈0 per iteration": at most ZERO_TOLERANCE·n + STRAY_EVENTS.
* Userspace exits with reason IO that port I/O on *other* ports explains (the serial console
  of the handshake, which lands inside the window) are stray, not the case's: they are subtracted
  before the ≈0 test (KVM-handled cases) and allowed above the ≈1 bound (QEMU cases), and the
  detail line says how many.
* Any lost trace event fails the case: the counts would be lower bounds only.

When the host's kvm_exit reasons cannot be decoded (PVM reports its own exit vectors; KVM's
instruction emulator emits no kvm_exit at all), the KVM-handled test falls back to KVM's handler
tracepoints (kvm_cpuid, kvm_msr, kvm_hypercall: ≈1 per iteration) plus the userspace count, and
the detail line says so.
"""

from __future__ import annotations

from .errors import ExitlatError
from .kvmtrace import SVM_EXIT_REASONS, VMX_EXIT_REASONS, ExitCounts

ONE_TOLERANCE = 0.02      # ±2 % of n for "about one per iteration"
ZERO_TOLERANCE = 0.02     # at most 2 % of n for "about zero per iteration"
STRAY_EVENTS = 64         # absolute allowance for events the loop did not cause (timers, kicks)

KVM_PATHS = ("kvm", "kvm_fastpath")
PATHS = KVM_PATHS + ("qemu",)
INSTRUCTIONS = ("cpuid", "rdmsr", "wrmsr_tsc_deadline", "wrmsr", "vmcall", "outb")

_REASONS = {
    "intel": {"cpuid": ("CPUID",), "rdmsr": ("MSR_READ",), "wrmsr_tsc_deadline": ("MSR_WRITE",),
              "wrmsr": ("MSR_WRITE",), "vmcall": ("VMCALL",), "outb": ("IO_INSTRUCTION",)},
    "amd": {"cpuid": ("CPUID",), "rdmsr": ("MSR",), "wrmsr_tsc_deadline": ("MSR",),
            "wrmsr": ("MSR",), "vmcall": ("VMMCALL",), "outb": ("IO_INSTRUCTION",)},
}
_HANDLER = {"cpuid": "cpuid", "rdmsr": "msr_read", "wrmsr_tsc_deadline": "msr_write",
            "wrmsr": "msr_write", "vmcall": "hypercall"}
_DECODABLE = frozenset(VMX_EXIT_REASONS.values()) | frozenset(SVM_EXIT_REASONS.values())


def expected_reasons(instruction: str, vendor: str) -> tuple[str, ...]:
    """kvm_exit reason names one iteration of `instruction` produces on `vendor`'s host."""
    if vendor in _REASONS:
        return _REASONS[vendor][instruction]
    return tuple(dict.fromkeys(_REASONS["intel"][instruction] + _REASONS["amd"][instruction]))


def _per(count: int, n: int) -> float:
    return round(count / n, 6)


def verify_case(window: ExitCounts, iterations_total: int, expected_path: str, instruction: str,
                port: int | None, vendor: str) -> dict:
    """Verdict for one case window. See the module docstring for the rules and tolerances."""
    if not isinstance(window, ExitCounts):
        raise ExitlatError(f"verify_case needs an ExitCounts window, got {type(window).__name__}")
    if isinstance(iterations_total, bool) or not isinstance(iterations_total, int) or iterations_total <= 0:
        raise ExitlatError(f"iterations_total must be a positive integer, got {iterations_total!r}")
    if expected_path not in PATHS:
        raise ExitlatError(f"unknown expected path {expected_path!r} ({', '.join(PATHS)})")
    if instruction not in INSTRUCTIONS:
        raise ExitlatError(f"unknown instruction {instruction!r} ({', '.join(INSTRUCTIONS)})")
    if vendor not in ("intel", "amd", "unknown"):
        raise ExitlatError(f"unknown vendor {vendor!r} (intel, amd, unknown)")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF):
        raise ExitlatError(f"port must be 0..0xffff, got {port!r}")
    if expected_path == "qemu" and instruction != "outb":
        raise ExitlatError(f"a QEMU-path case runs outb, not {instruction}")
    if instruction == "outb" and port is None:
        raise ExitlatError("an outb case needs its port to be verified")

    n = iterations_total
    lo = (1 - ONE_TOLERANCE) * n
    hi = (1 + ONE_TOLERANCE) * n + STRAY_EVENTS
    zero_max = ZERO_TOLERANCE * n + STRAY_EVENTS

    reasons = expected_reasons(instruction, vendor)
    reason_count = sum(window.exits.get(r, 0) for r in reasons)
    decodable = any(k.split("|")[0] in _DECODABLE for k in window.exits)
    userspace = window.total_userspace
    user_io = window.userspace.get("IO", 0)
    port_out = window.pio_count(port, "out") if port is not None else 0
    pio_other = sum(c for (p, _d), c in window.pio.items() if p != port)
    stray_io = min(max(user_io - (port_out if expected_path == "qemu" else 0), 0), pio_other)

    result = {
        "status": "failed",
        "expected_reason": "/".join(reasons),
        "expected_reason_per_iter": _per(reason_count, n) if decodable else None,
        "userspace_exits_per_iter": _per(userspace, n),
        "port_exits_per_iter": _per(port_out, n) if port is not None else None,
        "exit_reasons": dict(sorted(window.exits.items())),
        "userspace_reasons": dict(sorted(window.userspace.items())),
        "handled": dict(sorted(window.handled.items())),
        "pio": {f"{p:#x}/{d}": c for (p, d), c in sorted(window.pio.items())},
        "stray_console_io": stray_io,
        "lost_events": window.lost,
        "iterations_total": n,
        "tracing_backend": window.backend or None,
        "evidence": None,
        "tolerances": {"one": ONE_TOLERANCE, "zero": ZERO_TOLERANCE, "stray": STRAY_EVENTS},
        "detail": "",
    }
    problems: list[str] = []
    notes: list[str] = []
    if window.lost:
        problems.append(f"{window.lost} trace events were lost, counts are incomplete")

    def about_one(count: int, what: str) -> None:
        if not lo <= count <= hi:
            problems.append(f"expected ≈1 {what} per iteration, saw {count / n:.3f} ({count} in {n})")

    if expected_path in KVM_PATHS:
        if decodable:
            result["evidence"] = "kvm_exit reason"
            about_one(reason_count, f"{'/'.join(reasons)} exit")
        else:
            handler = _HANDLER.get(instruction)
            if handler is None:            # outb expected in KVM: only port I/O can tell
                count, what = port_out, f"kvm_pio write on {port:#x}"
            else:
                count, what = window.handled.get(handler, 0), f"kvm_{handler.split('_')[0]} handler event"
            result["evidence"] = f"handler tracepoint ({what}); exit reason not decodable here"
            notes.append(f"kvm_exit reasons not decodable on this host ({_fmt_reasons(window.exits)}): "
                         f"proved with {what}s and userspace counts instead")
            about_one(count, what)
        unexplained = userspace - stray_io
        if unexplained > zero_max:
            problems.append(f"expected ≈0 userspace exits per iteration, saw {unexplained / n:.3f} "
                            f"({unexplained} in {n}: {_fmt_reasons(window.userspace)})")
        summary = (f"{(reason_count if decodable else count) / n:.3f} "
                   f"{'/'.join(reasons) if decodable else what}/iter, "
                   f"{unexplained / n:.3f} userspace exits/iter")
    else:
        result["evidence"] = "kvm_pio + kvm_userspace_exit"
        about_one(port_out, f"kvm_pio write on {port:#x}")
        if user_io < lo:
            problems.append(f"expected ≈1 userspace exit (KVM_EXIT_IO) per iteration, saw "
                            f"{user_io / n:.3f} ({user_io} in {n})")
        if userspace - stray_io > hi:
            problems.append(f"expected ≈1 userspace exit per iteration, saw {(userspace - stray_io) / n:.3f} "
                            f"({_fmt_reasons(window.userspace)})")
        summary = f"{port_out / n:.3f} OUTs to {port:#x}/iter, {user_io / n:.3f} userspace IO exits/iter"
    if stray_io:
        notes.append(f"{stray_io} userspace IO exits explained by port I/O on other ports (console)")
    if expected_path == "kvm_fastpath":
        notes.append("fastpath vs. full in-kernel handler is not distinguishable by exit counts")

    result["status"] = "failed" if problems else "passed"
    head = "; ".join(problems) if problems else summary
    result["detail"] = f"{result['status']} ({expected_path}, {instruction}, n={n}): {head}" + \
        ("" if not notes else " [" + "; ".join(notes) + "]")
    return result


def _fmt_reasons(d: dict) -> str:
    if not d:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:6])
