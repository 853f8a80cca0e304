"""What one VM run recorded (VmResult), and the tool's own commit: the data bench hands to the
bundle document (exitlat.bundle.assemble), kept apart from bench's machinery so that neither imports
the other."""

import subprocess
from dataclasses import dataclass, field

from exitlat.paths import REPO_ROOT


@dataclass
class VmResult:
    """What one VM run (one repeat) produced; partial when status != complete."""
    status: str = "complete"
    reason: str | None = None
    hello: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)    # case key -> windows.TracedWindow
    errors: list = field(default_factory=list)
    refused: dict = field(default_factory=dict)    # key -> why the guest left it out (--instr all)
    console: bytes = b""
    argv: list = field(default_factory=list)
    qemu_version: str | None = None
    kvm_stats: dict | None = None
    debugcon_bytes: int | None = None
    timings: dict = field(default_factory=dict)
    pinned: dict = field(default_factory=dict)
    tracing: str | None = None
    mem_lock: bool | None = None
    qemu_stderr: bytes = b""
    timed: dict = field(default_factory=dict)      # key -> windows.TimedWindow (cases and baselines)
    finished: dict = field(default_factory=dict)   # the guest's last event (write figures)
    tsc_backwards: dict = field(default_factory=dict)  # key -> samples whose TSC went backwards
    timelines: dict = field(default_factory=dict)  # case key -> trace.timeline.PairedExits, or why none


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{commit}-dirty" if commit and dirty else commit
    except (OSError, subprocess.SubprocessError):
        return None
