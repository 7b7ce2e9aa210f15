"""Nashpy's algorithms (Knight and Campbell 2018) as comparison backends.

``nashpy-lp`` solves the minimax LP once per player. The other three are bimatrix-game
algorithms (Nisan et al. 2007, ch. 3) that take exponential time in the worst case, so each
refuses games above a documented size with :class:`GameTooLargeError` (use ``method="lp"``)
instead of hanging. They are run on the strategically equivalent strictly positive
bimatrix game ``(A - min A + 1, max A - A + 1)`` (adding a constant to a player's payoffs
changes no equilibrium), and every candidate equilibrium they produce is checked with the
exploitability certificate; the first within ``tol`` is returned (otherwise the best one,
which the front door then reports as ``"inaccurate"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gametheory_defense.errors import GameTooLargeError, SolverError
from gametheory_defense.solvers._core import OPTIMAL, SolverOutput, exploitability

__all__ = [
    "solve_nashpy_lp",
    "solve_support_enumeration",
    "solve_vertex_enumeration",
    "solve_lemke_howson",
    "SUPPORT_ENUMERATION_MAX_STRATEGIES",
    "VERTEX_ENUMERATION_MAX_STRATEGIES",
    "LEMKE_HOWSON_MAX_STRATEGIES",
]

SUPPORT_ENUMERATION_MAX_STRATEGIES = 16
"""Largest ``m + n`` accepted by ``support-enumeration`` (up to (2^m - 1)(2^n - 1) support pairs)."""
VERTEX_ENUMERATION_MAX_STRATEGIES = 16
"""Largest ``m + n`` accepted by ``vertex-enumeration`` (every vertex pair of two polytopes)."""
LEMKE_HOWSON_MAX_STRATEGIES = 120
"""Largest ``m + n`` accepted by ``lemke-howson`` (pure-Python pivoting; exponential worst case)."""


def _nashpy() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import nashpy

    return nashpy


def _check_size(values: np.ndarray, method: str, limit: int) -> None:
    m, n = values.shape
    if m + n > limit:
        raise GameTooLargeError(
            f"{method} takes exponential time and accepts games with at most {limit} strategies in "
            f"total (m + n); this game is {m} x {n}. Use method='lp' (or 'pdhg' for very large games)"
        )


def _positive_bimatrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The zero-sum game as an equivalent bimatrix game with both payoffs >= 1."""
    lo, hi = float(values.min()), float(values.max())
    return values - lo + 1.0, hi - values + 1.0


