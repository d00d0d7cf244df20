"""Statistics shared by every study: which rounds failed, paired comparisons, verdicts.

Failed rounds are decided on validation numbers only (never test), so the rule can be applied
before anyone looks at a test accuracy. A round has *failed* when any of these holds:

- it diverged (the engine marks it: non-finite or exploding training loss);
- it never learned: its final validation accuracy is at most MAJORITY_RATE + NEVER_LEARNED_MARGIN,
  i.e. within 5 points of always answering "first <= second" (55 of the 100 digit pairs);
- it got stuck: with at least MIN_ROUNDS_FOR_STUCK rounds of the same configuration, its final
  validation accuracy is more than STUCK_MARGIN below their median. A configuration's rounds
  differ only by their data and initialisation, whose spread on validation is 1-4 points
  (standard deviation) for the study's models, so a gap of 10 points is not ordinary noise.

Paired comparisons: two configurations trained on the same seeds see the same data, so their
per-round differences are compared (mean with its t interval, median, wins/ties/losses, paired
t-test and Wilcoxon signed-rank test). `verdict` turns one comparison into words by a fixed rule.
"""
import math

import numpy as np

MAJORITY_RATE = 0.55  # P(first digit <= second) for two independent uniform digits
NEVER_LEARNED_MARGIN = 0.05
STUCK_MARGIN = 0.10
MIN_ROUNDS_FOR_STUCK = 5
ALPHA = 0.05  # family-wise error rate of each family of comparisons (Holm's correction)


def failed_mask(final_val_acc, diverged=None):
    """(R,) bool: which rounds failed, from their final validation accuracies (NaN = diverged)
    and, optionally, the engine's per-round diverged flags (epoch numbers or None)."""
    val = np.asarray(final_val_acc, dtype=float)
    failed = np.isnan(val) | (val <= MAJORITY_RATE + NEVER_LEARNED_MARGIN)
    if diverged is not None:
        failed |= np.array([d is not None for d in diverged], dtype=bool)
    ok = ~failed
    if ok.sum() >= MIN_ROUNDS_FOR_STUCK:
        failed |= val < np.median(val[ok]) - STUCK_MARGIN
    return failed


def failure_reason(final_val_acc, diverged=None):
    """(R,) list: None for a healthy round, else 'diverged', 'never learned' or 'stuck'."""
    val = np.asarray(final_val_acc, dtype=float)
    failed = failed_mask(val, diverged)

    def reason(r, v):
        if not failed[r]:
            return None
        if np.isnan(v) or (diverged is not None and diverged[r] is not None):
            return "diverged"
        return "never learned" if v <= MAJORITY_RATE + NEVER_LEARNED_MARGIN else "stuck"

    return [reason(r, v) for r, v in enumerate(val)]


def mean_std(values):
    """(mean, sample std) of the finite values, (None, None) if there are none; std 0 for one."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def nan_array(values, scale=1.0):
    """Numbers, or lists (rounds) of lists (epochs), None where missing -> float array, NaN where missing."""
    return np.array(values, dtype=float) * scale


def mean_interval(values, confidence=0.95):
    """(mean, [low, high]) of the finite values (None counts as missing): the t interval of the
    mean; (None, None) with no value, (mean, None) with one."""
    from scipy import stats

    mean, std = mean_std(values)
    n = int(np.isfinite(nan_array(values)).sum())
    if n < 2:
        return mean, None
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return mean, [mean - half, mean + half]


def paired(a, b, label_a="a", label_b="b", keep=None):
    """Statistics of b - a over paired rounds (same seeds, so same data).

    `keep`: optional (R,) bool mask of the rounds to use (e.g. neither failed). Rounds where either
    value is NaN are dropped. Returns a dict of plain floats (JSON-ready); p-values are unadjusted
    (see `holm`)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    use = np.isfinite(x) & np.isfinite(y)
    if keep is not None:
        use &= np.asarray(keep, dtype=bool)
    x, y = x[use], y[use]
    d = y - x
    n = int(d.size)
    out = {"a": label_a, "b": label_b, "n_pairs": n,
           "mean_diff": float(d.mean()) if n else None,
           "median_diff": float(np.median(d)) if n else None,
           "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum()),
           "ci95": None, "t_p": None, "wilcoxon_p": None}
    if n >= 2 and np.any(d != d[0]):
        t = stats.ttest_rel(y, x)
        ci = t.confidence_interval(0.95)
        out.update(ci95=[float(ci.low), float(ci.high)], t_p=float(t.pvalue))
    elif n >= 2:  # every difference equal: no spread, the interval is the point
        out.update(ci95=[float(d[0]), float(d[0])], t_p=0.0 if d[0] != 0 else 1.0)
    if n >= 2:
        out["wilcoxon_p"] = float(stats.wilcoxon(y, x, zero_method="wilcox").pvalue) if np.any(d != 0) else 1.0
    return out


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (None stays None), in the input order."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted = list(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def adjust_family(comparisons):
    """Add Holm-adjusted `t_p_holm` and `wilcoxon_p_holm` to each comparison of one family (each
    test corrected over the family separately), and its `verdict`. Returns the same list."""
    for test in ("t_p", "wilcoxon_p"):
        for c, p in zip(comparisons, holm([c[test] for c in comparisons])):
            c[f"{test}_holm"] = p
    for c in comparisons:
        c["verdict"] = verdict(c)
    return comparisons


