#!/usr/bin/env python3
"""Pack an exitlat checkout into one .tar.gz for the fleet playbook to unpack on every host.

Usage: pack_source.py CHECKOUT ARCHIVE

In a git checkout the archive holds exactly the files git sees: tracked ones as they are in the
working tree (uncommitted edits included) and untracked ones that are not ignored. So build/,
results/, virtual environments and caches stay behind, and what is measured is what you have in
front of you. Outside git, everything but those folders is packed. fleet/ itself stays behind too.

Prints one line describing the source (the commit, "-dirty" when the working tree differs from
it), which the playbook puts into each bundle's label: the copy on a host has no .git of its own.
"""

import subprocess
import sys
import tarfile
from pathlib import Path

# Never packed: the playbook's own folder, which may hold your inventory (user names, become
# passwords); the hosts do not need it.
CONTROLLER_ONLY = "fleet/"

# Left out when the checkout is not a git repository (the same folders .gitignore names).
NOT_SOURCE = {".git", "build", "build-verify", "results", ".venv", "__pycache__", ".pytest_cache",
              "plots"}


def git(src: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                          check=True).stdout


def is_git_checkout(src: Path) -> bool:
    try:
        return git(src, "rev-parse", "--show-toplevel").strip() == str(src.resolve())
    except (OSError, subprocess.CalledProcessError):
        return False


def source_files(src: Path) -> list[str]:
    if is_git_checkout(src):
        listed = git(src, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = {n for n in listed.split("\0") if n}
    else:
        names = {str(p.relative_to(src)) for p in src.rglob("*")
                 if p.is_file() and not NOT_SOURCE & set(p.relative_to(src).parts)}
    # A tracked file deleted in the working tree is listed by git but is not there: skip it.
    return sorted(n for n in names if not n.startswith(CONTROLLER_ONLY)
                  and ((src / n).is_file() or (src / n).is_symlink()))


def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The controller's uid means nothing on a host; unpacked by root (become) the files are root's.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def describe(src: Path) -> str:
    if not is_git_checkout(src):
        return "not-a-git-checkout"
    commit = git(src, "rev-parse", "--short=12", "HEAD").strip()
    dirty = git(src, "status", "--porcelain").strip()
    return f"{commit}-dirty" if dirty else commit


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: pack_source.py CHECKOUT ARCHIVE", file=sys.stderr)
        return 2
    src, archive = Path(argv[0]), Path(argv[1])
    if not (src / "tasks.py").is_file() or not (src / "exitlat").is_dir():
        print(f"error: {src}: not an exitlat checkout (no tasks.py and exitlat/)", file=sys.stderr)
        return 2
    files = source_files(src)
    with tarfile.open(archive, "w:gz") as tar:
        for name in files:
            tar.add(src / name, arcname=name, recursive=False, filter=owned_by_root)
    print(describe(src))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
