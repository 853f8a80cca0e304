"""Whether anything traces this host right now: the timed window's proof that nothing added cost to
its exits (exitlat/run/windows.py reads it before and after every timed window).

Anything enabled, anywhere, counts, whoever enabled it: a tracepoint that fires in the exit path
(kvm, syscalls/raw_syscalls on the QEMU path, msr, sched, irq, ...) costs time there even when its
filter drops the event, and a hooked function costs a call. `check_tracing()` reads:

  set_event           of the top buffer and of every instance: every enabled event of every group.
                      An event that only has a trigger (a hist trigger, say) is enabled in "soft"
                      mode (its enable file reads "0*"), and set_event lists it too; the trigger
                      files of the listed events say which triggers.
  current_tracer      of every buffer: any tracer but nop hooks functions or scheduler points,
                      whatever tracing_on says (the hooks stay; only the recording stops).
  set_ftrace_filter   of every buffer: function commands ("schedule:traceoff") hook their
                      functions even with the nop tracer; with a tracer, it and set_graph_function
                      say which functions it is limited to.
  enabled_functions   every function with an ftrace callback: a function tracer, a kprobe on the
                      function's ftrace site, a BPF trampoline (fentry/fexit, kprobe_multi), the
                      stack tracer. A function whose only callback is livepatch's is not traced,
                      nor is a BPF LSM hook (bpf_lsm_*: security policy; named in `checked`).
  kprobe_profile, uprobe_profile   the hits of every probe event: compared before and after the
                      window (TimedWindow), a probe that fired without being enabled in tracefs
                      (opened through perf_event_open: `perf probe` + `perf record`) is caught.
  /proc/sys/kernel/stack_tracer_enabled, and debugfs's kprobes/list where debugfs is mounted
                      (every registered kprobe, also those of BPF programs and perf's kprobe PMU).

What no file shows is named in LIMITS (and, where this host hides a file, in the check's limits):
they go into the bundle as the timed window's `tracing_limits`, beside `tracing_checked`.
touched_functions is not read: it lists every function that ever had a callback since boot, not
what is hooked now.
"""

from __future__ import annotations

from pathlib import Path

# What no tracefs file shows, on any kernel.
LIMITS = (
    "perf_event_open users of tracepoints (perf record/stat/trace -e group:event) are not visible "
    "in tracefs",
    "BPF programs on tracepoints and raw tracepoints are not visible in tracefs "
    "(bpftool perf / bpftool link list them)",
    "uprobes opened through perf_event_open without a probe event (BPF uprobe programs) are not "
    "visible",
    "perf_event_open counters and samplers (PMU interrupts) are not visible in tracefs",
)
KPROBES_LIST = Path("/sys/kernel/debug/kprobes/list")
STACK_TRACER = Path("/proc/sys/kernel/stack_tracer_enabled")
ENABLED_FUNCTIONS_MAX_BYTES = 1 << 18   # a function tracer hooks ~50,000 functions: enough to say so
LIVEPATCH_HANDLER = "klp_ftrace_handler"
# BPF LSM programs (systemd's RestrictFileSystems=, say) hook bpf_lsm_* through a BPF trampoline:
# the host's security policy, there in every measurement of it, like SELinux's hooks.
BPF_LSM_PREFIX = "bpf_lsm_"


class TracingState(list):
    """What check_tracing() found enabled (the list itself, e.g. "instances/x: syscalls/sys_enter_ioctl"),
    plus `checked` (what was read), `limits` (what could not be seen) and `probe_hits` (hits per
    probe event, to compare two checks: probes_fired())."""

    def __init__(self, enabled=(), checked=(), limits=(), probe_hits=None):
        super().__init__(enabled)
        self.checked = list(checked)
        self.limits = list(limits)
        self.probe_hits = dict(probe_hits or {})


def _read(path: Path, limit: int | None = None) -> str:
    with open(path) as f:
        return f.read() if limit is None else f.read(limit)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _buffer(label: str, buf: Path, found: list[str], checked: set[str]) -> None:
    """One trace buffer (the top one or an instance): its events, triggers, tracer and function
    commands. OSError on set_event propagates (then nothing can be said)."""
    for line in _lines(_read(buf / "set_event")):
        group, sep, event = line.partition(":")
        name = f"{group}/{event}" if sep and ":" not in event else line    # ":mod:" lines as they are
        try:
            specs = _lines(_read(buf / "events" / group / event / "trigger"))
        except OSError:
            specs = []
        triggers = sorted({t.split(":")[0] for t in specs})          # "hist", "traceoff", ...
        found.append(f"{label}{name}" + (f" (trigger: {', '.join(triggers)})" if triggers else ""))
    checked.add("set_event")
    try:
        tracer = _read(buf / "current_tracer").strip()
        checked.add("current_tracer")
    except OSError:
        tracer = ""
    try:
        filt = _lines(_read(buf / "set_ftrace_filter"))
        checked.add("set_ftrace_filter")
    except OSError:
        filt = []
    commands = [f for f in filt if ":" in f]             # "func:traceoff:unlimited": hooked anyway
    if tracer and tracer != "nop":
        try:
            on = _read(buf / "tracing_on").strip()
        except OSError:
            on = "?"
        plain = [f for f in filt if ":" not in f]
        only = f", limited to {len(plain)} functions (set_ftrace_filter)" if plain else ""
        try:
            graph = _lines(_read(buf / "set_graph_function"))
            checked.add("set_graph_function")
        except OSError:
            graph = []
        if graph:
            only += f", graphs of {len(graph)} functions (set_graph_function)"
        found.append(f"{label}current_tracer: {tracer} (tracing_on {on}{only})")
    for c in commands:
        found.append(f"{label}set_ftrace_filter: {c}")


