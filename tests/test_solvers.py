"""Tests of gametheory_defense.solvers: known equilibria, properties, selection, errors.

Every registered method is run on every known game and property; iterative methods are
held to the exploitability target in ``TOL`` (the exact ones and PDHG to 1e-9).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import nashpy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gametheory_defense
from gametheory_defense.errors import GameTooLargeError, SolverError
from gametheory_defense.solvers import (
    CONVERGED,
    MAX_ITERATIONS,
    OPTIMAL,
    SOLVERS,
    STATUSES,
    TIME_LIMIT,
    Equilibrium,
    SolverOutput,
    exploitability,
    register_solver,
    solve_zero_sum,
)
from gametheory_defense.solvers import lp as lp_module
from gametheory_defense.solvers._core import clean_strategy
from gametheory_defense.solvers.iterative import project_simplex
from payoff.matrix import PayoffMatrix

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Exploitability target per method: exact methods and restarted PDHG reach 1e-9; nashpy's
# linear_program keeps HiGHS's default 1e-7 feasibility tolerance (hypothesis found a game,
# 1 + [[6e-8], [1e-7], [6e-8]], where it picks a row 4e-8 short); regret matching+ and
# fictitious play converge sublinearly and are held to looser targets.
TOL = {
    "lp": 1e-9,
    "cvxpy": 1e-9,
    "nashpy-lp": 1e-7,
    "support-enumeration": 1e-9,
    "vertex-enumeration": 1e-9,
    "lemke-howson": 1e-9,
    "pdhg": 1e-9,
    "regret-matching": 5e-3,
    "fictitious-play": 3e-3,
}
# How close the strategies of a unique equilibrium must be (iterative methods stop early).
STRATEGY_ATOL = {m: 1e-6 for m in TOL} | {"regret-matching": 5e-2, "fictitious-play": 2e-2}
METHODS = sorted(TOL)

MATCHING_PENNIES = np.array([[1.0, -1.0], [-1.0, 1.0]])
RPS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
# OpenSpiel's biased rock-paper-scissors; its unique equilibrium is (1, 10, 5) / 16 for both.
BIASED_RPS = np.array([[0.0, -0.25, 0.5], [0.25, 0.0, -0.05], [-0.5, 0.05, 0.0]])
BIASED_RPS_EQ = np.array([1.0, 10.0, 5.0]) / 16
# Row 2 is dominated by the mix (1/2, 1/2) of rows 0 and 1; column 2 is dominated by both.
DOMINATED = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1 / 3, 1 / 3, 1.0]])
# Row 0 strictly dominates; the attacker's best reply to it is column 1.
PURE_DOMINANT = np.array([[0.9, 0.8, 0.95], [0.1, 0.2, 0.3], [0.5, 0.3, 0.6]])

# (name, matrix, value, defender strategy or None if not unique, attacker strategy or None)
KNOWN_GAMES = [
    ("matching-pennies", MATCHING_PENNIES, 0.0, [0.5, 0.5], [0.5, 0.5]),
    ("rock-paper-scissors", RPS, 0.0, [1 / 3] * 3, [1 / 3] * 3),
    ("biased-rps", BIASED_RPS, 0.0, BIASED_RPS_EQ, BIASED_RPS_EQ),
    ("dominated", DOMINATED, 0.5, [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]),
    ("pure-dominant", PURE_DOMINANT, 0.8, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
    ("1x1", np.array([[0.3]]), 0.3, [1.0], [1.0]),
    ("1xn", np.array([[0.3, 0.1, 0.5]]), 0.1, [1.0], [0.0, 1.0, 0.0]),
    ("nx1", np.array([[0.3], [0.1], [0.5]]), 0.5, [0.0, 0.0, 1.0], [1.0]),
    ("all-equal", np.full((3, 4), 0.7), 0.7, None, None),
]

# A continuum of optimal defender strategies: x = (2t, t, 1 - 3t) for t in [0, 1/3].
CONTINUUM = [[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]
_T = 1 / (3 + 4 ** (1 / 3))  # the max-entropy member: (1 - 3t)^3 = 4 t^3
MAX_ENTROPY_ANSWER = np.array([2 * _T, _T, 1 - 3 * _T])


def solve(matrix: object, method: str, **kwargs: object) -> Equilibrium:
    return solve_zero_sum(matrix, method, tol=TOL[method], **kwargs)


def target(matrix: object, tol: float) -> float:
    """The absolute exploitability a relative ``tol`` allows, plus room for the rounding allowance."""
    a = np.asarray(matrix, dtype=np.float64)
    return tol * float(np.ptp(a)) + 1e-13 * max(1.0, float(np.abs(a).max()))


def test_every_registered_method_is_tested() -> None:
    assert set(SOLVERS) == set(TOL)


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("game", KNOWN_GAMES, ids=[g[0] for g in KNOWN_GAMES])
def test_known_games(method: str, game: tuple) -> None:
    _, a, value, x_star, y_star = game
    eq = solve(a, method)
    tol = target(a, TOL[method])
    assert eq.exploitability <= tol
    assert eq.value == pytest.approx(value, abs=tol)
    assert eq.status in (OPTIMAL, CONVERGED)
    assert eq.method == method
    if x_star is not None:
        np.testing.assert_allclose(eq.defender_strategy, x_star, atol=STRATEGY_ATOL[method])
        np.testing.assert_allclose(eq.attacker_strategy, y_star, atol=STRATEGY_ATOL[method])


def test_biased_rps_matrix_has_the_published_equilibrium() -> None:
    # Both players indifferent between all three actions at (1, 10, 5)/16, value 0.
    np.testing.assert_allclose(BIASED_RPS @ BIASED_RPS_EQ, 0.0, atol=1e-15)
    np.testing.assert_allclose(BIASED_RPS_EQ @ BIASED_RPS, 0.0, atol=1e-15)
    assert exploitability(BIASED_RPS, BIASED_RPS_EQ, BIASED_RPS_EQ) == pytest.approx(0.0, abs=1e-15)
    # ... and no other: a pure strategy loses to its best reply.
    assert exploitability(BIASED_RPS, np.array([0.0, 1.0, 0.0]), BIASED_RPS_EQ) > 0.04


def test_supports_and_names_come_from_the_payoff_matrix() -> None:
    m = PayoffMatrix(
        [[0.9, 0.2, 0.95], [0.4, 0.6, 0.97]],
        defenders=["standard", "pgd-at"],
        attackers=["fgsm", "pgd", "noise"],
    )
    eq = solve_zero_sum(m)
    assert eq.defenders == ("standard", "pgd-at")
    assert eq.attackers == ("fgsm", "pgd", "noise")
    assert eq.defender_support == ("standard", "pgd-at")
    assert eq.attacker_support == ("fgsm", "pgd")  # "noise" is dominated for the attacker
    # 2x2 core: x0 = 0.2/0.9, value = 0.4 + 0.5 x0
    assert eq.value == pytest.approx(0.4 + 0.5 * 0.2 / 0.9, abs=1e-12)
    lo, hi = eq.bounds
    assert lo <= eq.value <= hi


# --------------------------------------------------------------------------- the LP pieces


@pytest.mark.parametrize("a", [MATCHING_PENNIES, RPS], ids=["pennies", "rps"])
def test_lp_building_blocks(a: np.ndarray) -> None:
    m, n = a.shape
    c = lp_module.objective(m)
    assert c.tolist() == [0.0] * m + [-1.0]
    a_ub, b_ub = lp_module.inequality_constraints(a)
    assert a_ub.shape == (n, m + 1) and b_ub.tolist() == [0.0] * n
    # At the uniform equilibrium with v = 0 every inequality is tight.
    z = np.append(np.full(m, 1 / m), 0.0)
    np.testing.assert_allclose(a_ub @ z, 0.0, atol=1e-15)
    a_eq, b_eq = lp_module.equality_constraints(m)
    assert (a_eq @ z).tolist() == pytest.approx([1.0]) and b_eq.tolist() == [1.0]
    bounds = lp_module.variable_bounds(m)
    assert bounds[:m].tolist() == [[0.0, np.inf]] * m and bounds[m].tolist() == [-np.inf, np.inf]


def test_lp_solves_once_for_both_players(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = lp_module.scipy.optimize.linprog

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("method"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lp_module.scipy.optimize, "linprog", counting)
    eq = solve_zero_sum(BIASED_RPS, "lp")
    assert len(calls) == 1
    np.testing.assert_allclose(eq.attacker_strategy, BIASED_RPS_EQ, atol=1e-12)


def test_lp_on_a_larger_random_game_uses_the_interior_point_path() -> None:
    a = np.random.default_rng(3).uniform(size=(220, 200))  # 44,000 entries: HiGHS IPM + crossover
    eq = solve_zero_sum(a, "lp")
    assert eq.exploitability <= 1e-9
    x, y = nashpy.Game(a).linear_program()
    assert eq.value == pytest.approx(float(np.min(np.clip(x, 0, None) @ a)), abs=1e-8)


# --------------------------------------------------------------------------- properties

small_games = st.tuples(st.integers(1, 5), st.integers(1, 5)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(0.0, 1.0, width=32))
)
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("method", METHODS)
@PROPERTY
@given(a=small_games)
def test_random_games_are_certified_and_agree_with_lp(method: str, a: np.ndarray) -> None:
    eq = solve(a, method)
    tol = TOL[method]
    for p in (eq.defender_strategy, eq.attacker_strategy):
        assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert eq.value == pytest.approx(float(eq.defender_strategy @ a @ eq.attacker_strategy), abs=1e-12)
    if method == "nashpy-lp" and eq.status == "inaccurate":
        # nashpy's LP keeps HiGHS's absolute 1e-7 tolerance (e.g. [[1e-9], [0]]: it picks row
        # 1); the relative certificate says so instead of calling it optimal.
        assert eq.exploitability <= 1e-7
    else:
        assert eq.exploitability <= target(a, tol)
    # The certificate is the computed gap plus a rounding allowance of a few ulps, never less.
    computed = float(np.max(a @ eq.attacker_strategy) - np.min(eq.defender_strategy @ a))
    assert computed <= eq.exploitability <= computed + 1e-14
    assert eq.bounds == (eq.defender_guarantee, eq.attacker_guarantee)
    assert eq.defender_guarantee <= np.min(eq.defender_strategy @ a)
    assert eq.attacker_guarantee >= np.max(a @ eq.attacker_strategy)
    reference = solve_zero_sum(a, "lp")
    assert eq.value == pytest.approx(reference.value, abs=tol + 1e-9)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=small_games, c=st.floats(-3.0, 3.0))
def test_value_shifts_with_the_payoffs_and_flips_with_the_roles(method: str, a: np.ndarray, c: float) -> None:
    tol = TOL[method]
    v = solve(a, method).value
    assert solve(a + c, method).value == pytest.approx(v + c, abs=2 * tol + 1e-9)
    assert solve(-a.T, method).value == pytest.approx(-v, abs=2 * tol + 1e-9)


@PROPERTY
@given(a=small_games)
def test_lp_agrees_with_nashpy_linear_program(a: np.ndarray) -> None:
    eq = solve_zero_sum(a, "lp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = nashpy.Game(a).linear_program()
    x = np.clip(x, 0, None) / np.clip(x, 0, None).sum()
    y = np.clip(y, 0, None) / np.clip(y, 0, None).sum()
    # nashpy's LP keeps HiGHS's absolute 1e-7 tolerance: on [[0, 1, 6e-8], [1, 6e-8, 6e-8]]
    # its x guarantees 0 where row 1 guarantees 6e-8 (the value). Ours is never worse.
    assert eq.value == pytest.approx(float(x @ a @ y), abs=2e-7)
    assert eq.defender_guarantee >= float(np.min(x @ a)) - 1e-12


def test_pdhg_reaches_tight_tolerance_on_a_mid_size_game() -> None:
    a = np.random.default_rng(7).uniform(size=(150, 120))
    eq = solve_zero_sum(a, "pdhg", tol=1e-6)
    assert eq.status == CONVERGED and eq.exploitability <= 1e-6
    assert eq.value == pytest.approx(solve_zero_sum(a, "lp").value, abs=1e-6)


def test_project_simplex_matches_the_kkt_conditions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        z = rng.normal(size=7) * 3
        p = project_simplex(z)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        # KKT: z - p is constant on the support and no larger off it.
        gap = z - p
        on = p > 0
        assert np.ptp(gap[on]) < 1e-12
        assert np.all(gap[~on] <= gap[on][0] + 1e-12)


# --------------------------------------------------------------------------- iterative limits


def test_iterative_method_reports_max_iterations_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="max-iterations"):
        eq = solve_zero_sum(BIASED_RPS, "fictitious-play", tol=1e-9, max_iterations=50)
    assert eq.status == MAX_ITERATIONS and eq.iterations == 50
    assert eq.exploitability > 1e-9
    # Still a pair of distributions with an honest certificate.
    assert eq.exploitability == pytest.approx(exploitability(BIASED_RPS, eq.defender_strategy, eq.attacker_strategy))


def test_iterative_method_honours_time_limit() -> None:
    a = np.random.default_rng(1).uniform(size=(60, 60))
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="time-limit"):
        eq = solve_zero_sum(a, "regret-matching", tol=1e-12, time_limit=0.2, max_iterations=10**9)
    assert time.perf_counter() - start < 2.0
    assert eq.status == TIME_LIMIT


def test_regret_matching_certificate_shrinks_with_iterations() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # max-iterations, on purpose
        gaps = [
            solve_zero_sum(BIASED_RPS, "regret-matching", tol=1e-12, max_iterations=k).exploitability
            for k in (100, 1000, 10000)
        ]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("method", METHODS)
def test_selection_on_a_continuum_of_optimal_strategies(method: str) -> None:
    tol = TOL[method]
    # Iterative methods select among tol-optimal strategies, a slightly larger set.
    atol = 1e-6 if tol <= 1e-9 else 20 * tol
    m = PayoffMatrix(CONTINUUM, clean_accuracy=[0.9, 0.8, 0.5])
    base = solve(m, method)
    assert base.value == pytest.approx(0.5, abs=tol)

    clean = solve(m, method, select="clean")
    np.testing.assert_allclose(clean.defender_strategy, [2 / 3, 1 / 3, 0.0], atol=atol)
    assert clean.defender_support == ("d0", "d1")

    entropy = solve(m, method, select="max-entropy")
    np.testing.assert_allclose(entropy.defender_strategy, MAX_ENTROPY_ANSWER, atol=atol)

    sparse = solve(m, method, select="min-support")
    assert sparse.defender_support == ("d2",)

    for eq, rule in ((clean, "clean"), (entropy, "max-entropy"), (sparse, "min-support")):
        assert eq.select == rule
        assert eq.value == base.value  # selection never changes the value
        assert eq.exploitability <= tol
        np.testing.assert_array_equal(eq.attacker_strategy, base.attacker_strategy)


def test_clean_selection_follows_the_clean_accuracies() -> None:
    m = PayoffMatrix(CONTINUUM, clean_accuracy=[0.6, 0.7, 0.9])
    eq = solve_zero_sum(m, select="clean")
    np.testing.assert_allclose(eq.defender_strategy, [0.0, 0.0, 1.0], atol=1e-9)


@pytest.mark.parametrize("rule", ["clean", "max-entropy", "min-support"])
def test_loose_tol_does_not_let_selection_give_up_guaranteed_accuracy(rule: str) -> None:
    # The example defense game has a unique equilibrium (a 2 x 2 core), so every rule must
    # return it: a loose tol is an accuracy target, not permission to trade the guarantee.
    game = PayoffMatrix.from_json(EXAMPLES / "defense_game.json")
    exact = solve_zero_sum(game)
    eq = solve_zero_sum(game, select=rule, tol=1e-3)
    assert eq.value == exact.value
    np.testing.assert_allclose(eq.defender_strategy, exact.defender_strategy, atol=1e-7)
    assert float(np.min(eq.defender_strategy @ game.values)) >= exact.value - 5e-9
    assert eq.exploitability <= 5e-9


def test_min_support_on_a_game_with_many_optimal_pairs() -> None:
    # Rows 0-3 are copies of "half" (0.5 everywhere) mixed in many ways by the LP; row 4 and
    # row 5 together also guarantee 0.5; a single row suffices.
    a = np.array(
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.6, 0.4, 0.5], [0.4, 0.6, 0.5], [0.9, 0.1, 0.5], [0.1, 0.9, 0.5]]
    )
    eq = solve_zero_sum(a, select="min-support")
    assert len(eq.defender_support) == 1 and eq.value == pytest.approx(0.5)
    assert eq.exploitability <= 1e-9


# --------------------------------------------------------------------------- results


def test_equilibrium_round_trips_through_json() -> None:
    eq = solve_zero_sum(PayoffMatrix(CONTINUUM, defenders=["a", "b", "c"], attackers=["u", "v"]))
    d = json.loads(json.dumps(eq.to_dict()))
    assert set(d["defender_strategy"]) == {"a", "b", "c"}  # every name, support or not
    assert d["defenders"] == ["a", "b", "c"] and d["attackers"] == ["u", "v"]
    assert {"value", "exploitability", "method", "status", "select"} <= set(d)
    back = Equilibrium.from_dict(d)
    assert back == eq
    assert back.defender_support == eq.defender_support


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("value"), "missing"),
        (lambda d: d.update(value="high"), "finite number"),
        (lambda d: d.update(exploitability=-0.1), ">= 0"),
        (lambda d: d["defender_strategy"].update(d0=0.9), "probability distribution"),
        (lambda d: d["defender_strategy"].pop("d0"), "every defender"),
        (lambda d: d.update(select="fastest"), "select"),
        (lambda d: d.update(status=""), "status"),
    ],
)
def test_equilibrium_from_dict_rejects_bad_input(change: object, message: str) -> None:
    d = solve_zero_sum(MATCHING_PENNIES).to_dict()
    change(d)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        Equilibrium.from_dict(d)


def test_equilibrium_is_frozen_and_read_only() -> None:
    eq = solve_zero_sum(RPS)
    with pytest.raises(AttributeError):
        eq.value = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        eq.defender_strategy[0] = 1.0


def test_clean_strategy_zeroes_tiny_negatives_and_renormalises() -> None:
    p = clean_strategy([0.5 + 1e-12, -1e-14, 0.5], 3, who="defender", method="test")
    assert p[1] == 0.0 and p.sum() == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(SolverError, match="probability -0.2"):
        clean_strategy([0.6, -0.2, 0.6], 3, who="defender", method="test")


def test_front_door_exports() -> None:
    assert gametheory_defense.solve_zero_sum is solve_zero_sum
    assert gametheory_defense.Equilibrium is Equilibrium
    assert gametheory_defense.SOLVERS is SOLVERS
    assert set(STATUSES) == {"optimal", "converged", "max-iterations", "time-limit", "inaccurate"}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("payoffs", "message"),
    [
        ([[0.5, np.nan], [0.1, 0.2]], "finite"),
        ([[0.5, np.inf]], "finite"),
        ([0.1, 0.2, 0.3], "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.zeros((0, 3)), "empty"),
        ([["a", "b"]], "numbers"),
    ],
)
def test_bad_payoffs_raise_value_error(payoffs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        solve_zero_sum(payoffs)


def test_unknown_method_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown solver method 'simplex'.*lp"):
        solve_zero_sum(RPS, "simplex")


def test_unknown_option_and_bad_select_raise_value_error() -> None:
    with pytest.raises(ValueError, match="does not accept option"):
        solve_zero_sum(RPS, "lp", max_iterations=3)
    with pytest.raises(ValueError, match="unknown select"):
        solve_zero_sum(RPS, select="prettiest")
    with pytest.raises(ValueError, match="tol"):
        solve_zero_sum(RPS, tol=0.0)


def test_clean_selection_needs_clean_accuracy() -> None:
    with pytest.raises(ValueError, match="clean accuracy"):
        solve_zero_sum([[0.5, 0.2], [0.3, 0.6]], select="clean")
    with pytest.raises(ValueError, match="clean accuracy"):
        solve_zero_sum(PayoffMatrix([[0.5, 0.2], [0.3, 0.6]]), select="clean")


@pytest.mark.parametrize(
    ("method", "shape"),
    [("support-enumeration", (10, 9)), ("vertex-enumeration", (8, 7)), ("lemke-howson", (13, 12))],
)
def test_exponential_methods_refuse_large_games_quickly(method: str, shape: tuple[int, int]) -> None:
    a = np.random.default_rng(0).uniform(size=shape)
    start = time.perf_counter()
    with pytest.raises(GameTooLargeError, match="method='lp'"):
        solve_zero_sum(a, method)
    assert time.perf_counter() - start < 0.5


def test_failing_custom_solver_raises_solver_error_with_its_message() -> None:
    def broken(a: np.ndarray, *, tol: float) -> SolverOutput:
        raise RuntimeError("backend exploded")

    with pytest.raises(SolverError, match="backend exploded"):
        solve_zero_sum(RPS, broken)


@pytest.mark.parametrize(
    "output",
    [
        (np.array([np.nan, 0.5, 0.5]), np.full(3, 1 / 3)),
        (np.array([1.2, -0.2, 0.0]), np.full(3, 1 / 3)),
        (np.full(2, 0.5), np.full(3, 1 / 3)),
        None,
    ],
)
def test_garbage_from_a_custom_solver_raises_solver_error(output: object) -> None:
    with pytest.raises(SolverError):
        solve_zero_sum(RPS, lambda a, *, tol: output)


def test_custom_callable_and_registration() -> None:
    def uniform(a: np.ndarray, *, tol: float) -> tuple[np.ndarray, np.ndarray]:
        return np.full(a.shape[0], 1 / a.shape[0]), np.full(a.shape[1], 1 / a.shape[1])

    eq = solve_zero_sum(RPS, uniform)
    assert eq.method == "uniform" and 0 < eq.exploitability < 1e-14  # rounding allowance only
    # An uncertified answer is reported as such, not passed off as optimal.
    with pytest.warns(UserWarning, match="inaccurate"):
        bad = solve_zero_sum(BIASED_RPS, uniform)
    assert bad.status == "inaccurate" and bad.exploitability > 0.01
    register_solver("test-uniform", uniform)
    try:
        assert solve_zero_sum(RPS, "test-uniform").method == "test-uniform"
        with pytest.raises(ValueError, match="already registered"):
            register_solver("test-uniform", lambda a, *, tol: None)
    finally:
        SOLVERS.pop("test-uniform")


# --------------------------------------------------------------------------- issue 16: every scale


def test_tolerance_is_relative_to_the_payoff_scale() -> None:
    # Before: an absolute 1e-9 accepted pure strategies of [[1e-15, 0], [0, 1e-15]] as optimal.
    tiny = np.array([[1e-15, 0.0], [0.0, 1e-15]])
    for method in ("lp", "support-enumeration", "vertex-enumeration", "lemke-howson", "cvxpy"):
        eq = solve_zero_sum(tiny, method)
        np.testing.assert_allclose(eq.defender_strategy, [0.5, 0.5], rtol=1e-12)
        assert eq.status == OPTIMAL and eq.exploitability < 1e-28
    # nashpy's own LP keeps HiGHS's absolute 1e-7 and returns a pure strategy: now reported.
    with pytest.warns(UserWarning, match="inaccurate"):
        assert solve_zero_sum(tiny, "nashpy-lp").status == "inaccurate"
    # The same game at any scale gets the same strategies.
    for scale in (1e-300, 1e-15, 1.0, 1e15, 1e300):
        eq = solve_zero_sum(scale * BIASED_RPS, "lp")
        np.testing.assert_allclose(eq.defender_strategy, BIASED_RPS_EQ, atol=1e-12)


def test_entries_twenty_orders_of_magnitude_apart_get_the_exact_equilibrium() -> None:
    # Before: lp returned x = (1, 0), guaranteeing 0 where the value is 1e-10 (status optimal).
    a = np.array([[1e10, 0.0], [0.0, 1e-10]])
    for method in ("lp", "support-enumeration"):
        eq = solve_zero_sum(a, method)
        assert eq.defender_strategy[0] == pytest.approx(1e-20, rel=1e-9)
        assert eq.defender_guarantee == pytest.approx(1e-10, rel=1e-9)
        assert eq.value == pytest.approx(1e-10, rel=1e-9)


def test_spread_six_times_ten_to_the_minus_twelve() -> None:
    # Before: vertex enumeration returned a non-equilibrium of a 6x6 game of spread 6e-12.
    a = 0.5 + 1e-12 * np.random.default_rng(3).uniform(0, 6, size=(6, 6))
    reference = solve_zero_sum(a, "lp")
    assert reference.status == OPTIMAL
    for method in ("support-enumeration", "vertex-enumeration", "lemke-howson"):
        eq = solve_zero_sum(a, method)
        assert eq.status == OPTIMAL
        # Exact up to round-off (ulp(0.5) = 1.1e-16): a pure strategy would be ~1e-12 off.
        assert eq.exploitability <= 1e-14
        assert eq.value == pytest.approx(reference.value, abs=1e-15)


def test_exploitability_includes_rounding_and_is_never_zero_by_round_off() -> None:
    # One ulp away from the exact equilibrium the computed gap can be exactly 0.0.
    a = np.array([[0.1, 0.7], [0.9, 0.3]])  # x* = (0.6, 0.4), y* = (0.4, 0.6), value 0.54
    x = np.array([0.6, 0.4])
    x_off = np.array([np.nextafter(0.6, 1.0), 0.0])
    x_off[1] = 1.0 - x_off[0]
    y = np.array([0.4, 0.6])
    for strategy in (x, x_off):
        cert = gametheory_defense.solvers.certify(a, strategy, y)
        assert cert.exploitability > 0
        assert cert.defender_guarantee <= 0.54 <= cert.attacker_guarantee
        assert cert.rounding < 1e-15


def test_huge_payoffs_are_rescaled_not_a_raw_error() -> None:
    # Before: lp and cvxpy raised a raw ValueError (max - min overflowed to inf).
    a = np.array([[1e308, -1e308], [-1e308, 1e308]])
    for method in ("lp", "cvxpy", "support-enumeration", "lemke-howson", "pdhg"):
        eq = solve_zero_sum(a, method)
        np.testing.assert_allclose(eq.defender_strategy, [0.5, 0.5])
        assert eq.value == 0.0 and np.isfinite(eq.exploitability)
        assert eq.defender_guarantee <= 0.0 <= eq.attacker_guarantee


def test_both_players_guarantees_are_certified_and_round_trip(tmp_path: Path) -> None:
    a = np.random.default_rng(0).uniform(size=(7, 5))
    eq = solve_zero_sum(a, "pdhg", tol=1e-3, polish=False)
    x, y = eq.defender_strategy, eq.attacker_strategy
    assert eq.defender_guarantee <= np.min(x @ a) and eq.attacker_guarantee >= np.max(a @ y)
    assert eq.attacker_guarantee - eq.defender_guarantee == pytest.approx(eq.exploitability)
    # The interval is the tight one, not value +- exploitability (twice as wide).
    assert eq.bounds == (eq.defender_guarantee, eq.attacker_guarantee)
    assert eq.defender_guarantee <= solve_zero_sum(a).value <= eq.attacker_guarantee
    d = json.loads(json.dumps(eq.to_dict()))
    assert d["defender_guarantee"] == eq.defender_guarantee
    assert Equilibrium.from_dict(d) == eq
    # Files written before the fields existed still load, with the looser interval.
    old = {k: v for k, v in d.items() if not k.endswith("_guarantee")}
    back = Equilibrium.from_dict(old)
    assert back.bounds == (eq.value - eq.exploitability, eq.value + eq.exploitability)


def test_scipy_sparse_input() -> None:
    import scipy.sparse

    a = np.array([[0.0, 0.7, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.9]])
    dense = solve_zero_sum(a)
    for fmt in (scipy.sparse.csr_matrix, scipy.sparse.csc_array, scipy.sparse.coo_matrix):
        eq = solve_zero_sum(fmt(a))
        np.testing.assert_allclose(eq.defender_strategy, dense.defender_strategy)
        assert eq.value == pytest.approx(dense.value, abs=1e-15)


@pytest.mark.parametrize("method", ["pdhg", "regret-matching", "fictitious-play"])
def test_warm_start_from_the_answer_needs_almost_no_work(method: str) -> None:
    a = np.random.default_rng(1).uniform(size=(30, 30))
    exact = solve_zero_sum(a)
    tol = {"pdhg": 1e-9, "regret-matching": 1e-3, "fictitious-play": 1e-2}[method]
    cold = solve_zero_sum(a, method, tol=tol, max_iterations=10**6)
    warm = solve_zero_sum(
        a, method, tol=tol, max_iterations=10**6, x0=exact.defender_strategy, y0=exact.attacker_strategy
    )
    assert warm.status == CONVERGED
    assert warm.iterations < cold.iterations / 5
    with pytest.raises(ValueError, match="x0 has 3 entries"):
        solve_zero_sum(a, method, x0=[1, 0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        solve_zero_sum(a, method, y0=-np.ones(30))


def test_pdhg_polishes_only_while_it_pays() -> None:
    # Before: polishing made uniform 300 x 300 games 22x slower (1.33 s vs 0.06 s). Now the
    # time spent polishing is bounded by the time spent iterating; the polish still runs
    # where it is what makes PDHG fast (badly scaled games).
    from gametheory_defense.solvers import iterative

    polisher = iterative._Polisher(np.eye(2), 1e-9)
    x, y = np.full(200, 1 / 200), np.full(200, 1 / 200)
    assert not polisher.affordable(x, y, elapsed=0.01)  # 40,000 cells at ~1e-5 s: 0.4 s
    assert polisher.affordable(x, y, elapsed=1.0)
    polisher.seconds, polisher.cells = 0.5, 1000
    assert not polisher.affordable(x[:2], y[:2], elapsed=0.9)  # already spent its share
    eq = solve_zero_sum(np.diag([1.0, 1e-5]), "pdhg", max_iterations=200)
    assert eq.status == CONVERGED


def test_lp_algorithm_choice_and_screen() -> None:
    # The double-oracle screen solves accuracy-like games (small supports) by itself ...
    sys_path = str(Path(__file__).resolve().parents[1] / "benchmarks")
    import sys

    sys.path.insert(0, sys_path)
    try:
        import solvers as bench
    finally:
        sys.path.remove(sys_path)
    for seed in range(6):  # supports of 5-8 defenders; some need 7 rounds and 41 per side
        assert lp_module.screen(bench.accuracy_game(500, np.random.default_rng(seed)), tol=1e-12) is not None
    a = bench.accuracy_game(400, np.random.default_rng(0))
    reference = solve_zero_sum(a, "lp", algorithm="highs-ds")
    eq = solve_zero_sum(a, "lp")
    assert eq.value == pytest.approx(reference.value, abs=1e-12) and eq.exploitability < 1e-12
    # ... and gives up quickly on uniform games (supports of about n / 2).
    assert lp_module.screen(np.random.default_rng(0).uniform(size=(400, 400)), tol=1e-12) is None
    assert lp_module._algorithm(np.zeros((399, 400)), "auto") == "highs-ds"
    assert lp_module._algorithm(np.zeros((400, 400)), "auto") == "highs-ipm"


def test_min_support_searches_sizes_one_and_two_at_any_size() -> None:
    # Before: rows 0-2 identity, row 3 = (1/3, 1/3, 1/3), the rest 0.1: m = 63 gave [d3],
    # m = 64 gave [d0, d1, d2] (the exact search stopped at 64 rows).
    for m in (63, 64, 500):
        a = np.full((m, 3), 0.1)
        a[:3] = np.eye(3)
        a[3] = 1 / 3
        eq = solve_zero_sum(a, select="min-support")
        assert eq.defender_support == ("d3",)
    # A pair found exactly among 300 rows (the optimal mix of d7 and d250 is the only one).
    a = np.full((300, 2), 0.2)
    a[7] = [1.0, 0.0]
    a[250] = [0.0, 1.0]
    a[[20, 21]] = [[0.55, 0.3], [0.3, 0.55]]
    eq = solve_zero_sum(a, select="min-support")
    assert eq.defender_support == ("d7", "d250")
    np.testing.assert_allclose(eq.defender_strategy[[7, 250]], [0.5, 0.5], atol=1e-9)


def test_min_support_says_when_its_answer_is_a_heuristic() -> None:
    a = np.full((40, 4), 0.05)
    a[:4] = np.eye(4)  # the value 1/4 needs all four of d0..d3: no support of 1, 2 or 3
    with pytest.warns(UserWarning, match="heuristic"):
        eq = solve_zero_sum(a, select="min-support")
    assert eq.defender_support == ("d0", "d1", "d2", "d3")
    small = a[:10]  # C(10, 3) = 120 subsets: searched exactly, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solve_zero_sum(small, select="min-support").defender_support == ("d0", "d1", "d2", "d3")


@pytest.mark.parametrize("seed", [17, 34, 38])
def test_lemke_howson_on_near_degenerate_games(seed: int) -> None:
    # Before: "lemke-howson found no equilibrium" on these 0.3 + 1e-12 N(0, 1) games.
    a = 0.3 + 1e-12 * np.random.default_rng(seed).normal(size=(12, 9))
    eq = solve_zero_sum(a, "lemke-howson")
    assert eq.status == OPTIMAL and eq.exploitability <= 1e-14
    assert eq.value == pytest.approx(solve_zero_sum(a).value, abs=1e-15)


def test_lemke_howson_falls_back_to_lp_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from gametheory_defense.solvers import nashpy_backends

    monkeypatch.setattr(nashpy_backends, "_lemke_howson_path", lambda *args: None)
    with pytest.warns(UserWarning, match="returning method='lp''s answer"):
        eq = solve_zero_sum(BIASED_RPS, "lemke-howson")
    np.testing.assert_allclose(eq.defender_strategy, BIASED_RPS_EQ, atol=1e-12)


def test_extreme_optimal_strategies_list_the_optimal_face() -> None:
    from gametheory_defense.errors import GameTooLargeError
    from gametheory_defense.solvers import extreme_optimal_strategies

    faces = extreme_optimal_strategies(CONTINUUM)
    np.testing.assert_allclose(faces, [[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 1.0]], atol=1e-12)
    assert not faces.flags.writeable
    np.testing.assert_allclose(extreme_optimal_strategies(CONTINUUM, "attacker"), [[0.5, 0.5]])
    # Every selection rule picks a point of that face.
    for rule in ("max-entropy", "min-support"):
        x = solve_zero_sum(CONTINUUM, select=rule).defender_strategy
        weights, *_ = np.linalg.lstsq(faces.T, x, rcond=None)
        np.testing.assert_allclose(faces.T @ weights, x, atol=1e-8)
    # The same vertices as nashpy's vertex enumeration on a game with ties.
    a = np.round(np.random.default_rng(1).uniform(size=(7, 6)) * 4) / 4
    ours = {tuple(np.round(x, 9)) for x in extreme_optimal_strategies(a)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = {tuple(np.round(x, 9)) for x, _ in nashpy.Game(a + 2, 3 - a).vertex_enumeration()}
    assert ours == theirs
    with pytest.raises(GameTooLargeError, match="at most 18"):
        extreme_optimal_strategies(np.zeros((10, 9)))
    with pytest.raises(ValueError, match="player"):
        extreme_optimal_strategies(CONTINUUM, "nature")
