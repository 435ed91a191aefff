"""The analysis a sweep declares before it runs (the rootcause sweep's `rootcause.analysis` and
`rootcause.margin`), applied exactly: its claims, each an arm against another (the baseline unless
it says) on one metric in one direction, and nothing else form the family; the margin says what
effect is too small to matter.

The deciding analysis, per metric, is one linear model of every arm's runs at their chosen LRs:
value ~ arm + seed, the seed a block (a seed fixes initialisation and data order for every arm, so
its shared part cancels from every contrast, and all arms' residuals estimate the noise together:
~2(a - 1) degrees of freedom at 3 seeds and a arms instead of a paired t's 2). The residual
variance is estimated per variance group (arms of another model shape scatter more: the config's
`groups`), and the model refitted by weighted least squares with those variances (statsmodels'
WLS, two steps: feasible GLS). A contrast's degrees of freedom are the fewest of its groups'.

Intervals are simultaneous over the family: each at 1 - (1 - level) / m for m claims (Bonferroni,
Holm's first step), so one that leaves out 0 is a rejection by Holm's procedure too. Verdicts:
*supported* (the interval lies beyond 0 in the claimed direction), *contradicted* (beyond 0 in the
other), *not supported* (it lies inside +-margin: two one-sided tests at the same level), *cannot
tell* otherwise. Every claim gets the smallest effect the design detects with the declared power;
an undecided one also the seeds per arm it would need to be decided at the margin with that power
either way (no effect: inside the margin; an effect of the margin: beyond 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

MAX_SEEDS = 1000  # seeds-needed searches stop here: "more than 1000"
ITERATIONS = 20  # feasible GLS: re-estimating the groups' variances; they settle in fewer on the tests' data
FLOOR = 1e-12  # a group's variance is kept above 0 (identical runs), so its weight stays finite


@dataclass
class Claim:
    claim: str  # the words of the claim, as the study states it
    arm: str  # the arm's swept value (e.g. `size` for +variant=size)
    metric: str  # a summary.json key, e.g. test_loss, test_eos_logp, sample_repeated_4grams
    direction: str  # lower | higher: which way the arm moves the metric if the claim holds
    against: str = "baseline"
    margin: float | None = None  # this claim's own margin (its metric's units); None: the study's


@dataclass
class Analysis:
    claims: list[Claim]
    margin: float  # the study's margin: effects inside +-margin do not matter
    level: float = 0.95
    power: float = 0.8
    groups: dict[str, list[str]] = field(default_factory=dict)  # variance group -> arms (the rest: one group)

    @classmethod
    def declared(cls, rootcause: dict | None) -> Analysis | None:
        """The analysis of a job's `rootcause` config node; None where it declares no claims."""
        node = (rootcause or {}).get("analysis") or {}
        if not node.get("claims"):
            return None
        claims = [Claim(**claim) for claim in node["claims"]]
        for claim in claims:
            if claim.direction not in ("lower", "higher"):
                raise ValueError(f"claim {claim.claim!r}: direction must be lower or higher, not {claim.direction!r}")
        return cls(claims, float(rootcause["margin"]), node.get("level", 0.95), node.get("power", 0.8),
                   dict(node.get("groups") or {}))

    def critical(self, df: float) -> float:
        """The simultaneous interval's t quantile: two-sided at (1 - level) / m."""
        return stats.t.ppf(1 - (1 - self.level) / (2 * len(self.claims)), df)

    def detectable(self, se: float, df: float) -> float:
        """The smallest effect found with the declared power at this standard error."""
        return (self.critical(df) + stats.t.ppf(self.power, df)) * se

    def decisive(self, se: float, df: float) -> float:
        """The smallest margin decided with the declared power either way: an effect of 0 found
        inside it (|estimate| + the interval's half-width < margin) and one of the margin found
        beyond 0. The first asks more: t at (1 + power) / 2 where detecting asks t at power."""
        return (self.critical(df) + stats.t.ppf((1 + self.power) / 2, df)) * se


