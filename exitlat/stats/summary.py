"""Summary statistics of raw latency samples (TSC cycles), exact for any uint64 value.

Why not just numpy: np.percentile/np.mean cast uint64 to float64 first, which loses the low bits
of values above 2**53 and makes sums of huge values round. Here every order statistic is taken from
the integer array, interpolation is done on integer differences, and the mean/stdev are computed
from exact integer sums (of the offsets from the minimum and of their squares), so each is the
float64 nearest the true value.

Reproducible to the last bit: no statistic depends on the order of the samples, on BLAS or on the
number of threads. Integer sums are exact whatever order numpy adds in; the variance is an exact
rational, rounded once to float64 (Python's int / int), and its square root is IEEE's correctly
rounded one; the percentiles use IEEE operations on the sorted data only. So `invoke validate`,
which recomputes the statistics on another machine and compares them exactly, sees the same
numbers.

Percentiles use numpy's default ("linear") definition, so they match np.percentile on data whose
values a float64 holds exactly. stdev is the sample standard deviation (ddof=1; null for n < 2).
MAD is the raw median absolute deviation from the median (not scaled by 1.4826).

median_ci95 is the distribution-free order-statistic (binomial) 95% confidence interval of the
median: [X_(l), X_(n+1-l)] with l the largest rank such that P(Binomial(n, 1/2) < l) <= 2.5%.
It is what a percentile bootstrap of the median converges to, but it is exact, needs no random
numbers (the `seed` argument is accepted for API stability and unused) and costs one sort, so it is
cheap for 10M samples. Exact binomial tails for n <= 1000, the normal approximation above. For
n < 6 no rank reaches 95%, so the interval is [min, max] and `median_ci95_coverage` says how much
it really covers.

median_ci95 describes ONE VM run: it treats consecutive samples as independent and knows nothing
of the variation between VM runs (a fresh VM gets a new memory layout, timer phase, ...), which is
usually larger. Across VM runs, exitlat.report.vmruns gives the headline median and its interval; see
docs/statistics.md.
"""

import functools
import math

import numpy as np

PERCENTILES = (("p1", 1), ("p5", 5), ("p25", 25), ("median", 50), ("p75", 75), ("p90", 90),
               ("p95", 95), ("p99", 99), ("p99_9", 99.9))
# Keys of a summary that are latencies (converted to ns); "n" and the coverage are not.
VALUE_KEYS = ("min",) + tuple(k for k, _ in PERCENTILES) + ("max", "mean", "stdev", "mad")
CI_METHOD = "order-statistic (binomial), 95%"
_EXACT_BINOMIAL_MAX_N = 1000


def _exact_sum(d: np.ndarray) -> int:
    """Exact integer sum of a uint64 array: split into 32-bit halves so no partial sum overflows
    (each half-sum is < 2**32 * n, fine up to 4e9 samples)."""
    lo = int(np.sum(d & np.uint64(0xFFFFFFFF), dtype=np.uint64))
    hi = int(np.sum(d >> np.uint64(32), dtype=np.uint64))
    return (hi << 32) + lo


def _exact_sum_of_squares(d: np.ndarray) -> int:
    """Exact sum of d**2 for a uint64 array: with d = a * 2**32 + b (a, b < 2**32) every product
    a*a, a*b, b*b fits in uint64, and each of their sums is exact (_exact_sum)."""
    mask = np.uint64(0xFFFFFFFF)
    b = d & mask
    total = _exact_sum(b * b)
    a = d >> np.uint64(32)
    if a.any():                          # only for offsets of 2**32 cycles and more
        total += (_exact_sum(a * a) << 64) + (_exact_sum(a * b) << 33)
    return total


def percentile(s: np.ndarray, q: float) -> float:
    """numpy's 'linear' percentile of sorted uint64 data, interpolating on the integer gap."""
    n = len(s)
    pos = (n - 1) * q / 100.0
    i = int(math.floor(pos))
    frac = pos - i
    lo = int(s[i])
    if frac == 0 or i + 1 >= n:
        return lo                      # an order statistic: kept as an exact int
    hi = int(s[i + 1])
    return float(lo + (hi - lo) * frac)


