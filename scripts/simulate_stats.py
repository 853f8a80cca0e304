#!/usr/bin/env python3
"""Check exitlat's statistics on simulated VM runs whose true medians are known.

    python3 scripts/simulate_stats.py [--trials 2000] [--samples 2000] [--vm-sd 0.01] [--seed 1]
    python3 scripts/simulate_stats.py --constants

Each simulated VM run is one `--repeat` of one case: its samples are
    cycles = mu * exp(b + u_t), rounded, plus rare spikes,
where b is the VM's own offset (a fresh VM: new memory layout, timer phase, ...; normal with sd
1%, or Student t(3) scaled to sd 1% for heavy tails), u_t is AR(1) on log-cycles (phi 0.9, marginal
sd 3%: consecutive samples of one VM are strongly correlated) and 0.2% of samples get an
exponential spike of mean 5 * mu (interrupts, host interference). Each run is reduced to the same
per-VM statistics exitlat stores (median, order-statistic CI, p99, max, n; checked against
exitlat.stats.summarize) and goes through the real exitlat.vmstats.combine_runs and
exitlat.compare.ratio_cell.

Prints: the coverage of the headline's 95% CI for R = 3..10 (and of the old within-VM interval),
the false-positive rate of compare on A/A pairs (R = 3 and 5; with the default 1% minimum effect
and with none; and the old rule), and the power for a known 3% and 5% difference. Figures only,
not a test; docs/statistics.md quotes them. --constants recomputes the tables in exitlat/report/vmruns.py
(t quantiles, c_R) instead.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exitlat.report.compare import ratio_cell  # noqa: E402
from exitlat.stats.summary import _binom_half_cdf_rank, summarize  # noqa: E402
from exitlat.report.vmruns import _C_MEDIAN, DEFAULT_MIN_EFFECT, combine_runs, t975  # noqa: E402

MU = 1150.0            # cycles: a KVM-handled exit
VM_SD = 0.01           # sd of log VM medians between VM runs
PHI = 0.9              # AR(1) coefficient of log-cycles within a run
WITHIN_SD = 0.03       # marginal sd of log-cycles within a run
SPIKE_P, SPIKE_MEAN = 0.002, 5.0


def true_median(mu: float) -> float:
    """The configuration's median: the per-VM distribution at b = 0 (spikes only push samples up,
    so the median is the body's 0.5 / (1 - p) quantile)."""
    q = 0.5 / (1 - SPIKE_P)
    z = _norm_ppf(q)
    return mu * math.exp(WITHIN_SD * z)


