"""hist files into counts: the hist backend's `snapshot()` reads one hist file per event (kernel
format: Documentation/trace/histogram.rst) and adds its entries to a CountAccumulator.

Fail closed, as traceparse.py: a line that looks like an entry ("{ ... } hitcount: ...") but
does not parse, an entry whose keys are not the integers its event needs, or an entry of a thread
that is not a vCPU thread (a broken pid filter), is counted in `ExitCounts.unparsed`.
``Dropped:`` (the hist map was full) is counted as lost.
"""

from __future__ import annotations

import re

from .counts import HANDLED_SUFFIX, CountAccumulator
from .exitreasons import decode_exit_reason, decode_userspace_reason

_HIST_ENTRY = re.compile(r"^\{(?P<keys>.*)\}\s*hitcount:\s*(?P<hits>\d+)\s*$")
_HIST_KEY = re.compile(r"^\s*(\w+):\s*(.*?)\s*$")
_HIST_DROPPED = re.compile(r"^\s*Dropped:\s*(\d+)", re.M)
PROBE_HIST_PREFIX = "probe/"       # add_hists key of a kprobe event: "probe/<symbol>"


def _hist_value(v: str) -> int | str:
    v = v.strip()
    m = re.search(r"\[\s*(-?\d+)\s*\]\s*$", v)       # ".execname"/".sym" style: "name [ 123]"
    if m:
        return int(m.group(1))
    try:
        return int(v, 0)
    except ValueError:
        return v


def parse_hist(text: str, unparsed: list | None = None) -> tuple[list[tuple[dict, int]], int]:
    """Parse a hist file: ([(keys, hitcount)], dropped). A line that looks like an entry
    ("{ ... } hitcount: ...") but does not parse goes to `unparsed` when given."""
    entries = []
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("{"):
            continue
        m = _HIST_ENTRY.match(s)
        keys = {}
        if m:
            for part in m.group("keys").split(","):
                k = _HIST_KEY.match(part)
                if not k or not k.group(2):
                    m = None
                    break
                keys[k.group(1)] = _hist_value(k.group(2))
        if not m:
            if unparsed is not None:
                unparsed.append(line)
            continue
        entries.append((keys, int(m.group("hits"))))
    dropped = sum(int(d) for d in _HIST_DROPPED.findall(text))
    return entries, dropped


def _ints(keys: dict, required: tuple, optional: tuple = ()) -> dict | None:
    """The keys as integers; None when a required one is missing or any one is not an integer."""
    out = {}
    for k in required + optional:
        if k not in keys:
            if k in required:
                return None
            continue
        if not isinstance(keys[k], int):
            return None
        out[k] = keys[k]
    return out


def _errno(value: int) -> int | None:
    """kvm_userspace_exit's errno (an int in the event) as hist prints it: every key as an unsigned
    64-bit number (kernel/trace/trace_events_hist.c, "%10llu"), so -EINTR reads
    18446744073709551612. Back to signed; None for what no int prints as. KVM_RUN returns 0 or a
    negative errno, so a positive one is not a value the kernel writes either."""
    if value >= 1 << 63:
        value -= 1 << 64
    return value if -(1 << 31) <= value <= 0 else None


def add_hists(hists: dict[str, str], acc: CountAccumulator, pids: set[int] | None = None) -> None:
    """Add hist files ({event: text}; a probe's under "probe/<symbol>") to `acc`. With `pids`
    (the vCPU threads the triggers filter on), an entry of any other thread is not counted but
    failed: the filter did not hold (a hist backend's entries all key on common_pid)."""
    for event, text in hists.items():
        bad_lines: list[str] = []
        entries, dropped = parse_hist(text, bad_lines)
        for line in bad_lines:
            acc.bad(f"{event} hist: {line.strip()}")
        acc.lost += dropped
        for keys, hits in entries:
            ok = True
            pid = keys.get("common_pid")
            if pids is not None and pid not in pids:
                acc.bad(f"{event} hist: entry of thread {pid}, not a vCPU thread (the pid filter "
                        f"did not hold): {keys} hitcount: {hits}")
                continue
            if event == "kvm_exit":
                k = _ints(keys, ("exit_reason",), ("isa",))
                if k is None:
                    ok = False
                else:
                    acc.exits[decode_exit_reason(k["exit_reason"], k.get("isa"))] += hits
            elif event == "kvm_userspace_exit":
                k = _ints(keys, ("reason",), ("errno",))
                errno = _errno(k.get("errno", 0)) if k is not None else None
                if k is None or errno is None:
                    ok = False
                else:           # errno < 0: a KVM_RUN that failed; its reason is a stale one
                    acc.userspace[decode_userspace_reason(k["reason"], errno)] += hits
            elif event == "kvm_pio":
                k = _ints(keys, ("rw", "port"))
                if k is None:
                    ok = False
                else:
                    acc.pio[(k["port"], "out" if k["rw"] else "in")] += hits
            elif event in ("kvm_cpuid", "kvm_hypercall"):
                acc.handled["cpuid" if event == "kvm_cpuid" else "hypercall"] += hits
            elif event == "kvm_msr":
                k = _ints(keys, ("write",))
                if k is None:
                    ok = False
                else:
                    acc.handled["msr_write" if k["write"] else "msr_read"] += hits
            elif event == "kvm_hv_timer_state":
                k = _ints(keys, ("hv_timer_in_use",))
                if k is None:
                    ok = False
                else:
                    acc.hv_timer["in_use" if k["hv_timer_in_use"] else "not_in_use"] += hits
            elif event.startswith(PROBE_HIST_PREFIX):
                sym = event[len(PROBE_HIST_PREFIX):]
                k = _ints(keys, (), ("ret",))
                if k is None:
                    ok = False
                else:
                    acc.probes[sym] += hits
                    if k.get("ret"):
                        acc.probes[sym + HANDLED_SUFFIX] += hits
            else:
                ok = False
            if not ok:
                acc.bad(f"{event} hist: {keys} hitcount: {hits}")
