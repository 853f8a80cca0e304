"""Return probes on KVM's WRMSR fastpath handler: which symbols this kernel has, creating and
sharing the probe events (the global kprobe_events file; the probes are enabled only inside a
counter's private instance) and removing those of a process that is gone.

The probe of symbol <sym> is the dynamic event exitlat_<pid>/<sym>; several ExitCounters of one
process share it (reference-counted), and the last one to stop removes it.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from exitlat.instructions import TABLE

from .tracefs import disable_event_dir, find_tracefs

# KVM's irq-off fastpath for WRMSR (IA32_TSC_DEADLINE, x2APIC ICR), per kernel version (the
# symbols are the `fastpath` column of exitlat/instructions.py). Read in
# the sources of Debian's linux 6.1.192 and 6.12.95 (arch/x86/kvm/x86.c, vmx/vmx.c, svm/svm.c) and
# in /proc/kallsyms of a 6.18.44 host:
#
#   6.1 - 6.12 (and up to the rename): x86.c `fastpath_t handle_fastpath_set_msr_irqoff(vcpu)`,
#       exported, called by vmx_exit_handlers_fastpath() for every EXIT_REASON_MSR_WRITE and by
#       svm_exit_handlers_fastpath() for every SVM_EXIT_MSR write. It returns EXIT_FASTPATH_NONE
#       (0) when it does not handle the MSR, and for IA32_TSC_DEADLINE whenever
#       kvm_can_use_hv_timer() is false -- always on AMD (no set_hv_timer) and on Intel without
#       the VMX preemption timer: the write then goes down the full handler. Its helpers
#       handle_fastpath_set_tscdeadline / handle_fastpath_set_x2apic_icr_irqoff are static (inlined).
#       vmx.c `static handle_fastpath_preemption_timer()` handles the timer's expiry, not the
#       write; 6.12.95 also has x86.c `handle_fastpath_hlt()`.
#   6.18: renamed `handle_fastpath_wrmsr(vcpu)` (Sean Christopherson's fastpath series, lore
#       20250805190526), a wrapper of `static __handle_fastpath_wrmsr(vcpu, msr, data)`, plus
#       `handle_fastpath_wrmsr_imm()` (the immediate form, MSR_WRITE_IMM exits), `handle_fastpath_hlt`
#       and `handle_fastpath_invd`. Same return convention.
#
# Only the per-WRMSR entry points are probed: a *return* probe with the return value, because a
# call alone does not prove the fastpath (the function is entered for every MSR write and returns
# EXIT_FASTPATH_NONE when it falls back). enum exit_fastpath_completion: NONE = 0,
# REENTER_GUEST = 1, EXIT_HANDLED = 2, EXIT_USERSPACE = 3 (arch/x86/include/asm/kvm_host.h).
FASTPATH_SYMBOLS = tuple(dict.fromkeys(s for i in TABLE.values() for s in i.fastpath))
KALLSYMS = Path("/proc/kallsyms")
PROBE_GROUP_PREFIX = "exitlat_"

SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_probe_lock = threading.Lock()
_probe_refs: dict[str, int] = {}       # "<group>/<sym>" -> ExitCounters of this process using it


def probe_group(pid: int | None = None) -> str:
    """The dynamic-event group of a process's probes: exitlat_<pid>."""
    return f"{PROBE_GROUP_PREFIX}{os.getpid() if pid is None else pid}"


def probe_dir(buf: Path, sym: str) -> Path:
    """The event directory of this process's probe on `sym` in one buffer (an instance)."""
    return Path(buf) / "events" / probe_group() / sym


_symbol_cache: dict[tuple, dict] = {}


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return (None, None)


def kernel_symbols(names, tracefs: Path | None = None, kallsyms: Path | None = None) -> dict:
    """{name: module or ""} for the names this kernel has (kallsyms, else the tracefs list of
    traceable functions). Looked up once per process and set of names: /proc/kallsyms has ~160 000
    lines, and reading it for every traced window cost up to 30 s each under emulation (the
    modules that define these symbols, kvm and kvm_intel/kvm_amd, are loaded before any VM runs)."""
    want = set(names)
    sources = [Path(kallsyms) if kallsyms else KALLSYMS]
    if tracefs is not None:
        sources.append(Path(tracefs) / "available_filter_functions")
    key = (frozenset(want),) + tuple((str(s),) + _stamp(s) for s in sources)
    with _probe_lock:
        if key in _symbol_cache:
            return dict(_symbol_cache[key])
    found = _read_symbols(want, sources)
    with _probe_lock:
        _symbol_cache[key] = dict(found)
    return found


