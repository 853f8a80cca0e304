"""Where things live: the repository root, the build folder, the results folder, the source cache."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_root() -> Path:
    return Path(os.environ.get("EXITLAT_BUILD_DIR", REPO_ROOT / "build"))


def results_root() -> Path:
    return Path(os.environ.get("EXITLAT_RESULTS_DIR", REPO_ROOT / "results"))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("EXITLAT_CACHE_DIR", Path(base) / "exitlat"))
