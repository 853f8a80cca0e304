"""Figures for the HTML pages, as inline SVG text: per case a histogram (up to the largest p99)
and a CDF (logit axis, up to the largest p99.9) of every compared bundle's samples, overlaid, one
colour per bundle. A bundle's VM runs are pooled for the picture (the numbers in the tables are the
across-VM ones). Text stays text (svg.fonttype none), ids are salted per figure so that several
figures can live in one page, and nothing in the SVG refers outside it."""

import io
import re

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from exitlat.bundle.read import Bundle  # noqa: E402

_HIST_BINS = 90
_CDF_POINTS = 300          # quantiles per curve: smooth to the eye, small in the page
_LEGEND_MAX = 12
_CDF_LOW, _CDF_HIGH = 0.005, 0.9995
_CDF_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999)           # more bundles: the page's bundle table is the legend


def palette(n: int) -> list[str]:
    """One colour per bundle, the same in every figure and table of a page."""
    if n <= 10:
        cmap, xs = plt.get_cmap("tab10"), range(n)
    elif n <= 20:
        cmap, xs = plt.get_cmap("tab20"), range(n)
    else:
        cmap, xs = plt.get_cmap("turbo"), np.linspace(0.05, 0.95, n)
    return [matplotlib.colors.to_hex(cmap(x)) for x in xs]


def _plain(text: str) -> str:
    """Text for matplotlib as it is: a '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def _probabilities() -> np.ndarray:
    body = np.linspace(0.0, 0.99, _CDF_POINTS - 60)
    tail = 1.0 - np.logspace(-2, -5, 60)
    return np.concatenate([body, tail])


def _pooled(b: Bundle, keys: list[str]) -> np.ndarray:
    parts = [b.samples(k) for k in keys]
    parts = [p for p in parts if p.size]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _edges(lo: float, hi: float, integer: bool, log: bool) -> np.ndarray:
    if log:
        return np.geomspace(max(lo, 1e-9), hi, _HIST_BINS + 1)
    if integer:        # integer-aligned bins: cycle counts are integers (no comb pattern)
        width = max(1, int(np.ceil((hi - lo + 1) / _HIST_BINS)))
        return np.arange(lo - 0.5, hi + width + 0.5, width)
    return np.linspace(lo, hi, _HIST_BINS + 1)


def _svg_text(fig, salt: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"exitlat-{salt}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]                                    # no XML prolog in HTML
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)
    head_end = svg.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", svg[:head_end])   # the page sizes it
    return head + ' class="figure" role="img"' + svg[head_end:]


def case_figure(series: list[dict], unit: str, salt: str, warning: str | None = None) -> str:
    """series: one per bundle with label, color, bundle, keys (its entries of this case) and
    scale (multiplies cycles into `unit`); warning: a red line over the figure (TCG, emulated
    host), which stays with the picture when it is copied out of the page. The SVG as text."""
    stats = [(s, st) for s in series for k in s["keys"]
             for st in [s["bundle"].entry(k)["stats"]] if st is not None]
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(12, 3.9))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.86 if warning else 0.92,
                        wspace=0.18)                   # fixed margins: cheaper than a layout engine
    if warning:
        fig.suptitle(_plain(warning), color="#b00020", fontsize=11, fontweight="bold")
    if not stats:
        ax_h.text(0.5, 0.5, "no samples", ha="center", transform=ax_h.transAxes)
        ax_c.set_axis_off()
        return _svg_text(fig, salt)
    lo = min(float(st["min"]) * s["scale"] for s, st in stats)
    hi = max(float(st["p99"]) * s["scale"] for s, st in stats)
    hi = max(hi, lo + 1)
    top = max(max(float(st["p99_9"]) * s["scale"] for s, st in stats), hi)
    log_hist = lo > 0 and hi / lo > 20          # e.g. TCG beside KVM: a linear axis hides one
    log_cdf = lo > 0 and top / lo > 4
    edges = _edges(lo, hi, integer=unit == "cycles" and not log_hist, log=log_hist)
    probs = _probabilities()
    few = len(series) <= _LEGEND_MAX
    for s in series:
        raw = _pooled(s["bundle"], s["keys"])
        if raw.size == 0:
            continue
        x = raw.astype(np.float64) * s["scale"] if s["scale"] != 1.0 else raw
        counts, _ = np.histogram(x, bins=edges)
        ax_h.stairs(counts / raw.size, edges, color=s["color"], lw=1.3, label=_plain(s["label"]))
        xs = np.sort(x)
        idx = np.minimum((probs * (xs.size - 1)).round().astype(np.int64), xs.size - 1)
        ax_c.plot(np.append(xs[idx], xs[-1]).astype(np.float64), np.append(probs, 1.0),
                  drawstyle="steps-post", color=s["color"], lw=1.3, label=_plain(s["label"]))
        if few and s.get("median") is not None:
            ax_h.axvline(s["median"], color=s["color"], ls="--", lw=0.8)
    what = "cycles (TSC)" if unit == "cycles" else "ns"
    for ax, log in ((ax_h, log_hist), (ax_c, log_cdf)):
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(what + (", log" if log else ""))
        ax.grid(True, alpha=0.3)
    ax_h.set_ylabel("fraction of iterations")
    ax_h.set_title("histogram up to the largest p99" + (" (dashed: headline medians)" if few else ""),
                   fontsize=9)
    # a logit axis spreads the body (10-90%) and the tail (99-99.99%) alike
    ax_c.set_yscale("logit")
    ax_c.set_ylim(_CDF_LOW, _CDF_HIGH)
    ax_c.set_yticks(_CDF_TICKS, [f"{100 * p:g}%" for p in _CDF_TICKS])
    ax_c.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_c.set_xlim(lo * 0.98, top * 1.02)
    ax_c.set_ylabel("fraction of iterations ≤ x")
    ax_c.set_title("CDF up to the largest p99.9 (the tables give p99.9 and max)", fontsize=9)
    if few:
        ax_c.legend(fontsize=8, loc="lower right")
    return _svg_text(fig, salt)
