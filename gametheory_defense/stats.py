"""Statistics of results: the game value's standard error, paired differences, per-example worst case, eps curves.

Every estimate here is a mean over evaluation examples, the independent unit (draws of a
randomized model on one example share that example). Intervals are normal intervals
``estimate +- z * stderr`` with ``z`` the two-sided normal quantile of ``confidence``
(Wasserman, 2004, "All of Statistics", section 6.3.2); accuracies are clipped to [0, 1].

- :func:`game_value_stderr`: the game value ``v = x^T A y`` of a solved game equals
  ``(x^T A)_j`` for every column ``j`` in the attacker's support; with independent cells,
  ``se((x^T A)_j) = sqrt(sum_i x_i^2 se_ij^2)``, and the value's error is taken as the
  largest of these over the support (conservative: the binding column is not known exactly).
- :func:`paired_difference`: the mean of per-example differences of two models on the
  same examples, whose error is far smaller than that of two independent figures.
- :func:`per_example_worst_case`: for each example, the lowest probability of a correct
  answer over clean and every attack (Carlini et al., 2019, "On evaluating adversarial
  robustness"): the number to quote.
- :func:`robustness_curve`: that worst case at several radii eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm as _normal

from gametheory_defense.identity import SUPPORT_TOL

__all__ = [
    "Interval",
    "PairedDifference",
    "normal_interval",
    "strategy_stderr",
    "game_value_stderr",
    "game_value_interval",
    "paired_difference",
    "per_example_worst_case",
    "robustness_curve",
]



@dataclass(frozen=True)
class Interval:
    """An estimate with its standard error and normal confidence interval.

    Attributes
    ----------
    estimate, stderr, low, high, confidence : float
    """

    estimate: float
    stderr: float
    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able fields."""
        return {
            "estimate": self.estimate,
            "stderr": self.stderr,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-example difference ``a - b`` of two models on the same examples.

    Attributes
    ----------
    mean, stderr, low, high, confidence : float
    n : int
        Number of examples.
    """

    mean: float
    stderr: float
    low: float
    high: float
    confidence: float
    n: int


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return float(_normal.ppf(0.5 + confidence / 2.0))


def normal_interval(
    estimate: float, stderr: float, *, confidence: float = 0.95, bounds: tuple[float, float] | None = (0.0, 1.0)
) -> Interval:
    """``estimate +- z * stderr`` (Wasserman, 2004), clipped to ``bounds`` (accuracies: [0, 1]).

    A non-finite ``stderr`` (no error known) gives a ``nan`` interval.
    """
    z = _z(confidence)
    est, se = float(estimate), float(stderr)
    if not math.isfinite(se):
        return Interval(est, se, float("nan"), float("nan"), float(confidence))
    if se < 0:
        raise ValueError(f"stderr must be >= 0, got {se!r}")
    low, high = est - z * se, est + z * se
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return Interval(est, se, float(low), float(high), float(confidence))


def strategy_stderr(stderr: Any, strategy: Sequence[float] | np.ndarray, columns: Sequence[int]) -> float:
    """Largest standard error of ``(x^T A)_j`` over ``columns`` (cells independent).

    Parameters
    ----------
    stderr : array_like
        Standard errors of the cells, shape ``(defenders, attackers)``.
    strategy : array_like
        The defender's mixed strategy ``x``.
    columns : sequence of int
        Attacker columns to consider (non-empty).
    """
    se = np.asarray(stderr, dtype=np.float64)
    x = np.asarray(strategy, dtype=np.float64)
    if se.ndim != 2 or x.shape != (se.shape[0],):
        raise ValueError(f"stderr must be (defenders, attackers) and strategy (defenders,), got {se.shape} and {x.shape}")
    cols = list(columns)
    if not cols:
        raise ValueError("columns must not be empty")
    return float(max(math.sqrt(float(np.sum(x**2 * se[:, j] ** 2))) for j in cols))


def game_value_stderr(matrix: Any, equilibrium: Any, *, tol: float = SUPPORT_TOL) -> float:
    """Standard error of the game value from the cells of the attacker's binding columns.

    Parameters
    ----------
    matrix : PayoffMatrix
        The game (its ``stderr``; ``nan`` is returned when it has none).
    equilibrium : Equilibrium
        Its solution (``defender_strategy``, ``attacker_strategy``).
    tol : float
        Attacker probabilities above ``tol`` (default :data:`~gametheory_defense.identity.SUPPORT_TOL`)
        are the binding columns.
    """
    if getattr(matrix, "stderr", None) is None:
        return float("nan")
    y = np.asarray(equilibrium.attacker_strategy, dtype=np.float64)
    cols = [j for j, p in enumerate(y) if p > tol] or [int(np.argmax(y))]
    return strategy_stderr(matrix.stderr, equilibrium.defender_strategy, cols)


def game_value_interval(matrix: Any, equilibrium: Any, *, confidence: float = 0.95) -> Interval:
    """The game value with its standard error and normal confidence interval."""
    return normal_interval(float(equilibrium.value), game_value_stderr(matrix, equilibrium), confidence=confidence)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> PairedDifference:
    """Mean of ``a - b`` over the same examples with its normal interval (unclipped).

    Parameters
    ----------
    a, b : array_like
        Per-example scores (e.g. :func:`per_example_worst_case`) of two models on the same
        examples, in the same order.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"a and b must be 1-D of the same non-zero length, got {x.shape} and {y.shape}")
    diff = x - y
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan")
    iv = normal_interval(mean, se, confidence=confidence, bounds=None)
    return PairedDifference(mean, se, iv.low, iv.high, float(confidence), int(diff.size))


