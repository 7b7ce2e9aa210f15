"""Nashpy's algorithms (Knight and Campbell 2018) and support enumeration, for comparison.

``nashpy-lp`` solves the minimax LP once per player. The other three are equilibrium
algorithms (Nisan et al. 2007, ch. 3) that take exponential time in the worst case, so each
refuses games above a documented size with :class:`GameTooLargeError` (use ``method="lp"``)
instead of hanging. They are run on the strategically equivalent strictly positive
bimatrix game ``(A - min A + 1, max A - A + 1)`` (adding a constant to a player's payoffs
changes no equilibrium), and every candidate equilibrium they produce is checked with the
exploitability certificate; the first within ``tol`` is returned (otherwise the best one,
which the front door then reports as ``"inaccurate"``).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gametheory_defense.errors import GameTooLargeError, SolverError
from gametheory_defense.solvers._core import OPTIMAL, SolverOutput, certify, exploitability

__all__ = [
    "solve_nashpy_lp",
    "solve_support_enumeration",
    "solve_vertex_enumeration",
    "solve_lemke_howson",
    "kernel_candidates",
    "SUPPORT_ENUMERATION_MAX_STRATEGIES",
    "VERTEX_ENUMERATION_MAX_STRATEGIES",
    "LEMKE_HOWSON_MAX_STRATEGIES",
]

SUPPORT_ENUMERATION_MAX_STRATEGIES = 18
"""Largest ``m + n`` accepted by ``support-enumeration`` (``C(m + n, m) - 1`` square supports)."""
VERTEX_ENUMERATION_MAX_STRATEGIES = 14
"""Largest ``m + n`` accepted by ``vertex-enumeration`` (every vertex pair of two polytopes; ~0.6 s at 7 x 7)."""
LEMKE_HOWSON_MAX_STRATEGIES = 24
"""Largest ``m + n`` accepted by ``lemke-howson``.

