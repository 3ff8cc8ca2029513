#!/usr/bin/env python3
"""Fixtures for deradiff-tune's statistics and Gaussian process, computed independently with
numpy and scipy.

Run (from the repository root; no network needed):

    /work/venv/bin/python scripts/gen_tune_fixtures.py

(any Python 3 with numpy >= 1.22 and scipy >= 1.9). It writes
`crates/deradiff-tune/tests/fixtures/tune_reference.json` (a few tens of kB), which
`crates/deradiff-tune/tests/fixtures_numpy.rs` checks deradiff-tune against:

    cargo test -p deradiff-tune --test fixtures_numpy -- --nocapture

Everything is seeded: re-running it gives the same file.

Agreement statistics (paper Table 5)
------------------------------------
For each case: originals x, approximations y, d = y - x, and

* deterministic statistics with numpy: MAE, RMSE, median |d| (np.median), bias (mean d),
  SD of d (np.std(ddof=1)), limits of agreement bias -/+ 1.96 SD, max |d|, and each in percent
  of mean(x) (or of a given reference mean);
* the bootstrap of the MAE two ways:
  - "shared stream": the resampling indices deradiff uses, reproduced here bit for bit.
    deradiff draws them from SplitMix64 seeded with `seed` (state += 0x9e3779b97f4a7c15, then
    the usual two xor-shift-multiply rounds and a final xor-shift), one 64-bit draw per index,
    index = (draw * n) >> 64, resample after resample, index after index. With the same
    indices and the same summation order the bootstrap MAEs agree exactly, and np.mean /
    np.percentile (linear interpolation) give the bootstrap mean and the 2.5/97.5 percentiles
    deradiff must match to rounding;
  - "numpy": numpy's own generator (np.random.default_rng(seed).integers) with many resamples,
    and scipy.stats.bootstrap(method="percentile") on |d|: a bootstrap with *different* random
    indices, which deradiff's bootstrap must agree with to within Monte-Carlo error.

Gaussian process (paper A.5.1) and acquisitions (A.5.2)
-------------------------------------------------------
The GP is deradiff-tune's: inputs u = (lambda - lower) / (upper - lower), outputs standardised
y = (v - mean v) / std v (population SD), RBF kernel sf2 * exp(-(u - u')^2 / (2 l^2)) plus noise
sn2 on the diagonal, zero prior mean. With scipy.linalg.cho_factor / cho_solve the fixture has,
for fixed hyper-parameters, the posterior mean and SD (latent, no noise; back in the data's units)
at test points and the log marginal likelihood; and the maximum of the log marginal likelihood
over the same box of hyper-parameters deradiff searches (log l in [log 0.05, log 2], log sf2 in
[log 0.01, log 100], log sn2 in [log 1e-8, log 1]) by scipy.optimize.minimize (L-BFGS-B) from
many starts. deradiff's own fit (Nelder-Mead from a log grid) must reach it.
Expected Improvement and the normal CDF come from scipy.stats.norm.
"""

import json
import math
import pathlib

import numpy as np
import scipy
import scipy.linalg
import scipy.optimize
import scipy.stats

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "deradiff-tune" / "tests" / "fixtures" / "tune_reference.json"

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def index(self, n):
        return (self.next_u64() * n) >> 64


def shared_stream_bootstrap(abs_d, resamples, seed):
    rng = SplitMix64(seed)
    n = len(abs_d)
    maes = []
    for _ in range(resamples):
        s = 0.0
        for _ in range(n):
            s += float(abs_d[rng.index(n)])
        maes.append(s / n)
    return np.array(maes)


def pct(value, ref):
    return None if ref == 0 else float(100.0 * value / ref)


