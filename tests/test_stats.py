"""exitlat.stats.summary against numpy and exact arithmetic on fixed data."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from exitlat.stats.summary import PERCENTILES, median_ci, summarize

FIXED = {
    "ties": np.array([5, 5, 5, 7, 7, 9, 9, 9, 9, 100, 5, 5], dtype=np.uint64),
    "one": np.array([42], dtype=np.uint64),
    "two": np.array([10, 13], dtype=np.uint64),
    "all-equal": np.full(1000, 1234, dtype=np.uint64),
    "random": np.random.default_rng(7).integers(900, 40000, 5001).astype(np.uint64),
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_matches_numpy(name):
    x = FIXED[name]
    s = summarize(x, tsc_hz=None)
    f = x.astype(np.float64)
    assert s["n"] == len(x)
    assert s["min"] == int(x.min()) and s["max"] == int(x.max())
    for key, q in PERCENTILES:
        assert s[key] == pytest.approx(np.percentile(f, q), rel=1e-12, abs=1e-9), key
    assert s["mean"] == pytest.approx(np.mean(f), rel=1e-12)
    if len(x) > 1:
        assert s["stdev"] == pytest.approx(np.std(f, ddof=1), rel=1e-9, abs=1e-12)
    else:
        assert s["stdev"] is None
    assert s["mad"] == pytest.approx(np.median(np.abs(f - np.median(f))), abs=1e-9)
    assert s["ns"] is None and s["tsc_hz"] is None


def test_huge_uint64_values_exact():
    x = np.array([2**64 - 1, 2**64 - 2, 2**64 - 2, 2**63 + 3, 2**64 - 1001], dtype=np.uint64)
    s = summarize(x, tsc_hz=None)
    assert s["min"] == 2**63 + 3 and s["max"] == 2**64 - 1       # exact ints, not floats
    exact_mean = Fraction(sum(int(v) for v in x), len(x))
    assert s["mean"] == float(exact_mean)
    srt = sorted(int(v) for v in x)
    # p25: position 1.0 exactly; p1: between ranks 0 and 1, interpolated on the integer gap
    assert s["p25"] == srt[1]
    assert s["p1"] == float(srt[0] + Fraction(4, 100) * (srt[1] - srt[0]))
    f = x.astype(np.float64)
    for key, q in PERCENTILES:
        assert s[key] == pytest.approx(np.percentile(f, q), rel=1e-15)
    assert s["stdev"] > 0
    assert s["mad"] == sorted(abs(v - srt[2]) for v in srt)[2] == 1     # exact, no uint64 wrap
    assert s["median"] == srt[2] and isinstance(s["median"], int)       # order statistic kept exact


def test_huge_values_with_small_spread_keep_their_spread():
    base = 2**62
    x = np.array([base + d for d in (0, 1, 2, 3, 4)], dtype=np.uint64)
    s = summarize(x, None)
    assert s["stdev"] == pytest.approx(np.std([0, 1, 2, 3, 4], ddof=1))   # float64 of x would give 0
    assert s["mad"] == 1.0


def test_ns_conversion():
    x = np.array([1000, 2000, 3000], dtype=np.uint64)
    s = summarize(x, tsc_hz=2e9)
    assert s["tsc_hz"] == 2e9
    assert s["ns"]["median"] == 1000.0 and s["ns"]["min"] == 500.0 and s["ns"]["max"] == 1500.0
    assert s["ns"]["median_ci95"] == [v / 2 for v in s["median_ci95"]]


def test_median_ci_order_statistics():
    # n=100: the classic table gives ranks 40 and 61 (coverage 94.3%... for l=40 it is >= 95%)
    x = np.arange(1, 101, dtype=np.uint64)
    lo, hi, cov = median_ci(x)
    assert (lo, hi) == (40.0, 61.0) and 0.95 <= cov < 0.97
    # tiny n: no rank reaches 95%, so the CI is [min, max] with its real coverage
    assert median_ci(np.array([3], dtype=np.uint64)) == (3.0, 3.0, 0.0)
    assert median_ci(np.array([3, 9], dtype=np.uint64))[:2] == (3.0, 9.0)
    lo, hi, cov = median_ci(np.arange(5, dtype=np.uint64))
    assert (lo, hi) == (0.0, 4.0) and cov == pytest.approx(1 - 2 / 32)
    # large n: normal approximation, interval around the median
    big = np.sort(np.random.default_rng(3).integers(0, 10**6, 200_001).astype(np.uint64))
    lo, hi, cov = median_ci(big)
    assert lo <= np.median(big) <= hi and cov == 0.95


def test_ci_agrees_with_a_real_bootstrap():
    x = np.random.default_rng(11).gamma(4.0, 30.0, 2001).round().astype(np.uint64) + 1000
    s = summarize(x, None)
    rng = np.random.default_rng(0)
    meds = np.median(rng.choice(x, size=(2000, len(x)), replace=True), axis=1)
    b_lo, b_hi = np.percentile(meds, [2.5, 97.5])
    lo, hi = s["median_ci95"]
    width = hi - lo
    assert abs(lo - b_lo) <= 0.25 * width + 1 and abs(hi - b_hi) <= 0.25 * width + 1


def test_deterministic_and_bad_input():
    x = FIXED["random"]
    assert summarize(x, 3e9, seed=0) == summarize(x.copy(), 3e9, seed=99)
    with pytest.raises(ValueError):
        summarize(np.array([], dtype=np.uint64), None)
    with pytest.raises(ValueError):
        summarize(np.array([1, -2]), None)
    with pytest.raises(ValueError):
        summarize(np.array([1.5, 2.0]), None)


def test_ten_million_samples_bounded_cost():
    import time
    x = np.random.default_rng(1).integers(1000, 2000, 10_000_000, dtype=np.uint64)
    t = time.monotonic()
    s = summarize(x, 2e9)
    assert time.monotonic() - t < 10
    assert s["n"] == 10_000_000 and s["median_ci95"][0] <= s["median"] <= s["median_ci95"][1]


# -- bit-for-bit reproducibility -------------------------------------------------------------

def _exact_stdev(x) -> float:
    """The exact sample variance (Python integers), rounded once to float64, then IEEE sqrt."""
    v = [int(a) for a in x]
    n, s = len(v), sum(v)
    return math.sqrt((n * sum(a * a for a in v) - s * s) / (n * (n - 1)))


REPRO = {
    "wide": np.random.default_rng(5).integers(1000, 100_000, 100_001).astype(np.uint64),
    "latency": (np.random.default_rng(6).gamma(4.0, 30.0, 50_000) + 1100).round().astype(np.uint64),
    "huge": np.concatenate([np.random.default_rng(7).integers(0, 3, 500).astype(np.uint64),
                            np.random.default_rng(8).integers(2**63, 2**64 - 1, 500, dtype=np.uint64)]),
    "ties": FIXED["ties"],
}


@pytest.mark.parametrize("name", sorted(REPRO))
def test_stdev_is_the_exact_variance_rounded_once(name):
    # a float dot product of the deviations (the old way) is off in the last bits for "wide"
    x = REPRO[name]
    assert summarize(x, None)["stdev"] == _exact_stdev(x)


@pytest.mark.parametrize("name", sorted(REPRO))
def test_bit_for_bit_on_permuted_and_relaid_copies(name):
    x = REPRO[name]
    rng = np.random.default_rng(0)
    ref = json.dumps(summarize(x, 2.1e9), allow_nan=False)
    copies = [rng.permutation(x), x[::-1], x.astype(">u8"), np.ascontiguousarray(np.tile(x, 2)[len(x):])]
    for c in copies:
        again = summarize(c, 2.1e9)
        assert json.dumps(again, allow_nan=False) == ref
        assert float(again["stdev"]).hex() == float(json.loads(ref)["stdev"]).hex()
