"""The minimax linear program solved once with HiGHS, both players' strategies at once.

Dantzig (1951) showed a zero-sum game is a linear program; the attacker's strategy is the
dual of the defender's, so one solve gives both (HiGHS: Huangfu and Hall 2018).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import scipy.optimize

from gametheory_defense.errors import SolverError
from gametheory_defense.solvers._core import OPTIMAL, SolverOutput, exploitability

__all__ = [
    "solve_lp",
    "maximin",
    "objective",
    "inequality_constraints",
    "equality_constraints",
    "variable_bounds",
    "HighsAlgorithm",
]

log = logging.getLogger(__name__)

HighsAlgorithm = Literal["auto", "highs", "highs-ds", "highs-ipm"]

# Games with at least this many entries use the interior-point method with crossover: on
# dense random games it is ~4x faster than dual simplex at 1000 x 1000, and the crossover
# still returns a vertex with exact duals. Small games use dual simplex (lower overhead).
IPM_MIN_ENTRIES = 40_000

# Tight HiGHS tolerances used for the retry when a solution's certificate misses ``tol``.
_TIGHT = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


# The defender's LP (von Neumann's maximin), variables z = (x_1, ..., x_m, v):
#
#     maximize    v
#     subject to  v - sum_i x_i A[i, j] <= 0      for every attacker j = 1..n   (dual y_j >= 0)
#                 sum_i x_i               = 1                                   (dual u, free)
#                 x_i >= 0,  v free
#
# linprog minimises, so the objective is c = (0, ..., 0, -1). The LP dual is the attacker's
# LP  (minimize u  s.t.  sum_j A[i, j] y_j <= u for every i,  sum_j y_j = 1,  y >= 0), so the
# multipliers of the n inequalities are the attacker's minimax strategy. HiGHS reports them
# as ``ineqlin.marginals`` = d(objective)/d(b_ub) <= 0 for the minimisation, hence
# y = -marginals. One solve yields x, y and the value v.


def objective(m: int) -> np.ndarray:
    """``c`` of ``minimize c @ z``: ``-v`` with ``z = (x_1..x_m, v)``."""
    c = np.zeros(m + 1)
    c[-1] = -1.0
    return c


def inequality_constraints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(A_ub, b_ub)`` of ``v - (x A)_j <= 0`` for every column ``j``."""
    m, n = values.shape
    a_ub = np.empty((n, m + 1))
    np.negative(values.T, out=a_ub[:, :m])
    a_ub[:, m] = 1.0
    return a_ub, np.zeros(n)


def equality_constraints(m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A_eq, b_eq)`` of ``sum_i x_i = 1`` (``v`` has coefficient 0)."""
    a_eq = np.ones((1, m + 1))
    a_eq[0, m] = 0.0
    return a_eq, np.ones(1)


def variable_bounds(m: int) -> np.ndarray:
    """``x_i >= 0`` and ``v`` free, as an ``(m + 1, 2)`` array of (lower, upper)."""
    bounds = np.zeros((m + 1, 2))
    bounds[:, 1] = np.inf
    bounds[m, 0] = -np.inf
    return bounds


def _algorithm(values: np.ndarray, algorithm: HighsAlgorithm) -> str:
    if algorithm == "auto":
        return "highs-ipm" if values.size >= IPM_MIN_ENTRIES else "highs-ds"
    if algorithm not in ("highs", "highs-ds", "highs-ipm"):
        raise ValueError(f"algorithm must be 'auto', 'highs', 'highs-ds' or 'highs-ipm', got {algorithm!r}")
    return algorithm


def maximin(
    values: np.ndarray, *, algorithm: str = "highs-ds", options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Solve the LP above once; ``(x, y, v)`` with the attacker's ``y`` from the duals.

    The payoffs are first rescaled to [0, 1] (``v`` is mapped back).

    Raises
    ------
    SolverError
        If HiGHS does not report an optimal solution (its message is included).
    """
    m, _ = values.shape
    # The strategies are invariant to an affine change of payoffs; solving the game rescaled
    # to [0, 1] keeps HiGHS's absolute tolerances (1e-7 by default) meaningful for games whose
    # entries differ by less than that (e.g. 1 + [[6e-8], [1e-7]]).
    low, spread = float(values.min()), float(np.ptp(values))
    scaled = (values - low) / spread if spread > 0 else np.zeros_like(values)
    a_ub, b_ub = inequality_constraints(scaled)
    a_eq, b_eq = equality_constraints(m)
    res = scipy.optimize.linprog(
        objective(m),
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=variable_bounds(m),
        method=algorithm,
        options=options or {},
    )
    if res.status != 0 or res.x is None:
        raise SolverError(f"HiGHS ({algorithm}) failed on the {values.shape} game: {res.message}")
    x = np.asarray(res.x[:m])
    y = -np.asarray(res.ineqlin.marginals)
    return x, y, low + spread * float(res.x[m])


def solve_lp(values: np.ndarray, *, tol: float = 1e-9, algorithm: HighsAlgorithm = "auto") -> SolverOutput:
    """Solve a zero-sum game by linear programming with HiGHS (Dantzig 1951; Huangfu and Hall 2018).

    One LP gives the defender's maximin strategy (primal) and the attacker's minimax
    strategy (the duals of the ``n`` inequality constraints); see the formulation above.
    If the certificate of the solution misses ``tol`` the LP is solved again with
    feasibility tolerances of 1e-10, first with the same HiGHS algorithm, then with the
    other one, keeping the best pair.

    Parameters
    ----------
    values : ndarray, shape (m, n)
        Payoffs to the row player (maximizer).
    tol : float
        Target exploitability; only decides whether the tightened retry runs.
    algorithm : {"auto", "highs", "highs-ds", "highs-ipm"}
        HiGHS algorithm; ``"auto"`` uses dual simplex below 40,000 entries and the
        interior-point method with crossover above.

    Returns
    -------
    SolverOutput
        ``(x, y, "optimal", None)``.
    """
    chosen = _algorithm(values, algorithm)
    x, y, _ = maximin(values, algorithm=chosen)
    gap = exploitability(values, np.clip(x, 0, None), np.clip(y, 0, None))
    other = "highs-ds" if chosen == "highs-ipm" else "highs-ipm"
    for retry in (chosen, other):
        if gap <= tol:
            break
        log.info("lp: certificate %.3g > tol %.3g; retrying with %s and tight tolerances", gap, tol, retry)
        try:
            x2, y2, _ = maximin(values, algorithm=retry, options=dict(_TIGHT))
        except SolverError:
            continue
        gap2 = exploitability(values, np.clip(x2, 0, None), np.clip(y2, 0, None))
        if gap2 < gap:
            x, y, gap = x2, y2, gap2
    return SolverOutput(x, y, OPTIMAL, None)
