"""Tests of gametheory_defense.plots: content, layout at 20 x 20, and validation."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from gametheory_defense.plots import plot_convergence, plot_payoff
from payoff.matrix import PayoffMatrix

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RPS = PayoffMatrix(
    [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]],
    defenders=["rock", "paper", "scissors"],
    attackers=["rock", "paper", "scissors"],
)


@dataclass(frozen=True)
class Eq:
    """The fields of gametheory_defense.Equilibrium that plotting reads."""

    defender_strategy: np.ndarray
    attacker_strategy: np.ndarray
    value: float
    exploitability: float
    method: str
    status: str
    defenders: tuple[str, ...]
    attackers: tuple[str, ...]


def rps_eq(**changes: object) -> Eq:
    third = np.full(3, 1 / 3)
    fields: dict[str, object] = dict(
        defender_strategy=third, attacker_strategy=third, value=0.5, exploitability=0.0,
        method="lp", status="optimal", defenders=RPS.defenders, attackers=RPS.attackers,
    )
    fields.update(changes)
    return Eq(**fields)  # type: ignore[arg-type]


def by_label(fig: Figure) -> dict[str, Axes]:
    """Axes of a payoff figure keyed by role."""
    out = {}
    for ax in fig.axes:
        if ax.images:
            out["heatmap"] = ax
        elif ax.get_xlabel() == "P(defender)":
            out["defender"] = ax
        elif ax.get_ylabel() == "P(attacker)":
            out["attacker"] = ax
        elif "defender accuracy" in (ax.get_ylabel(), ax.get_xlabel()):
            out["colorbar"] = ax
    return out


def texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_heatmap_with_equilibrium_has_margins_values_and_title() -> None:
    fig = plot_payoff(RPS, rps_eq())
    axes = by_label(fig)
    assert set(axes) == {"heatmap", "defender", "attacker", "colorbar"} and len(fig.axes) == 4
    heat = axes["heatmap"]
    assert sorted(texts(heat)) == sorted(["50.0%", "0.0%", "100.0%", "100.0%", "50.0%", "0.0%", "0.0%", "100.0%", "50.0%"])
    assert [t.get_text() for t in heat.get_yticklabels()] == ["rock", "paper", "scissors"]
    assert [t.get_text() for t in heat.get_xticklabels()] == ["rock", "paper", "scissors"]
    np.testing.assert_allclose(heat.images[0].get_array(), RPS.values)
    widths = [p.get_width() for p in axes["defender"].patches]
    heights = [p.get_height() for p in axes["attacker"].patches]
    np.testing.assert_allclose(widths, [1 / 3] * 3)
    np.testing.assert_allclose(heights, [1 / 3] * 3)
    assert texts(axes["defender"]) == ["33.3%"] * 3
    title = axes["attacker"].get_title(loc="left")
    assert "game value 50.00%" in title and "exploitability 0.0e+00" in title and "lp" in title


def test_heatmap_alone_and_stderr_annotations() -> None:
    game = PayoffMatrix.from_json(EXAMPLES / "defense_game.json")
    fig = plot_payoff(game)
    axes = by_label(fig)
    assert set(axes) == {"heatmap", "colorbar"}
    i, j = game.defender_index("pgd-at"), game.attacker_index("cw-pgd40-0.3")
    cell = axes["heatmap"].texts[i * game.n_attackers + j].get_text()
    assert cell == "88.0%\n±0.3"
    assert axes["heatmap"].get_title() == "defender accuracy under attack"
    assert texts(plot_payoff(game, annotate=False).axes[0]) == []


def test_equilibrium_is_aligned_by_name_and_support_is_labelled() -> None:
    # the equilibrium lists defenders in another order: bars follow the matrix's rows
    x = np.array([0.0, 0.25, 0.75])  # scissors 0, paper 0.25, rock 0.75 (in eq order)
    eq = rps_eq(defenders=("scissors", "paper", "rock"), defender_strategy=x, value=0.4, exploitability=0.2)
    fig = plot_payoff(RPS, eq)
    bars = by_label(fig)["defender"]
    np.testing.assert_allclose([p.get_width() for p in bars.patches], [0.75, 0.25, 0.0])
    assert texts(bars) == ["75.0%", "25.0%"]  # a zero probability gets no label


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(defenders=("rock", "paper", "lizard")), r"defenders missing from it \['scissors'\].*\['lizard'\]"),
        (dict(attackers=("rock", "paper")), "attackers missing"),
        (dict(defender_strategy=np.array([0.5, 0.5])), r"defender_strategy has shape \(2,\)"),
        (dict(attacker_strategy=np.array([0.5, 0.5, 0.5])), "not a probability vector"),
        (dict(defender_strategy=np.array([1.5, -0.5, 0.0])), "not a probability vector"),
    ],
)
def test_mismatched_equilibrium_raises(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_payoff(RPS, rps_eq(**changes))


def test_equilibrium_of_another_game_warns() -> None:
    with pytest.warns(UserWarning, match="another version of the game"):
        plot_payoff(RPS, rps_eq(value=0.9))
    with pytest.raises(ValueError, match="lacks"):
        plot_payoff(RPS, object())  # type: ignore[arg-type]


def test_draws_into_given_axes() -> None:
    fig = Figure(figsize=(10, 5))
    left, right = fig.subplots(1, 2)
    out = plot_payoff(RPS, rps_eq(), ax=right)
    assert out is fig and right.images and not left.images
    assert len(fig.axes) == 2 + 3  # two subplots, then two margin charts and a colour bar
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def _pixel_cell(ax: Axes, i: int, j: int) -> Bbox:
    corners = ax.transData.transform([(j - 0.5, i - 0.5), (j + 0.5, i + 0.5)])
    return Bbox.from_extents(*corners.min(axis=0), *corners.max(axis=0))


def test_20x20_is_readable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 20
    game = PayoffMatrix(
        rng.random((n, n)),
        defenders=[f"pgd-at+sap-0.{i:02d}" for i in range(n)],
        attackers=[f"eot10-pgd40-0.{j:02d}" for j in range(n)],
        stderr=np.full((n, n), 0.0042),
    )
    x = np.zeros(n)
    x[[1, 4]] = [0.75, 0.25]
    y = np.zeros(n)
    y[[0, 19]] = [0.5, 0.5]
    eq = Eq(x, y, float(x @ game.values @ y), 0.0, "lp", "optimal", game.defenders, game.attackers)
    fig = plot_payoff(game, eq)
    fig.savefig(tmp_path / "big.png", dpi=60)
    assert (tmp_path / "big.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    small = by_label(plot_payoff(RPS))["heatmap"]
    heat = by_label(fig)["heatmap"]
    tick_size = heat.get_xticklabels()[0].get_fontsize()
    assert 6 <= tick_size < small.get_xticklabels()[0].get_fontsize()  # scaled down, still legible
    assert 5 <= heat.texts[0].get_fontsize() < small.texts[0].get_fontsize()
    assert heat.get_xticklabels()[0].get_rotation() == 90

    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    page = fig.bbox
    for axis, lo, hi in (("x", 0, 2), ("y", 1, 3)):
        labels = heat.get_xticklabels() if axis == "x" else heat.get_yticklabels()
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert len(boxes) == n
        spans = sorted((b.extents[lo], b.extents[hi]) for b in boxes)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 <= b0, f"{axis} tick labels overlap"
        for b in boxes:  # not clipped by the figure edge
            assert page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1
    for idx, text in enumerate(heat.texts):  # every annotation fits inside its own cell
        i, j = divmod(idx, n)
        box = text.get_window_extent(renderer)
        cell = _pixel_cell(heat, i, j)
        assert cell.x0 <= box.x0 and box.x1 <= cell.x1 and cell.y0 <= box.y0 and box.y1 <= cell.y1


# --------------------------------------------------------------------------- convergence


@dataclass(frozen=True)
class Step:
    iteration: int
    value: float
    lower_bound: float
    upper_bound: float
    n_defenders: int
    n_attackers: int


HISTORY = [
    Step(0, 0.60, 0.30, 0.80, 1, 1),
    Step(1, 0.55, 0.40, 0.65, 1, 2),
    Step(2, 0.52, 0.48, 0.56, 2, 3),
    Step(3, 0.50, 0.50, 0.50, 2, 3),
]


def test_convergence_plots_value_bounds_and_size() -> None:
    fig = plot_convergence(HISTORY)
    ax, twin = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["restricted-game value"].get_ydata(), [0.60, 0.55, 0.52, 0.50])
    np.testing.assert_allclose(lines["lower bound"].get_ydata(), [0.30, 0.40, 0.48, 0.50])
    np.testing.assert_allclose(lines["upper bound"].get_ydata(), [0.80, 0.65, 0.56, 0.50])
    np.testing.assert_allclose(lines["upper bound"].get_xdata(), [0, 1, 2, 3])
    sizes = {line.get_label(): list(line.get_ydata()) for line in twin.get_lines()}
    assert sizes == {"defenders": [1, 1, 2, 2], "attackers": [1, 2, 3, 3]}
    assert ax.get_title() == "double oracle: value 50.00%, gap 0.00% after 4 iterations"
    as_dicts = [s.__dict__ for s in HISTORY]
    again = plot_convergence(as_dicts).axes[0]
    np.testing.assert_allclose(again.get_lines()[-1].get_ydata(), [0.60, 0.55, 0.52, 0.50])


def test_convergence_validation() -> None:
    with pytest.raises(ValueError, match="history is empty"):
        plot_convergence([])
    with pytest.raises(ValueError, match=r"history\[1\] has no 'upper_bound'"):
        plot_convergence([HISTORY[0].__dict__, {"iteration": 1, "value": 0.5, "lower_bound": 0.4}])
    with pytest.raises(ValueError, match=r"history\[0\].value is nan"):
        plot_convergence([Step(0, float("nan"), 0.3, 0.8, 1, 1)])
    with pytest.warns(UserWarning, match=r"history\[0\]: lower bound 0.9 exceeds upper bound 0.3"):
        plot_convergence([Step(0, 0.5, 0.9, 0.3, 1, 1)])


def test_names_are_text_never_mathtext(tmp_path: Path) -> None:
    # Before: a name "$^$" failed with "ParseException ... ^" and "a_$x$" was drawn as math.
    game = PayoffMatrix([[0.5, 0.2], [0.3, 0.6]], defenders=["$^$", "a_$x$"], attackers=["$", "50$ $"])
    eq = rps_eq(
        defender_strategy=np.array([0.5, 0.5]), attacker_strategy=np.array([0.5, 0.5]), value=0.4,
        defenders=game.defenders, attackers=game.attackers, method="$weird_method$",
    )
    fig = plot_payoff(game, eq)
    fig.savefig(tmp_path / "names.png")
    heat = by_label(fig)
    labels = [t for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    names = {t.get_text() for t in labels}
    assert {"$^$", "a_$x$", "$", "50$ $"} <= names
    assert all(not t.get_parse_math() for t in labels if t.get_text() in game.defenders + game.attackers)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert any("$weird_method$" in t for t in titles)
    assert heat  # the figure was laid out
