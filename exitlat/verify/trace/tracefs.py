"""tracefs itself: where it is mounted (mounting it if need be), whether exitlat can count there,
writing its control files, the fields of an event, one buffer's trace clock, and switching an
event off again.

Nothing here touches the global buffer's settings: the counters work in private instances
(instances.py), and set_trace_clock is only ever called on one of those.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from exitlat.errors import ExitlatError

from .timeline import TSC_CLOCK

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# The kvm tracepoints a counter uses (ExitCounter); without the required ones it cannot count.
# kvm_hv_timer_state: which timer KVM arms for the guest's LAPIC timer (exitlat/verify/timerbacking.py).
EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio", "kvm_cpuid", "kvm_msr", "kvm_hypercall",
          "kvm_hv_timer_state")
REQUIRED_EVENTS = ("kvm_exit", "kvm_userspace_exit", "kvm_pio")


def find_tracefs(mount: bool = True) -> Path | None:
    """The tracefs mount point; mounts it at /sys/kernel/tracing when absent and we may."""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs" and Path(parts[1], "events").is_dir():
                return Path(parts[1])
    except OSError:
        pass
    for p in TRACEFS_CANDIDATES:
        if (p / "events").is_dir():
            return p
    if mount and os.geteuid() == 0 and TRACEFS_CANDIDATES[0].is_dir():
        import subprocess

        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS_CANDIDATES[0])],
                       capture_output=True, timeout=10)
        if (TRACEFS_CANDIDATES[0] / "events").is_dir():
            return TRACEFS_CANDIDATES[0]
    return None


def has_hist_triggers(tracefs: Path) -> bool:
    """Whether the kernel has hist triggers (CONFIG_HIST_TRIGGERS): the hist backend's condition."""
    return (tracefs / "events/kvm/kvm_exit/hist").exists()


def tracing_available(tracefs: Path | None = None) -> tuple[bool, str]:
    """(usable, one line): can exitlat count KVM exits on this host?"""
    root = Path(tracefs) if tracefs else find_tracefs()
    if root is None or not (root / "events").is_dir():
        return False, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    missing = [e for e in REQUIRED_EVENTS if not (root / "events/kvm" / e).is_dir()]
    if missing:
        return False, f"no kvm tracepoints in {root}/events/kvm ({', '.join(missing)}): is kvm loaded?"
    if not os.access(root / "instances", os.W_OK):
        return False, f"{root}/instances is not writable (needs root or CAP_SYS_ADMIN)"
    backend = "hist triggers" if has_hist_triggers(root) else "streaming trace_pipe (no hist triggers)"
    return True, f"tracefs at {root}; backend: {backend}"


def write_control(path: Path, text: str, what: str) -> None:
    """Write one control file; a failure is one ExitlatError line saying what could not be done."""
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise ExitlatError(f"tracefs: cannot {what} ({path}: {e.strerror or e})") from None


def event_fields(tracefs: Path, event: str) -> set[str]:
    """The field names of kvm:<event> (its format file); empty when it cannot be read."""
    try:
        text = (tracefs / "events/kvm" / event / "format").read_text()
    except OSError:
        return set()
    return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text))


def trace_clocks(buf: Path) -> tuple[str | None, list[str]]:
    """(selected clock, available clocks) of one trace buffer (its trace_clock file)."""
    try:
        names = (Path(buf) / "trace_clock").read_text().split()
    except OSError:
        return None, []
    selected = next((n[1:-1] for n in names if n.startswith("[") and n.endswith("]")), None)
    return selected, [n.strip("[]") for n in names]


def set_trace_clock(buf: Path, clock: str = TSC_CLOCK) -> tuple[str | None, str]:
    """Select `clock` in one buffer's trace_clock (a private instance's: never the global
    buffer's). This resets that buffer, so call it before enabling events. Returns (the clock
    selected afterwards, "" or why it is not `clock`)."""
    selected, available = trace_clocks(buf)
    if selected is None:
        return None, f"cannot read {Path(buf) / 'trace_clock'}"
    if clock not in available:
        return selected, f"trace clock {clock} is not available here (only {', '.join(available)})"
    if selected != clock:
        try:
            write_control(Path(buf) / "trace_clock", clock, f"select the {clock} trace clock")
        except ExitlatError as e:
            return trace_clocks(buf)[0], str(e)
        selected = trace_clocks(buf)[0]
    return selected, "" if selected == clock else f"trace clock is {selected}, not {clock}"


def disable_event_dir(d: Path) -> None:
    """Drop hist triggers, the filter and the enable bit of one event directory; best effort."""
    try:
        for line in (d / "trigger").read_text().splitlines():
            if line.startswith("hist:"):
                with open(d / "trigger", "w") as f:
                    f.write("!" + line.split(" [")[0].strip())
    except OSError:
        pass
    for name, val in (("enable", "0"), ("filter", "0")):
        try:
            with open(d / name, "w") as f:
                f.write(val)
        except OSError:
            pass
