"""Equilibrium selection among the defender's optimal strategies (a second-stage program).

A zero-sum game can have a whole polytope of optimal defender strategies. Given a first-stage
solution ``(x*, y*)``, the optimal set is approximated by

    X(slack) = { x in simplex :  (x A)_j >= L* - slack  for every attacker j },

with ``L* = min_j (x* A)_j`` the first-stage guarantee (so ``x*`` itself is always feasible),
and ``slack = max(min((tol - e*) / 2, 1e-9 (1 + max|A|)), 1e-12 (1 + max|A|))`` where ``e*``
is the first-stage exploitability. The slack only absorbs the second-stage solver's
round-off (HiGHS runs at feasibility tolerance 1e-10): it is capped at ``1e-9 (1 + max|A|)``
whatever ``tol`` is, so a loose ``tol`` never lets selection trade guaranteed accuracy for
clean accuracy or entropy. Since the game value ``V >= L*``, ``X(slack)`` contains every
optimal strategy. Any ``x`` in ``X(slack)`` paired with ``y*`` has exploitability at most
``e* + slack <= tol`` (when ``e* <= tol``), and by the interchangeability of zero-sum
equilibria the attacker's ``y*`` stays optimal. The rules:

- ``"clean"``: maximise expected clean accuracy ``c @ x`` over ``X`` (an LP; HiGHS dual
  simplex, so a vertex of the optimal face).
- ``"max-entropy"``: maximise ``-sum x log x`` over ``X`` (an exponential-cone program in
  CVXPY; the unique, most mixed optimal strategy: Jaynes 1957).
- ``"min-support"``: fewest defenders with positive probability. Minimum support over a
  polytope is NP-hard in general, so: supports of size 1 and 2 are searched exactly at any
  ``m`` (a vectorised scan of the rows, then of the pairs screened with bit sets); otherwise
  one greedy elimination pass from an LP vertex (drop each defender, smallest probability
  first, if the rest can still guarantee ``L* - slack``) gives an inclusion-minimal support,
  and the sizes between 3 and that one are searched exactly when they hold at most 2,048
  subsets. When they do not, the answer is a heuristic and a warning says so.

Numerical safety: a second-stage solution that violates ``X(slack)`` by round-off is mixed
with ``x*`` just enough to satisfy it, so the certificate bound above always holds.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import scipy.optimize

from gametheory_defense.errors import SolverError
from gametheory_defense.solvers._core import SELECTIONS, exploitability
from gametheory_defense.solvers.lp import maximin

__all__ = ["select_defender_strategy", "selection_slack", "EXACT_MIN_SUPPORT_BUDGET", "SLACK_CAP", "SLACK_FLOOR"]

EXACT_MIN_SUPPORT_BUDGET = 2048
"""Largest number of candidate supports the exact ``"min-support"`` search will try."""

SLACK_CAP = 1e-9
"""Largest selection slack, relative to ``1 + max|A|`` (see the module docstring)."""
SLACK_FLOOR = 1e-12
"""Smallest selection slack, relative to ``1 + max|A|``."""

_TIGHT = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


def selection_slack(values: np.ndarray, x: np.ndarray, y: np.ndarray, tol: float) -> float:
    """The slack of the optimal-set constraint (see the module docstring)."""
    gap = exploitability(values, x, y)
    scale = 1.0 + float(np.abs(values).max())
    return max(min((tol - gap) / 2.0, SLACK_CAP * scale), SLACK_FLOOR * scale)


def select_defender_strategy(
    values: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    rule: str,
    *,
    tol: float,
    clean_accuracy: np.ndarray | None = None,
) -> np.ndarray:
    """Pick the defender strategy named by ``rule`` among the (slack-)optimal ones.

    Parameters
    ----------
    values : ndarray, shape (m, n)
        Payoffs to the defender.
    x, y : ndarray
        A first-stage solution (clean distributions).
    rule : {"clean", "max-entropy", "min-support"}
        The selection rule (see the module docstring).
    tol : float
        The exploitability target; sets the slack.
    clean_accuracy : ndarray, shape (m,), optional
        Required by ``"clean"``.

    Returns
    -------
    ndarray
        A distribution ``x'`` with ``min_j (x' A)_j >= min_j (x A)_j - slack``.

    Raises
    ------
    ValueError
        For an unknown rule or ``"clean"`` without clean accuracies.
    SolverError
        If the second-stage program fails.
    """
    if rule not in SELECTIONS:
        raise ValueError(f"unknown select rule {rule!r}; choose from {', '.join(SELECTIONS)} or None")
    if rule == "clean" and clean_accuracy is None:
        raise ValueError(
            "select='clean' needs each defender's clean accuracy: pass a PayoffMatrix with "
            "clean_accuracy set, or choose select='max-entropy' / 'min-support'"
        )
    guarantee = float(np.min(x @ values))
    slack = selection_slack(values, x, y, tol)
    floor = guarantee - slack
    if rule == "clean":
        assert clean_accuracy is not None
        chosen = _max_linear(values, np.asarray(clean_accuracy, dtype=np.float64), floor)
    elif rule == "max-entropy":
        chosen = _max_entropy(values, floor + slack / 2.0)
    else:
        chosen = _min_support(values, x, floor)
    return _repair(values, chosen, x, floor)


def _repair(values: np.ndarray, chosen: np.ndarray, x: np.ndarray, floor: float) -> np.ndarray:
    """Mix ``chosen`` with the feasible ``x`` just enough that ``min_j (x' A)_j >= floor``."""
    chosen = np.clip(chosen, 0.0, None)
    chosen = chosen / chosen.sum()
    worst = float(np.min(chosen @ values))
    if worst >= floor:
        return chosen
    base = float(np.min(x @ values))
    # min_j((1-l) c A + l x A)_j >= (1-l) worst + l base  >= floor  for  l >= (floor - worst)/(base - worst)
    lam = min(1.0, (floor - worst) / max(base - worst, 1e-300) * (1.0 + 1e-9) + 1e-15)
    mixed = (1.0 - lam) * chosen + lam * x
    return mixed / mixed.sum()


def _optimal_set_constraints(values: np.ndarray, floor: float) -> dict[str, Any]:
    m, n = values.shape
    return {
        "A_ub": -values.T,
        "b_ub": np.full(n, -floor),
        "A_eq": np.ones((1, m)),
        "b_eq": np.ones(1),
        "bounds": (0.0, None),
    }


def _max_linear(values: np.ndarray, weights: np.ndarray, floor: float) -> np.ndarray:
    """``argmax weights @ x`` over the slack-optimal set (HiGHS dual simplex: a vertex)."""
    res = scipy.optimize.linprog(
        -weights, method="highs-ds", options=dict(_TIGHT), **_optimal_set_constraints(values, floor)
    )
    if res.status != 0 or res.x is None:
        raise SolverError(f"selection LP failed: {res.message}")
    return np.asarray(res.x)


def _max_entropy(values: np.ndarray, floor: float) -> np.ndarray:
    """``argmax -sum x log x`` over the slack-optimal set (CVXPY, exponential cone)."""
    import cvxpy as cp

    m, _ = values.shape
    x = cp.Variable(m, nonneg=True)
    problem = cp.Problem(cp.Maximize(cp.sum(cp.entr(x))), [values.T @ x >= floor, cp.sum(x) == 1])
    settings = {
        # Tight enough that round-off stays well inside the selection slack (>= 1e-12).
        "CLARABEL": {"tol_feas": 1e-13, "tol_gap_abs": 1e-13, "tol_gap_rel": 1e-13, "max_iter": 500},
        "SCS": {"eps_abs": 1e-12, "eps_rel": 1e-12, "max_iters": 100_000},
    }
    errors = []
    for solver in [s for s in settings if s in cp.installed_solvers()]:
        try:
            with warnings.catch_warnings():
                # "Solution may be inaccurate": the repair step and the certificate handle it.
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, **settings[solver])
        except cp.error.SolverError as exc:
            errors.append(f"{solver}: {exc}")
            continue
        if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and x.value is not None:
            return np.asarray(x.value)
        errors.append(f"{solver}: status {problem.status}")
    raise SolverError(f"max-entropy selection failed ({'; '.join(errors) or 'no exponential-cone solver'})")


