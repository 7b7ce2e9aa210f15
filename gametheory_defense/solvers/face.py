"""Every extreme optimal strategy of a small zero-sum game (Shapley and Snow 1950).

A zero-sum game can have a polytope of optimal strategies per player (the *optimal face*
that ``select=`` chooses from). nashpy's vertex enumeration and gambit's ``enummixed`` list
its vertices; :func:`extreme_optimal_strategies` does the same for either player.

Shapley and Snow (1950): ``x`` is an extreme optimal strategy of the row player iff there is
a square submatrix ``M`` (rows ``I``, columns ``J``) on which ``x`` makes every column pay
the value, ``x_I M = v 1`` with ``sum x_I = 1``, the bordered system

    [ M'  -1 ] [ x_I ]   [ 0 ]
    [ 1'   0 ] [  v  ] = [ 1 ]

being non-singular, and ``x`` (zero outside ``I``) is optimal. All ``C(m + n, m) - 1``
square submatrices are tried, in batches of equal size; each candidate is kept when it is a
distribution guaranteeing the game value (from the LP) up to ``tol`` times the payoff scale,
and duplicates are merged.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import numpy as np

from gametheory_defense.errors import GameTooLargeError
from gametheory_defense.solvers._core import as_game, certify
from gametheory_defense.solvers.lp import solve_lp, unit_scaled

__all__ = ["extreme_optimal_strategies", "EXTREME_STRATEGIES_MAX_STRATEGIES"]

EXTREME_STRATEGIES_MAX_STRATEGIES = 18
"""Largest ``m + n`` accepted (``C(18, 9) - 1 = 48,619`` square submatrices, about a second)."""


def extreme_optimal_strategies(
    matrix: Any, player: Literal["defender", "attacker"] = "defender", *, tol: float = 1e-9
) -> np.ndarray:
    """All extreme optimal strategies of one player (Shapley and Snow 1950), as rows.

    Parameters
    ----------
    matrix : payoff.PayoffMatrix, array_like or scipy.sparse matrix, shape (m, n)
        The game (rows: defenders, the maximizer).
    player : {"defender", "attacker"}
        Whose optimal face to list.
    tol : float
        A candidate is optimal when its guarantee is within ``tol * (max A - min A)`` of the
        game value; candidates closer than that to each other are merged.

    Returns
    -------
    ndarray, shape (k, m) or (k, n)
        Read-only; one extreme optimal strategy per row, in lexicographically decreasing
        order. Every optimal strategy of that player is a convex combination of the rows.

    Raises
    ------
    ValueError
        For bad payoffs or an unknown ``player``.
    GameTooLargeError
        If ``m + n`` exceeds :data:`EXTREME_STRATEGIES_MAX_STRATEGIES`.

    Examples
    --------
    >>> extreme_optimal_strategies([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]).round(6).tolist()
    [[0.666667, 0.333333, 0.0], [0.0, 0.0, 1.0]]
    """
    if player not in ("defender", "attacker"):
        raise ValueError(f"player must be 'defender' or 'attacker', got {player!r}")
    values = as_game(matrix).values
    m, n = values.shape
    if m + n > EXTREME_STRATEGIES_MAX_STRATEGIES:
        raise GameTooLargeError(
            f"listing every extreme optimal strategy takes exponential time; this accepts games with "
            f"at most {EXTREME_STRATEGIES_MAX_STRATEGIES} strategies in total (m + n), this game is "
            f"{m} x {n}. Use solve_zero_sum(..., select=...) to pick one optimal strategy instead"
        )
    # The attacker's face is the defender's face of the game -A' (rows and roles swapped).
    scaled = unit_scaled(values)[0] if player == "defender" else unit_scaled(-values.T)[0]
    rows_total, cols_total = scaled.shape
    x, y = solve_lp(scaled, tol=tol)[:2]
    x = np.clip(x, 0.0, None) / np.clip(x, 0.0, None).sum()
    y = np.clip(y, 0.0, None) / np.clip(y, 0.0, None).sum()
    value = certify(scaled, x, y).value
    slack = max(tol, 1e-12)
    found: list[np.ndarray] = []
    for k in range(1, min(rows_total, cols_total) + 1):
        for candidate in _kernel_strategies(scaled, k):
            if candidate.min() < -slack or float(np.min(candidate @ scaled)) < value - slack:
                continue
            candidate = np.clip(candidate, 0.0, None)
            candidate /= candidate.sum()
            candidate[candidate <= 1e-13] = 0.0
            candidate /= candidate.sum()
            if not any(np.max(np.abs(candidate - other)) <= max(slack, 1e-9) for other in found):
                found.append(candidate)
    out = np.array(sorted(found, key=lambda p: tuple(-p)))
    out.setflags(write=False)
    return out


def _kernel_strategies(scaled: np.ndarray, k: int) -> list[np.ndarray]:
    """Row-player strategies of every ``k x k`` submatrix's bordered system (solved in batches)."""
    m, n = scaled.shape
    row_sets = list(itertools.combinations(range(m), k))
    col_sets = list(itertools.combinations(range(n), k))
    out: list[np.ndarray] = []
    batch = max(1, 200_000 // ((k + 1) ** 2 * max(len(col_sets), 1)))
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    cols = np.array(col_sets)
    for start in range(0, len(row_sets), batch):
        rows = np.array(row_sets[start : start + batch])
        # kernels[r, c] = scaled[rows[r]][:, cols[c]]', bordered
        sub = scaled[rows[:, None, :, None], cols[None, :, None, :]]  # (R, C, k, k)
        border = np.zeros((*sub.shape[:2], k + 1, k + 1))
        border[..., :k, :k] = np.swapaxes(sub, -1, -2)
        border[..., :k, k] = -1.0
        border[..., k, :k] = 1.0
        flat = border.reshape(-1, k + 1, k + 1)
        det = np.linalg.det(flat)
        ok = np.abs(det) > 1e-12 * math.factorial(k)
        if not ok.any():
            continue
        solutions = np.linalg.solve(flat[ok], np.broadcast_to(rhs, (int(ok.sum()), k + 1))[..., None])[..., 0]
        row_index = np.repeat(rows, len(col_sets), axis=0)[ok]
        for r, z in zip(row_index, solutions[:, :k]):
            if not np.all(np.isfinite(z)):
                continue
            x = np.zeros(m)
            x[r] = z
            out.append(x)
    return out
