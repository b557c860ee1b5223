"""The report's statistics against independent references on known tables."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from seqmnist.core import stats


def test_mcnemar_exact_matches_the_binomial_test_and_a_hand_computed_value():
    a = np.array([1] * 5 + [1] * 10 + [0] * 2 + [0] * 50, bool)  # both right 5, a only 10
    b = np.array([1] * 5 + [0] * 10 + [1] * 2 + [0] * 50, bool)  # b only 2, both wrong 50
    t = stats.mcnemar(a, b)
    assert (t.both_right, t.only_a, t.only_b, t.both_wrong) == (5, 10, 2, 50)
    assert t.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 P(X <= 2), X ~ B(12, 1/2)
    assert t.p_value == pytest.approx(sps.binomtest(2, 12, 0.5).pvalue)
    assert stats.mcnemar(a, a).p_value == 1.0  # no discordant pairs
    with pytest.raises(ValueError, match="same images"):
        stats.mcnemar(a, b[:-1])


def test_holm_on_a_textbook_example():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.2]) == [0.2] and stats.holm([]) == []


def test_holm_is_statsmodels_holm():
    """The written-out Holm against statsmodels' multipletests on random p-values with ties and
    values that the correction pushes past 1. Fails if the order is not restored, the running
    maximum is left out or the cap at 1 is."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 13):
        for _ in range(20):
            p = rng.choice([0.001, 0.02, 0.02, 0.3, 0.5, 0.9], size=m)  # ties
            p = p if rng.random() < 0.5 else p * rng.random(m) ** 2
            assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-15)


def test_t_interval_and_spread():
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd 1, n 3
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))
    assert half == pytest.approx(2.4841, abs=1e-4)
    assert stats.t_interval([0.5]) is None
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and stats.mean_std([4.0]) == (4.0, 0.0)


def test_bootstrap_is_seeded_reproducible_and_covers_the_mean():
    values = np.random.default_rng(1).random(500) < 0.9
    a, b = stats.bootstrap_mean(values, seed=3), stats.bootstrap_mean(values, seed=3)
    assert a == b and a[0] < values.mean() < a[1]
    assert stats.bootstrap_mean(values, seed=4) != a
    # about +-1.96 standard errors of a proportion
    se = math.sqrt(values.mean() * (1 - values.mean()) / len(values))
    assert a[1] - a[0] == pytest.approx(2 * 1.96 * se, rel=0.15)


@pytest.mark.parametrize("n, p, seeds", [(400, 0.9, 1), (300, 0.6, 3), (250, 0.98, 5)])
def test_the_bca_interval_is_scipys_own(n, p, seeds):
    """The closed-form jackknife gives SciPy's BCa interval for the same bootstrap draws: per-image
    values as a report has them (the fraction of seeds that read each image right)."""
    from scipy import stats as sps

    rng = np.random.default_rng(n)
    values = (rng.random((seeds, n)) < p).mean(axis=0)
    ours = stats.bootstrap_mean(values, seed=7, resamples=2000)
    theirs = sps.bootstrap((values,), np.mean, n_resamples=2000, method="BCa",
                           random_state=np.random.default_rng(7)).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=1e-12)
    percentile = sps.bootstrap((values,), np.mean, n_resamples=2000, method="percentile",
                               random_state=np.random.default_rng(7)).confidence_interval
    assert ours != pytest.approx((percentile.low, percentile.high), abs=1e-12)  # really BCa


def test_compare_pair_calls_a_clear_gap_and_not_noise():
    rng = np.random.default_rng(0)
    truth_a = rng.random((3, 2000)) < 0.99
    truth_b = rng.random((3, 2000)) < 0.90
    clear = stats.compare_pair(truth_a, truth_b)
    assert clear["significant"] and clear["rejected"] == 3 and clear["ci"][0] > 0
    assert clear["difference"] == pytest.approx((truth_a.mean() - truth_b.mean()) * 100)
    same = stats.compare_pair(truth_a, truth_a.copy())
    assert not same["significant"] and same["difference"] == 0 and same["rejected"] == 0
    one_seed = stats.compare_pair(truth_a[:1], truth_b[:1])
    assert one_seed["ci_method"].startswith("bootstrap") and one_seed["pairs"] == 1
