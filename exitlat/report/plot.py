"""`invoke plot`: per entry a histogram and a CDF of its samples, plus one overview figure, with
cycles on the bottom axis and ns on the top one (when the TSC rate is known), and, for bundles
whose cases carry a decomposition, one stacked bar per case: where the traced window's median
round trip goes (exitlat/stats/decompose.py).

Plots are written outside the bundle (a bundle is sealed by its SHA256SUMS). The histogram is
clipped at p99 so the body stays readable; the CDF keeps the whole range on a log axis."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from exitlat.bundle.read import Bundle  # noqa: E402
from exitlat.errors import ExitlatError  # noqa: E402

_CDF_POINTS = 4000  # quantiles drawn per CDF: enough for the eye, cheap for 10M samples


def _ns_axis(ax, hz: float | None):
    if hz:
        k = 1e9 / hz
        sec = ax.secondary_xaxis("top", functions=(lambda c: c * k, lambda ns: ns / k))
        sec.set_xlabel("ns")


def _cdf_points(s: np.ndarray):
    s = np.sort(s)
    idx = np.unique(np.linspace(0, len(s) - 1, min(len(s), _CDF_POINTS)).astype(np.int64))
    return s[idx].astype(np.float64), (idx + 1) / len(s)


def _title(b: Bundle, text: str) -> str:
    return f"{text}\n{b.banner}" if b.banner else text


def _entry_title(e: dict) -> str:
    if "case" in e:
        return (f"{e['key']}: case {e['case']}, {e['flow']}, {e['instruction']}, "
                f"expected path {e['expected_path']}, verification {e['verification']['status']}")
    return f"{e['key']}: baseline {e['name']} ({e['flow']})"


def plot_entry(b: Bundle, e: dict, path: Path) -> None:
    s = b.samples(e["key"])
    st = e["stats"]
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    hi = max(st["p99"], st["min"] + 1)
    body = s[s <= hi]
    # integer-aligned bins: cycle counts are integers, uneven bins would draw a comb pattern
    width = max(1, int(np.ceil((hi - st["min"] + 1) / 200)))
    bins = np.arange(st["min"] - 0.5, hi + width + 0.5, width)
    ax_h.hist(body.astype(np.float64), bins=bins, color="#3b75af")
    ax_h.axvline(st["median"], color="k", ls="--", lw=1, label=f"median {st['median']:,.0f}")
    ax_h.axvline(st["p99"], color="#c44", ls=":", lw=1, label=f"p99 {st['p99']:,.0f}")
    ax_h.set_xlabel("cycles (TSC)")
    ax_h.set_ylabel("iterations")
    ax_h.set_title(f"histogram up to p99 ({len(s) - len(body)} above not shown)", fontsize=9)
    ax_h.legend(fontsize=8)
    _ns_axis(ax_h, st["tsc_hz"])
    x, y = _cdf_points(s)
    ax_c.plot(x, y, color="#3b75af", drawstyle="steps-post")
    ax_c.set_xscale("log")
    ax_c.set_xlabel("cycles (TSC, log)")
    ax_c.set_ylabel("fraction of iterations ≤ x")
    ax_c.set_ylim(0, 1.005)
    ax_c.grid(True, which="both", alpha=0.3)
    ax_c.set_title(f"CDF, n={st['n']:,}", fontsize=9)
    _ns_axis(ax_c, st["tsc_hz"])
    fig.suptitle(_title(b, _entry_title(e)), fontsize=10, color="#b00" if b.banner else "k")
    fig.savefig(path)
    plt.close(fig)


def plot_overview(b: Bundle, path: Path) -> None:
    es = [e for e in b.entries() if e["stats"] is not None]
    fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)
    med = np.array([e["stats"]["median"] for e in es])
    lo = med - np.array([e["stats"]["p1"] for e in es])
    hi = np.array([e["stats"]["p99"] for e in es]) - med
    ax_m.barh(range(len(es)), med, xerr=[lo, hi], color="#3b75af", capsize=3)
    ax_m.set_yticks(range(len(es)), [e["key"] for e in es], fontsize=8)
    ax_m.invert_yaxis()
    ax_m.set_xscale("log")
    ax_m.set_xlabel("median cycles (TSC, log); whiskers p1–p99")
    _ns_axis(ax_m, b.tsc_hz)
    for e in es:
        x, y = _cdf_points(b.samples(e["key"]))
        ax_c.plot(x, y, drawstyle="steps-post", label=e["key"], lw=1)
    ax_c.set_xscale("log")
    ax_c.set_xlabel("cycles (TSC, log)")
    ax_c.set_ylabel("fraction of iterations ≤ x")
    ax_c.grid(True, which="both", alpha=0.3)
    ax_c.legend(fontsize=7, ncol=2)
    _ns_axis(ax_c, b.tsc_hz)
    fig.suptitle(_title(b, f"{b.name} — {b.doc['host']['hostname']}, {b.doc['accel'].upper()}, "
                 f"{b.doc['status']['state']}"), fontsize=10, color="#b00" if b.banner else "k")
    fig.savefig(path)
    plt.close(fig)


# One colour per stacked part (exitlat.decompose.components labels).
_PART_COLORS = {
    "guest code (same-mode baseline)": "#c9c9c9",
    "VM exit + entry, tracing": "#e8a33d",
    "VM exit + entry, guest code, tracing": "#f0c27a",
    "KVM": "#2f5f8f",
    "KVM handler": "#3b75af",
    "KVM_RUN return + re-entry": "#8fb6dc",
    "QEMU": "#5a9e5a",
}


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def plot_decomposition(b: Bundle, path: Path) -> None:
    """One stacked bar per case: the traced window's guest median split into the remainder (VM
    exit + entry and tracing; the same-mode baseline's guest code below it when known), KVM and
    QEMU. A black tick marks the timed (untraced) median, so the tracing overhead is visible
    beside the remainder; cases that were not decomposed show their reason instead of a bar."""
    from exitlat.stats.decompose import components, of_case

    cases = [e for e in b.doc.get("cases", []) if of_case(e) is not None]
    if not cases:
        raise ExitlatError(f"{b.name}: no case has a decomposition")
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(cases) + 3), 6), constrained_layout=True)
    seen: set = set()
    top = 0.0
    for x, e in enumerate(cases):
        d = of_case(e)
        parts = components(d)
        bottom = 0.0
        for label, v in parts:
            v = max(0.0, float(v))
            ax.bar(x, v, bottom=bottom, width=0.6, color=_PART_COLORS.get(label, "#999"),
                   edgecolor="white", label=None if label in seen else label)
            seen.add(label)
            bottom += v
        timed = (e.get("stats") or {}).get("median")
        if parts:
            top = max(top, bottom)
            over = d.get("tracing_overhead_cycles")
            note = f"{bottom:,.0f}" + (f"\n(tracing {over:+,.0f})" if over is not None else "")
            ax.text(x, bottom, note, ha="center", va="bottom", fontsize=7)
        if timed is not None:
            top = max(top, float(timed))
            ax.plot([x - 0.34, x + 0.34], [timed, timed], color="k", lw=1.5,
                    label=None if "timed" in seen else "timed-window median (no tracing)")
            seen.add("timed")
        if not parts:
            ax.text(x, float(timed or 0) * 1.03, _wrap(f"{d.get('status')}: {d.get('reason')}", 22),
                    ha="center", va="bottom", fontsize=7, color="#b00")
    ax.set_xticks(range(len(cases)), [f"{e['key']}\n{e['instruction']} ({e['expected_path']})"
                                      for e in cases], fontsize=8)
    ax.set_ylabel("cycles (TSC): traced-window medians")
    ax.set_ylim(0, (top or 1) * 1.18)
    ax.grid(True, axis="y", alpha=0.3)
    if seen:
        ax.legend(fontsize=7, loc="upper left")
    hz = b.tsc_hz
    if hz:
        k = 1e9 / hz
        sec = ax.secondary_yaxis("right", functions=(lambda c: c * k, lambda ns: ns / k))
        sec.set_ylabel("ns")
    fig.suptitle(_title(b, f"{b.name}\nwhere the cycles of one exit go (traced window; medians "
                           "do not add exactly)"), fontsize=10, color="#b00" if b.banner else "k")
    fig.savefig(path)
    plt.close(fig)


def plot_bundle(b: Bundle, out_dir: Path, fmt: str = "png") -> list[Path]:
    if fmt not in ("png", "svg"):
        raise ExitlatError(f"unknown plot format {fmt!r}: use png or svg")
    out_dir = Path(out_dir)
    if out_dir.resolve().is_relative_to(b.path.resolve()):
        raise ExitlatError(f"plots cannot go inside the bundle ({out_dir}): it is sealed by SHA256SUMS")
    es = [e for e in b.entries() if e["stats"] is not None]
    if not es:
        raise ExitlatError(f"{b.name}: no samples to plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for e in es:
        p = out_dir / f"{e['key']}.{fmt}"
        plot_entry(b, e, p)
        written.append(p)
    p = out_dir / f"overview.{fmt}"
    plot_overview(b, p)
    written.append(p)
    from exitlat.stats.decompose import of_case

    if any(of_case(e) is not None for e in b.doc.get("cases", [])):
        p = out_dir / f"decomposition.{fmt}"
        plot_decomposition(b, p)
        written.append(p)
    return written