def agreement_case(name, x, y, seed, resamples, numpy_resamples, reference_mean=None):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = y - x
    a = np.abs(d)
    ref = float(np.mean(x)) if reference_mean is None else float(reference_mean)
    bias = float(np.mean(d))
    sd = float(np.std(d, ddof=1))
    det = {
        "mae": float(np.mean(a)),
        "rmse": float(np.sqrt(np.mean(d * d))),
        "median_abs": float(np.median(a)),
        "max_abs": float(np.max(a)),
        "bias": bias,
        "sd_diff": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
    }
    boot = shared_stream_bootstrap(a, resamples, seed)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    shared = {
        "mae_bootstrap_mean": float(np.mean(boot)),
        "mae_ci_low": float(lo),
        "mae_ci_high": float(hi),
        "first_maes": [float(v) for v in boot[:5]],
    }
    # Independent bootstraps: numpy's generator, and scipy.stats.bootstrap.
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(numpy_resamples, len(a)))
    nboot = a[idx].mean(axis=1)
    nlo, nhi = np.percentile(nboot, [2.5, 97.5])
    sres = scipy.stats.bootstrap(
        (a,),
        np.mean,
        n_resamples=numpy_resamples,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(seed + 1),
    )
    numpy_boot = {
        "resamples": numpy_resamples,
        "mae_bootstrap_mean": float(np.mean(nboot)),
        "mae_bootstrap_sd": float(np.std(nboot, ddof=1)),
        "mae_ci_low": float(nlo),
        "mae_ci_high": float(nhi),
        "scipy_ci_low": float(sres.confidence_interval.low),
        "scipy_ci_high": float(sres.confidence_interval.high),
    }
    expected = {k: {"value": v, "percent": pct(v, ref)} for k, v in {**det, **{k: shared[k] for k in ("mae_bootstrap_mean", "mae_ci_low", "mae_ci_high")}}.items()}
    return {
        "name": name,
        "original": x.tolist(),
        "approx": y.tolist(),
        "seed": seed,
        "resamples": resamples,
        "reference_mean": reference_mean,
        "mean_original": ref,
        "expected": expected,
        "first_bootstrap_maes": shared["first_maes"],
        "numpy_bootstrap": numpy_boot,
    }


def gp_parts(lams, vals, lower, upper):
    lams = np.asarray(lams, dtype=np.float64)
    vals = np.asarray(vals, dtype=np.float64)
    u = (lams - lower) / (upper - lower)
    m = float(np.mean(vals))
    s = float(np.std(vals))
    s = s if s > 0 else 1.0
    return u, (vals - m) / s, m, s


def kernel(a, b, l, sf2):
    return sf2 * np.exp(-((a[:, None] - b[None, :]) ** 2) / (2 * l * l))


def lml(u, y, l, sf2, sn2):
    k = kernel(u, u, l, sf2) + sn2 * np.eye(len(u))
    c, low = scipy.linalg.cho_factor(k, lower=True)
    alpha = scipy.linalg.cho_solve((c, low), y)
    return float(-0.5 * y @ alpha - np.sum(np.log(np.diag(c))) - 0.5 * len(u) * np.log(2 * np.pi))


def gp_case(name, lams, vals, lower, upper, hyper, tests):
    u, y, m, s = gp_parts(lams, vals, lower, upper)
    l, sf2, sn2 = hyper
    k = kernel(u, u, l, sf2) + sn2 * np.eye(len(u))
    cf = scipy.linalg.cho_factor(k, lower=True)
    alpha = scipy.linalg.cho_solve(cf, y)
    ut = (np.asarray(tests) - lower) / (upper - lower)
    ks = kernel(ut, u, l, sf2)
    mean = ks @ alpha
    var = sf2 - np.sum(ks * scipy.linalg.cho_solve(cf, ks.T).T, axis=1)
    var = np.maximum(var, 0.0)
    # Maximum of the LML over deradiff's default box, by L-BFGS-B from many starts.
    bounds = [(math.log(0.05), math.log(2.0)), (math.log(0.01), math.log(100.0)), (math.log(1e-8), math.log(1.0))]

    def neg(t):
        try:
            return -lml(u, y, math.exp(t[0]), math.exp(t[1]), math.exp(t[2]))
        except np.linalg.LinAlgError:
            return 1e10

    best = None
    grid = [np.linspace(b[0], b[1], 7) for b in bounds]
    for t0 in grid[0]:
        for t1 in grid[1][::2]:
            for t2 in grid[2][::2]:
                r = scipy.optimize.minimize(neg, [t0, t1, t2], method="L-BFGS-B", bounds=bounds)
                if best is None or r.fun < best.fun:
                    best = r
    return {
        "name": name,
        "lambdas": list(map(float, lams)),
        "values": list(map(float, vals)),
        "lower": lower,
        "upper": upper,
        "hyper": {"length_scale": l, "signal_variance": sf2, "noise_variance": sn2},
        "tests": list(map(float, tests)),
        "mean": (m + s * mean).tolist(),
        "sd": (s * np.sqrt(var)).tolist(),
        "log_marginal_likelihood": lml(u, y, l, sf2, sn2),
        "max_log_marginal_likelihood": float(-best.fun),
        "argmax_hyper": [float(math.exp(v)) for v in best.x],
    }


