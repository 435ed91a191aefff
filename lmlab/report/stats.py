"""Seed statistics and the test documents: each arm's mean and spread over its seeds, whether an arm
differs from the baseline, and by how much the choice of test text could move that difference.

The spread is the sample standard deviation over seeds (n - 1 in the denominator). An arm and the
baseline that ran the same seeds share each seed's initialisation and data order, so they are
compared by a paired t-test on the per-seed differences of the seeds both ran (scipy's ttest_rel;
a seed only one of them ran is left out of the pairs, not the pairing); with fewer than 2 common
seeds by Welch's t-test (ttest_ind, equal_var=False), whose Welch-Satterthwaite degrees of freedom
widen the interval as far as 2 or 3 seeds demand. Both assume the seed results (or their
differences) scatter normally, which 2 or 3 seeds cannot check. One seed has no spread: no
interval, and the report says so.

Holm's step-down correction keeps the chance of any false "yes" among a family of tests at 5%
(scipy.stats has Benjamini-Hochberg only, which controls the false discovery rate instead).

`document_bootstrap` is the interval over seeds and test documents together (a t interval with the
documents' variance added; its docstring says why not a bootstrap), and `aligned_documents` pairs
the documents of several runs by their hashes.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


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


def common_seeds(arm: Spread, baseline: Spread) -> list[str]:
    """The seeds both ran, each once where it ran (sorted): each such seed's two runs form a pair.
    None where either's seeds are unknown or repeated."""
    seeds = arm.seeds, baseline.seeds
    if not all(s is not None and None not in s and len(set(s)) == len(s) for s in seeds):
        return []
    return sorted(set(seeds[0]) & set(seeds[1]))


def compare(arm: Spread, baseline: Spread) -> Comparison:
    """The arm against the baseline: paired t on the seeds both ran where there are 2 or more (the
    difference then is the mean of those seeds' differences), else Welch on all of each's seeds."""
    if min(arm.n, baseline.n) < 2:
        return Comparison(arm.mean - baseline.mean, None, None, None, "cannot say: 1 seed has no spread")
    common = common_seeds(arm, baseline)
    if len(common) >= 2:
        a = [arm.values[arm.seeds.index(s)] for s in common]
        b = [baseline.values[baseline.seeds.index(s)] for s in common]
        test = "paired t" + ("" if len(common) == max(arm.n, baseline.n) else f" (seeds {', '.join(common)})")
        diff = statistics.fmean(np.subtract(a, b))
        if np.allclose(np.subtract(a, b), a[0] - b[0], rtol=0, atol=1e-12):  # rounding aside
            return Comparison(diff, None, None, None, "cannot say: the per-seed differences do not vary", test)
        result = stats.ttest_rel(a, b)
    else:
        diff, test = arm.mean - baseline.mean, "Welch"
        if arm.sd == 0 and baseline.sd == 0:
            return Comparison(diff, None, None, None, "cannot say: the seeds do not vary", test)
        result = stats.ttest_ind(arm.values, baseline.values, equal_var=False)
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


def _half_width(parts: list[tuple[float, int]]) -> float:
    """The LEVEL t interval's half-width for a sum of independent variance estimates, each given
    as (variance, its degrees of freedom), on Welch-Satterthwaite's degrees of freedom."""
    total = sum(v for v, _ in parts)
    if total <= 0:
        return 0.0
    df = total ** 2 / sum(v ** 2 / df for v, df in parts if v > 0)
    return float(stats.t.ppf(0.5 + LEVEL / 2, df)) * math.sqrt(total)


