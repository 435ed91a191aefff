"""Seed statistics: each arm's mean and spread over its seeds, and whether the seeds can tell an
arm apart from the baseline.

The spread is the sample standard deviation over seeds (n - 1 in the denominator). An arm is
compared with the baseline by Welch's t-test, reported as its 95% confidence interval for the
difference of the means: the seeds of two arms are independent runs whose spreads need not be
equal (a run without warmup can be noisier than one with), and Welch's t distribution, with its
Welch-Satterthwaite degrees of freedom, widens the interval as far as 2 or 3 seeds demand, where a
normal interval would claim far too much. Distinguishable means the interval excludes 0
(two-sided p < 0.05). The test assumes each arm's seed results scatter normally, which 2 or 3
seeds cannot check. One seed has no spread: no interval, and the report says so.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass
class Spread:
    values: list[float]  # one per seed

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation; None for fewer than 2 seeds (no spread to speak of)."""
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass
class Comparison:
    diff: float  # the arm's mean minus the baseline's
    low: float | None  # the confidence interval of diff (None: not tested)
    high: float | None
    p: float | None
    verdict: str  # "yes", "no", or why the seeds cannot say

    @property
    def distinguishable(self) -> bool | None:
        return None if self.low is None else not self.low <= 0.0 <= self.high


def compare(arm: Spread, baseline: Spread) -> Comparison:
    """The arm against the baseline: the difference of means and Welch's verdict on it."""
    diff = arm.mean - baseline.mean
    if min(arm.n, baseline.n) < 2:
        return Comparison(diff, None, None, None, "cannot say: 1 seed has no spread")
    if arm.sd == 0 and baseline.sd == 0:
        return Comparison(diff, None, None, None, "cannot say: the seeds do not vary")
    result = stats.ttest_ind(arm.values, baseline.values, equal_var=False)
    interval = result.confidence_interval(LEVEL)
    comparison = Comparison(diff, float(interval.low), float(interval.high), float(result.pvalue), "")
    comparison.verdict = f"{'yes' if comparison.distinguishable else 'no'} (p = {comparison.p:.2g})"
    return comparison


def needs_more_seeds(arm: Spread, baseline: Spread) -> bool:
    """The study's rule for an arm: within twice the spread of the baseline (the larger of the two
    spreads), both need at least 3 seeds. (The baseline always needs 3; the report checks that.)"""
    spreads = [s for s in (arm.sd, baseline.sd) if s is not None]
    if not spreads:
        return min(arm.n, baseline.n) < 3
    return abs(arm.mean - baseline.mean) <= 2 * max(spreads) and min(arm.n, baseline.n) < 3
