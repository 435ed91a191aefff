"""Seed statistics and the test documents: each arm's mean and spread over its seeds, whether an arm
differs from the baseline, and by how much the choice of test text could move that difference.

The spread is the sample standard deviation over seeds (n - 1 in the denominator). An arm and the
baseline that ran the same seeds share each seed's initialisation and data order, so they are
compared by a paired t-test on the per-seed differences (scipy's ttest_rel); otherwise by Welch's
t-test (ttest_ind, equal_var=False), whose Welch-Satterthwaite degrees of freedom widen the
interval as far as 2 or 3 seeds demand and which does not assume equal spreads. Both assume the
seed results (or their differences) scatter normally, which 2 or 3 seeds cannot check. One seed
has no spread: no interval, and the report says so.

Holm's step-down correction keeps the chance of any false "yes" among one report's arms at 5%
(scipy.stats has Benjamini-Hochberg only, which controls the false discovery rate instead).

The bootstrap (`document_bootstrap`) draws the seeds and the test documents again, both with
replacement: the seeds as pairs where arm and baseline ran the same seeds (one draw of seeds for
both), each arm's own otherwise; the documents with one draw for arm and baseline. Per draw, each
run's loss is its summed NLL over the drawn documents divided by their tokens, and the draw's
difference is the mean over the drawn arm runs minus the mean over the drawn baseline runs. Its
percentile interval so covers both the training noise and the choice of test text. With 2 or 3
seeds the seed level has few distinct draws and understates training noise a little (by a factor
(n - 1) / n in variance): the t interval above is the one to read for the seeds alone.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
DRAWS = 4000  # bootstrap draws: the interval's ends move by < 0.1 of its width between RNG seeds
BOOTSTRAP_SEED = 0  # a fixed RNG seed: the same files always give the same report
CELLS = 5_000_000  # draws x documents counts held in memory at once (40 MB)


@dataclass
class Spread:
    values: list[float]  # one per seed
    seeds: list[str | None] | None = None  # the seed of each value, where known

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
    test: str = ""  # "paired t" or "Welch" ("" where not tested)

    @property
    def distinguishable(self) -> bool | None:
        return None if self.low is None else not self.low <= 0.0 <= self.high


def paired(arm: Spread, baseline: Spread) -> bool:
    """Whether the two ran the same seeds, each once: then each seed's runs form a pair."""
    seeds = arm.seeds, baseline.seeds
    return (all(s is not None and None not in s and len(set(s)) == len(s) for s in seeds)
            and sorted(seeds[0]) == sorted(seeds[1]))


def compare(arm: Spread, baseline: Spread) -> Comparison:
    """The arm against the baseline: the difference of means and the paired or Welch verdict on it."""
    diff = arm.mean - baseline.mean
    if min(arm.n, baseline.n) < 2:
        return Comparison(diff, None, None, None, "cannot say: 1 seed has no spread")
    if paired(arm, baseline):
        a = [arm.values[arm.seeds.index(s)] for s in sorted(arm.seeds)]
        b = [baseline.values[baseline.seeds.index(s)] for s in sorted(arm.seeds)]
        if np.allclose(np.subtract(a, b), a[0] - b[0], rtol=0, atol=1e-12):  # rounding aside
            return Comparison(diff, None, None, None, "cannot say: the per-seed differences do not vary", "paired t")
        result, test = stats.ttest_rel(a, b), "paired t"
    else:
        if arm.sd == 0 and baseline.sd == 0:
            return Comparison(diff, None, None, None, "cannot say: the seeds do not vary", "Welch")
        result, test = stats.ttest_ind(arm.values, baseline.values, equal_var=False), "Welch"
    interval = result.confidence_interval(LEVEL)
    comparison = Comparison(diff, float(interval.low), float(interval.high), float(result.pvalue), "", test)
    comparison.verdict = f"{'yes' if comparison.distinguishable else 'no'} (p = {comparison.p:.2g})"
    return comparison


def holm(pvalues: list[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    m - i + 1, and each kept at least as large as the ones before it (capped at 1)."""
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(sorted(range(len(pvalues)), key=pvalues.__getitem__)):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def after_holm(comparisons: list[Comparison]) -> None:
    """Rewrite each tested comparison's verdict with its Holm-adjusted p-value (alpha = 1 - LEVEL)."""
    tested = [c for c in comparisons if c.p is not None]
    for c, adjusted in zip(tested, holm([c.p for c in tested])):
        c.verdict = f"{'yes' if adjusted < 1 - LEVEL else 'no'} (p = {c.p:.2g}, Holm {adjusted:.2g})"


def document_bootstrap(arm: list[tuple], baseline: list[tuple], paired: bool = False, draws: int = DRAWS,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | str:
    """The percentile interval (LEVEL) of the arm's mean test loss minus the baseline's when seeds
    and test documents are drawn again; `arm` and `baseline` hold one (doc_nll, doc_tokens) per
    seed, over the same documents, and with `paired` the same seeds in the same order. Returns why
    not, as a string, where they hold different documents."""
    runs = [(np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)) for nll, tokens in arm + baseline]
    n_docs = {len(nll) for nll, _ in runs} | {len(tokens) for _, tokens in runs}
    if len(n_docs) != 1:
        return f"the runs scored different numbers of test documents ({', '.join(map(str, sorted(n_docs)))})"
    n, k = n_docs.pop(), len(arm)
    rng = np.random.default_rng(seed)
    diffs = []
    chunk = max(1, CELLS // n)
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        counts = rng.multinomial(n, np.full(n, 1 / n), size=size)  # draws x documents
        losses = np.array([counts @ nll / (counts @ tokens) for nll, tokens in runs])  # runs x draws
        arm_seeds = rng.integers(0, k, (k, size))
        base_seeds = arm_seeds if paired else rng.integers(0, len(baseline), (len(baseline), size))
        diffs.append(np.take_along_axis(losses[:k], arm_seeds, 0).mean(0)
                     - np.take_along_axis(losses[k:], base_seeds, 0).mean(0))
    low, high = np.percentile(np.concatenate(diffs), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(low), float(high)


def needs_more_seeds(arm: Spread, baseline: Spread) -> bool:
    """The study's rule for an arm: within twice the spread of the baseline (the larger of the two
    spreads), both need at least 3 seeds. (The baseline always needs 3; the report checks that.)"""
    spreads = [s for s in (arm.sd, baseline.sd) if s is not None]
    if not spreads:
        return min(arm.n, baseline.n) < 3
    return abs(arm.mean - baseline.mean) <= 2 * max(spreads) and min(arm.n, baseline.n) < 3
