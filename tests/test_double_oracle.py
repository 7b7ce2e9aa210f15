"""Tests of the double-oracle loop on explicit games whose full value is known by LP."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gametheory_defense.double_oracle import (
    DoubleOracleIteration,
    OracleResponse,
    double_oracle,
)
from gametheory_defense.solvers import solve_zero_sum
from payoff.matrix import PayoffMatrix


def column_oracle(full: np.ndarray, names: list[str]):  # type: ignore[no-untyped-def]
    """Exact best-response column of ``full`` for the current defenders (rows by name)."""
    calls: list[int] = []

    def oracle(x: np.ndarray, matrix: PayoffMatrix) -> OracleResponse:
        rows = [int(d[1:]) for d in matrix.defenders]
        worst = x @ full[rows]
        j = int(np.argmin(worst))
        calls.append(j)
        return OracleResponse(name=names[j], payoffs=full[rows, j], info={"column": j})

    oracle.calls = calls  # type: ignore[attr-defined]
    return oracle


def row_oracle(full: np.ndarray):  # type: ignore[no-untyped-def]
    """Exact best-response row of ``full`` for the current attackers (columns by name)."""

    def oracle(y: np.ndarray, matrix: PayoffMatrix) -> OracleResponse:
        cols = [int(a[1:]) for a in matrix.attackers]
        i = int(np.argmax(full[:, cols] @ y))
        return OracleResponse(name=f"d{i}", payoffs=full[i, cols])

    return oracle


@pytest.fixture(scope="module")
def wide_game() -> tuple[np.ndarray, float]:
    full = np.random.default_rng(2024).uniform(size=(20, 2000))
    return full, solve_zero_sum(full).value


def test_column_generation_reaches_the_full_value_with_few_columns(wide_game: tuple[np.ndarray, float]) -> None:
    full, value = wide_game
    names = [f"a{j}" for j in range(full.shape[1])]
    oracle = column_oracle(full, names)
    start = PayoffMatrix(full[:, :1], attackers=["a0"])
    result = double_oracle(start, oracle, tol=1e-9, max_iterations=200, progress=False)

    assert result.converged and result.stop_reason == "converged"
    assert result.equilibrium.value == pytest.approx(value, abs=1e-9)
    assert result.initial_value == pytest.approx(full[:, 0].max())
    n_columns = result.matrix.n_attackers
    assert n_columns == 1 + len(result.added_attackers)
    assert n_columns < 0.05 * full.shape[1]  # a small fraction of the 2000 columns
    # Every round's bounds bracket the true value, and the last round closes the gap.
    for h in result.history:
        assert h.lower_bound <= value + 1e-9
        assert h.upper_bound >= value - 1e-9
        assert h.lower_bound <= h.value + 1e-9 <= h.upper_bound + 2e-9
    assert result.upper_bound - result.lower_bound <= 2e-9
    # The restricted value only falls as columns are added (the attacker gains options).
    values = [h.value for h in result.history]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    # Added columns are the oracle's answers, in order, and are real columns of the full game.
    for name in result.added_attackers:
        np.testing.assert_array_equal(result.matrix.column(name), full[:, int(name[1:])])


def test_both_oracles_from_a_one_by_one_game() -> None:
    full = np.random.default_rng(5).uniform(size=(40, 40))
    value = solve_zero_sum(full).value
    start = PayoffMatrix(full[:1, :1], defenders=["d0"], attackers=["a0"])
    result = double_oracle(
        start,
        column_oracle(full, [f"a{j}" for j in range(40)]),
        row_oracle(full),
        tol=1e-9,
        max_iterations=100,
        progress=False,
    )
    assert result.converged
    assert result.equilibrium.value == pytest.approx(value, abs=1e-9)
    assert result.added_defenders and result.added_attackers
    m = result.matrix
    for name in m.defenders:
        np.testing.assert_array_equal(m.row(name), full[int(name[1:]), [int(a[1:]) for a in m.attackers]])
    for h in result.history:
        assert h.lower_bound <= value + 1e-9 <= h.upper_bound + 2e-9
    first = result.history[0]
    assert (first.n_defenders, first.n_attackers) == (1, 1)


def test_stops_at_max_iterations_without_converging(wide_game: tuple[np.ndarray, float]) -> None:
    full, value = wide_game
    oracle = column_oracle(full, [f"a{j}" for j in range(full.shape[1])])
    result = double_oracle(PayoffMatrix(full[:, :1]), oracle, tol=1e-9, max_iterations=3, progress=False)
    assert not result.converged and result.stop_reason == "max-iterations"
    assert len(result.history) == 3 and len(result.added_attackers) == 3
    # The equilibrium solves the final matrix (with the third column), not a stale one.
    assert result.matrix.n_attackers == 4
    assert result.equilibrium.attackers == result.matrix.attackers
    assert result.equilibrium.value > value  # three columns are not enough here


def test_an_oracle_returning_none_stops_the_loop() -> None:
    seen: list[np.ndarray] = []

    def give_up(x: np.ndarray, matrix: PayoffMatrix) -> None:
        seen.append(x)
        return None

    start = PayoffMatrix([[0.9, 0.2], [0.3, 0.8]])
    result = double_oracle(start, give_up, tol=1e-3, progress=False)
    assert len(seen) == 1 and seen[0] == pytest.approx([0.5 / 1.2, 0.7 / 1.2])
    assert not result.converged and result.stop_reason == "oracle-returned-none"
    assert result.matrix == start and len(result.history) == 1
    assert result.history[0].added_attacker is None


def test_name_clashes_get_a_suffix_and_small_gains_are_ignored() -> None:
    answers = iter([[0.1, 0.1], [0.05, 0.05], [0.05, 0.0499]])

    def same_name(x: np.ndarray, matrix: PayoffMatrix) -> OracleResponse:
        return OracleResponse(name="pgd", payoffs=np.array(next(answers)))

    start = PayoffMatrix([[0.9, 0.2], [0.3, 0.8]], attackers=["pgd", "fgsm"])
    result = double_oracle(start, same_name, tol=1e-3, progress=False)
    assert result.added_attackers == ("pgd-2", "pgd-3")
    # The third column improves by 1e-4 < tol: not added, and the loop has converged.
    assert result.converged and result.matrix.n_attackers == 4
    assert result.equilibrium.value == pytest.approx(0.05)


def test_callback_sees_every_round_and_can_stop(wide_game: tuple[np.ndarray, float]) -> None:
    full, _ = wide_game
    records: list[DoubleOracleIteration] = []

    def stop_after_two(record: DoubleOracleIteration, eq: object) -> bool:
        records.append(record)
        return record.iteration == 2

    oracle = column_oracle(full, [f"a{j}" for j in range(full.shape[1])])
    result = double_oracle(PayoffMatrix(full[:, :1]), oracle, callback=stop_after_two, progress=False)
    assert [r.iteration for r in records] == [1, 2]
    assert result.stop_reason == "callback" and not result.converged
    assert result.history == tuple(records)


def test_bad_arguments_and_responses() -> None:
    start = PayoffMatrix([[0.9, 0.2], [0.3, 0.8]])
    with pytest.raises(ValueError, match="neither"):
        double_oracle(start, None, None)
    with pytest.raises(ValueError, match="max_iterations"):
        double_oracle(start, lambda x, m: None, max_iterations=0)
    with pytest.raises(ValueError, match="tol"):
        double_oracle(start, lambda x, m: None, tol=True)
    with pytest.raises(ValueError, match="needs 2"):
        double_oracle(start, lambda x, m: OracleResponse("short", np.array([0.1])), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        double_oracle(start, lambda x, m: OracleResponse("nan", np.array([0.1, np.nan])), progress=False)


def test_history_fields_and_convergence_plot(wide_game: tuple[np.ndarray, float]) -> None:
    from gametheory_defense.plots import plot_convergence

    full, _ = wide_game
    oracle = column_oracle(full, [f"a{j}" for j in range(full.shape[1])])
    result = double_oracle(PayoffMatrix(full[:, :1], attackers=["a0"]), oracle, max_iterations=4, progress=False)
    assert [f.name for f in dataclasses.fields(DoubleOracleIteration)] == [
        "iteration", "n_defenders", "n_attackers", "value", "lower_bound", "upper_bound",
        "added_attacker", "added_defender",
    ]
    assert [h.iteration for h in result.history] == [1, 2, 3, 4]
    assert [h.n_attackers for h in result.history] == [1, 2, 3, 4]
    assert all(h.n_defenders == 20 and h.added_defender is None for h in result.history)
    assert tuple(h.added_attacker for h in result.history) == result.added_attackers
    ax = plot_convergence(result.history).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["lower bound"].get_ydata(), [h.lower_bound for h in result.history])


def test_zero_tol_terminates_without_duplicate_strategies() -> None:
    # With tol=0 the restricted solve's round-off (1e-16) made existing columns look like
    # improvements, so the loop re-added copies ("a7-2", "a7-3", ...) until max_iterations.
    full = np.random.default_rng(0).uniform(size=(30, 300))
    value = solve_zero_sum(full).value
    oracle = column_oracle(full, [f"a{j}" for j in range(full.shape[1])])
    result = double_oracle(PayoffMatrix(full[:, :1], attackers=["a0"]), oracle, tol=0, max_iterations=100, progress=False)
    assert result.converged and result.stop_reason == "converged"
    assert all("-" not in a for a in result.matrix.attackers)
    assert result.equilibrium.value == pytest.approx(value, abs=1e-9)

    full = np.random.default_rng(1).uniform(size=(40, 40))
    value = solve_zero_sum(full).value
    result = double_oracle(
        PayoffMatrix(full[:1, :1], defenders=["d0"], attackers=["a0"]),
        column_oracle(full, [f"a{j}" for j in range(40)]),
        row_oracle(full),
        tol=0,
        max_iterations=100,
        progress=False,
    )
    assert result.converged
    assert all("-" not in n for n in (*result.matrix.attackers, *result.matrix.defenders))
    assert result.equilibrium.value == pytest.approx(value, abs=1e-9)
    for h in result.history:
        assert h.lower_bound <= value + 1e-9 and value - 1e-9 <= h.upper_bound


def test_iterative_methods_are_warm_started_from_the_previous_round(
    wide_game: tuple[np.ndarray, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gametheory_defense.double_oracle as do_module

    full, value = wide_game
    seen: list[tuple[int, int, dict]] = []

    def spy(g, method, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((len(g.defenders), len(g.attackers), {k: kwargs.get(k) for k in ("x0", "y0")}))
        return solve_zero_sum(g, method, **kwargs)

    monkeypatch.setattr(do_module, "solve_zero_sum", spy)
    names = [f"a{j}" for j in range(full.shape[1])]
    start = PayoffMatrix(full[:, :1], defenders=[f"d{i}" for i in range(20)], attackers=names[:1])
    result = double_oracle(
        start, column_oracle(full, names), method="pdhg", tol=1e-4, max_iterations=60, progress=False
    )
    assert result.converged and result.equilibrium.value == pytest.approx(value, abs=1e-3)
    assert seen[0][2] == {"x0": None, "y0": None}  # the first solve starts cold
    for (_, n_before, _), (m, n, warm) in zip(seen, seen[1:]):
        assert warm["x0"].shape == (m,) and warm["y0"].shape == (n,)
        if n > n_before:  # the column added this round starts at probability 0
            assert warm["y0"][-1] == 0.0
    # An exact method gets no warm start (HiGHS through scipy takes none).
    seen.clear()
    double_oracle(start, column_oracle(full, names), max_iterations=3, progress=False)
    assert all(w == {"x0": None, "y0": None} for *_, w in seen)
