"""The statistics behind a comparison, from the libraries made for them (SciPy, statsmodels).

- Spread across seeds: mean, sample standard deviation, and Student's t 95% interval of the mean.
- Test-set sampling: a seeded bootstrap over test images (SciPy's ``bootstrap``, BCa).
- Paired models: McNemar's exact test on the same test images (statsmodels; Dietterich 1998 found
  it the test with acceptable type I error when each model is trained once), one per seed pair,
  with Holm's correction across the seed pairs of one model pair.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def t_interval(values, level: float = LEVEL) -> tuple[float, float] | None:
    """Student's t interval for the mean of ``values`` (None for fewer than two)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    lo, hi = stats.t.interval(level, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return float(lo), float(hi)


def bootstrap_mean(per_image, seed: int = 0, level: float = LEVEL,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Bootstrap (BCa) interval of the mean of per-image values, resampling test images with a
    seeded generator, so the same inputs always give the same interval.

    SciPy draws the bootstrap distribution; the BCa interval is SciPy's formula, with the
    jackknife of the mean in closed form (each leave-one-out mean is (sum - x_i) / (n - 1)):
    SciPy's own BCa recomputes the mean n times over n - 1 values, 7 s for 10,000 test images,
    for the same interval (tests/test_stats.py compares the two)."""
    from scipy import stats

    v = np.asarray(per_image, dtype=np.float64)
    if len(v) < 2 or np.all(v == v[0]):
        return float(v.mean()), float(v.mean())
    res = stats.bootstrap((v,), np.mean, n_resamples=resamples, confidence_level=level,
                          method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = bca_of_mean(v, res.bootstrap_distribution, level)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # degenerate BCa: fall back to percentile
        lo, hi = res.confidence_interval
    return float(lo), float(hi)


def bca_of_mean(v: np.ndarray, theta_b: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The BCa interval of ``v``'s mean from its bootstrap distribution ``theta_b``, as
    ``scipy.stats.bootstrap(method="BCa")`` computes it (Efron & Tibshirani 14.3, 15.4)."""
    from scipy import stats
    from scipy.special import ndtr, ndtri

    theta = np.mean(v)
    z0 = ndtri((np.count_nonzero(theta_b < theta) + np.count_nonzero(theta_b <= theta))
               / (2 * len(theta_b)))
    n = len(v)
    jackknife = (v.sum() - v) / (n - 1)
    u = (n - 1) * (jackknife.mean() - jackknife)
    a = (np.sum(u ** 3) / n ** 3) / (np.sum(u ** 2) / n ** 2) ** 1.5 / 6
    z = float(ndtri((1 - level) / 2))
    alphas = [ndtr(z0 + (z0 + zz) / (1 - a * (z0 + zz))) for zz in (z, -z)]
    quantile = getattr(stats, "quantile", None)
    q = quantile(theta_b, np.array(alphas)) if quantile else np.quantile(theta_b, alphas)
    return float(q[0]), float(q[1])


@dataclass
class McNemar:
    both_right: int
    only_a: int  # a right, b wrong
    only_b: int
    both_wrong: int
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar(correct_a, correct_b) -> McNemar:
    """McNemar's exact test on paired per-image correctness of two models."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions must cover the same images: {a.shape} vs {b.shape}")
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    p = 1.0 if table[0][1] + table[1][0] == 0 else float(sm_mcnemar(table, exact=True).pvalue)
    return McNemar(table[0][0], table[0][1], table[1][0], table[1][1], p)


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values: the i-th smallest of m times (m - i), made
    non-decreasing, capped at 1. Written out, and tested equal to statsmodels' ``multipletests``
    (method "holm"), because that function runs a full ``gc.collect()`` on every call: 0.2 s
    each in a process holding 81 runs, 71 of the 327 s of a sweep report over 351 pairs
    (BENCHMARKS.md section 26)."""
    p = np.asarray(list(p_values), dtype=float)
    if not len(p):
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)), 1.0)
    out = np.empty_like(p)
    out[order] = adjusted
    return [float(x) for x in out]


def compare_pair(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0,
                 alpha: float = 1 - LEVEL) -> dict:
    """Everything said about model a against model b. ``correct_*``: (seeds, images) booleans,
    row i of a paired with row i of b (the same seed index); both on the same test images.

    - ``difference``: mean accuracy of a minus b, in points;
    - ``ci_seeds``: t interval of the per-seed-pair differences (two or more pairs);
    - ``ci_images``: bootstrap over test images of the seed-averaged per-image difference;
    - ``mcnemar``: exact test per seed pair, Holm-corrected across the pairs;
    - ``significant``: the interval used (seeds when there are two or more pairs, else images)
      excludes zero and most seed pairs reject equality at ``alpha`` after Holm's correction.
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    pairs = min(len(a), len(b))
    a, b = a[:pairs], b[:pairs]
    per_pair = (a.mean(axis=1) - b.mean(axis=1)) * 100
    diff = float(per_pair.mean())
    ci_seeds = t_interval(per_pair)
    per_image = (a.mean(axis=0) - b.mean(axis=0)) * 100
    ci_images = bootstrap_mean(per_image, seed=seed)
    tests = [mcnemar(a[i], b[i]) for i in range(pairs)]
    adjusted = holm([t.p_value for t in tests])
    rejected = sum(p < alpha for p in adjusted)
    ci = ci_seeds if ci_seeds is not None else ci_images
    excludes_zero = ci[0] > 0 or ci[1] < 0
    return dict(difference=diff, per_seed_pair=per_pair.tolist(), ci=list(ci),
                ci_method="t interval across seed pairs" if ci_seeds is not None else
                "bootstrap over test images (BCa, seeded)",
                ci_seeds=list(ci_seeds) if ci_seeds else None, ci_images=list(ci_images),
                mcnemar=[dict(**t.to_dict(), p_holm=p) for t, p in zip(tests, adjusted)],
                pairs=pairs, rejected=rejected,
                significant=bool(excludes_zero and rejected * 2 > pairs))