def _first_certified(
    values: np.ndarray, candidates: Iterable[tuple[Any, Any]], tol: float, method: str
) -> SolverOutput:
    """Scan candidate equilibria; return the first with exploitability <= tol, else the best."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for raw_x, raw_y in candidates:
        x = np.asarray(raw_x, dtype=np.float64)
        y = np.asarray(raw_y, dtype=np.float64)
        if x.shape != (values.shape[0],) or y.shape != (values.shape[1],):
            continue
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or x.sum() <= 0 or y.sum() <= 0:
            continue
        x = np.clip(x, 0.0, None) / np.clip(x, 0.0, None).sum()
        y = np.clip(y, 0.0, None) / np.clip(y, 0.0, None).sum()
        gap = exploitability(values, x, y)
        if best is None or gap < best[0]:
            best = (gap, x, y)
        if gap <= tol:
            break
    if best is None:
        raise SolverError(f"{method} found no equilibrium (the game may be degenerate); use method='lp'")
    return SolverOutput(best[1], best[2], OPTIMAL, None)


def _quiet(gen: Iterator[Any]) -> Iterator[Any]:
    """Run a nashpy generator with its degeneracy warnings silenced (we certify instead)."""
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                item = next(gen)
            except StopIteration:
                return
        yield item


def solve_nashpy_lp(values: np.ndarray, *, tol: float = 1e-9) -> SolverOutput:
    """Nashpy's minimax linear program, solved once for each player (Knight and Campbell 2018).

    ``nashpy.Game(A).linear_program()`` runs ``scipy.optimize.linprog`` on the maximin LP of
    ``A`` and again on that of ``-A.T``: twice the work of ``method="lp"``.
    """
    game = _nashpy().Game(values)
    try:
        x, y = game.linear_program()
    except Exception as exc:  # noqa: BLE001 - any backend failure becomes a SolverError
        raise SolverError(f"nashpy linear_program failed: {exc}") from exc
    return SolverOutput(np.asarray(x), np.asarray(y), OPTIMAL, None)


def solve_support_enumeration(values: np.ndarray, *, tol: float = 1e-9) -> SolverOutput:
    """Support enumeration (Nisan et al. 2007, Alg. 3.4) via nashpy, for small games.

    Every pair of supports of any sizes is tried (the zero-sum games of interest are often
    degenerate), smallest first, stopping at the first certified equilibrium.

    Raises
    ------
    GameTooLargeError
        If ``m + n`` exceeds :data:`SUPPORT_ENUMERATION_MAX_STRATEGIES`.
    """
    _check_size(values, "support-enumeration", SUPPORT_ENUMERATION_MAX_STRATEGIES)
    a, b = _positive_bimatrix(values)
    gen = _nashpy().Game(a, b).support_enumeration(non_degenerate=False)
    return _first_certified(values, _quiet(gen), tol, "support-enumeration")


def solve_vertex_enumeration(values: np.ndarray, *, tol: float = 1e-9) -> SolverOutput:
    """Vertex enumeration of the best-response polytopes (Nisan et al. 2007, Alg. 3.5) via nashpy.

    Raises
    ------
    GameTooLargeError
        If ``m + n`` exceeds :data:`VERTEX_ENUMERATION_MAX_STRATEGIES`.
    """
    _check_size(values, "vertex-enumeration", VERTEX_ENUMERATION_MAX_STRATEGIES)
    m, n = values.shape
    if m == 1 or n == 1:
        # Qhull cannot build a 1-dimensional polytope; a player with one strategy has
        # nothing to mix, and the other best-responds to it.
        return _trivial_side(values)
    a, b = _positive_bimatrix(values)
    gen = _nashpy().Game(a, b).vertex_enumeration()
    try:
        return _first_certified(values, _quiet(gen), tol, "vertex-enumeration")
    except SolverError:
        raise
    except Exception as exc:  # noqa: BLE001 - Qhull errors on degenerate polytopes
        raise SolverError(f"vertex-enumeration failed (degenerate game?): {exc}; use method='lp'") from exc


def _trivial_side(values: np.ndarray) -> SolverOutput:
    """Equilibrium of a game where one player has a single strategy (pure best response)."""
    m, n = values.shape
    x = np.zeros(m)
    y = np.zeros(n)
    if m == 1:
        x[0] = 1.0
        y[int(np.argmin(values[0]))] = 1.0
    else:
        y[0] = 1.0
        x[int(np.argmax(values[:, 0]))] = 1.0
    return SolverOutput(x, y, OPTIMAL, None)


def solve_lemke_howson(values: np.ndarray, *, tol: float = 1e-9) -> SolverOutput:
    """The Lemke-Howson algorithm with lexicographic pivoting (Lemke and Howson 1964) via nashpy.

    Starts from dropped label 0 and tries the next labels until an equilibrium passes the
    certificate.

    Raises
    ------
    GameTooLargeError
        If ``m + n`` exceeds :data:`LEMKE_HOWSON_MAX_STRATEGIES`.
    """
    _check_size(values, "lemke-howson", LEMKE_HOWSON_MAX_STRATEGIES)
    a, b = _positive_bimatrix(values)
    game = _nashpy().Game(a, b)
    labels = range(sum(values.shape))

    def runs() -> Iterator[tuple[Any, Any]]:
        for label in labels:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    yield game.lemke_howson(initial_dropped_label=label)
                except (ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError):
                    continue

    return _first_certified(values, runs(), tol, "lemke-howson")

