"""trace_pipe text into counts: one line at a time (the stream backend's reader thread, and the
timeline's events in either backend) or a whole captured trace (tests, checks by hand).

Fail closed: a counter's instance carries only the events it enabled, filtered on the vCPU
threads, so every line must be a sync marker, a ``[LOST n EVENTS]`` line or a well-formed event
of a vCPU thread whose payload parses (a kvm_exit reason must be a known VMX/SVM name or a
number; an event of another thread means the filter did not hold). Anything else
is counted in `ExitCounts.unparsed` (the first lines kept in ``unparsed_lines``), and the verifier
fails the window. histparse.py does the same for hist lines that look like entries but do not
parse.

The formats are the kernel's TP_printk ones (arch/x86/kvm/trace.h, include/trace/events/kvm.h;
kernel/trace/trace_kprobe.c for probe events).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .counts import HANDLED_SUFFIX, CountAccumulator, ExitCounts
from .exitreasons import exit_name_from_text, userspace_name_from_text

if TYPE_CHECKING:
    from .timeline import Timeline


# "<comm>-<pid> [cpu] flags ts: event: payload"; comm may contain spaces, dashes and slashes
# (QEMU's vCPU threads are "CPU 0/KVM"). The timestamp is "secs.usecs" for the nanosecond clocks
# (local, global, mono, ...) and the raw counter without a decimal point for the others (x86-tsc,
# counter, uptime): kernel/trace/trace_output.c trace_print_time(), " %5lu.%06lu" vs " %12llu".
_TS = r"(?P<ts>\d+(?:\.\d+)?)"
_PREFIX = (r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
           r"(?:\S+\s+)?" + _TS + r": ")
_LINE = re.compile(_PREFIX + r"(?P<event>\w+): (?P<payload>.*)$")
# Syscall events print no "event:" tag (kernel/trace/trace_syscalls.c): sys_enter_* as
# "sys_ioctl(fd: 5, cmd: ae80, arg: 0)" (6.1 - 6.12: "%s: %lx"; 6.18 prints "cmd: 0xae80"),
# sys_exit_* as "sys_ioctl -> 0x0". Only parsed in timeline mode (see Timeline).
_SYSCALL_LINE = re.compile(_PREFIX + r"(?P<name>sys_\w+)"
                           r"(?:\((?P<args>[^()]*)\)| -> (?P<ret>0x[0-9a-fA-F]+))\s*$")
_SYSCALL_CMD = re.compile(r"(?:^|, )(?:[\w ]+ )?cmd: (?:0x)?([0-9a-fA-F]+)(?:,|$)")
# kvm_entry (arch/x86/kvm/trace.h): 6.1 - 6.12 "vcpu %u, rip 0x%lx%s" ("[immediate exit]");
# 6.18 adds " intr_info 0x%08x error_code 0x%08x" before it.
_ENTRY = re.compile(r"^vcpu \d+, rip 0x[0-9a-fA-F]+(?: intr_info 0x[0-9a-fA-F]+ error_code 0x[0-9a-fA-F]+)?"
                    r"(?:\[immediate exit\])?\s*$")
# Before 5.10 kvm_entry printed "vcpu %u" alone, and fired in vcpu_enter_guest() before the
# vendor's run function, not at every VM entry: the line is accepted, but no exit is paired with
# it (KVM_ENTRY_WITHOUT_RIP goes into the timeline's `missing`, so the decomposition is refused).
_ENTRY_WITHOUT_RIP = re.compile(r"^vcpu \d+\s*$")
KVM_ENTRY_WITHOUT_RIP = ("kvm_entry (prints no rip: a kernel before 5.10, whose kvm_entry fires "
                         "outside the vendor's run loop, so exits are not paired)")
_LOST = re.compile(r"\s*CPU:(\d+) \[LOST (\d+) EVENTS\]\s*")
_EXIT_REASON = re.compile(r"^(?:vcpu \d+ )?reason (.+?) rip (?:0x)?[0-9a-fA-F]+(?: |$)")
_USER_REASON = re.compile(r"^reason (\S+) \((-?\d+)\)\s*$")
_PIO = re.compile(r"^pio_(read|write) at 0x([0-9a-fA-F]+) size \d+ count \d+")
_MSR = re.compile(r"^msr_(read|write) [0-9a-fA-F]+ = 0x[0-9a-fA-F]+")
_CPUID = re.compile(r"^func [0-9a-fA-F]+ idx [0-9a-fA-F]+ ")
_HYPERCALL = re.compile(r"^nr 0x[0-9a-fA-F]+ ")
_HV_TIMER = re.compile(r"^vcpu_id [0-9a-fA-F]+ hv_timer ([0-9a-fA-F]+)\s*$")   # "%x", "%x"
# kprobe:    "(sym+0x0/0x30 [kvm])[ args]"; kretprobe: "(caller+0x5d/0x9a0 [kvm_intel] <- sym)[ args]"
_PROBE = re.compile(r"^\((?P<at>[^()<]+?)(?: <- (?P<func>[^()\s]+))?\)(?P<args>(?: \w+=\S*)*)\s*$")


def _probe_args(args: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args.split())


def parse_trace_line(line: str, acc: CountAccumulator, pids: set[int] | None = None) -> str | None:
    """Add one trace_pipe line to `acc`. Returns the marker text for tracing_mark_write lines
    (so the caller can see its sync markers), else None. A non-empty line that is none of: a
    marker, a "[LOST n EVENTS]" line, or one of the counted events of a thread in `pids` with a
    payload that parses, is counted as unparsed (an event of another thread too: the instance's
    pid filter should have dropped it)."""
    if not line.strip():
        return None
    tl = acc.timeline
    m = _LOST.fullmatch(line)
    if m:
        acc.lost += int(m.group(2))
        if tl is not None:
            tl.lose(int(m.group(2)))
        return None
    m = _LINE.match(line)
    if not m:
        if tl is None or not _timeline_syscall(line, tl, pids, acc):
            acc.bad(line)
        return None
    event, payload = m.group("event"), m.group("payload")
    if event == "tracing_mark_write" or event == "print":
        return payload.strip()
    pid = int(m.group("pid"))
    if pids is not None and pid not in pids:
        _foreign(line, pid, acc)
        return None
    ok = True
    if event == "kvm_exit":
        r = _EXIT_REASON.match(payload)
        name = exit_name_from_text(r.group(1)) if r else None
        if name is None:
            ok = False
        else:
            acc.exits[name] += 1
            if tl is not None:
                tl.exit(pid, m.group("ts"), name)
    elif event == "kvm_userspace_exit":
        r = _USER_REASON.match(payload)
        name = userspace_name_from_text(r.group(1)) if r else None
        if name is None:
            ok = False
        else:
            acc.userspace[name] += 1
            if tl is not None:
                tl.userspace(pid, m.group("ts"), name)
    elif event == "kvm_pio":
        r = _PIO.match(payload)
        if r:
            port, direction = int(r.group(2), 16), "out" if r.group(1) == "write" else "in"
            acc.pio[(port, direction)] += 1
            if tl is not None:
                tl.pio(pid, port, direction)
        else:
            ok = False
    elif event == "kvm_entry" and tl is not None:
        if _ENTRY.match(payload):
            tl.entry(pid, m.group("ts"))
        elif _ENTRY_WITHOUT_RIP.match(payload):
            tl.events["kvm_entry without rip"] += 1
            if KVM_ENTRY_WITHOUT_RIP not in tl.missing:
                tl.missing += (KVM_ENTRY_WITHOUT_RIP,)
        else:
            ok = False
    elif event == "kvm_cpuid":
        if _CPUID.match(payload):
            acc.handled["cpuid"] += 1
        else:
            ok = False
    elif event == "kvm_msr":
        r = _MSR.match(payload)
        if r:
            acc.handled["msr_" + r.group(1)] += 1
        else:
            ok = False
    elif event == "kvm_hypercall":
        if _HYPERCALL.match(payload):
            acc.handled["hypercall"] += 1
        else:
            ok = False
    elif event == "kvm_hv_timer_state":
        r = _HV_TIMER.match(payload)
        if r:
            acc.hv_timer["in_use" if int(r.group(1), 16) else "not_in_use"] += 1
        else:
            ok = False
    else:
        ok = _count_probe_line(event, payload, acc)
    if not ok:
        acc.bad(line)
    return None


def _foreign(line: str, pid: int, acc: CountAccumulator) -> None:
    """An event of a thread that is not a vCPU thread: the instance filters every event on the
    vCPU threads, so the filter did not hold and the counts cannot be trusted (unparsed: fails)."""
    acc.bad(f"event of thread {pid}, not a vCPU thread (the pid filter did not hold): {line.strip()}")


def _count_probe_line(event: str, payload: str, acc: CountAccumulator) -> bool:
    """A kprobe event line (the event is named after the probed symbol)."""
    r = _PROBE.match(payload)
    if not r:
        return False
    args = _probe_args(r.group("args"))
    if r.group("func") is None:                   # entry probe: a call, nothing about its outcome
        acc.probes[event] += 1
        return True
    try:
        ret = int(args["ret"], 0)
    except (KeyError, ValueError):
        return False                               # a return probe must carry ret=
    acc.probes[event] += 1
    if ret != 0:
        acc.probes[event + HANDLED_SUFFIX] += 1
    return True


def parse_trace_text(text: str, pids: set[int] | None = None,
                     timeline: "Timeline | None" = None) -> ExitCounts:
    """Counts from a whole captured trace (e.g. `cat trace`); for tests and by-hand checks.
    The header of `cat trace` ("# tracer: nop", ...) is skipped; everything else must parse.
    With a `timeline`, the text is also paired into it (kvm_entry and sys_ioctl lines parse)."""
    acc = CountAccumulator()
    acc.timeline = timeline
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        parse_trace_line(line, acc, pids)
    return acc.freeze("text")


def _timeline_syscall(line: str, tl: "Timeline", pids: set[int] | None,
                      acc: CountAccumulator) -> bool:
    """A sys_ioctl enter/exit line (timeline mode); False when the line is not one (unparsed)."""
    m = _SYSCALL_LINE.match(line)
    if not m or m.group("name") != "sys_ioctl":
        return False
    pid = int(m.group("pid"))
    if pids is not None and pid not in pids:
        _foreign(line, pid, acc)
        return True
    if m.group("ret") is not None:
        tl.syscall_exit(pid, m.group("ts"))
        return True
    c = _SYSCALL_CMD.search(m.group("args"))
    if not c:
        return False
    tl.syscall_enter(pid, m.group("ts"), int(c.group(1), 16))
    return True