def _restricted_guarantee(values: np.ndarray, rows: list[int]) -> tuple[float, np.ndarray]:
    """Best guarantee using only ``rows`` and the strategy achieving it (as a full vector)."""
    x_rows, _, v = maximin(values[rows], algorithm="highs-ds", options=dict(_TIGHT))
    x = np.zeros(values.shape[0])
    x[rows] = np.clip(x_rows, 0.0, None)
    x /= x.sum()
    return float(np.min(x @ values)), x


def _min_support(values: np.ndarray, x: np.ndarray, floor: float) -> np.ndarray:
    """Fewest defenders guaranteeing ``floor``: exact up to support 2 at any size, beyond that
    exact when affordable, otherwise inclusion-minimal (with a warning saying so)."""
    m = values.shape[0]
    single = _best_single(values, floor)
    if single is not None:
        return single
    pair = _best_pair(values, floor)
    if pair is not None:
        return pair
    # Start from a vertex of the optimal set: its support is at most (tight columns + 1).
    start = _max_linear(values, np.zeros(m), floor)
    start = np.clip(start, 0.0, None)
    support = [int(i) for i in np.flatnonzero(start > 1e-12)]
    if float(np.min(start / start.sum() @ values)) < floor - 1e-9:
        start, support = x, [int(i) for i in np.flatnonzero(x > 0)]
    best = start / start.sum()
    # Greedy elimination, smallest probability first: feasibility is monotone in the allowed
    # set, so one pass leaves no single defender that can still be dropped.
    for i in sorted(support, key=lambda k: best[k]):
        if i not in support or len(support) == 1:
            continue
        trial_rows = [k for k in support if k != i]
        guarantee, trial = _restricted_guarantee(values, trial_rows)
        if guarantee >= floor:
            best = trial
            support = [k for k in trial_rows if trial[k] > 0]
    # Sizes 1 and 2 were searched exactly above; sizes 3 .. |support| - 1 when affordable.
    size = len(support)
    if size <= 3:
        return best
    candidates = sum(math.comb(m, k) for k in range(3, size))
    if candidates <= EXACT_MIN_SUPPORT_BUDGET:
        for k in range(3, size):
            for rows in itertools.combinations(range(m), k):
                guarantee, trial = _restricted_guarantee(values, list(rows))
                if guarantee >= floor:
                    return trial
        return best
    warnings.warn(
        f"select='min-support': no optimal strategy uses 1 or 2 defenders; the {size} returned are "
        f"inclusion-minimal (none can be dropped) but supports of 3 to {size - 1} were not all "
        f"searched ({candidates} subsets > {EXACT_MIN_SUPPORT_BUDGET}): a heuristic answer",
        stacklevel=4,
    )
    return best


