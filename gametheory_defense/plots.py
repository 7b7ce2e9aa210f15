"""Figures of the defense game: the annotated payoff matrix and double-oracle convergence.

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through
``pyplot``: nothing here touches the global backend, opens a window or keeps figures alive
in pyplot's registry, so the functions are safe in scripts, servers and tests. Save the
result with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator, PercentFormatter

from payoff.matrix import PayoffMatrix

if TYPE_CHECKING:
    from gametheory_defense.solvers import Equilibrium

__all__ = ["plot_payoff", "plot_convergence"]

# Layout of an own payoff figure, in inches.
_CELL_MAX, _CELL_MIN, _CELL_BUDGET = 1.0, 0.5, 7.0
_STRATEGY_DEPTH = 1.2  # width of the defender bar chart / height of the attacker bar chart
_PAD = 0.1
_CBAR_WIDTH, _CBAR_PAD, _CBAR_LABELS = 0.18, 0.15, 0.85
_TITLE_ROOM = 0.55
_EDGE = 0.15
# A probability shown next to a bar only when it is at least this large.
_SHOW_PROB = 5e-4
# Text properties that draw a string literally (no mathtext, no TeX) whatever the rcParams.
_PLAIN: dict[str, Any] = {"parse_math": False, "usetex": False}


def plot_payoff(
    matrix: PayoffMatrix | np.ndarray | Sequence[Sequence[float]],
    equilibrium: Equilibrium | None = None,
    ax: Axes | None = None,
    *,
    annotate: bool = True,
    cmap: str | Colormap = "viridis",
    title: str | None = None,
) -> Figure:
    """Heatmap of a defense game with its equilibrium (von Neumann 1928 zero-sum game).

    Rows are defenders, columns attackers, colours and labels the defender's accuracy
    (as percentages, with ``±stderr`` in percentage points where known). With an
    equilibrium, the defender's mixed strategy is a horizontal bar chart on the right
    margin, the attacker's a bar chart on top, and the title gives the game value and
    exploitability. Fonts shrink and column labels turn vertical as the game grows, so a
    20 x 20 game stays readable.

    Parameters
    ----------
    matrix : PayoffMatrix or array_like
        The game; arrays get the default names ``d0..``, ``a0..``.
    equilibrium : Equilibrium, optional
        A solution of this game (``gametheory_defense.solve_zero_sum``); its defender and
        attacker names must be this matrix's (in any order).
    ax : matplotlib.axes.Axes, optional
        Axes to draw the heatmap in; the margin charts and colour bar are split off it
        with ``mpl_toolkits.axes_grid1.make_axes_locatable``. By default a new figure
        sized for the game is made.
    annotate : bool, default True
        Write each cell's accuracy in it.
    cmap : str or Colormap, default "viridis"
        Colour map over accuracies in [0, 1].
    title : str, optional
        Replaces the default title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (``ax.figure`` when ``ax`` is given).

    Raises
    ------
    ValueError
        If the equilibrium's names or strategy lengths do not match the matrix, or its
        strategies are not probability vectors.
    """
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    game = matrix if isinstance(matrix, PayoffMatrix) else PayoffMatrix(np.asarray(matrix))
    strategies = None if equilibrium is None else _aligned_strategies(game, equilibrium)
    n, k = game.shape
    colormap = colormaps[cmap] if isinstance(cmap, str) else cmap

    if ax is None:
        fig, ax, fonts = _own_figure(game, with_strategies=strategies is not None)
        depth, pad = _STRATEGY_DEPTH, _PAD
        cbar_width, cbar_pad = _CBAR_WIDTH, _CBAR_PAD
    else:
        fig = ax.figure  # type: ignore[assignment]
        bbox = ax.get_position()
        width_in = bbox.width * fig.get_figwidth()
        height_in = bbox.height * fig.get_figheight()
        shrink = 0.75 if strategies is not None else 0.9
        cell = min(width_in * shrink / k, height_in * shrink / n)
        fonts = _fonts(cell, game, fig)
        depth, pad = "25%", "2%"  # type: ignore[assignment]
        cbar_width, cbar_pad = "4%", "3%"  # type: ignore[assignment]

    image = ax.imshow(
        game.values, cmap=colormap, norm=Normalize(0.0, 1.0), aspect="auto", interpolation="nearest"
    )
    # Names are text, never mathtext or TeX: "$^$" or "pgd_$eps$" are drawn as written.
    ax.set_xticks(range(k), labels=list(game.attackers), **_PLAIN)
    ax.set_yticks(range(n), labels=list(game.defenders), **_PLAIN)
    ax.tick_params(axis="both", labelsize=fonts.tick)
    if fonts.rotate:
        for label in ax.get_xticklabels():
            label.set_rotation(90)
            label.set_horizontalalignment("center")
    ax.set_xlabel("attacker", fontsize=fonts.tick)
    ax.set_ylabel("defender", fontsize=fonts.tick)
    if annotate:
        _annotate_cells(ax, game, colormap, fonts.annot)

    divider = make_axes_locatable(ax)
    top_axes = ax
    if strategies is not None:
        x, y = strategies
        dax = divider.append_axes("right", size=depth, pad=pad, sharey=ax)
        dax.barh(range(n), x, height=0.7, color="tab:blue")
        dax.set_xlim(0.0, 1.0)
        dax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        dax.set_xticks([0.0, 1.0])
        dax.tick_params(axis="y", left=False, labelleft=False)
        dax.tick_params(axis="x", labelsize=fonts.small)
        dax.set_xlabel("P(defender)", fontsize=fonts.small)
        for i, p in enumerate(x):
            if p >= _SHOW_PROB:
                inside = p > 0.6
                dax.text(
                    p - 0.03 if inside else p + 0.03, i, f"{p:.1%}",
                    ha="right" if inside else "left", va="center", fontsize=fonts.bar,
                    color="white" if inside else "black",
                )
        tax = divider.append_axes("top", size=depth, pad=pad, sharex=ax)
        tax.bar(range(k), y, width=0.7, color="tab:red")
        tax.set_ylim(0.0, 1.0)
        tax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        tax.set_yticks([0.0, 1.0])
        tax.tick_params(axis="x", bottom=False, labelbottom=False)
        tax.tick_params(axis="y", labelsize=fonts.small)
        tax.set_ylabel("P(attacker)", fontsize=fonts.small)
        for j, q in enumerate(y):
            if q >= _SHOW_PROB:
                inside = q > 0.6
                tax.text(
                    j, q - 0.04 if inside else q + 0.04, f"{q:.1%}",
                    ha="center", va="top" if inside else "bottom", fontsize=fonts.bar,
                    color="white" if inside else "black", rotation=90 if fonts.rotate else 0,
                )
        top_axes = tax
        # Bar charts autoscale the shared axes; restore the heatmap's cell-centred view.
        ax.set_xlim(-0.5, k - 0.5)
        ax.set_ylim(n - 0.5, -0.5)

    cax = divider.append_axes("right", size=cbar_width, pad=cbar_pad)
    cbar = fig.colorbar(image, cax=cax, format=PercentFormatter(xmax=1.0, decimals=0))
    cbar.ax.tick_params(labelsize=fonts.small)
    cbar.set_label("defender accuracy", fontsize=fonts.small)

    plain = title is None  # the default title holds a method name: text, never mathtext
    if title is None:
        title = _default_title(equilibrium)
    top_axes.set_title(
        title, fontsize=fonts.tick + 1, loc="left" if strategies is not None else "center",
        **(_PLAIN if plain else {}),
    )
    return fig


def plot_convergence(history: Sequence[Any], ax: Axes | None = None) -> Figure:
    """Value and bounds of the double-oracle loop per iteration (McMahan, Gordon and Blum 2003).

    Parameters
    ----------
    history : sequence of objects or dicts
        One entry per iteration with ``iteration``, ``value`` (of the restricted game),
        ``lower_bound``, ``upper_bound`` (on the full game's value), ``n_defenders`` and
        ``n_attackers`` (size of the restricted game).
    ax : matplotlib.axes.Axes, optional
        Axes to draw in; a twin axis shows the restricted game's size. By default a new
        figure is made.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If ``history`` is empty, an entry lacks a field, or a number is not finite.
    """
    fields = ("iteration", "value", "lower_bound", "upper_bound", "n_defenders", "n_attackers")
    if len(history) == 0:
        raise ValueError("history is empty; plot_convergence needs at least one iteration")
    columns: dict[str, list[float]] = {f: [] for f in fields}
    for t, entry in enumerate(history):
        for f in fields:
            if isinstance(entry, Mapping):
                if f not in entry:
                    raise ValueError(f"history[{t}] has no {f!r}; each entry needs {list(fields)}")
                v = entry[f]
            else:
                if not hasattr(entry, f):
                    raise ValueError(f"history[{t}] has no {f!r}; each entry needs {list(fields)}")
                v = getattr(entry, f)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"history[{t}].{f} is {v!r}, not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"history[{t}].{f} is {v!r}; it must be finite")
            columns[f].append(v)
    it = np.array(columns["iteration"])
    value = np.array(columns["value"])
    low = np.array(columns["lower_bound"])
    high = np.array(columns["upper_bound"])
    crossed = np.nonzero(low > high + 1e-9)[0]
    if crossed.size:
        t = int(crossed[0])
        warnings.warn(
            f"history[{t}]: lower bound {low[t]:.6g} exceeds upper bound {high[t]:.6g}; "
            "are the bounds swapped?",
            stacklevel=2,
        )

    if ax is None:
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    ax.fill_between(it, low, high, color="tab:blue", alpha=0.15, step=None, label="bounds")
    ax.plot(it, low, "--", color="tab:blue", lw=1, label="lower bound")
    ax.plot(it, high, ":", color="tab:blue", lw=1, label="upper bound")
    ax.plot(it, value, "o-", color="tab:blue", lw=1.5, ms=4, label="restricted-game value")
    ax.set_xlabel("iteration")
    ax.set_ylabel("defender accuracy (game value)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    twin = ax.twinx()
    twin.step(it, columns["n_defenders"], where="post", color="tab:green", label="defenders")
    twin.step(it, columns["n_attackers"], where="post", color="tab:red", label="attackers")
    twin.set_ylabel("strategies in restricted game")
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    twin.set_ylim(bottom=0)

    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(
        handles + h2, labels + l2, loc="upper center", bbox_to_anchor=(0.5, -0.16),
        ncols=3, fontsize="small", frameon=False,
    )
    ax.set_title(
        f"double oracle: value {value[-1]:.2%}, gap {high[-1] - low[-1]:.2%} "
        f"after {len(it)} iteration{'s' if len(it) != 1 else ''}"
    )
    return fig


# --------------------------------------------------------------------------- helpers


class _Fonts:
    """Font sizes (points) and whether column labels are vertical."""

    def __init__(self, tick: float, annot: float, small: float, rotate: bool) -> None:
        self.tick, self.annot, self.small, self.rotate = tick, annot, small, rotate
        self.bar = min(annot, small)


def _text_size(fig: Figure, text: str, fontsize: float) -> tuple[float, float]:
    """Width and height of ``text`` in inches when drawn at ``fontsize`` points."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    w, h, _ = renderer.get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)
    return w / fig.dpi, h / fig.dpi


def _fonts(cell_in: float, game: PayoffMatrix, fig: Figure | None) -> _Fonts:
    """Fonts that fit a cell ``cell_in`` inches wide: ticks ~28 %, annotations ~22 % of it."""
    cell_pt = cell_in * 72.0
    tick = float(np.clip(cell_pt * 0.28, 4.0, 11.0))
    annot = float(np.clip(cell_pt * 0.22, 3.5, 10.0))
    small = float(min(tick, 9.0))
    longest = max(game.attackers, key=len)
    if fig is not None and hasattr(fig.canvas, "get_renderer"):
        width = max(_text_size(fig, name, tick)[0] for name in game.attackers)
    else:
        width = 0.6 * tick * len(longest) / 72.0
    return _Fonts(tick, annot, small, rotate=width > 0.9 * cell_in)


def _own_figure(game: PayoffMatrix, *, with_strategies: bool) -> tuple[Figure, Axes, _Fonts]:
    """A figure sized so that every cell, label and margin chart fits."""
    n, k = game.shape
    cell = float(np.clip(_CELL_BUDGET / max(n, k), _CELL_MIN, _CELL_MAX))
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    fonts = _fonts(cell, game, fig)
    row_label_w = max(_text_size(fig, name, fonts.tick)[0] for name in game.defenders)
    col_sizes = [_text_size(fig, name, fonts.tick) for name in game.attackers]
    col_label_h = max(w if fonts.rotate else h for w, h in col_sizes)
    axis_label = 2.2 * fonts.tick / 72.0  # axis label and its padding
    left = _EDGE + row_label_w + 0.1 + axis_label
    bottom = _EDGE + col_label_h + 0.1 + axis_label
    grid_w, grid_h = cell * k, cell * n
    right_axes = _CBAR_PAD + _CBAR_WIDTH + (_PAD + _STRATEGY_DEPTH if with_strategies else 0.0)
    top_axes = _PAD + _STRATEGY_DEPTH if with_strategies else 0.0
    right = _CBAR_LABELS + _EDGE
    top = _TITLE_ROOM + _EDGE
    width = left + grid_w + right_axes + right
    height = bottom + grid_h + top_axes + top
    fig.set_size_inches(width, height)
    ax = fig.add_axes(
        (left / width, bottom / height, (grid_w + right_axes) / width, (grid_h + top_axes) / height)
    )
    return fig, ax, fonts


def _annotate_cells(ax: Axes, game: PayoffMatrix, colormap: Colormap, fontsize: float) -> None:
    values = game.values
    rgba = colormap(values)
    luminance = 0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]
    n, k = game.shape
    for i in range(n):
        for j in range(k):
            text = f"{100 * values[i, j]:.1f}%"
            if game.stderr is not None:
                text += f"\n±{100 * game.stderr[i, j]:.1f}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=fontsize,
                color="black" if luminance[i, j] > 0.5 else "white",
            )


