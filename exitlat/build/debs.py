"""Debian binary packages read with Python alone (no ar, dpkg-deb or apt): the members of a .deb,
its control stanza and data tree, Packages-index stanzas and their dependencies; and, for
maintainers, resolving today's minbase to refresh the pins (`python3 -m exitlat.build.debs --pin-base`)."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
import urllib.request
from pathlib import Path

from exitlat.errors import ExitlatError
def _ar_members(f):
    """Yield (name, size) for each member of an `ar` archive open at its start; the caller reads
    or skips exactly `size` bytes (the padding byte is handled here)."""
    if f.read(8) != b"!<arch>\n":
        raise ExitlatError(f"{getattr(f, 'name', 'package')}: not a Debian package (no ar header)")
    while True:
        hdr = f.read(60)
        if len(hdr) < 60:
            return
        name = hdr[:16].decode().strip().rstrip("/")
        size = int(hdr[48:58].decode().strip())
        start = f.tell()
        yield name, size
        f.seek(start + size + (size & 1))


def _member_tar(deb: Path, prefix: str):
    """Open the `prefix.tar*` member (control or data) of a .deb as a streaming tarfile."""
    f = open(deb, "rb")
    for name, size in _ar_members(f):
        if name.startswith(prefix + ".tar"):
            if name.endswith(".zst"):
                f.close()
                raise ExitlatError(f"{deb.name}: {name} is zstd-compressed, which Python cannot read "
                                   "(pin a package built with xz or gzip)")
            data = f.read(size)
            f.close()
            return tarfile.open(fileobj=io.BytesIO(data), mode="r|*")
    f.close()
    raise ExitlatError(f"{deb.name}: no {prefix}.tar member")


def deb_control(deb: Path) -> str:
    """The package's control file (its Package, Version, Depends … stanza)."""
    with _member_tar(deb, "control") as tar:
        for m in tar:
            if m.name.removeprefix("./") == "control":
                return tar.extractfile(m).read().decode()
    raise ExitlatError(f"{deb.name}: no control file")


def deb_data(deb: Path):
    """The package's data.tar as a streaming tarfile (iterate it once; extractfile per member)."""
    return _member_tar(deb, "data")


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Debian control stanzas (Packages index, control files): a list of {field: value}."""
    out, cur, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            cur[key] = value.strip()
    if cur:
        out.append(cur)
    return out


def dep_names(stanza: dict) -> list[str]:
    """Depends and Pre-Depends, first alternative of each, version and arch qualifier dropped (as
    debootstrap's own resolver reads them)."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for d in stanza.get(field, "").split(","):
            d = d.split("|")[0].split("(")[0].strip().split(":")[0]
            if d:
                names.append(d)
    return names


def resolve_minbase(index: list[dict], exclude=("usrmerge",)) -> tuple[list[str], list[str]]:
    """debootstrap's minbase for bookworm, resolved as debootstrap does: required = every
    Priority: required package plus usr-is-merged, closed over Depends/Pre-Depends (first
    alternative; virtual names dropped); base = apt's closure minus required."""
    real = {s["Package"]: s for s in index}

    def close(names):
        have, todo = set(), [n for n in names if n in real]
        while todo:
            n = todo.pop()
            if n in have:
                continue
            have.add(n)
            todo += [d for d in dep_names(real[n]) if d in real and d not in exclude]
        return have

    required = close([n for n, s in real.items() if s.get("Priority") == "required"] + ["usr-is-merged"])
    base = close(["apt"]) - required
    return sorted(required), sorted(base)


def pin_base(mirror: str = "http://deb.debian.org/debian", suite: str = "bookworm",
             arch: str = "amd64") -> str:
    """The `required`, `base` and `tool` entries of base.debootstrap in pins.yaml, resolved from
    the mirror's current index (the sha256 of each package from the index)."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/main/binary-{arch}/Packages.xz"
    with urllib.request.urlopen(url, timeout=60) as r:
        index = parse_stanzas(lzma.decompress(r.read()).decode())
    by_name = {s["Package"]: s for s in index}
    required, base = resolve_minbase(index)

    def entry(name: str) -> str:
        s = by_name[name]
        source = s.get("Source", name).split(" ")[0]
        file = s["Filename"].rsplit("/", 1)[1]
        return (f"{{version: {json.dumps(s['Version'])}, source: {source}, "
                f"file: {json.dumps(file)}, sha256: {s['SHA256']}}}")

    lines = [f"    tool: {entry('debootstrap')}", "    required:"]
    lines += [f"      {n}: {entry(n)}" for n in required]
    lines += ["    base:" + ("" if base else " {}")] + [f"      {n}: {entry(n)}" for n in base]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="print the pinned package entries of base.debootstrap")
    ap.add_argument("--pin-base", action="store_true", required=True)
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--suite", default="bookworm")
    a = ap.parse_args()
    print(pin_base(a.mirror, a.suite))
