"""What the results tasks (results, report, compare, export, import, validate, plot) call: argument
strings in, text on stdout, 0 returned; problems raise ExitlatError (one line, non-zero exit)."""

import json
import os
import sys
from pathlib import Path

from tabulate import tabulate

from exitlat.bundle.read import Bundle, load_bundle, recheck_stats, resolve_bundle
from exitlat.bundle.format import TCG_BANNER
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
    bundles, broken, others = _scan_folder(root)
    rows = []
    for b in bundles:
        d = b.doc
        cases = ",".join(str(c) for c in sorted({e["case"] for e in d["cases"]}))
        state = d["status"]["state"] + (" (TCG)" if b.is_tcg else " (emulated host)" if b.banner else "")
        rows.append([b.name, d["created_utc"], d["host"]["hostname"], d["host"]["cpu"].get("model_name"),
                     d["accel"], cases or "-", state])
    if rows:
        print(tabulate(rows, headers=["bundle", "created (UTC)", "host", "CPU", "accel", "cases", "status"],
                       tablefmt="simple", disable_numparse=True))
    else:
        print(f"no bundles in {root}")
    if any(r[4] == "tcg" for r in rows):
        print(f"(TCG) {TCG_BANNER}")
    for name, why in broken:
        print(f"invalid: {name}: {why}")
    if others:
        print(f"not bundles (no bundle.json): {', '.join(others)}")
    return 0


def _stdout_users(as_json: bool, **files) -> bool:
    """Whether a file option is '-' (stdout); refuses two things on stdout at once."""
    users = [f"--{k}" for k, v in files.items() if v is not None and str(v) == "-"]
    if as_json:
        users.append("--json")
    if len(users) > 1:
        raise ExitlatError(f"{' and '.join(users)} would all write to stdout: give one a file")
    return any(v is not None and str(v) == "-" for v in files.values())


def _write_view(output, text: str, bundles: list[Bundle], what: str | None) -> None:
    """Write an HTML page or CSV table (never into a bundle: it is sealed by its SHA256SUMS) and
    say where on stderr (`what`), so that stdout stays the report, the JSON or the CSV itself."""
    from .csvexport import write_text

    if str(output) != "-":
        out = Path(output).resolve()
        for b in bundles:
            if out.is_relative_to(b.path.resolve()):
                raise ExitlatError(f"{output}: cannot write inside bundle {b.name} (sealed by SHA256SUMS)")
    path = write_text(output, text)
    if path is not None and what:
        print(f"{what}: {path}", file=sys.stderr)


def report_main(bundle, as_json=False, html=None, verbose=False) -> int:
    from .text import render_report, report_json

    taken = _stdout_users(as_json, html=html)
    b = _load(bundle)
    if html:
        from .html import render_page

        _write_view(html, render_page([b]), [b], "html")
    if not taken:                      # the page went to stdout: nothing else may
        _print_json(report_json(b)) if as_json else print(render_report(b, verbose))
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


def compare_main(bundles: list[str], as_json=False, min_effect=None, html=None, csv=None,
                 exact=False) -> int:
    from .compare import DEFAULT_MIN_EFFECT, compare, parse_min_effect, render_compare

    if len(bundles) < 2:
        raise ExitlatError("compare needs at least two bundles (e.g. invoke compare A B C)")
    eff = DEFAULT_MIN_EFFECT if min_effect is None else parse_min_effect(min_effect)
    taken = _stdout_users(as_json, html=html, csv=csv)
    loaded = [_load(x) for x in bundles]
    res = compare(loaded, min_effect=eff)
    if html:
        from .html import render_page

        _write_view(html, render_page(loaded, eff), loaded, "html")
    if csv:
        from .csvexport import COMPARE_COLUMNS, compare_rows, csv_text

        _write_view(csv, csv_text(COMPARE_COLUMNS, compare_rows(res), exact), loaded, "csv")
    if not taken:
        _print_json(res) if as_json else print(render_compare(res))
    return 0


EXPORT_FORMATS = ("tar.gz", "csv")


def _scan_folder(root: Path) -> tuple[list[Bundle], list[tuple[str, str]], list[str]]:
    """The folders under root: the bundles, the broken bundles (name, why), and the folders that
    are no bundle at all (neither bundle.json nor SHA256SUMS, e.g. the fleet's results/fleet/)."""
    bundles, broken, others = [], [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if not (p / "bundle.json").exists() and not (p / "SHA256SUMS").exists():
            others.append(p.name + "/")
            continue
        try:
            bundles.append(load_bundle(p))
        except ExitlatError as err:
            broken.append((p.name, str(err)))
    return bundles, broken, others


def _scan(root: Path) -> list[Bundle]:
    """Every valid bundle under root; a broken one is skipped with a warning on stderr (one bad
    folder must not hide a fleet's results, and `invoke results` lists it as invalid too)."""
    if not root.is_dir():
        raise ExitlatError(f"no results folder {root}")
    out, broken, _ = _scan_folder(root)
    for name, why in broken:
        print(f"warning: skipped {name}: {why}", file=sys.stderr)
    if not out:
        raise ExitlatError(f"no valid bundle in {root}")
    return out


def export_main(bundles=None, output=None, fmt="tar.gz", root=None, exact=False) -> int:
    """tar.gz: one bundle as a deterministic archive. csv: one table of every case of the given
    bundles (all under the results folder when none is given)."""
    bundles = list(bundles or [])
    root = Path(root) if root else None
    if fmt not in EXPORT_FORMATS:
        raise ExitlatError(f"unknown export format {fmt!r}: use tar.gz (one bundle, the default) or csv")
    if fmt == "tar.gz":
        from exitlat.bundle.archive import export_bundle

        if len(bundles) != 1:
            raise ExitlatError(f"export --format tar.gz takes exactly one bundle, got {len(bundles)} "
                               "(--format csv takes several)")
        path = resolve_bundle(bundles[0], root)
        out = Path(output) if output else Path(os.getcwd()) / f"{path.name}.tar.gz"
        print(export_bundle(path, out))
        return 0
    from .csvexport import EXPORT_COLUMNS, case_rows, csv_text

    loaded = [load_bundle(resolve_bundle(x, root)) for x in bundles] if bundles else \
        _scan(root or results_root())
    rows = [r for b in loaded for r in case_rows(b)]
    out = output or Path(os.getcwd()) / "results.csv"
    _write_view(out, csv_text(EXPORT_COLUMNS, rows, exact), loaded, None)
    if str(out) != "-":
        print(out)
    return 0


def import_main(file, output=None) -> int:
    from exitlat.bundle.archive import import_bundle

    print(import_bundle(Path(file), Path(output) if output else results_root()))
    return 0


def validate_main(bundle) -> int:
    """All load checks, then every statistic recomputed from the raw samples."""
    b = _load(bundle)
    recheck_stats(b)
    from exitlat.reference.check import check_reference

    check_reference(b.doc)
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