def _norm_ppf(p: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return hi


def vm_offsets(rng, shape, heavy: bool) -> np.ndarray:
    if heavy:
        return rng.standard_t(3, shape) * (VM_SD / math.sqrt(3.0))
    return rng.normal(0.0, VM_SD, shape)


def simulate_runs(rng, n_vms: int, n: int, mu, heavy: bool) -> np.ndarray:
    """(n_vms, n) sorted uint64 samples of n_vms independent VM runs; mu scalar or per-VM array."""
    b = vm_offsets(rng, n_vms, heavy)
    innov_sd = WITHIN_SD * math.sqrt(1 - PHI * PHI)
    u = np.empty((n_vms, n))
    u[:, 0] = rng.normal(0.0, WITHIN_SD, n_vms)
    eps = rng.normal(0.0, innov_sd, (n_vms, n))
    for t in range(1, n):
        u[:, t] = PHI * u[:, t - 1] + eps[:, t]
    mu = np.broadcast_to(np.asarray(mu, dtype=float), (n_vms,))
    x = mu[:, None] * np.exp(b[:, None] + u)
    spikes = rng.random((n_vms, n)) < SPIKE_P
    x[spikes] += rng.exponential(SPIKE_MEAN * MU, int(spikes.sum()))
    return np.sort(np.rint(x).astype(np.uint64), axis=1)


def per_vm_stats(s: np.ndarray) -> list[dict]:
    """What exitlat.stats.summarize stores, for each row of sorted samples, vectorized."""
    n = s.shape[1]
    l, _ = _binom_half_cdf_rank(n)

    def pct(q):
        pos = (n - 1) * q / 100.0
        i = int(math.floor(pos))
        frac = pos - i
        lo = s[:, i].astype(np.int64)
        if frac == 0 or i + 1 >= n:
            return lo.astype(float)
        return lo + (s[:, i + 1].astype(np.int64) - lo) * frac

    med, p99 = pct(50), pct(99)
    lo, hi, mx = s[:, l - 1], s[:, n - l], s[:, -1]
    return [{"n": n, "median": float(med[k]), "median_ci95": [int(lo[k]), int(hi[k])],
             "p99": float(p99[k]), "max": int(mx[k])} for k in range(s.shape[0])]


def check_against_summarize(rng, n: int) -> None:
    s = simulate_runs(rng, 3, n, MU, False)
    for row, st in zip(s, per_vm_stats(s)):
        ref = summarize(row, None)
        for k in ("median", "median_ci95", "p99", "max", "n"):
            assert ref[k] == st[k] or (k == "p99" and abs(ref[k] - st[k]) < 1e-9), (k, ref[k], st[k])


def runs_of(rng, trials: int, r: int, n: int, mu, heavy: bool) -> list[list[dict]]:
    """trials groups of r VM runs each (simulated in chunks to bound memory)."""
    stats, left = [], trials * r
    while left:
        k = min(left, 4000)
        stats += per_vm_stats(simulate_runs(rng, k, n, mu, heavy))
        left -= k
    return [stats[i * r:(i + 1) * r] for i in range(trials)]


def coverage(rng, trials, n, heavy):
    truth = true_median(MU)
    rows = []
    for r in range(3, 11):
        hit = width = old_hit = 0
        for runs in runs_of(rng, trials, r, n, MU, heavy):
            s = combine_runs(runs)
            lo, hi = s["ci95"]
            hit += lo <= truth <= hi
            width += (hi - lo) / 2 / s["median"]
            lo0, hi0 = runs[0]["median_ci95"]          # the old, within-VM interval of one run
            old_hit += lo0 <= truth <= hi0
        rows.append((r, hit / trials, width / trials, old_hit / trials))
    return rows


def old_rule(ra: list[dict], rb: list[dict]) -> list[bool]:
    """Before: repeat i of A against repeat i of B, '*' when the within-VM CIs do not overlap."""
    return [a["median_ci95"][1] < b["median_ci95"][0] or b["median_ci95"][1] < a["median_ci95"][0]
            for a, b in zip(ra, rb)]


def pairs(rng, trials, r, n, ratio, heavy):
    """Significance figures for `trials` A/B pairs of R runs each, B's true median ratio × A's."""
    a_runs = runs_of(rng, trials, r, n, MU, heavy)
    b_runs = runs_of(rng, trials, r, n, MU * ratio, heavy)
    sig = sig0 = covered = 0
    old = []
    for ra, rb in zip(a_runs, b_runs):
        sa, sb = combine_runs(ra), combine_runs(rb)
        c = ratio_cell(sa, sb, min_effect=DEFAULT_MIN_EFFECT)
        sig += c["significant"]
        lo, hi = c["ratio_ci95"]
        sig0 += lo > 1 or hi < 1
        covered += lo <= ratio <= hi
        old += old_rule(ra, rb)
    return sig / trials, sig0 / trials, covered / trials, sum(old) / len(old)


def constants() -> None:
    """Recompute vmstats' tables: c_R by numerical integration of order-statistic densities, t
    quantiles by bisection on Student's t CDF (regularized incomplete beta)."""
    x = np.linspace(-9, 9, 36001)
    dx = x[1] - x[0]
    phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    fact = math.factorial

    def var_median(r):
        if r == 1:
            return 1.0
        if r % 2:
            k = (r - 1) // 2
            f = r * math.comb(r - 1, k) * cdf ** k * (1 - cdf) ** k * phi
            return float(np.sum(x * x * f) * dx)
        k = r // 2
        fk = fact(r) / (fact(k - 1) * fact(r - k)) * cdf ** (k - 1) * (1 - cdf) ** (r - k) * phi
        ek2 = float(np.sum(x * x * fk) * dx)
        xs, ps, cs = x[::6], phi[::6], cdf[::6]
        d = xs[1] - xs[0]
        a = cs ** (k - 1) * ps * xs
        b = (1 - cs) ** (r - k - 1) * ps * xs
        tail = np.cumsum(b[::-1])[::-1] * d
        exy = fact(r) / (fact(k - 1) * fact(r - k - 1)) * float(np.sum(a * (tail - b * d / 2)) * d)
        return (2 * ek2 + 2 * exy) / 4

    print("R   c_R (computed)   table")
    for r in range(1, 21):
        c = math.sqrt(r * var_median(r))
        print(f"{r:<3} {c:.6f}         {_C_MEDIAN[r - 1]:.3f}{'' if _C_MEDIAN[r - 1] >= c else '  TOO LOW'}")

    def betacf(a, b, x):
        qab, qap, qam = a + b, a + 1, a - 1
        c, d = 1.0, 1 - qab * x / qap
        d = 1 / (d or 1e-300)
        h = d
        for m in range(1, 500):
            m2 = 2 * m
            for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                       -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
                d = 1 / ((1 + aa * d) or 1e-300)
                c = (1 + aa / c) or 1e-300
                h *= d * c
            if abs(d * c - 1) < 1e-16:
                break
        return h

    def ibeta(a, b, x):
        bt = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                      + a * math.log(x) + b * math.log(1 - x))
        return bt * betacf(a, b, x) / a if x < (a + 1) / (a + b + 2) else 1 - bt * betacf(b, a, 1 - x) / b

    def tq(nu):
        lo, hi = 0.0, 100.0
        for _ in range(200):
            mid = (lo + hi) / 2
            if 1 - 0.5 * ibeta(nu / 2, 0.5, nu / (nu + mid * mid)) < 0.975:
                lo = mid
            else:
                hi = mid
        return hi

    print("\ndf  t(0.975) computed   t975()")
    for nu in list(range(1, 31)) + [31, 40, 60, 100]:
        print(f"{nu:<3} {tq(nu):.8f}         {t975(nu):.6f}")