nashpy pivots without dividing by the previous pivot, so float tableau entries grow
geometrically: on uniform random games every path is certified up to 12 x 12, but only
18/20 at 15 x 15 and 6/20 at 20 x 20 (entries overflow to inf/NaN).
"""


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
    """The zero-sum game as an equivalent bimatrix game with payoffs in [1, 2].

    Rescaled to [0, 1] first (strategies are invariant), so that a game of spread 1e-15 is
    not absorbed by the shift.
    """
    lo, spread = float(values.min()), float(np.ptp(values))
    scaled = (values - lo) / spread if spread > 0 else np.zeros_like(values)
    return scaled + 1.0, 2.0 - scaled


def _first_certified(
    values: np.ndarray, candidates: Iterable[tuple[Any, Any]], tol: float, method: str
) -> SolverOutput:
    """Scan candidate equilibria: the first exact up to round-off, else the best.

    A candidate within ``tol`` but not exact (possible when ``tol``, relative to the payoff
    scale, exceeds a tiny entry: ``diag(1e10, 1e-10)``) does not end the scan; the best one
    found is returned when no candidate is exact.
    """
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
        cert = certify(values, x, y)
        if best is None or cert.computed_gap < best[0]:
            best = (cert.computed_gap, x, y)
        if cert.exact:
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
    """Support enumeration over square supports (Shapley and Snow 1950; Nisan et al. 2007, Alg. 3.4).

    For a zero-sum game with a non-zero value every extreme equilibrium comes from a square,
    non-singular k x k submatrix ``M`` (a Shapley-Snow kernel):
    ``y_J = M^-1 1 / (1' M^-1 1)``, ``x_I = 1' M^-1 / (1' M^-1 1)``. The payoffs are first
    shifted to ``A - min A + 1`` (value >= 1), then supports are tried smallest first, and the
    first candidate whose certificate on the original game is within ``tol`` is returned.
    That is ``C(m + n, m) - 1`` small linear solves in the worst case.

    nashpy's ``support_enumeration`` is not used here: its exact tests (``prob >= 0`` and
    ``==`` between float payoffs) reject true equilibria of random games through round-off
    (e.g. one in three uniform random 5 x 5 games yields nothing).

    Raises
    ------
    GameTooLargeError
        If ``m + n`` exceeds :data:`SUPPORT_ENUMERATION_MAX_STRATEGIES`.
    """
    _check_size(values, "support-enumeration", SUPPORT_ENUMERATION_MAX_STRATEGIES)
    return _first_certified(values, kernel_candidates(values), tol, "support-enumeration")


def kernel_candidates(values: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Strategy pairs of every non-singular square submatrix, smallest first (Shapley and Snow 1950).

    With ``M`` a ``k x k`` submatrix on rows ``I`` and columns ``J``, ``x_I`` makes every
    column of ``M`` pay the same (``x_I M = v 1``, ``sum x_I = 1``) and ``y_J`` every row
    (``M y_J = u 1``), i.e. ``x_I = 1' M^-1 / (1' M^-1 1)`` when ``M`` is invertible; pairs
    with a clearly negative probability are skipped. Every extreme equilibrium of the game is
    among them.
    """
    m, n = values.shape
    # Rescaled to [0, 1] (strategies are invariant) and not shifted: each kernel is solved as
    # the bordered system [M' -1; 1' 0] (x_I, v) = (0, 1), which needs no non-zero value and
    # keeps entries far below the largest one (diag(1e10, 1e-10)) that a shift would absorb.
    low, spread = float(values.min()), float(np.ptp(values))
    scaled = (values - low) / spread if spread > 0 else np.zeros_like(values)
    for k in range(1, min(m, n) + 1):
        for rows in itertools.combinations(range(m), k):
            for cols in itertools.combinations(range(n), k):
                found = _bordered_pair(scaled[np.ix_(rows, cols)])
                if found is None:
                    continue
                x = np.zeros(m)
                y = np.zeros(n)
                x[list(rows)], y[list(cols)] = found
                yield x, y


def _bordered_pair(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, y)`` equalising the columns and the rows of a square ``kernel``; None if singular or negative."""
    k = kernel.shape[0]
    border = np.zeros((k + 1, k + 1))
    border[:k, k] = -1.0
    border[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    try:
        border[:k, :k] = kernel.T
        z = np.linalg.solve(border, rhs)[:k]
        border[:k, :k] = kernel
        w = np.linalg.solve(border, rhs)[:k]
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(z)) and np.all(np.isfinite(w))) or z.min() < -1e-9 or w.min() < -1e-9:
        return None
    return z, w


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


def _lemke_howson_path(a: np.ndarray, b: np.ndarray, label: int, max_pivots: int) -> tuple[Any, Any] | None:
    """Follow nashpy's lexicographic Lemke-Howson path from ``label``; None if it is too long.

    The same steps as ``nashpy.Game.lemke_howson`` with a cap on the number of pivots,
    because nashpy's loop has none and can cycle on degenerate games.
    """
    from nashpy.linalg import create_col_tableau, create_row_tableau

    col = create_col_tableau(a, True)
    row = create_row_tableau(b, True)
    order = (row, col) if label in row.non_basic_variables else (col, row)
    full = col.labels
    entering = label
    for step in range(max_pivots):
        entering = order[step % 2].pivot_and_drop_label(entering)
        if col.non_basic_variables | row.non_basic_variables == full:
            return row.to_strategy(col.non_basic_variables), col.to_strategy(row.non_basic_variables)
    return None


def solve_lemke_howson(values: np.ndarray, *, tol: float = 1e-9, max_pivots: int | None = None) -> SolverOutput:
    """The Lemke-Howson algorithm with lexicographic pivoting (Lemke and Howson 1964) via nashpy's tableaux.

    Starts from dropped label 0 and tries the next labels until an equilibrium passes the
    certificate. Each path is capped at ``max_pivots`` pivots (default ``50 (m + n)``) so
    that a cycling path on a degenerate game fails instead of hanging. nashpy's
    lexicographic rule does not cover every degenerate game (e.g. 0/1 matrices); when no
    path is certified, the paths are followed on the game perturbed by ``1e-7`` times a
    fixed generic matrix and the original game is then solved exactly on the supports they
    end at (a Shapley-Snow kernel), which the certificate checks as usual. If that fails too,
    the answer of ``method="lp"`` is returned with a warning saying so.

    Raises
    ------
    GameTooLargeError
        If ``m + n`` exceeds :data:`LEMKE_HOWSON_MAX_STRATEGIES`.
    SolverError
        If no path ends at a certified equilibrium.
    """
    _check_size(values, "lemke-howson", LEMKE_HOWSON_MAX_STRATEGIES)
    m, n = values.shape
    if m == 1 or n == 1:
        return _trivial_side(values)  # nashpy's tableaux need two strategies per player
    cap = 50 * (m + n) if max_pivots is None else int(max_pivots)

    # nashpy's paths end at non-equilibria on many games with more rows than columns (every
    # random 5 x 4, 6 x 3, 7 x 2 game we tried), so such games are solved with the roles
    # swapped: the attacker as the row player of the transposed game.
    swap = m > n

    def runs(game: np.ndarray) -> Iterator[tuple[Any, Any]]:
        a, b = _positive_bimatrix(game)
        if swap:
            a, b = b.T, a.T
        for label in range(m + n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    found = _lemke_howson_path(a, b, label, cap)
                except (ValueError, IndexError, KeyError, ZeroDivisionError, np.linalg.LinAlgError):
                    continue
            if found is not None:
                yield (found[1], found[0]) if swap else found

    try:
        first = _first_certified(values, runs(values), tol, "lemke-howson")
    except SolverError:
        first = None
    if first is not None and exploitability(values, first[0], first[1]) <= tol:
        return first
    # Degenerate game: follow the path on a slightly perturbed (generic) game, then solve the
    # original game exactly on the supports found there (a Shapley-Snow kernel).
    perturbed = values + _PERTURBATION * (1.0 + np.ptp(values)) * _generic_matrix(m, n)
    candidates = list(itertools.islice(runs(perturbed), 3))
    polished = [_kernel_on_supports(values, x, y) for x, y in candidates]
    pool = [c for c in polished if c is not None] + candidates + ([first[:2]] if first is not None else [])
    try:
        best = _first_certified(values, pool, tol, "lemke-howson")
    except SolverError:
        best = None
    if best is not None and certify(values, best[0], best[1]).computed_gap <= tol:
        return best
    # Near-degenerate games can defeat both the exact and the perturbed paths (0.3 + 1e-12
    # noise, before payoffs were rescaled): fall back to the LP, and say so.
    from gametheory_defense.solvers.lp import solve_lp

    warnings.warn(
        "lemke-howson: no path ended at a certified equilibrium (near-degenerate game); "
        "returning method='lp''s answer instead",
        stacklevel=3,
    )
    return solve_lp(values, tol=tol)


_PERTURBATION = 1e-7


def _generic_matrix(m: int, n: int) -> np.ndarray:
    """A fixed matrix in [0, 1) with no arithmetic ties (fractional parts of a Kronecker sequence)."""
    i = np.arange(1, m + 1)[:, None]
    j = np.arange(1, n + 1)[None, :]
    return np.modf(i * 0.6180339887498949 + j * 0.41421356237309515 + i * j * 0.7320508075688772)[0]


def _kernel_on_supports(values: np.ndarray, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact equilibrium of ``values`` on the supports of ``(x, y)`` if they form a square kernel."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or x.sum() <= 0 or y.sum() <= 0:
        return None
    rows = np.flatnonzero(x / x.sum() > 1e-9)
    cols = np.flatnonzero(y / y.sum() > 1e-9)
    if rows.size != cols.size:
        return None
    low, spread = float(values.min()), float(np.ptp(values))
    scaled = (values - low) / spread if spread > 0 else np.zeros_like(values)
    found = _bordered_pair(scaled[np.ix_(rows, cols)])
    if found is None:
        return None
    full_x = np.zeros(values.shape[0])
    full_y = np.zeros(values.shape[1])
    full_x[rows], full_y[cols] = found
    return full_x, full_y