def verdict(c, alpha=ALPHA):
    """The written rule, applied to one comparison (after `adjust_family`):

    - "helps" / "hurts": both the paired t-test and the Wilcoxon test reject "no difference" at
      `alpha` after Holm's correction, and the mean and median differences have that sign;
    - "no detectable effect": neither test rejects;
    - "mixed (...)": the tests disagree, or the mean and median point different ways; the reason
      is named (typically a few failed rounds that move the mean but not the median).
    """
    t_p = c.get("t_p_holm", c.get("t_p"))
    w_p = c.get("wilcoxon_p_holm", c.get("wilcoxon_p"))
    if t_p is None or w_p is None:
        return "not enough rounds"
    mean, median = c["mean_diff"], c["median_diff"]
    t_sig, w_sig = t_p < alpha, w_p < alpha
    if t_sig and w_sig:
        if mean > 0 and median > 0:
            return "helps"
        if mean < 0 and median < 0:
            return "hurts"
        return "mixed (mean and median differ in sign)"
    if not t_sig and not w_sig:
        return "no detectable effect"
    if w_sig:
        direction = "better" if median > 0 else "worse"
        return f"mixed (most rounds {direction}, the mean is not: a few rounds dominate)"
    direction = "higher" if mean > 0 else "lower"
    return f"mixed (the mean is {direction}, the rank test does not confirm it)"


def format_pm(mean, std, scale=100.0, digits=2):
    """'94.70 +- 0.74' for plain-text tables: `pm` in ASCII; '-' when mean is None or NaN."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return pm(mean, std, digits, scale).replace("±", "+-")


def format_p(p):
    """A p-value for text: '< 0.001', or 3 significant digits."""
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


# ------------------------------------ numbers as text (the report, the notebook and the figures format them here, once)


def pct(x, digits=2):
    """A fraction as a percentage: 0.88714 -> '88.71'."""
    return None if x is None else f"{100 * x:.{digits}f}"


def pm(mean, std, digits=2, scale=100):
    """'88.71 ± 0.48' (fractions, shown as percentages by default); '88.71' with no std (one round)."""
    if mean is None:
        return "n/a"
    return f"{scale * mean:.{digits}f}" + ("" if std is None else f" ± {scale * std:.{digits}f}")


def points(x, digits=2):
    """A signed difference of fractions in percentage points: 0.0123 -> '+1.23', -0.004 -> '−0.40'."""
    if x is None:
        return "n/a"
    return f"{100 * x:+.{digits}f}".replace("-", "−")


def pvalue(p):
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def count(n):
    return f"{n:,}"


def lr_text(lr):
    return f"{lr:g}"


def seeds_text(seeds):
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(str(s) for s in seeds)


def minutes(seconds):
    return f"{seconds / 60:.1f}"

