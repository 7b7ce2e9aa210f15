"""Certified solvers of two-player zero-sum games (von Neumann 1928).

The front door is :func:`solve_zero_sum`; methods are looked up by name in :data:`SOLVERS`
(or passed as a callable). Every result is an :class:`Equilibrium` whose
``exploitability`` is computed from the matrix independently of the method, so a method can
be trusted exactly as far as its certificate.

===================== =====================================================================
method                algorithm
===================== =====================================================================
``lp``                one HiGHS LP; the attacker's strategy from its duals (default)
``cvxpy``             the same LP through CVXPY
``nashpy-lp``         nashpy's ``linear_program`` (one LP per player; for comparison)
``support-enumeration`` Shapley-Snow square supports, ``m + n <= 18``
``vertex-enumeration``  nashpy, ``m + n <= 14``
``lemke-howson``      nashpy's tableaux, lexicographic pivoting, ``m + n <= 24``
``fictitious-play``   alternating fictitious play (iterative)
``regret-matching``   alternating regret matching+ with linear averaging (iterative)
``pdhg``              restarted primal-dual hybrid gradient (iterative; for large games)
===================== =====================================================================

Every :class:`Equilibrium` carries both players' certified guarantees
(``defender_guarantee <= value <= attacker_guarantee``, rounding included);
:func:`extreme_optimal_strategies` lists the whole optimal face of a small game.

Examples
--------
>>> from gametheory_defense.solvers import solve_zero_sum
>>> eq = solve_zero_sum([[1.0, 0.0], [0.0, 1.0]])
>>> eq.value, eq.defender_strategy.tolist(), eq.status
(0.5, [0.5, 0.5], 'optimal')
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from gametheory_defense.errors import GTDError, SolverError
from gametheory_defense.solvers._core import (
    CONVERGED,
    INACCURATE,
    MAX_ITERATIONS,
    OPTIMAL,
    SELECTIONS,
    SOLVERS,
    STATUSES,
    TIME_LIMIT,
    Certificate,
    Equilibrium,
    SolverOutput,
    UNIT_ROUNDOFF,
    _prescaled,
    _unscale,
    as_game,
    certify,
    check_options,
    clean_strategy,
    exploitability,
    normalise_output,
    payoff_scale,
    register_solver,
    resolve_method,
)
from gametheory_defense.solvers.cvxpy_backend import solve_cvxpy
from gametheory_defense.solvers.face import EXTREME_STRATEGIES_MAX_STRATEGIES, extreme_optimal_strategies
from gametheory_defense.solvers.iterative import fictitious_play, pdhg, regret_matching
from gametheory_defense.solvers.lp import solve_lp
from gametheory_defense.solvers.nashpy_backends import (
    LEMKE_HOWSON_MAX_STRATEGIES,
    SUPPORT_ENUMERATION_MAX_STRATEGIES,
    VERTEX_ENUMERATION_MAX_STRATEGIES,
    solve_lemke_howson,
    solve_nashpy_lp,
    solve_support_enumeration,
    solve_vertex_enumeration,
)
from gametheory_defense.solvers.selection import select_defender_strategy

__all__ = [
    "solve_zero_sum",
    "extreme_optimal_strategies",
    "EXTREME_STRATEGIES_MAX_STRATEGIES",
    "Equilibrium",
    "SolverOutput",
    "SOLVERS",
    "register_solver",
    "exploitability",
    "certify",
    "Certificate",
    "payoff_scale",
    "SELECTIONS",
    "STATUSES",
    "OPTIMAL",
    "CONVERGED",
    "MAX_ITERATIONS",
    "TIME_LIMIT",
    "INACCURATE",
    "EXACT_METHODS",
    "ITERATIVE_METHODS",
    "SUPPORT_ENUMERATION_MAX_STRATEGIES",
    "VERTEX_ENUMERATION_MAX_STRATEGIES",
    "LEMKE_HOWSON_MAX_STRATEGIES",
]

log = logging.getLogger(__name__)

EXACT_METHODS = ("lp", "cvxpy", "nashpy-lp", "support-enumeration", "vertex-enumeration", "lemke-howson")
"""Registered methods that solve the game exactly (up to floating point)."""
ITERATIVE_METHODS = ("fictitious-play", "regret-matching", "pdhg")
"""Registered methods that iterate until the certificate reaches ``tol``."""

for _name, _fn in (
    ("lp", solve_lp),
    ("cvxpy", solve_cvxpy),
    ("nashpy-lp", solve_nashpy_lp),
    ("support-enumeration", solve_support_enumeration),
    ("vertex-enumeration", solve_vertex_enumeration),
    ("lemke-howson", solve_lemke_howson),
    ("fictitious-play", fictitious_play),
    ("regret-matching", regret_matching),
    ("pdhg", pdhg),
):
    register_solver(_name, _fn)


def solve_zero_sum(
    matrix: Any,
    method: str | Callable[..., Any] = "lp",
    *,
    select: str | None = None,
    tol: float = 1e-9,
    **options: Any,
) -> Equilibrium:
    """Solve a two-player zero-sum game and certify the answer (von Neumann 1928).

    Parameters
    ----------
    matrix : payoff.PayoffMatrix, array_like or scipy.sparse matrix, shape (m, n)
        Rows are defenders (the maximizer), columns attackers, entries the defender's
        payoff. A plain array may hold any finite reals; names default to ``d0..``/``a0..``.
        Sparse matrices are densified (every method works on a dense array).
    method : str or callable
        A name in :data:`SOLVERS` (``"lp"`` by default) or a callable
        ``fn(A, *, tol) -> SolverOutput | (x, y)``.
    select : {"clean", "max-entropy", "min-support"}, optional
        Which of the defender's optimal strategies to return when the optimum is not unique
        (see :mod:`gametheory_defense.solvers.selection`). ``value`` is not changed by it.
    tol : float
        Exploitability target **relative to the payoff scale** ``max A - min A``
        (:func:`payoff_scale`): methods receive the absolute target ``tol * (max A - min A)``;
        iterative methods stop there, and an answer whose computed duality gap misses it is
        reported ``"inaccurate"`` (with a warning). Relative, so that a game and the same game
        times ``1e-15`` or ``1e10`` are solved alike. The target never goes below what rounding
        lets a certificate resolve, ``8.04 (m + n + 2) u max|A|`` (``u = 2**-53``).
    **options
        Method-specific keywords, e.g. ``max_iterations``/``time_limit``/``progress`` and the
        warm start ``x0``/``y0`` for the iterative methods, ``algorithm`` for ``lp``,
        ``solver`` for ``cvxpy``.

    Returns
    -------
    Equilibrium
        Strategies, value, both players' certified guarantees, exploitability, method, status.

    Raises
    ------
    ValueError
        For bad payoffs (not 2-D, empty, non-finite), an unknown method, selection rule or
        option, or ``select="clean"`` without clean accuracies.
    GameTooLargeError
        If an exponential-time method is asked to solve a game above its size limit.
    SolverError
        If the method fails; the message carries the backend's own message.
    """
    game = as_game(matrix)
    name, fn = resolve_method(method)
    if select is not None and select not in SELECTIONS:
        raise ValueError(f"unknown select rule {select!r}; choose from {', '.join(SELECTIONS)} or None")
    if select == "clean" and game.clean_accuracy is None:
        raise ValueError(
            "select='clean' needs each defender's clean accuracy: pass a PayoffMatrix with "
            "clean_accuracy set, or choose select='max-entropy' / 'min-support'"
        )
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    check_options(name, fn, options)
    values = game.values
    m, n = values.shape

    # Payoffs beyond 2**1000 are scaled by an exact power of two first (strategies are
    # invariant), so that no sum of products overflows; value and bounds are scaled back.
    values, exponent = _prescaled(values)
    scale = float(np.ptp(values))
    # Relative to the payoff scale, but never below what rounding lets a certificate resolve
    # (the largest rounding allowance of certify: a few (m + n) ulps of max|A|).
    largest = max(abs(float(values.max())), abs(float(values.min())))  # no |A| copy
    floor = 4.0 * 2.01 * (m + n + 2) * UNIT_ROUNDOFF * largest
    target = max(float(tol) * scale, floor) if scale > 0 else float(tol)  # constant game: all exact

    frozen = values.view()  # solvers get a read-only view: no copy of a large game
    frozen.setflags(write=False)
    try:
        raw = fn(frozen, tol=target, **options)
    except GTDError:
        raise
    except (ValueError, TypeError) as exc:
        if fn in SOLVERS.values():  # our own validation of options: a user error, keep it
            raise
        raise SolverError(f"method {name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - every backend failure becomes a SolverError
        raise SolverError(f"method {name!r} failed: {type(exc).__name__}: {exc}") from exc
    out = normalise_output(raw, name)
    x = clean_strategy(out.defender_strategy, m, who="defender", method=name)
    y = clean_strategy(out.attacker_strategy, n, who="attacker", method=name)
    status = out.status if out.status in STATUSES else str(out.status)
    cert = certify(values, x, y)
    if not cert.exact:
        # Zeroing probabilities below 1e-13 can cost exactness (diag(1e10, 1e-10) is solved
        # by x = (1e-20, 1)): keep them when that certifies better.
        x2 = clean_strategy(out.defender_strategy, m, who="defender", method=name, zero_tol=0.0)
        y2 = clean_strategy(out.attacker_strategy, n, who="attacker", method=name, zero_tol=0.0)
        if not (np.array_equal(x, x2) and np.array_equal(y, y2)):
            cert2 = certify(values, x2, y2)
            if cert2.computed_gap < cert.computed_gap:
                x, y, cert = x2, y2, cert2
    value = _unscale(cert.value, exponent)

    if select is not None:
        x = select_defender_strategy(values, x, y, select, tol=target, clean_accuracy=game.clean_accuracy)
        cert = certify(values, x, y)
    gap = _unscale(cert.exploitability, exponent)

    if status in (OPTIMAL, CONVERGED) and cert.computed_gap > target * (1 + 1e-6):
        warnings.warn(
            f"method {name!r} reported {status!r} but its certificate is {gap:.3g} > tol {tol:.3g} x "
            f"payoff scale {_unscale(scale, exponent):.3g}; status set to {INACCURATE!r}",
            stacklevel=2,
        )
        status = INACCURATE
    elif status in (MAX_ITERATIONS, TIME_LIMIT):
        warnings.warn(
            f"method {name!r} stopped ({status}) at exploitability {gap:.3g} > tol {tol:.3g} x "
            f"payoff scale {_unscale(scale, exponent):.3g}; raise max_iterations, loosen tol, or use method='lp'",
            stacklevel=2,
        )
    log.debug("solved %dx%d game with %s: value %.9g, exploitability %.3g", m, n, name, value, gap)
    return Equilibrium(
        defender_strategy=x,
        attacker_strategy=y,
        value=value,
        exploitability=gap,
        method=name,
        status=status,
        select=select,
        defenders=game.defenders,
        attackers=game.attackers,
        iterations=out.iterations,
        defender_guarantee=_unscale(cert.defender_guarantee, exponent),
        attacker_guarantee=_unscale(cert.attacker_guarantee, exponent),
    )