def main() -> int:
    global VM_SD
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2000, help="simulated bundles (or pairs) per figure")
    ap.add_argument("--samples", type=int, default=2000, help="samples per VM run")
    ap.add_argument("--vm-sd", type=float, default=VM_SD, help="sd of the VM offsets (log scale)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--constants", action="store_true", help="recompute the t and c_R tables instead")
    o = ap.parse_args()
    VM_SD = o.vm_sd
    if o.constants:
        constants()
        return 0
    t0 = time.monotonic()
    rng = np.random.default_rng(o.seed)
    check_against_summarize(rng, o.samples)
    print(f"model: true median {MU:g} cycles; VM offsets sd {100 * VM_SD:g}% (normal, or t(3)); "
          f"within a run AR(1) phi {PHI} on log-cycles, marginal sd {100 * WITHIN_SD:g}%, "
          f"{100 * SPIKE_P:g}% spikes (mean {SPIKE_MEAN:g}x); {o.samples} samples per run, "
          f"{o.trials} trials per figure, seed {o.seed}")
    for heavy in (False, True):
        print(f"\ncoverage of the headline's 95% CI ({'t(3)' if heavy else 'normal'} VM offsets)")
        print("R    coverage   mean half-width   old within-VM CI of one run covers")
        for r, cov, w, old in coverage(rng, o.trials, o.samples, heavy):
            print(f"{r:<4} {100 * cov:6.1f}%    ±{100 * w:.2f}%            {100 * old:5.1f}%")
    print(f"\ncompare A B (normal VM offsets); '*' needs the whole CI beyond ±"
          f"{100 * DEFAULT_MIN_EFFECT:g}%")
    print("true B/A  R   '*' rate   CI excludes 1   ratio CI covers   old rule ('*' per row)")
    for ratio in (1.0, 1.03, 1.05):
        for r in (3, 5):
            sig, sig0, cov, old = pairs(rng, o.trials, r, o.samples, ratio, False)
            print(f"{ratio:<9.2f} {r:<3} {100 * sig:6.1f}%    {100 * sig0:6.1f}%         "
                  f"{100 * cov:6.1f}%           {100 * old:6.1f}%")
    print(f"\n({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
