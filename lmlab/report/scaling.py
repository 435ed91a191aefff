"""Loss against model size at a fixed token budget: L(N) = E + A / N^alpha over non-embedding
parameters N (Kaplan et al. 2020), fitted by least squares (scipy's curve_fit), or the power law
A / N^alpha where the points cannot identify E; then the extrapolation to the next size with a 95%
prediction interval for one more run there.

N is counted in millions, so A is the reducible loss of a 1M-parameter model and the fit is well
conditioned. E is taken as identified when the fit keeps it strictly inside [0, the lowest loss]
and its standard error is smaller than itself; the interval comes from the fit's covariance (the
delta method) plus the points' scatter about the curve, on a t distribution with the fit's
residual degrees of freedom, so 4 or 5 sizes give an honestly wide interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import curve_fit

from lmlab.report.stats import LEVEL

MIN_SIZES = 4
UNIT = 1e6
FULL, POWER = "E + A / N^alpha", "A / N^alpha"


def _full(x, e, a, alpha):
    return e + a * x ** -alpha


def _power(x, a, alpha):
    return a * x ** -alpha


def _gradient(form: str, x: float, params: np.ndarray) -> np.ndarray:
    a, alpha = params[-2:]
    d_a, d_alpha = x ** -alpha, -a * x ** -alpha * np.log(x)
    return np.array([1.0, d_a, d_alpha] if form == FULL else [d_a, d_alpha])


@dataclass
class ScalingFit:
    form: str  # FULL or POWER
    params: dict[str, float]  # E (FULL only), A (N in millions), alpha
    errors: dict[str, float]  # their standard errors
    n_points: int
    sizes: list[float]  # the distinct N, in parameters
    next_n: float  # the size extrapolated to: the sweep's geometric step past its largest
    prediction: float
    low: float
    high: float
    note: str  # why E was left out, else ""

    def predict(self, n) -> np.ndarray:
        x, p = np.asarray(n, dtype=float) / UNIT, self.params
        return _full(x, p["E"], p["A"], p["alpha"]) if self.form == FULL else _power(x, p["A"], p["alpha"])


def _fit_full(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """E, A, alpha and their covariance, or why E cannot be identified."""
    if len(x) <= 3:
        return f"{len(x)} points leave no degree of freedom to estimate E's error"
    try:
        params, cov = curve_fit(_full, x, y, p0=(0.5 * y.min(), y.max() - 0.5 * y.min(), 0.3),
                                bounds=([0.0, 0.0, 0.0], [y.min(), np.inf, 5.0]))
    except (RuntimeError, ValueError) as e:
        return f"the fit with E did not converge ({e})"
    errors = np.sqrt(np.diag(cov))
    if not np.all(np.isfinite(errors)):
        return "the fit with E has no finite covariance"
    if not 1e-6 * y.min() < params[0] < (1 - 1e-6) * y.min():
        return f"E ran to its bound ({params[0]:.3g}; E must lie in [0, {y.min():.3g}])"
    if errors[0] >= params[0]:
        return f"E = {params[0]:.3g} has a standard error of {errors[0]:.2g}, as large as itself"
    return params, cov


def fit_scaling(n_params, losses) -> ScalingFit | str:
    """The fit of `losses` against `n_params` (one point per run; several seeds per size welcome),
    or, as a string, why there is none."""
    x, y = np.asarray(n_params, dtype=float) / UNIT, np.asarray(losses, dtype=float)
    sizes = np.unique(x)
    if len(sizes) < MIN_SIZES:
        return f"{len(sizes)} model sizes; fitting L(N) needs at least {MIN_SIZES}"
    full = _fit_full(x, y)
    if isinstance(full, str):
        slope, intercept = np.polyfit(np.log(x), np.log(y), 1)  # the log-log line starts the search
        form, note = POWER, f"E left out: {full}"
        params, cov = curve_fit(_power, x, y, p0=(np.exp(intercept), -slope))
    else:
        (params, cov), form, note = full, FULL, ""
    dof = len(x) - len(params)
    next_x = sizes[-1] * (sizes[-1] / sizes[0]) ** (1 / (len(sizes) - 1))
    model = _full if form == FULL else _power
    prediction = float(model(next_x, *params))
    scatter = float(np.sum((y - model(x, *params)) ** 2) / dof) if dof else np.inf
    gradient = _gradient(form, next_x, params)
    half = stats.t.ppf(0.5 + LEVEL / 2, dof) * np.sqrt(gradient @ cov @ gradient + scatter) if dof else np.inf
    names = ["E", "A", "alpha"][-len(params):]
    return ScalingFit(form, dict(zip(names, map(float, params))), dict(zip(names, map(float, np.sqrt(np.diag(cov))))),
                      len(x), [float(s * UNIT) for s in sizes], float(next_x * UNIT), prediction,
                      prediction - float(half), prediction + float(half), note)
