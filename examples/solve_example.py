"""Solve the example defense game and draw it.

Usage::

    python examples/solve_example.py game.png [--payoff examples/defense_game.json]

Loads a payoff file (rows: defenders, columns: attackers, entries: the defender's accuracy),
solves the zero-sum game with the LP solver, prints the defender's mixture and the
accuracy it guarantees, and saves the annotated heatmap with the equilibrium.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gametheory_defense import plot_payoff, solve_zero_sum
from gametheory_defense.identity import support_indices
from payoff.matrix import load_payoff

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", type=Path, help="where to save the plot (.png, .pdf, .svg)")
    parser.add_argument("--payoff", type=Path, default=HERE / "defense_game.json")
    args = parser.parse_args(argv)

    game = load_payoff(args.payoff)
    eq = solve_zero_sum(game, "lp")
    for i in support_indices(eq.defender_strategy):  # LP round-off left out, as everywhere
        print(f"play {game.defenders[i]:<16} with probability {eq.defender_strategy[i]:.3f}")
    best_pure = game.values.min(axis=1).max()
    print(f"guaranteed accuracy {eq.value:.2%} (best single defender: {best_pure:.2%})")
    plot_payoff(game, eq).savefig(args.figure, dpi=120)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
