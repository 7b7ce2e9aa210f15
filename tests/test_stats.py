"""gametheory_defense.stats: intervals with real coverage, the game value's error, paired differences, eps curves."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gametheory_defense.stats import (
    game_value_interval,
    game_value_stderr,
    normal_interval,
    paired_difference,
    per_example_worst_case,
    robustness_curve,
    strategy_stderr,
)
from payoff import PayoffMatrix


def test_normal_interval_numbers_and_clipping() -> None:
    iv = normal_interval(0.5, 0.1)
    assert iv.low == pytest.approx(0.5 - 1.959964 * 0.1, abs=1e-6)
    assert iv.high == pytest.approx(0.5 + 1.959964 * 0.1, abs=1e-6)
    assert normal_interval(0.99, 0.05).high == 1.0 and normal_interval(0.01, 0.05).low == 0.0
    assert normal_interval(0.5, 0.1, confidence=0.9).high == pytest.approx(0.5 + 1.644854 * 0.1, abs=1e-6)
    assert math.isnan(normal_interval(0.5, float("nan")).low)
    with pytest.raises(ValueError, match="confidence"):
        normal_interval(0.5, 0.1, confidence=1.0)


def _game(values, stderr, x, y, value):
    m = PayoffMatrix(np.array(values, float), defenders=["d0", "d1"], attackers=["a0", "a1"], stderr=np.array(stderr, float))
    eq = SimpleNamespace(defender_strategy=np.array(x), attacker_strategy=np.array(y), value=value)
    return m, eq


def test_game_value_stderr_takes_the_worst_binding_column() -> None:
    m, eq = _game([[1, 0], [0, 1]], [[0.1, 0.2], [0.1, 0.2]], [0.5, 0.5], [0.5, 0.5], 0.5)
    # column 0: sqrt(0.25*0.01*2) = 0.0707; column 1: sqrt(0.25*0.04*2) = 0.1414
    assert game_value_stderr(m, eq) == pytest.approx(math.sqrt(0.02))
    eq1 = SimpleNamespace(defender_strategy=eq.defender_strategy, attacker_strategy=np.array([1.0, 1e-9]), value=0.5)
    assert game_value_stderr(m, eq1) == pytest.approx(math.sqrt(0.005))  # LP round-off is not a binding column
    iv = game_value_interval(m, eq)
    assert (iv.low, iv.high) == pytest.approx((0.5 - 1.959964 * math.sqrt(0.02), 0.5 + 1.959964 * math.sqrt(0.02)), abs=1e-6)
    assert strategy_stderr(m.stderr, [1.0, 0.0], [1]) == pytest.approx(0.2)


def test_game_value_interval_covers_the_true_value() -> None:
    """A 1x1 game of Bernoulli(0.7) outcomes on 200 examples: the 95% interval covers 0.7 about 95% of the time."""
    rng = np.random.default_rng(0)
    hits = 0
    trials = 400
    for _ in range(trials):
        o = rng.random(200) < 0.7
        se = o.std(ddof=1) / math.sqrt(o.size)
        m = PayoffMatrix(np.array([[o.mean()]]), defenders=["d"], attackers=["a"], stderr=np.array([[se]]))
        eq = SimpleNamespace(defender_strategy=np.array([1.0]), attacker_strategy=np.array([1.0]), value=o.mean())
        iv = game_value_interval(m, eq)
        hits += iv.low <= 0.7 <= iv.high
    assert 0.92 <= hits / trials <= 0.975


def test_paired_difference_is_tighter_than_independent() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(500)
    a = (base < 0.6).astype(float)
    b = a.copy()
    b[:25] = 1 - b[:25]  # b differs from a on 25 examples only
    d = paired_difference(a, b)
    assert d.mean == pytest.approx((a - b).mean()) and d.n == 500
    independent_se = math.sqrt(a.var(ddof=1) / 500 + b.var(ddof=1) / 500)
    assert d.stderr < independent_se / 2
    assert d.low < d.mean < d.high
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_difference([1.0], [1.0, 0.0])


def test_per_example_worst_case() -> None:
    clean = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    attacks = {"a": np.array([[1, 0, 1, 1], [1, 0, 1, 1]], bool), "b": np.array([[0, 1, 1, 1], [1, 1, 1, 1]], bool)}
    np.testing.assert_allclose(per_example_worst_case(clean, attacks), [0.5, 0.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="examples"):
        per_example_worst_case(clean, [np.ones(3)])


def test_robustness_curve_falls_with_eps() -> None:
    """A logistic regression on digits: the FGSM worst case at eps 0 is clean accuracy and drops with eps."""
    from gametheory_defense.attacks import FGSM
    from gametheory_defense.data import as_tensors, load_dataset
    from gametheory_defense.evaluation import evaluate

    x, y = as_tensors(load_dataset("digits", "train"))
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(0.01 * torch.randn(10, 64, generator=g))
        model[1].bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = as_tensors(load_dataset("digits", "test"))
    data = (xt[:150], yt[:150])

    def at(eps: float):
        return evaluate(model, data, {"fgsm": FGSM(eps)}, eps=eps, sanity_checks=False, progress=False)

    curve = robustness_curve(at, [0.0, 0.05, 0.3])
    clean = float((model(data[0]).argmax(1) == data[1]).float().mean())
    assert curve[0.0].estimate == pytest.approx(clean)
    assert curve[0.0].estimate > 0.85
    assert curve[0.3].estimate < curve[0.05].estimate < curve[0.0].estimate
    assert curve[0.3].estimate < 0.3
    for iv in curve.values():
        assert iv.low <= iv.estimate <= iv.high
