"""Rows of a paper table over seeds: mean ± 95 % confidence interval per row, and whether a pairwise claim of the
paper ("the tuned video prior beats the Gaussian prior on FD") is supported, refuted or undecided at this N.

A claim compares two rows on one metric, seed by seed: row A's run with seed s against row B's run with seed s, so
the noise the two share (data order, initial weights drawn from the same seed) cancels. The test is the paired
t-test on the per-seed differences, two-sided at `alpha`; at 3 seeds a rank test cannot reach p < 0.05 at all
(Wilcoxon's smallest two-sided p is 0.25), the t-test can when the differences are consistent. A verdict is
"supports" when the difference is significant in the claimed direction, "refutes" when significant against it,
"cannot tell" otherwise, each with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = ["DIRECTIONS", "TEST", "Summary", "Verdict", "judge", "summarize"]

DIRECTIONS = ("lower", "higher")  # which way a metric is better: FD, KL lower; IS, Acc, IB-VA higher
TEST = "paired t-test over seeds (two-sided)"


@dataclass(frozen=True)
class Summary:
    """A row's metric over its seeds: mean, the 95 % interval's half width (nan below 2 seeds), the seed count."""

    mean: float
    half_width: float
    n: int

    def text(self, digits: int = 2) -> str:
        """`mean ± half width` (`mean (1 seed)` without an interval)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f} ({self.n} seed)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean and Student-t confidence interval (at `level`) of the per-seed values; ValueError when empty or not
    finite (a failed run is reported as failed, never averaged in)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    if not np.isfinite(x).all():
        raise ValueError(f"non-finite values {x.tolist()}: a failed seed cannot enter a mean")
    if x.size < 2:
        return Summary(float(x[0]), math.nan, 1)
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Summary(float(x.mean()), float(half), int(x.size))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim: `supports`, `refutes` or `cannot tell`, with the paired figures behind it."""

    outcome: Literal["supports", "refutes", "cannot tell"]
    reason: str
    seeds: tuple[int, ...]  # the seeds both rows have, the pairs the test used
    mean_difference: float  # mean of A − B over those seeds (nan below 1 pair)
    p_value: float  # nan below 2 pairs or when every difference is equal
    test: str = TEST


def judge(a: Mapping[int, float], b: Mapping[int, float], better: str, alpha: float = 0.05) -> Verdict:
    """Does row A beat row B on a metric whose `better` direction is `lower` or `higher`? `a` and `b` map seed ->
    value; only the seeds both have are paired."""
    if better not in DIRECTIONS:
        raise ValueError(f"better: {better!r}, expected one of {', '.join(DIRECTIONS)}")
    seeds = tuple(sorted(set(a) & set(b)))
    if len(seeds) < 2:
        return Verdict("cannot tell", f"{len(seeds)} paired seed(s): a paired test needs 2", seeds, _mean(a, b, seeds), math.nan)  # fmt: skip
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    if not np.isfinite(d).all():
        raise ValueError(f"non-finite values for seeds {seeds}: a failed seed cannot enter a test")
    sign = -1.0 if better == "lower" else 1.0  # > 0: A is better
    gain = float(sign * d.mean())
    if np.ptp(d) == 0:  # every pair differs by the same amount: the t statistic is undefined
        if gain == 0:
            return Verdict(
                "cannot tell", "the rows are equal on every seed", seeds, float(d.mean()), math.nan
            )
        outcome = "supports" if gain > 0 else "refutes"
        reason = f"the same difference {d[0]:.4g} on all {len(seeds)} seeds"
        return Verdict(outcome, reason, seeds, float(d.mean()), 0.0)
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    if p >= alpha:
        reason = f"p = {p:.3g} ≥ {alpha} at {len(seeds)} seeds"
        return Verdict("cannot tell", reason, seeds, float(d.mean()), p)
    outcome = "supports" if gain > 0 else "refutes"
    return Verdict(outcome, f"p = {p:.3g} < {alpha} at {len(seeds)} seeds", seeds, float(d.mean()), p)


def _mean(a: Mapping[int, float], b: Mapping[int, float], seeds: tuple[int, ...]) -> float:
    return float(np.mean([a[s] - b[s] for s in seeds])) if seeds else math.nan