def _enabled_functions(root: Path, found: list[str], checked: set[str], limits: list[str]) -> None:
    path = root / "enabled_functions"
    if not path.exists():
        limits.append("no enabled_functions (a kernel without CONFIG_DYNAMIC_FTRACE): functions "
                      "hooked by ftrace or BPF trampolines cannot be seen")
        return
    try:
        text = _read(path, ENABLED_FUNCTIONS_MAX_BYTES)
    except OSError as e:
        limits.append(f"enabled_functions is not readable ({e.strerror or e}): functions hooked "
                      "by ftrace or BPF trampolines (fentry, kprobe_multi) cannot be seen")
        return
    hooked, lsm = [], []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace():         # an empty file, or a continuation line
            continue
        if LIVEPATCH_HANDLER in line and " (1) " in line:  # only livepatch's callback: no tracing
            continue
        name = line.split()[0]
        (lsm if name.startswith(BPF_LSM_PREFIX) else hooked).append(name)
    checked.add("enabled_functions" + (f" (BPF LSM hooks, security policy, not tracing: "
                                       f"{', '.join(lsm[:3])}{', ...' if len(lsm) > 3 else ''})"
                                       if lsm else ""))
    if hooked:
        more = "+" if len(text) >= ENABLED_FUNCTIONS_MAX_BYTES else ""
        found.append(f"enabled_functions: {len(hooked)}{more} functions hooked "
                     f"(e.g. {', '.join(hooked[:3])})")


def _probe_hits(root: Path, checked: set[str]) -> dict[str, int]:
    """Hits per probe event: kprobe_profile "  name nhit nmissed", uprobe_profile "  file name nhit"."""
    hits = {}
    for name, hit_col in (("kprobe_profile", 1), ("uprobe_profile", -1)):
        try:
            text = _read(root / name)
        except OSError:
            continue
        checked.add(name)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            key = parts[0] if hit_col == 1 else " ".join(parts[:-1])
            try:
                hits[f"{name}: {key}"] = int(parts[hit_col])
            except ValueError:
                continue
    return hits


def _kprobes_list(path: Path, found: list[str], checked: set[str], limits: list[str]) -> None:
    """debugfs kprobes/list: "addr  k|r|p  sym+off  [flags]"; armed = neither [DISABLED] nor [GONE]."""
    try:
        text = _read(path)
    except OSError:
        limits.append(f"kprobes registered through perf_event_open (BPF kprobe programs, perf's "
                      f"kprobe PMU) are not visible (debugfs kprobes/list not readable at {path}: "
                      "debugfs not mounted?)")
        return
    checked.add("debugfs kprobes/list")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and "[DISABLED]" not in line and "[GONE]" not in line:
            found.append(f"kprobes/list: {parts[2]} ({parts[1]}) armed")


def check_tracing(root: Path, kprobes_list: Path = KPROBES_LIST,
                  stack_tracer: Path = STACK_TRACER) -> TracingState | None:
    """Everything enabled now in tracefs at `root` (see the module docstring); [] when nothing is;
    None when a buffer's set_event cannot be read (then nobody can say the window was untraced)."""
    if not (root / "events").is_dir():
        return None
    found: list[str] = []
    checked: set[str] = set()
    limits: list[str] = list(LIMITS)
    buffers = [("", root)]
    try:
        buffers += [(f"instances/{d.name}: ", d) for d in sorted((root / "instances").iterdir())
                    if d.is_dir()]
    except OSError:
        pass                                   # no instances/ (an old kernel): the top buffer only
    for label, buf in buffers:
        try:
            _buffer(label, buf, found, checked)
        except OSError:
            if label and not buf.exists():     # an instance removed while we read: nothing there
                continue
            return None
    _enabled_functions(root, found, checked, limits)
    hits = _probe_hits(root, checked)
    try:
        if _read(stack_tracer).strip() not in ("", "0"):
            found.append("stack tracer (/proc/sys/kernel/stack_tracer_enabled)")
        checked.add("stack_tracer_enabled")
    except OSError:
        pass                                   # no CONFIG_STACK_TRACER: enabled_functions covers it
    _kprobes_list(kprobes_list, found, checked, limits)
    n_inst = len(buffers) - 1
    where = f" (top buffer and {n_inst} instance{'s' if n_inst != 1 else ''})"
    checked_list = [c + (where if c in ("set_event", "current_tracer", "set_ftrace_filter") else "")
                    for c in sorted(checked)]
    return TracingState(found, checked_list, limits, hits)


def probes_fired(before, after) -> list[str]:
    """The probe events whose hit count rose between two checks (TracingState.probe_hits): they
    fired while the window ran, enabled in tracefs or not."""
    a, b = getattr(before, "probe_hits", None), getattr(after, "probe_hits", None)
    if not a and not b:
        return []
    a, b = a or {}, b or {}
    return [f"{k} fired {n - a.get(k, 0)} times" for k, n in sorted(b.items()) if n > a.get(k, 0)]
