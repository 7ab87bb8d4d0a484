"""Numbers the experiments report: AUC, spread over seeds, and a verdict.

``auc`` is the exact area under the ROC curve (the Mann-Whitney statistic
with ties counted as halves), independent of Keras' bucketed estimate.
``compare`` judges an effect from paired runs (the same seed in both arms):
it holds when the mean paired difference, in the claimed direction, exceeds
three standard deviations of the per-seed differences; it does not hold when
it is that far the other way; otherwise it is within noise.
"""

import numpy as np

HOLDS, DOES_NOT_HOLD, WITHIN_NOISE = "holds", "does not hold", "within noise"
SIGMAS = 3.0


def auc(labels, scores):
    """Exact ROC AUC of ``scores`` against binary ``labels`` (0/1); NaN if
    only one class is present."""
    labels = np.asarray(labels, np.float64).ravel() > 0.5
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    # Average ranks (1-based), ties sharing the mean of their ranks.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0)
                 / (positives * negatives))


def mean_std(values):
    """(mean, sample standard deviation) of per-seed values (std 0 for one)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def compare(better, worse, sigmas=SIGMAS):
    """Judges the claim "``better`` > ``worse``" from per-seed values of two
    arms run on the same seeds. Returns a dict: ``difference`` (mean of
    better - worse), ``std`` (of the per-seed differences), ``verdict``
    (HOLDS, DOES_NOT_HOLD or WITHIN_NOISE), ``sigmas`` (mean / std),
    ``seeds`` and ``seeds_better`` (on how many seeds better > worse)."""
    better, worse = np.asarray(better, np.float64), np.asarray(worse, np.float64)
    if better.shape != worse.shape or better.size < 2:
        raise ValueError("compare needs the same seeds (>= 2) in both arms")
    difference, spread = mean_std(better - worse)
    if spread > 0:
        ratio = difference / spread
    else:  # identical differences on every seed
        ratio = 0.0 if difference == 0 else float(np.copysign(np.inf, difference))
    if ratio > sigmas:
        verdict = HOLDS
    elif ratio < -sigmas:
        verdict = DOES_NOT_HOLD
    else:
        verdict = WITHIN_NOISE
    return {"difference": difference, "std": spread, "sigmas": float(ratio), "verdict": verdict,
            "seeds": int(better.size), "seeds_better": int((better > worse).sum())}


def format_mean_std(values, scale=1.0, digits=4):
    """``"0.7012 ± 0.0021"`` of per-seed values (times ``scale``)."""
    mean, std = mean_std(np.asarray(values, np.float64) * scale)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