def document_bootstrap(arm: list[tuple], baseline: list[tuple], paired: bool = False) -> tuple[float, float] | str:
    """The LEVEL interval of the arm's mean test loss minus the baseline's over both sources of
    noise: the seeds (training) and the test documents (which text was drawn for test). `arm` and
    `baseline` hold one (doc_nll, doc_tokens) per seed, over the same documents in the same order;
    with `paired`, the same seeds in the same order. Returns why not, as a string.

    The name is the report's own (it began as a percentile bootstrap, which a simulation found to
    cover 75-85% with 3 seeds: redrawing 3 seeds gives too few distinct draws). It is now a t
    interval whose variance adds the two sources: the seeds' (the per-seed differences' where
    paired, each arm's own otherwise: as paired t or Welch) and the documents' (the delta method's
    variance of the difference of two ratio estimates, token-weighted, over the documents; the seed
    noise is averaged out of it by taking each document's mean over the seeds). Its degrees of
    freedom are Welch-Satterthwaite's over the parts, so 2 or 3 seeds widen it as a t interval
    does, and it is never narrower than the seeds' own t interval on the same documents. Documents no run scored a token of (a shrunk evaluation: eval.max_batches) are left out.
    Documents are taken as independent draws from the text the test split stands for."""
    if min(len(arm), len(baseline)) < 2:
        return "1 seed: no interval over seeds and documents (it would cover the documents only)"
    runs = [(np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)) for nll, tokens in arm + baseline]
    n_docs = {len(nll) for nll, _ in runs} | {len(tokens) for _, tokens in runs}
    if len(n_docs) != 1:
        return f"the runs scored different numbers of test documents ({', '.join(map(str, sorted(n_docs)))})"
    nll, tokens = (np.stack([run[i] for run in runs]) for i in (0, 1))  # runs x documents
    scored = (tokens > 0).all(0)
    if scored.sum() < 2:
        return "fewer than 2 test documents scored in every run"
    nll, tokens = nll[:, scored], tokens[:, scored]
    loss = nll.sum(1) / tokens.sum(1)  # each run's loss on the documents every run scored
    k = len(arm)
    if paired:
        per_seed = loss[:k] - loss[k:]
        seeds = [(per_seed.var(ddof=1) / k, k - 1)]
    else:
        seeds = [(loss[:k].var(ddof=1) / k, k - 1), (loss[k:].var(ddof=1) / len(baseline), len(baseline) - 1)]
    z = sum(sign * _linearised(nll[part].mean(0), tokens[part].mean(0))
            for sign, part in ((1, slice(0, k)), (-1, slice(k, None))))
    parts = [*seeds, (z.var(ddof=1) / len(z), len(z) - 1)]
    if sum(v for v, _ in parts) <= 0:
        return "the runs do not vary over seeds or documents"
    # Never narrower than the seeds' own t interval (paired t or Welch): where the seeds' variance,
    # estimated on few degrees of freedom, comes out small by chance, Satterthwaite's degrees of
    # freedom rise with it; 2 seeds covered 0.89 without this bound (docs/report.md's table).
    half = max(_half_width(parts), _half_width(seeds))
    diff = loss[:k].mean() - loss[k:].mean()
    return float(diff - half), float(diff + half)


def _linearised(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Each document's share of a ratio estimate's error, sum(nll) / sum(tokens), by the delta
    method: its variance over the documents, / n, is the estimate's variance."""
    return (nll - nll.sum() / tokens.sum() * tokens) / tokens.mean()


def aligned_documents(runs: list[dict]) -> list[tuple] | str:
    """Each run's (doc_nll, doc_tokens), from its test_scores.json content, in one order of
    documents: paired by the hash of each document (doc_hash), or by position where no run has
    hashes (files written before they were recorded). Returns why not, as a string, where the runs
    were scored on different test text."""
    hashed = ["doc_hash" in scores for scores in runs]
    if not any(hashed):
        return [(scores["doc_nll"], scores["doc_tokens"]) for scores in runs]
    if not all(hashed):
        return "some runs' test_scores.json name their documents (doc_hash) and some do not"
    keys = [_occurrences(scores["doc_hash"]) for scores in runs]
    if any(set(k) != set(keys[0]) for k in keys):
        return "the runs were scored on different test text (their documents' hashes differ)"
    order = sorted(keys[0])
    out = []
    for scores, key in zip(runs, keys):
        where = {name: i for i, name in enumerate(key)}
        index = [where[name] for name in order]
        out.append(([scores["doc_nll"][i] for i in index], [scores["doc_tokens"][i] for i in index]))
    return out


def _occurrences(hashes: list[str]) -> list[tuple[str, int]]:
    """Each hash with how many times it came before: two identical documents are two documents."""
    seen: dict[str, int] = {}
    out = []
    for name in hashes:
        out.append((name, seen.get(name, 0)))
        seen[name] = seen.get(name, 0) + 1
    return out


def needs_more_seeds(arm: Spread, baseline: Spread) -> bool:
    """The study's rule for an arm: within twice the spread of the baseline (the larger of the two
    spreads), both need at least 3 seeds. (The baseline always needs 3; the report checks that.)"""
    spreads = [s for s in (arm.sd, baseline.sd) if s is not None]
    if not spreads:
        return min(arm.n, baseline.n) < 3
    return abs(arm.mean - baseline.mean) <= 2 * max(spreads) and min(arm.n, baseline.n) < 3
