"""The private tracefs instances the counters work in: ``instances/exitlat-<pid>-<n>``.

A counter creates its own (so the global buffer's settings are never touched and several counters
can coexist), tears it down in `stop()`, and removes at the next start the instances and probes
that a killed run left behind (their pid is gone).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

from exitlat.errors import ExitlatError

from .kprobes import PROBE_GROUP_PREFIX, remove_stale_probes
from .timeline import TIMELINE_KVM_EVENTS, TIMELINE_SYSCALL_EVENTS
from .tracefs import EVENTS, disable_event_dir, find_tracefs

_seq = itertools.count()


def create_instance(root: Path) -> Path:
    """A new, empty instance of this process under `root`/instances."""
    inst = root / "instances" / f"exitlat-{os.getpid()}-{next(_seq)}"
    try:
        inst.mkdir()
    except OSError as e:
        raise ExitlatError(f"tracefs: cannot create instance {inst} ({e.strerror or e})") from None
    return inst


def teardown_instance(inst: Path) -> None:
    """Disable events, drop triggers/filters and remove the instance; best effort."""
    dirs = [inst / "events/kvm" / ev for ev in EVENTS]
    dirs += [inst / "events/kvm" / ev for ev in TIMELINE_KVM_EVENTS if ev not in EVENTS]
    dirs += [inst / "events/syscalls" / ev for ev in TIMELINE_SYSCALL_EVENTS]
    dirs += sorted(inst.glob(f"events/{PROBE_GROUP_PREFIX}*/*"))
    for d in dirs:
        if d.is_dir():
            disable_event_dir(d)
    for _ in range(50):
        try:
            inst.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def remove_stale_instances(tracefs: Path | None = None) -> list[str]:
    """Remove exitlat-<pid>-* instances and exitlat_<pid> kprobe events whose process is gone
    (left by a killed run)."""
    root = Path(tracefs) if tracefs else find_tracefs(mount=False)
    removed = []
    if root is None or not (root / "instances").is_dir():
        return removed
    for d in (root / "instances").glob("exitlat-*"):
        m = re.match(r"exitlat-(\d+)", d.name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        teardown_instance(d)
        removed.append(d.name)
    return removed + remove_stale_probes(root)
