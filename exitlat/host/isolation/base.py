"""The item shape shared by doctor and isolate, after pyperf's `system tune` operations.

`available()` says whether an item applies on this host, `show()` reads and judges it, and
`plan()` lists the writes that would tune it: pyperf's write(), split into plan and apply so
that --dry-run, the state file and the real run share one code path (see tune.py).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .host import Topology
from .sysfs import SysFs, selected

PASS, WARN, FAIL, INFO = "pass", "warn", "fail", "info"


@dataclass
class Check:
    name: str
    status: str
    value: Any
    expected: Any
    fix: str | None
    detail: str  # one human line; the bundle report prints it

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Change:
    """One reversible step: a file write or a service stop, with what restores it."""
    item: str
    kind: str  # "file", "service" or "note" (cannot be done here; printed only)
    target: str  # a path as on the host, or a service name
    old: str | None  # the text read before (exact), or "running" for a service
    new: str  # the text written, or "stopped"
    restore: str | None  # the text written back on revert (None: nothing to restore)
    expected_failure: bool = False  # e.g. managed IRQs refuse new affinities: skip quietly

    def describe(self) -> str:
        if self.kind == "service":
            return f"systemctl stop {self.target} (running now; revert starts it)"
        if self.kind == "note":
            return self.new
        old = "?" if self.old is None else (selected(self.old) if "[" in self.old else self.old.strip())
        return f"{self.target}: {old} -> {self.new.strip()}"


@dataclass
class Host:
    """What items need: the file view, the core, and the host's helpers (injected in tests)."""
    fs: SysFs
    core: int
    which: Callable[[str], str | None] = shutil.which
    docker_ping: Callable[[], str] | None = None  # returns a version, raises when unreachable
    topo: Topology = field(init=False)

    def __post_init__(self):
        self.topo = Topology(self.fs)

    @property
    def isolate_hint(self) -> str:
        return f"sudo invoke isolate --core {self.core}"


class Item:
    name = ""
    tunable = False  # isolate can change it at run time

    def __init__(self, host: Host):
        self.host, self.fs, self.core, self.topo = host, host.fs, host.core, host.topo

    def available(self) -> bool:
        return True

    def show(self) -> Check:
        raise NotImplementedError

    def plan(self) -> list[Change]:
        return []

    def check(self, status, value, expected, detail, fix=None) -> Check:
        return Check(self.name, status, value, expected, None if status in (PASS, INFO) else fix, detail)

    def file_change(self, path: str, new: str, selector: bool = False, **kw) -> Change:
        old = self.fs.read(path)
        restore = None if old is None else (selected(old) + "\n" if selector else old)
        return Change(self.name, "file", path, old, new + "\n", restore, **kw)
