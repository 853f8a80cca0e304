"""Readers and writers for sysfs/procfs under a root folder, so tests can use a fake tree.

Every path is written as on a real host ("/sys/...") and resolved under `root`.
"""

from __future__ import annotations

import os
from pathlib import Path


class SysFs:
    """A view of /sys, /proc and /dev under `root` ("/" on a real host)."""

    def __init__(self, root: Path | str = Path("/")):
        self.root = Path(root)

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def exists(self, p: str) -> bool:
        return self.path(p).exists()

    def read(self, p: str) -> str | None:
        """The file's text exactly as read, or None when it is missing or unreadable."""
        try:
            return self.path(p).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def value(self, p: str) -> str | None:
        """The file's text without surrounding whitespace, or None."""
        raw = self.read(p)
        return None if raw is None else raw.strip()

    def int_value(self, p: str) -> int | None:
        v = self.value(p)
        try:
            return None if v is None else int(v)
        except ValueError:
            return None

    def write(self, p: str, text: str) -> None:
        """Write `text` in one write() call, as `echo` does; OSError is left to the caller."""
        with open(self.path(p), "w") as f:
            f.write(text)

    def listdir(self, p: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(p)))
        except OSError:
            return []

    def access(self, p: str, mode: int) -> bool:
        return os.access(self.path(p), mode)


# -- CPU lists and masks --------------------------------------------------------------------------

def parse_cpulist(text: str | None, nr_cpus: int | None = None) -> set[int]:
    """Parse a kernel cpulist ("0-3,8,10-15:2/4", "all", "N"); flags such as "managed_irq" and
    unparsable parts are skipped, so a cmdline value like isolcpus=nohz,domain,2-3 works too."""
    cpus: set[int] = set()
    if not text:
        return cpus
    last = None if nr_cpus is None else nr_cpus - 1
    for part in text.strip().split(","):
        part = part.strip()
        if part == "all" and last is not None:
            cpus.update(range(last + 1))
            continue
        rng, _, group = part.partition(":")
        lo, _, hi = rng.partition("-")
        try:
            a = last if lo == "N" else int(lo)
            b = a if not hi else (last if hi == "N" else int(hi))
        except ValueError:
            continue
        if a is None or b is None or b < a:
            continue
        used, size = 1, 1
        if group:
            try:
                used, size = (int(x) for x in group.split("/"))
            except ValueError:
                continue
        cpus.update(c for c in range(a, b + 1) if (c - a) % size < used)
    return cpus


def format_cpulist(cpus) -> str:
    """{0,1,2,5} -> "0-2,5" (the kernel's own format)."""
    out, run = [], []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_cpumask(text: str | None) -> set[int]:
    """A hex cpumask as in /proc/irq/default_smp_affinity ("ff,ffffffff") -> set of cpus."""
    if not text:
        return set()
    try:
        n = int(text.strip().replace(",", ""), 16)
    except ValueError:
        return set()
    return {i for i in range(n.bit_length()) if n >> i & 1}


def format_cpumask(cpus, like: str | None = None) -> str:
    """A set of cpus as a hex mask in 32-bit comma groups, at least as many groups as `like`."""
    n = sum(1 << c for c in set(cpus))
    groups = max(len(like.strip().split(",")) if like else 1, (n.bit_length() + 31) // 32, 1)
    words = [(n >> (32 * i)) & 0xFFFFFFFF for i in reversed(range(groups))]
    return ",".join(f"{w:x}" if i == 0 else f"{w:08x}" for i, w in enumerate(words))


def selected(text: str | None) -> str | None:
    """The chosen word of a selector file: "always [madvise] never" -> "madvise"."""
    if text is None:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return text.strip() or None


# -- kernel command line ------------------------------------------------------------------------

def cmdline_params(fs: SysFs) -> dict[str, str]:
    """Kernel parameters from /proc/cmdline; words after "--" belong to init and are ignored."""
    params: dict[str, str] = {}
    for word in (fs.value("/proc/cmdline") or "").split():
        if word == "--":
            break
        key, _, val = word.partition("=")
        params[key] = val
    return params
