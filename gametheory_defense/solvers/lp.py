"""The minimax linear program solved once with HiGHS, both players' strategies at once.

Dantzig (1951) showed a zero-sum game is a linear program; the attacker's strategy is the
dual of the defender's, so one solve gives both (HiGHS: Huangfu and Hall 2018).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import scipy.optimize

from gametheory_defense.errors import SolverError
from gametheory_defense.solvers._core import OPTIMAL, SolverOutput, _prescaled, _unscale, certify

__all__ = [
    "solve_lp",
    "maximin",
    "objective",
    "inequality_constraints",
    "equality_constraints",
    "variable_bounds",
    "unit_scaled",
    "HighsAlgorithm",
    "IPM_MIN_ENTRIES",
    "SCREEN_MIN_ENTRIES",
]

log = logging.getLogger(__name__)

HighsAlgorithm = Literal["auto", "highs", "highs-ds", "highs-ipm"]

# How ``algorithm="auto"`` chooses, measured with ``benchmarks/solvers.py --families uniform
# accuracy lowrank`` (docs/benchmarks.md). Games with at least SCREEN_MIN_ENTRIES entries are
# first screened by a short double oracle (restricted LPs grown by best responses): games
# built from accuracies are low-rank plus noise with many ties and have small equilibrium
# supports, which it solves in milliseconds where one full LP takes 0.3-5 s (below 400 x 400
# a screen that gives up would cost a few per cent). When the screen
# does not close the gap within its budget (uniform random games: supports of ~n/2), the full
# LP is solved by dual simplex below IPM_MIN_ENTRIES entries and by the interior-point method
# with crossover above (a vertex solution with exact duals; dual simplex wins below ~400 x 400
# on every family, the interior point above it on uniform games).
IPM_MIN_ENTRIES = 160_000
SCREEN_MIN_ENTRIES = 160_000
# Screening budget: rounds, strategies added per player and round, largest restricted side.
_SCREEN_ROUNDS = 10
_SCREEN_ADD = 8
_SCREEN_MAX_SIDE = 64
# The screen gives up early when, from its second round on, at least this fraction of both
# players' strategies beat the restricted game's value.
_SCREEN_GIVE_UP = 0.25
# ``lp`` tries every Shapley-Snow kernel of games with at most this many square submatrices
# (C(m + n, m) - 1) when HiGHS's answer is not exact up to round-off (tolerances of 1e-7 on
# a game rescaled to [0, 1] cannot see entries 1e-20 of the largest).
KERNEL_POLISH_BUDGET = 3_500

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


def unit_scaled(values: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """``(S, low, spread, k)`` with ``A = 2**k (low + spread S)`` and ``S`` in [0, 1].

    Strategies are invariant to this affine change. ``k`` is non-zero only for payoffs beyond
    ``2**1000``, where ``max A - min A`` itself would overflow (e.g. +-1e308).
    """
    a, k = _prescaled(values)
    low, spread = float(a.min()), float(np.ptp(a))
    scaled = (a - low) / spread if spread > 0 else np.zeros_like(a)
    return scaled, low, spread, k


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
    # entries differ by less than that (e.g. 1 + [[6e-8], [1e-7]]) or are huge (1e308).
    scaled, low, spread, k = unit_scaled(values)
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
    return x, y, _unscale(low + spread * float(res.x[m]), k)


def _distribution(p: np.ndarray) -> np.ndarray | None:
    p = np.clip(p, 0.0, None)
    total = p.sum()
    return p / total if total > 0 else None


def _restricted(values: np.ndarray, rows: list[int], cols: list[int]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Solve the game restricted to ``rows x cols``; full-length strategies and the value."""
    try:
        x_sub, y_sub, v = maximin(values[np.ix_(rows, cols)], algorithm="highs-ds")
    except SolverError:
        return None
    x = np.zeros(values.shape[0])
    y = np.zeros(values.shape[1])
    x[rows] = np.clip(x_sub, 0.0, None)
    y[cols] = np.clip(y_sub, 0.0, None)
    px, py = _distribution(x), _distribution(y)
    return None if px is None or py is None else (px, py, v)