def _best_single(values: np.ndarray, floor: float) -> np.ndarray | None:
    """The pure strategy with the best guarantee, if one guarantees ``floor``."""
    worst = values.min(axis=1)
    i = int(np.argmax(worst))
    if worst[i] < floor:
        return None
    x = np.zeros(values.shape[0])
    x[i] = 1.0
    return x


def _best_pair(values: np.ndarray, floor: float) -> np.ndarray | None:
    """A mixture of two defenders guaranteeing ``floor``, if any (exact search, any ``m``).

    A pair ``(i, k)`` can only work if every column has a payoff ``>= floor`` in row ``i``
    or row ``k``: pairs are screened with bit sets (``m^2 n / 8`` byte operations), and
    each survivor's mixing weight ``t`` is the interval where ``t A_i + (1 - t) A_k >= floor``
    holds column by column (``O(n)``).
    """
    m, n = values.shape
    good = np.packbits(values >= floor, axis=1)
    full = np.packbits(np.ones(n, dtype=bool))
    for i in range(m - 1):
        covers = np.all((good[i] | good[i + 1 :]) == full, axis=1)
        for offset in np.flatnonzero(covers):
            k = i + 1 + int(offset)
            t = _pair_weight(values[i], values[k], floor)
            if t is not None:
                x = np.zeros(m)
                x[i], x[k] = t, 1.0 - t
                return x
    return None


def _pair_weight(row_i: np.ndarray, row_k: np.ndarray, floor: float) -> float | None:
    """A weight ``t`` in [0, 1] with ``min_j (t row_i + (1 - t) row_k)_j >= floor`` (the middle of
    the feasible interval), or None."""
    d = row_i - row_k
    need = floor - row_k  # t d_j >= need_j
    up, down = d > 0, d < 0
    if np.any(~up & ~down & (need > 0)):
        return None
    low = max(0.0, float(np.max(need[up] / d[up]))) if up.any() else 0.0
    high = min(1.0, float(np.min(need[down] / d[down]))) if down.any() else 1.0
    if low > high:
        return None
    return 0.5 * (low + high)
