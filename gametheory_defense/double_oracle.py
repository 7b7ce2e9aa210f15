"""The double-oracle loop for large zero-sum games (McMahan, Gordon and Blum 2003).

Instead of building the whole payoff matrix, solve a restricted game, ask an **attack
oracle** for a response to the defender's current mixture (a new column: every current
defender's accuracy against it), optionally ask a **defense oracle** for a response to the
attacker's mixture (a new row), add the responses that improve on the restricted value by
more than ``tol``, and repeat. With both oracles this is PSRO (Lanctot et al. 2017) on a
matrix game. This module knows nothing of models or attacks: oracles are plain callables.

Bounds on the value ``V`` of the full game, recorded at every iteration for the restricted
equilibrium ``(x, y)`` (``A`` the restricted matrix, ``c`` the attack oracle's column, ``r``
the defense oracle's row):

- ``lower_bound = min(min_j (x A)_j, x . c)``: what ``x`` guarantees against every column
  seen. It is a certified lower bound on ``V`` when the attack oracle is an exact best
  response (or when there is no attack oracle, i.e. the columns are the full set).
- ``upper_bound = max(max_i (A y)_i, r . y)``: the best any row seen does against ``y``. It is
  a certified upper bound on ``V`` when the defense oracle is an exact best response (or when
  there is no defense oracle, i.e. the rows are the full set of defenders).

A heuristic oracle (an attack that is not a true best response) makes the corresponding
bound an estimate only: the true value may be lower than ``lower_bound``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gametheory_defense.solvers import ITERATIVE_METHODS, Equilibrium, solve_zero_sum

__all__ = ["double_oracle", "DoubleOracleResult", "DoubleOracleIteration", "OracleResponse", "STOP_REASONS"]

log = logging.getLogger(__name__)

STOP_REASONS = ("converged", "max-iterations", "oracle-returned-none", "callback")
"""Values of :attr:`DoubleOracleResult.stop_reason`."""


@dataclass(frozen=True)
class OracleResponse:
    """A new strategy proposed by an oracle, with its payoffs against the current opponents.

    Attributes
    ----------
    name : str
        The strategy's name (a suffix ``-2``, ``-3``, ... is added if it clashes).
    payoffs : ndarray
        For an attack oracle: each current defender's accuracy against the new attacker
        (a column). For a defense oracle: the new defender's accuracy against each current
        attacker (a row).
    stderr, n_samples : ndarray, optional
        Per-entry standard errors / sample counts; required exactly when the matrix has them.
    info : dict
        Free-form information (attack settings, timings); not interpreted.
    clean_accuracy : float, optional
        A new defender's clean accuracy; required for rows when the matrix has clean accuracies.
    """

    name: str
    payoffs: np.ndarray
    stderr: np.ndarray | None = None
    n_samples: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    clean_accuracy: float | None = None


@dataclass(frozen=True)
class DoubleOracleIteration:
    """One round: the restricted game solved, its value, the bounds, and what was added."""

    iteration: int
    n_defenders: int
    n_attackers: int
    value: float
    lower_bound: float
    upper_bound: float
    added_attacker: str | None
    added_defender: str | None


@dataclass(frozen=True)
class DoubleOracleResult:
    """The outcome of :func:`double_oracle`.

    Attributes
    ----------
    matrix : payoff.PayoffMatrix
        The final restricted game (initial matrix plus every added row and column).
    equilibrium : Equilibrium
        A solution of ``matrix``.
    history : tuple of DoubleOracleIteration
        One entry per oracle round.
    added_attackers, added_defenders : tuple of str
        Names added, in order.
    converged : bool
        True when the last round's oracles found no response improving by more than ``tol``.
    initial_value : float
        Value of the initial matrix.
    stop_reason : str
        One of :data:`STOP_REASONS`.
    """

    matrix: Any
    equilibrium: Equilibrium
    history: tuple[DoubleOracleIteration, ...]
    added_attackers: tuple[str, ...]
    added_defenders: tuple[str, ...]
    converged: bool
    initial_value: float
    stop_reason: str = "converged"

    @property
    def lower_bound(self) -> float:
        """Lower bound on the full game's value from the last round (see the module docstring)."""
        return self.history[-1].lower_bound if self.history else float("nan")

    @property
    def upper_bound(self) -> float:
        """Upper bound on the full game's value from the last round (see the module docstring)."""
        return self.history[-1].upper_bound if self.history else float("nan")


