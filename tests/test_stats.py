"""lib.stats: the failed-round rule, paired comparisons, Holm's correction and the verdict rule."""
import numpy as np
import pytest

from lib import stats


def test_failed_rounds_never_learned_stuck_and_diverged():
    val = np.array([0.82, 0.83, 0.84, 0.81, 0.85, 0.56, 0.68, np.nan])
    reasons = stats.failure_reason(val, diverged=[None] * 7 + [3])
    assert reasons == [None] * 5 + ["never learned", "stuck", "diverged"]
    assert stats.failed_mask(val).tolist() == [False] * 5 + [True] * 3


def test_stuck_needs_enough_rounds():
    # with fewer than MIN_ROUNDS_FOR_STUCK healthy rounds no median is trusted
    assert stats.failed_mask([0.9, 0.7]).tolist() == [False, False]
    assert stats.failed_mask([0.59]).tolist() == [True]


def test_paired_statistics_match_scipy():
    from scipy import stats as sps

    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.02, 20)
    b = a + rng.normal(0.01, 0.01, 20)
    c = stats.paired(a, b, "a", "b")
    assert c["n_pairs"] == 20 and c["wins"] + c["ties"] + c["losses"] == 20
    assert c["mean_diff"] == pytest.approx(np.mean(b - a))
    assert c["median_diff"] == pytest.approx(np.median(b - a))
    assert c["t_p"] == pytest.approx(sps.ttest_rel(b, a).pvalue)
    assert c["wilcoxon_p"] == pytest.approx(sps.wilcoxon(b, a).pvalue)
    low, high = c["ci95"]
    assert low < c["mean_diff"] < high


def test_paired_drops_nan_and_masked_rounds():
    c = stats.paired([0.5, 0.6, np.nan, 0.7], [0.6, 0.7, 0.9, 0.1], keep=[True, True, True, False])
    assert c["n_pairs"] == 2 and c["wins"] == 2


def test_holm_is_monotone_and_capped():
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]


@pytest.mark.parametrize("t_p, w_p, mean, median, expected", [
    (0.001, 0.001, 0.02, 0.02, "helps"),
    (0.001, 0.001, -0.02, -0.02, "hurts"),
    (0.5, 0.3, 0.001, 0.0, "no detectable effect"),
    (0.6, 0.002, 0.008, 0.0145, "mixed (most rounds better, the mean is not: a few rounds dominate)"),
    (0.01, 0.2, 0.01, 0.0, "mixed (the mean is higher, the rank test does not confirm it)"),
])
def test_verdict_rule(t_p, w_p, mean, median, expected):
    c = {"t_p_holm": t_p, "wilcoxon_p_holm": w_p, "mean_diff": mean, "median_diff": median}
    assert stats.verdict(c) == expected


def test_one_outlier_does_not_hide_a_consistent_gain():
    # 18 rounds gain about 1.5 points, one of the 'with' rounds never learned: the t-test loses it,
    # the rank test does not, and the verdict says so
    rng = np.random.default_rng(1)
    a = rng.normal(0.83, 0.01, 20)
    b = a + 0.015 + rng.normal(0, 0.003, 20)
    b[3] = 0.54
    a[7] = 0.66
    family = stats.adjust_family([stats.paired(a, b)])
    assert family[0]["verdict"].startswith("mixed") or family[0]["verdict"] == "helps"
    assert family[0]["wilcoxon_p"] < 0.01


def test_format_helpers():
    assert stats.format_pm(0.947, 0.0074) == "94.70 +- 0.74"
    assert stats.format_pm(0.917, None) == "91.70"
    assert stats.format_pm(None, None) == "-"
    assert stats.format_p(0.0004) == "< 0.001" and stats.format_p(0.0213) == "0.0213"
