"""The minimax LP through CVXPY (Diamond and Boyd 2016), attacker strategy from the duals."""

from __future__ import annotations

from typing import Any

import numpy as np

from gametheory_defense.errors import SolverError
from gametheory_defense.solvers._core import OPTIMAL, SolverOutput

__all__ = ["solve_cvxpy", "PREFERRED_SOLVERS"]

PREFERRED_SOLVERS = ("HIGHS", "CLARABEL", "SCIPY")

# Solver settings tighter than the defaults (HiGHS: 1e-7 feasibility), so that entries that
# differ by less than 1e-7 (e.g. a 6e-8 payoff next to 1s) are still resolved.
_TIGHT: dict[str, dict[str, Any]] = {
    "HIGHS": {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    "CLARABEL": {"tol_feas": 1e-10, "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10},
}
"""CVXPY solvers tried in this order when ``solver`` is not given (first installed wins)."""


def solve_cvxpy(values: np.ndarray, *, tol: float = 1e-9, solver: str | None = None) -> SolverOutput:
    """Solve a zero-sum game as a CVXPY problem (Diamond and Boyd 2016).

    The model is the defender's maximin LP of :mod:`~gametheory_defense.solvers.lp`
    (``maximize v  s.t.  x A >= v, sum x = 1, x >= 0``); the attacker's strategy is the dual
    value of the ``x A >= v`` constraint, so one solve gives both.

    Parameters
    ----------
    values : ndarray, shape (m, n)
        Payoffs to the row player (maximizer).
    tol : float
        Unused by the model (CVXPY solvers have their own tolerances); the certificate
        decides the status.
    solver : str, optional
        A CVXPY solver name; by default the first installed of :data:`PREFERRED_SOLVERS`.

    Raises
    ------
    SolverError
        If CVXPY raises or reports a status other than optimal.
    """
    import cvxpy as cp

    installed = set(cp.installed_solvers())
    if solver is None:
        solver = next((s for s in PREFERRED_SOLVERS if s in installed), None)
    elif solver not in installed:
        raise ValueError(f"CVXPY solver {solver!r} is not installed; installed: {sorted(installed)}")
    m, _ = values.shape
    # Rescaled to [0, 1] (strategies are invariant) so solver tolerances stay meaningful and
    # payoffs near the float limit do not overflow.
    from gametheory_defense.solvers.lp import unit_scaled

    scaled = unit_scaled(values)[0]
    x = cp.Variable(m, nonneg=True)
    v = cp.Variable()
    guarantee = scaled.T @ x >= v
    problem = cp.Problem(cp.Maximize(v), [guarantee, cp.sum(x) == 1])
    kwargs: dict[str, Any] = {} if solver is None else {"solver": solver}
    kwargs.update(_TIGHT.get(solver or "", {}))
    try:
        problem.solve(**kwargs)
    except cp.error.SolverError as exc:
        raise SolverError(f"CVXPY ({solver}) failed: {exc}") from exc
    if problem.status != cp.OPTIMAL or x.value is None or guarantee.dual_value is None:
        raise SolverError(f"CVXPY ({solver}) finished with status {problem.status!r}")
    return SolverOutput(np.asarray(x.value), np.asarray(guarantee.dual_value), OPTIMAL, None)