def main():
    rng = np.random.default_rng(20240611)
    cases = []
    # A CLIP-score-like set: originals near 0.37, small differences with a slight negative bias.
    x = [0.3712, 0.3698, 0.3745, 0.3731, 0.3760, 0.3689, 0.3724]
    y = [0.3701, 0.3702, 0.3729, 0.3715, 0.3748, 0.3675, 0.3730]
    cases.append(agreement_case("clip_like_7", x, y, seed=0, resamples=2000, numpy_resamples=20000))
    x = rng.normal(21.5, 0.3, size=30)
    y = x + rng.normal(-0.01, 0.04, size=30)
    cases.append(agreement_case("pickscore_like_30", x, y, seed=42, resamples=2000, numpy_resamples=20000))
    x = rng.normal(-2.0, 0.5, size=12)
    y = x + rng.standard_t(3, size=12) * 0.05
    cases.append(agreement_case("negative_mean_12_reference", x, y, seed=7, resamples=1000, numpy_resamples=20000, reference_mean=-1.75))
    x = np.round(rng.normal(0.27, 0.02, size=10), 4)
    cases.append(agreement_case("ties_even_10", x, x + np.array([0.001, -0.001, 0.002, 0.0, 0.001, -0.003, 0.0, 0.001, 0.002, -0.001]), seed=3, resamples=1500, numpy_resamples=20000))

    gps = []
    lams = [0.05, 0.2, 0.35, 0.5, 0.7, 0.9]
    vals = [-(l - 0.6) ** 2 + 0.01 * math.sin(17 * l) for l in lams]
    tests = [0.0, 0.1, 0.33, 0.6, 0.81, 1.0]
    gps.append(gp_case("quadratic_6", lams, vals, 0.0, 1.0, (0.3, 1.5, 1e-4), tests))
    lams = [0.1, 0.9, 1.7, 2.3, 2.8]
    vals = [3.1, 3.9, 4.2, 3.7, 3.0]
    gps.append(gp_case("range_0_3_5", lams, vals, 0.0, 3.0, (0.25, 0.8, 0.05), [0.0, 0.5, 1.3, 2.0, 3.0]))
    lams = list(rng.uniform(-1.0, 1.0, size=9))
    vals = [math.cos(3 * l) + 0.05 * rng.normal() for l in lams]
    gps.append(gp_case("noisy_cos_9", lams, vals, -1.0, 1.0, (0.4, 2.0, 0.01), [-1.0, -0.5, 0.0, 0.25, 0.9]))

    acq = []
    for mean, sd, best, xi in [(0.3, 0.5, 0.1, 0.0), (-1.0, 0.2, 0.5, 0.01), (2.0, 1e-3, 1.0, 0.0), (0.0, 1.0, 0.0, 0.0), (-3.0, 0.4, 0.0, 0.1)]:
        d = mean - best - xi
        z = d / sd
        ei = d * scipy.stats.norm.cdf(z) + sd * scipy.stats.norm.pdf(z)
        acq.append({"mean": mean, "sd": sd, "best": best, "xi": xi, "ei": float(ei)})
    cdf = [{"z": z, "cdf": float(scipy.stats.norm.cdf(z)), "pdf": float(scipy.stats.norm.pdf(z))} for z in [-8.0, -3.3, -1.0, -0.1, 0.0, 0.7, 2.5, 6.0]]

    doc = {
        "generator": "scripts/gen_tune_fixtures.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "agreement": cases,
        "gp": gps,
        "expected_improvement": acq,
        "normal": cdf,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