def _aligned_strategies(game: PayoffMatrix, eq: Any) -> tuple[np.ndarray, np.ndarray]:
    """The equilibrium's strategies in the matrix's row/column order, validated."""
    needed = ("defenders", "attackers", "defender_strategy", "attacker_strategy", "value")
    missing = [a for a in needed if not hasattr(eq, a)]
    if missing:
        raise ValueError(
            f"equilibrium must be a gametheory_defense.Equilibrium; {type(eq).__name__} lacks {missing}"
        )
    out = []
    for kind, names, strategy in (
        ("defender", game.defenders, eq.defender_strategy),
        ("attacker", game.attackers, eq.attacker_strategy),
    ):
        eq_names = tuple(getattr(eq, f"{kind}s"))
        probs = np.asarray(strategy, dtype=np.float64)
        if set(eq_names) != set(names) or len(eq_names) != len(names):
            absent = [x for x in names if x not in eq_names]
            extra = [x for x in eq_names if x not in names]
            raise ValueError(
                f"equilibrium does not match the payoff matrix: {kind}s missing from it "
                f"{absent[:5]}, {kind}s not in the matrix {extra[:5]}"
            )
        if probs.shape != (len(names),):
            raise ValueError(
                f"equilibrium {kind}_strategy has shape {probs.shape}, expected ({len(names)},)"
            )
        if not np.all(np.isfinite(probs)) or probs.min() < -1e-9 or abs(probs.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"equilibrium {kind}_strategy is not a probability vector (sum {probs.sum():.6g})"
            )
        order = [eq_names.index(x) for x in names]
        out.append(np.clip(probs[order], 0.0, 1.0))
    x, y = out
    payoff = float(x @ game.values @ y)
    gap = abs(float(getattr(eq, "exploitability", 0.0) or 0.0))
    if abs(payoff - float(eq.value)) > 2.0 * gap + 1e-6:
        warnings.warn(
            f"the equilibrium's value {float(eq.value):.6g} differs from its payoff "
            f"{payoff:.6g} on this matrix; was it solved for another version of the game?",
            stacklevel=3,
        )
    return x, y


def _default_title(eq: Any) -> str:
    if eq is None:
        return "defender accuracy under attack"
    parts = [f"game value {float(eq.value):.2%}"]
    if getattr(eq, "exploitability", None) is not None:
        parts.append(f"exploitability {float(eq.exploitability):.1e}")
    method = getattr(eq, "method", None)
    status = getattr(eq, "status", None)
    if method:
        parts.append(str(method) + (f" ({status})" if status and status != "optimal" else ""))
    return " · ".join(parts)