def per_example_worst_case(clean: Any, attacks: Sequence[Any] | Mapping[str, Any]) -> np.ndarray:
    """For each example, the lowest probability of a correct answer over clean and every attack.

    Parameters
    ----------
    clean : array_like
        Clean outcomes, ``(draws, n)`` or ``(n,)`` (bool or probabilities).
    attacks : sequence or mapping of array_like
        Outcomes under each attack, same layout.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64; its mean is the per-example worst-case accuracy.
    """
    def per_example(o: Any) -> np.ndarray:
        arr = np.asarray(o, dtype=np.float64)
        return arr if arr.ndim == 1 else arr.mean(axis=0)

    worst = per_example(clean)
    values = attacks.values() if isinstance(attacks, Mapping) else attacks
    for o in values:
        p = per_example(o)
        if p.shape != worst.shape:
            raise ValueError(f"outcomes cover {p.shape[0]} examples, clean covers {worst.shape[0]}")
        worst = np.minimum(worst, p)
    return worst


def robustness_curve(
    evaluate_at: Callable[[float], Any], eps_list: Sequence[float], *, confidence: float = 0.95
) -> dict[float, Interval]:
    """The per-example worst-case accuracy at each radius eps.

    Parameters
    ----------
    evaluate_at : callable
        ``evaluate_at(eps)`` returns a :class:`~gametheory_defense.evaluation.RobustnessReport`
        (typically :func:`~gametheory_defense.evaluation.evaluate` of a fixed model and
        suite at that eps).
    eps_list : sequence of float
        Radii, each finite and >= 0.

    Returns
    -------
    dict
        ``eps -> Interval`` of the worst case: the report's own interval bounds, and the
        standard error over examples of its per-example worst case (``nan`` when the
        report carries no per-example outcomes).
    """
    out: dict[float, Interval] = {}
    for eps in eps_list:
        e = float(eps)
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
        rep = evaluate_at(e)
        outcomes = getattr(rep, "worst_case_outcomes", None)
        se = float("nan")
        if outcomes is not None and np.asarray(outcomes).shape[-1] > 1:
            per_example = np.asarray(outcomes, dtype=np.float64).reshape(-1, np.asarray(outcomes).shape[-1]).mean(axis=0)
            se = float(per_example.std(ddof=1) / math.sqrt(per_example.size))
        out[e] = Interval(
            float(rep.worst_case_accuracy), se, float(rep.worst_case_ci_low), float(rep.worst_case_ci_high), float(confidence)
        )
    return out