@dataclass
class Contrast:
    effect: float  # arm minus against, in the metric's units
    se: float
    df: float
    seeds: int  # the runs behind the arm's estimate

    def p(self) -> float:
        return float(2 * stats.t.sf(abs(self.effect / self.se), self.df)) if self.se > 0 else 0.0


def fit(runs: list[tuple[str, str, float]], groups: dict[str, str]) -> dict | str:
    """The blocked model of `runs` (arm, seed, value) -> the fit's parts {arms, cov, params, df by
    group, group of each arm}, or why not. `groups` maps an arm to its variance group."""
    import statsmodels.api as sm

    shared = {seed for _, seed, _ in runs if len({arm for arm, s, _ in runs if s == seed}) > 1}
    runs = [run for run in runs if run[1] in shared]  # a seed one arm alone ran tells nothing of the others
    arms = list(dict.fromkeys(arm for arm, _, _ in runs))
    seeds = list(dict.fromkeys(seed for _, seed, _ in runs))
    x = np.zeros((len(runs), len(arms) + len(seeds) - 1))
    for row, (arm, seed, _) in enumerate(runs):
        x[row, arms.index(arm)] = 1.0  # one mean per arm ...
        if seeds.index(seed):
            x[row, len(arms) + seeds.index(seed) - 1] = 1.0  # ... shifted by each seed but the first
    y = np.array([value for _, _, value in runs])
    ols = sm.OLS(y, x).fit()
    if ols.df_resid < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return "no residual variance: every arm needs 2 seeds, some of them shared"
    group_of = np.array([groups.get(arm, "") for arm, _, _ in runs])
    df = {group: ols.df_resid * (group_of == group).sum() / len(runs) for group in set(group_of)}
    variance = dict.fromkeys(df, float(ols.scale))
    for _ in range(ITERATIONS):  # a noisy group's residuals leak into the others' through the seed means
        wls = sm.WLS(y, x, weights=1 / np.array([variance[g] for g in group_of])).fit()
        resid = y - x @ wls.params
        variance = {g: max(float((resid[group_of == g] ** 2).sum() / df[g]), FLOOR) for g in df}
    return {"arms": arms, "params": wls.params, "cov": wls.normalized_cov_params, "df": df,
            "group": {arm: groups.get(arm, "") for arm in arms},
            "n": {arm: sum(a == arm for a, _, _ in runs) for arm in arms}}


def contrast(model: dict, arm: str, against: str) -> Contrast:
    """The arm's mean minus `against`'s, with seeds as blocks."""
    vector = np.zeros(len(model["params"]))
    vector[model["arms"].index(arm)], vector[model["arms"].index(against)] = 1.0, -1.0
    df = min(model["df"][model["group"][arm]], model["df"][model["group"][against]])
    return Contrast(float(vector @ model["params"]), float(math.sqrt(vector @ model["cov"] @ vector)), df,
                    model["n"][arm])


def verdict(analysis: Analysis, claim: Claim, low: float, high: float) -> str:
    margin = analysis.margin if claim.margin is None else claim.margin
    if (high < 0) if claim.direction == "lower" else (low > 0):
        return "supported"
    if (low > 0) if claim.direction == "lower" else (high < 0):
        return "contradicted"
    if -margin < low and high < margin:
        return "not supported"
    return "cannot tell"


def seeds_needed(analysis: Analysis, claim: Claim, c: Contrast) -> int | None:
    """Seeds per arm at which the claim is decided at the margin with the declared power (an
    effect of 0 "not supported", one of the margin "supported" or "contradicted"), from the
    observed variance (a contrast's SE scales as 1 / sqrt(seeds), its degrees of freedom with
    seeds - 1); None beyond MAX_SEEDS."""
    margin = analysis.margin if claim.margin is None else claim.margin
    spread = c.se * math.sqrt(c.seeds)
    for n in range(2, MAX_SEEDS + 1):
        df = max(1.0, c.df * (n - 1) / max(1, c.seeds - 1))
        if analysis.decisive(spread / math.sqrt(n), df) <= margin:
            return n
    return None
