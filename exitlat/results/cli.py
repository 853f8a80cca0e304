"""What the results tasks (results, report, compare, export, import, validate, plot) call: argument
strings in, text on stdout, 0 returned; problems raise ExitlatError (one line, non-zero exit)."""

import json
import os
from pathlib import Path

from tabulate import tabulate

from .bundle import TCG_BANNER, Bundle, load_bundle, recheck_stats, resolve_bundle
from exitlat.errors import ExitlatError
from exitlat.paths import results_root


def _load(arg) -> Bundle:
    return load_bundle(resolve_bundle(arg))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def results_main(root=None) -> int:
    """List the bundles under results/ (valid ones, and one line for each broken one)."""
    root = Path(root) if root else results_root()
    if not root.is_dir():
        print(f"no results folder ({root})")
        return 0
    rows, broken = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        try:
            b = load_bundle(p)
        except ExitlatError as err:
            broken.append(f"invalid: {p.name}: {err}")
            continue
        d = b.doc
        cases = ",".join(str(c) for c in sorted({e["case"] for e in d["cases"]}))
        state = d["status"]["state"] + (" (TCG)" if b.is_tcg else " (emulated host)" if b.banner else "")
        rows.append([p.name, d["created_utc"], d["host"]["hostname"], d["host"]["cpu"].get("model_name"),
                     d["accel"], cases or "-", state])
    if rows:
        print(tabulate(rows, headers=["bundle", "created (UTC)", "host", "CPU", "accel", "cases", "status"],
                       tablefmt="simple", disable_numparse=True))
    else:
        print(f"no bundles in {root}")
    if any(r[4] == "tcg" for r in rows):
        print(f"(TCG) {TCG_BANNER}")
    for line in broken:
        print(line)
    return 0


def report_main(bundle, as_json=False) -> int:
    from .report import render_report, report_json

    b = _load(bundle)
    if as_json:
        _print_json(report_json(b))
    else:
        print(render_report(b))
    return 0


def split_bundle_args(*args) -> list[str]:
    """compare's bundle arguments: positional ones and --more, each may be comma-separated."""
    out = []
    for a in args:
        if a is None:
            continue
        for item in ([a] if isinstance(a, str) else a):
            out += [x for x in item.split(",") if x.strip()]
    return out


def compare_main(bundles: list[str], as_json=False, min_effect=None) -> int:
    from .compare import DEFAULT_MIN_EFFECT, compare, parse_min_effect, render_compare

    if len(bundles) < 2:
        raise ExitlatError("compare needs at least two bundles (e.g. invoke compare A B --more C)")
    eff = DEFAULT_MIN_EFFECT if min_effect is None else parse_min_effect(min_effect)
    res = compare([_load(x) for x in bundles], min_effect=eff)
    if as_json:
        _print_json(res)
    else:
        print(render_compare(res))
    return 0


def export_main(bundle, output=None) -> int:
    from .archive import export_bundle

    path = resolve_bundle(bundle)
    out = Path(output) if output else Path(os.getcwd()) / f"{path.name}.tar.gz"
    print(export_bundle(path, out))
    return 0


def import_main(file, output=None) -> int:
    from .archive import import_bundle

    print(import_bundle(Path(file), Path(output) if output else results_root()))
    return 0


def validate_main(bundle) -> int:
    """All load checks, then every statistic recomputed from the raw samples."""
    b = _load(bundle)
    recheck_stats(b)
    n = sum(1 for e in b.entries() if e["stats"] is not None)
    extra = f" — {b.banner}" if b.banner else ""
    print(f"ok: {b.path} (schema {b.doc['schema_version']}, {n} sample files, checksums and "
          f"statistics verified){extra}")
    return 0


def plot_main(bundle, fmt="png", output=None) -> int:
    from .plot import plot_bundle

    b = _load(bundle)
    out = Path(output) if output else Path(os.getcwd()) / "plots" / b.name
    for p in plot_bundle(b, out, fmt):
        print(p)
    if b.banner:
        print(b.banner)
    return 0