def _read_symbols(want: set, sources: list[Path]) -> dict:
    found: dict = {}
    for src in sources:
        try:
            with open(src) as f:
                for line in f:
                    parts = line.split()
                    if src.name != "available_filter_functions":    # "addr type name [mod]"
                        if len(parts) < 3 or parts[1] not in ("t", "T", "w", "W"):
                            continue
                        parts = parts[2:]
                    if not parts:                                   # "name [mod]"
                        continue
                    name, mod = parts[0], parts[1].strip("[]") if len(parts) > 1 else ""
                    if name in want and name not in found:
                        found[name] = mod
        except OSError:
            continue
        if len(found) == len(want):
            break
    return found


def fastpath_symbols(tracefs: Path | None = None, kallsyms: Path | None = None) -> list[str]:
    """The WRMSR fastpath handlers (FASTPATH_SYMBOLS) this kernel has, to pass as
    ExitCounter(kprobes=...). Whether they can be probed is another question: see
    ExitCounter.probe_note."""
    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    have = kernel_symbols(FASTPATH_SYMBOLS, root, kallsyms)
    return [s for s in FASTPATH_SYMBOLS if s in have]


def kprobes_available(tracefs: Path | None = None) -> tuple[bool, str]:
    """(usable, one line): can return probes be created on this host?"""
    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    if root is None:
        return False, "tracefs is not mounted"
    if not (root / "kprobe_events").exists():
        return False, f"kprobe events not available on this kernel (no {root}/kprobe_events: CONFIG_KPROBE_EVENTS)"
    if not os.access(root / "kprobe_events", os.W_OK):
        return False, f"{root}/kprobe_events is not writable (needs root)"
    return True, "kprobe events available"


def _append(path: Path, text: str) -> None:
    """Append one definition to a dynamic-event file: O_APPEND without O_TRUNC (truncating would
    delete every other tool's probes) and without the seek to the end that Python's "a" mode
    does, which the kernel's probe-event files refuse (EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def acquire_probe(root: Path, events_file: str, sym: str, target: str) -> str | None:
    """Create (or share) the return probe exitlat_<pid>/<sym> on `target` in `events_file`
    (kprobe_events); None when done, else why not."""
    key = f"{probe_group()}/{sym}"
    with _probe_lock:
        if _probe_refs.get(key, 0) > 0:
            _probe_refs[key] += 1
            return None
        try:
            _append(root / events_file, f"r:{key} {target} ret=$retval:u32")
        except OSError as e:
            if not (root / "events" / probe_group() / sym).is_dir():
                return f"cannot create a return probe on {sym} ({e.strerror or e})"
        if not (root / "events" / probe_group() / sym).is_dir():
            return f"the return probe on {sym} did not appear in {root}/events"
        _probe_refs[key] = 1
        return None


def release_probe(root: Path, events_file: str, sym: str) -> None:
    """Drop one reference to exitlat_<pid>/<sym>; the last one removes the probe (best effort)."""
    key = f"{probe_group()}/{sym}"
    with _probe_lock:
        n = _probe_refs.get(key, 0) - 1
        if n > 0:
            _probe_refs[key] = n
            return
        _probe_refs.pop(key, None)
        try:
            _append(root / events_file, f"-:{key}")
        except OSError:
            pass


def remove_stale_probes(root: Path) -> list[str]:
    """Remove exitlat_<pid>/* kprobe events whose process is gone."""
    removed = []
    for events_file in ("kprobe_events", "uprobe_events"):
        try:
            lines = (root / events_file).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(rf"^[pr]\d*:({re.escape(PROBE_GROUP_PREFIX)}(\d+))/(\w+)\s", line)
            if not m or Path(f"/proc/{m.group(2)}").exists():
                continue
            group, ev = m.group(1), m.group(3)
            for buf in [root] + sorted((root / "instances").glob("*")):
                if (buf / "events" / group / ev).is_dir():
                    disable_event_dir(buf / "events" / group / ev)
            try:
                _append(root / events_file, f"-:{group}/{ev}")
                removed.append(f"{events_file[0]}probe {group}/{ev}")
            except OSError:
                pass
    return removed