def _as_payoff_matrix(matrix: Any) -> Any:
    from payoff.matrix import PayoffMatrix

    if isinstance(matrix, PayoffMatrix):
        return matrix
    return PayoffMatrix(np.asarray(matrix, dtype=np.float64))


def _unique(name: str, taken: tuple[str, ...]) -> str:
    if name not in taken:
        return name
    k = 2
    while f"{name}-{k}" in taken:
        k += 1
    return f"{name}-{k}"


def _check_response(resp: Any, kind: str, length: int) -> tuple[str, np.ndarray]:
    if not isinstance(resp, OracleResponse):
        raise TypeError(f"the {kind} oracle must return an OracleResponse or None, got {type(resp).__name__}")
    if not isinstance(resp.name, str) or not resp.name.strip():
        raise ValueError(f"the {kind} oracle returned an empty or non-string name {resp.name!r}")
    payoffs = np.asarray(resp.payoffs, dtype=np.float64).reshape(-1)
    what = "column (one accuracy per defender)" if kind == "attack" else "row (one accuracy per attacker)"
    if payoffs.shape != (length,):
        raise ValueError(f"the {kind} oracle's {resp.name!r} has {payoffs.size} payoffs; a {what} needs {length}")
    if not np.all(np.isfinite(payoffs)):
        raise ValueError(f"the {kind} oracle's {resp.name!r} has NaN or infinite payoffs")
    return resp.name.strip(), payoffs