@functools.lru_cache(maxsize=256)
def _binom_half_cdf_rank(n: int) -> tuple[int, float]:
    """(l, coverage): the largest 1-based rank l with P(Bin(n, .5) <= l-1) <= 0.025, or (1, cov)
    when even [min, max] covers less than 95%."""
    if n <= _EXACT_BINOMIAL_MAX_N:
        total = 2 ** n
        cum = 0
        l = 0
        for k in range(0, n // 2 + 1):
            nxt = cum + math.comb(n, k)
            if nxt * 40 > total:          # P(B <= k) > 0.025: rank k+1 is one too far
                break
            cum, l = nxt, k + 1           # P(B <= l-1) = cum/total <= 0.025
        if l == 0:
            return 1, 1.0 - 2 / total
        return l, 1.0 - (2 * cum) / total
    half = 1.959963984540054 * math.sqrt(n) / 2.0
    l = max(1, int(math.floor(n / 2.0 - half)))
    return l, 0.95


def median_ci(sorted_samples: np.ndarray) -> tuple[float, float, float]:
    """(lo, hi, coverage) of the median from sorted data; see the module docstring."""
    n = len(sorted_samples)
    l, cov = _binom_half_cdf_rank(n)
    u = n + 1 - l
    return int(sorted_samples[l - 1]), int(sorted_samples[u - 1]), cov


def _mad(d: np.ndarray):
    """Median absolute deviation of sorted offsets d, in integers so huge values stay exact. The
    median of d is m or m + 0.5; in the second case deviations are doubled to stay integral."""
    n = len(d)
    m = int(d[(n - 1) // 2])
    half = n % 2 == 0 and int(d[n // 2]) != m
    if half and int(d[-1]) >= 2**62:
        # would overflow when doubled: float is the best we can do for such a spread
        mid = (m + int(d[n // 2])) / 2
        return float(np.median(np.abs(d.astype(np.float64) - mid)))
    if half:
        dd = d * np.uint64(2)
        c = np.uint64(m + int(d[n // 2]))             # 2 * median
        dev = np.where(dd >= c, dd - c, c - dd)
        v = percentile(np.sort(dev), 50)
        return v / 2
    c = np.uint64(m)
    dev = np.sort(np.where(d >= c, d - c, c - d))
    return percentile(dev, 50)


def _to_ns(value, tsc_hz: float):
    return None if value is None else float(value) * 1e9 / tsc_hz


def as_cycles(samples) -> np.ndarray:
    """The samples as a one-dimensional uint64 array of cycle counts, or ValueError saying why not."""
    a = np.asarray(samples)
    if a.ndim != 1:
        raise ValueError(f"samples must be one-dimensional, got shape {a.shape}")
    if a.size and a.dtype.kind not in "ui":
        raise ValueError(f"samples must be integers (TSC cycles), got {a.dtype}")
    if a.size and a.dtype.kind == "i" and int(a.min()) < 0:
        raise ValueError("samples must not be negative")
    return a.astype(np.uint64, copy=False)


def summarize(samples: np.ndarray, tsc_hz: float | None, seed: int = 0) -> dict:
    """Statistics of one case's raw samples in cycles, and in ns when the TSC rate is known."""
    del seed  # kept for API stability: the CI needs no randomness (module docstring)
    s = np.sort(as_cycles(samples))
    n = int(s.size)
    if n == 0:
        raise ValueError("no samples to summarize")
    mn, mx = int(s[0]), int(s[-1])
    d = s - np.uint64(mn)                          # exact offsets from the minimum
    total_off = _exact_sum(d)
    out: dict = {"n": n, "min": mn}
    for key, q in PERCENTILES:
        out[key] = percentile(s, q)
    out["max"] = mx
    out["mean"] = (mn * n + total_off) / n        # int / int: correctly rounded
    if n > 1:
        # sample variance = (n * sum(d^2) - sum(d)^2) / (n (n-1)), exact in integers
        num = n * _exact_sum_of_squares(d) - total_off * total_off
        # int / int is correctly rounded in Python and IEEE sqrt is too: no BLAS, no summation
        # order, the same float on every machine (and the value older exitlat versions stored
        # whenever their float dot product was exact enough)
        out["stdev"] = math.sqrt(num / (n * (n - 1)))
    else:
        out["stdev"] = None
    out["mad"] = _mad(d)
    lo, hi, cov = median_ci(s)
    out["median_ci95"] = [lo, hi]
    out["median_ci95_coverage"] = round(cov, 6)
    out["ci_method"] = CI_METHOD
    out["tsc_hz"] = float(tsc_hz) if tsc_hz else None
    if tsc_hz:
        ns = {k: _to_ns(out[k], tsc_hz) for k in VALUE_KEYS}
        ns["median_ci95"] = [_to_ns(lo, tsc_hz), _to_ns(hi, tsc_hz)]
        out["ns"] = ns
    else:
        out["ns"] = None
    return out