def screen(values: np.ndarray, *, tol: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A short double oracle (McMahan, Gordon and Blum 2003): the answer if supports are small.

    Starts from the best row against the uniform attacker and the best column against the
    uniform defender; each round solves the restricted game by LP and adds up to
    ``_SCREEN_ADD`` best responses per player (the most violated first). Returns the pair once
    its certificate on the full game is exact up to round-off (or, when no best response is
    new, within ``tol``); ``None`` when the budget (rounds, restricted size) runs out or when,
    from the second round on, at least 25 % of both players' strategies still improve on the
    restricted value (a large-support game).
    """
    m, n = values.shape
    rows = {int(np.argmax(values.mean(axis=1)))}
    cols = {int(np.argmin(values.mean(axis=0)))}
    for round_ in range(_SCREEN_ROUNDS):
        found = _restricted(values, sorted(rows), sorted(cols))
        if found is None:
            return None
        x, y, v = found
        ay, xa = values @ y, x @ values
        cert = certify(values, x, y, products=(xa, ay))
        if cert.exact:
            return x, y
        slack = cert.rounding
        beaten_rows = np.count_nonzero(ay > v + slack)
        beaten_cols = np.count_nonzero(xa < v - slack)
        if round_ >= 1 and beaten_rows >= _SCREEN_GIVE_UP * m and beaten_cols >= _SCREEN_GIVE_UP * n:
            # Both players still have many improving replies: a large-support game (uniform
            # games: 30-70 % on both sides from the second round on; in accuracy-like games of
            # 500 x 500, seeds 0-5, the smaller side never exceeded 15 %), so the full LP will
            # be needed anyway.
            return None
        new_rows = [int(i) for i in np.argsort(-ay)[:_SCREEN_ADD] if ay[i] > v + slack and int(i) not in rows]
        new_cols = [int(j) for j in np.argsort(xa)[:_SCREEN_ADD] if xa[j] < v - slack and int(j) not in cols]
        if not new_rows and not new_cols:
            return (x, y) if cert.computed_gap <= tol else None
        rows.update(new_rows)
        cols.update(new_cols)
        if max(len(rows), len(cols)) > _SCREEN_MAX_SIDE:
            return None
    return None


def _kernel_polish(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every Shapley-Snow kernel of a small game, keeping the best certified pair (incl. ``(x, y)``)."""
    from gametheory_defense.solvers.nashpy_backends import kernel_candidates

    best = (certify(values, x, y).computed_gap, x, y)
    for cx, cy in kernel_candidates(values):
        cert = certify(values, cx, cy)
        if cert.computed_gap < best[0]:
            best = (cert.computed_gap, cx, cy)
            if cert.exact:
                break
    return best[1], best[2]


def solve_lp(values: np.ndarray, *, tol: float = 1e-9, algorithm: HighsAlgorithm = "auto") -> SolverOutput:
    """Solve a zero-sum game by linear programming with HiGHS (Dantzig 1951; Huangfu and Hall 2018).

    One LP gives the defender's maximin strategy (primal) and the attacker's minimax
    strategy (the duals of the ``n`` inequality constraints); see the formulation above.
    If the certificate of the solution misses ``tol`` the LP is solved again with
    feasibility tolerances of 1e-10, first with the same HiGHS algorithm, then with the
    other one, keeping the best pair. If the answer is still not exact up to round-off and
    the game is small (at most ``KERNEL_POLISH_BUDGET`` square submatrices), every
    Shapley-Snow kernel is tried as well, so that e.g. ``diag(1e10, 1e-10)`` gets its exact
    equilibrium rather than HiGHS's pure one.

    Parameters
    ----------
    values : ndarray, shape (m, n)
        Payoffs to the row player (maximizer).
    tol : float
        Absolute exploitability target; decides whether the tightened retry runs.
    algorithm : {"auto", "highs", "highs-ds", "highs-ipm"}
        HiGHS algorithm. ``"auto"`` (measured, see above): a short double-oracle screen for
        games of at least 160,000 entries, then dual simplex below 160,000 entries and the
        interior-point method with crossover above.

    Returns
    -------
    SolverOutput
        ``(x, y, "optimal", None)``.
    """
    if algorithm == "auto" and values.size >= SCREEN_MIN_ENTRIES:
        found = screen(values, tol=tol)
        if found is not None:
            log.debug("lp: the double-oracle screen solved the %s game", values.shape)
            return SolverOutput(found[0], found[1], OPTIMAL, None)
    chosen = _algorithm(values, algorithm)
    x, y, _ = maximin(values, algorithm=chosen)
    gap = certify(values, np.clip(x, 0, None), np.clip(y, 0, None)).computed_gap
    other = "highs-ds" if chosen == "highs-ipm" else "highs-ipm"
    for retry in (chosen, other):
        if gap <= tol:
            break
        log.info("lp: certificate %.3g > tol %.3g; retrying with %s and tight tolerances", gap, tol, retry)
        try:
            x2, y2, _ = maximin(values, algorithm=retry, options=dict(_TIGHT))
        except SolverError:
            continue
        gap2 = certify(values, np.clip(x2, 0, None), np.clip(y2, 0, None)).computed_gap
        if gap2 < gap:
            x, y, gap = x2, y2, gap2
    m, n = values.shape
    px, py = _distribution(x), _distribution(y)
    if px is not None and py is not None and not certify(values, px, py).exact:
        if math.comb(m + n, m) - 1 <= KERNEL_POLISH_BUDGET:
            log.info("lp: HiGHS's answer is not exact up to round-off; trying every kernel")
            x, y = _kernel_polish(values, px, py)
    return SolverOutput(x, y, OPTIMAL, None)