def double_oracle(
    matrix: Any,
    attack_oracle: Callable[[np.ndarray, Any], OracleResponse | None] | None,
    defense_oracle: Callable[[np.ndarray, Any], OracleResponse | None] | None = None,
    *,
    tol: float = 1e-3,
    max_iterations: int = 20,
    method: str | Callable[..., Any] = "lp",
    select: str | None = None,
    callback: Callable[[DoubleOracleIteration, Equilibrium], bool | None] | None = None,
    progress: bool = True,
) -> DoubleOracleResult:
    """Grow a restricted game with best responses until none improves (McMahan, Gordon and Blum 2003).

    Each round solves the current matrix, calls
    ``attack_oracle(defender_strategy, matrix)`` and adds its column if
    ``x . column < value - tol``; then calls ``defense_oracle(attacker_strategy, matrix)``
    (``matrix`` already holding this round's new column, ``attacker_strategy`` padded with a
    zero for it, so the new row covers every attacker) and adds its row if
    ``row . y > value + tol``. A response whose payoffs equal a column (row) already in the
    matrix is never added. It stops when a round adds nothing (``converged``), after
    ``max_iterations`` rounds, when an oracle returns ``None``, or when ``callback`` returns
    True.

    Parameters
    ----------
    matrix : payoff.PayoffMatrix or array_like
        The initial restricted game (rows defenders, columns attackers, accuracies in [0, 1]).
    attack_oracle : callable or None
        ``(defender_strategy, matrix) -> OracleResponse | None``; its payoffs are a new column.
    defense_oracle : callable, optional
        ``(attacker_strategy, matrix) -> OracleResponse | None``; its payoffs are a new row.
    tol : float
        Minimum improvement (in accuracy) for a response to be added.
    max_iterations : int
        Maximum number of oracle rounds.
    method, select
        Passed to :func:`~gametheory_defense.solvers.solve_zero_sum` for every restricted game.
    callback : callable, optional
        ``callback(record, equilibrium)`` after each round; returning True stops the loop.
    progress : bool
        Show a tqdm progress bar over rounds.

    Returns
    -------
    DoubleOracleResult
        The final matrix and equilibrium, the per-round history with bounds, the names added.

    Raises
    ------
    ValueError
        If both oracles are None, ``tol`` or ``max_iterations`` is invalid, or an oracle's
        response has the wrong length or non-finite payoffs.
    """
    if attack_oracle is None and defense_oracle is None:
        raise ValueError("double_oracle needs an attack_oracle, a defense_oracle, or both; got neither")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    game = _as_payoff_matrix(matrix)
    # Exact methods certify to 1e-9; iterative ones only need to resolve differences of ``tol``.
    iterative = isinstance(method, str) and method in ITERATIVE_METHODS
    solver_tol = max(tol / 10, 1e-9) if iterative else 1e-9

    last: list[Equilibrium] = []

    def solve(g: Any) -> Equilibrium:
        # Iterative methods start from the previous round's strategies (new strategies, which
        # are appended, start at probability 0): a warm start for the repeated solves.
        warm: dict[str, Any] = {}
        if iterative and last:
            x_prev, y_prev = last[0].defender_strategy, last[0].attacker_strategy
            warm = {
                "x0": np.pad(x_prev, (0, len(g.defenders) - x_prev.size)),
                "y0": np.pad(y_prev, (0, len(g.attackers) - y_prev.size)),
            }
        last[:] = [solve_zero_sum(g, method, select=select, tol=solver_tol, **warm)]
        return last[0]

    eq = solve(game)
    initial_value = eq.value
    history: list[DoubleOracleIteration] = []
    added_attackers: list[str] = []
    added_defenders: list[str] = []
    converged = False
    reason = "max-iterations"
    stale = False  # whether ``eq`` no longer solves ``game``
    bar = tqdm(total=max_iterations, desc="double oracle", unit="round", disable=not progress)
    try:
        for iteration in range(1, max_iterations + 1):
            x, y = eq.defender_strategy, eq.attacker_strategy
            values = np.asarray(game.values, dtype=np.float64)
            n_def, n_att = values.shape
            lower = float(np.min(x @ values))
            upper = float(np.max(values @ y))
            new_attacker = new_defender = None
            got_none = False

            if attack_oracle is not None:
                response = attack_oracle(x.copy(), game)
                if response is None:
                    got_none = True
                else:
                    name, column = _check_response(response, "attack", n_def)
                    column_value = float(x @ column)
                    lower = min(lower, column_value)
                    # A copy of a column already in the game adds nothing, whatever round-off
                    # in the restricted solve says (with tol=0 it would be re-added forever).
                    duplicate = bool(np.any(np.all(values == column[:, None], axis=0)))
                    if column_value < eq.value - tol and not duplicate:
                        new_attacker = _unique(name, tuple(game.attackers))
                        game = game.with_column(
                            new_attacker, column, stderr=response.stderr, n_samples=response.n_samples
                        )
                        added_attackers.append(new_attacker)

            if defense_oracle is not None and not got_none:
                y_now = np.append(y, 0.0) if new_attacker is not None else y.copy()
                response = defense_oracle(y_now, game)
                if response is None:
                    got_none = True
                else:
                    name, row = _check_response(response, "defense", len(y_now))
                    row_value = float(row @ y_now)
                    upper = max(upper, row_value)
                    duplicate = bool(np.any(np.all(np.asarray(game.values) == row[None, :], axis=1)))
                    if row_value > eq.value + tol and not duplicate:
                        new_defender = _unique(name, tuple(game.defenders))
                        game = game.with_row(
                            new_defender,
                            row,
                            stderr=response.stderr,
                            n_samples=response.n_samples,
                            clean_accuracy=response.clean_accuracy,
                        )
                        added_defenders.append(new_defender)

            record = DoubleOracleIteration(
                iteration=iteration,
                n_defenders=n_def,
                n_attackers=n_att,
                value=eq.value,
                lower_bound=lower,
                upper_bound=upper,
                added_attacker=new_attacker,
                added_defender=new_defender,
            )
            history.append(record)
            log.info(
                "double oracle round %d (%dx%d): value %.6f in [%.6f, %.6f]; added %s / %s",
                iteration, n_def, n_att, eq.value, lower, upper, new_attacker, new_defender,
            )
            bar.update(1)
            bar.set_postfix_str(f"value {eq.value:.4f} [{lower:.4f}, {upper:.4f}]", refresh=False)
            stale = new_attacker is not None or new_defender is not None
            stop = bool(callback(record, eq)) if callback is not None else False
            if got_none:
                reason = "oracle-returned-none"
                break
            if not stale:
                converged = True
                reason = "converged"
                break
            if stop:
                reason = "callback"
                break
            eq = solve(game)
            stale = False
    finally:
        bar.close()
    if stale:
        eq = solve(game)
    return DoubleOracleResult(
        matrix=game,
        equilibrium=eq,
        history=tuple(history),
        added_attackers=tuple(added_attackers),
        added_defenders=tuple(added_defenders),
        converged=converged,
        initial_value=initial_value,
        stop_reason=reason,
    )
