"""``gtdefense solve``: solve the zero-sum game in a payoff file (von Neumann 1928).

Prints the defender's and attacker's equilibrium strategies, the game value (the accuracy
the defender's mixture guarantees), the exploitability certificate, the method and its
status; ``--out`` writes the equilibrium as JSON (``Equilibrium.to_dict()``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from payoff.matrix import PayoffMatrix, load_payoff

__all__ = ["register", "run", "format_equilibrium"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``solve`` subcommand; its ``--method`` choices come from ``SOLVERS``."""
    from gametheory_defense.solvers import SELECTIONS, SOLVERS

    methods = sorted(SOLVERS)
    parser = subparsers.add_parser(
        "solve",
        help="solve a payoff matrix (defenders x attackers, accuracies in [0, 1])",
        description=(
            "Solve the zero-sum game in PAYOFF (.json or .csv; rows are defenders, columns "
            "attackers, entries the defender's accuracy in [0, 1]) and print the equilibrium."
        ),
    )
    parser.add_argument("payoff", type=Path, metavar="PAYOFF", help="payoff file (.json or .csv)")
    parser.add_argument(
        "--method",
        choices=methods,
        default="lp" if "lp" in SOLVERS else methods[0],
        help="solver (default: %(default)s)",
    )
    parser.add_argument(
        "--select",
        choices=SELECTIONS,
        default=None,
        help=(
            "which optimal defender strategy to report when several are optimal: clean (highest "
            "clean accuracy; needs clean_accuracy, i.e. a JSON payoff), max-entropy, min-support"
        ),
    )
    parser.add_argument(
        "--tol", type=_positive_float, default=1e-9, help="solver tolerance (default: %(default)g)"
    )
    parser.add_argument(
        "--out", "-o", type=Path, default=None, metavar="EQ.json", help="write the equilibrium as JSON"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the payoff file, solve it, print the table and write ``--out``."""
    from gametheory_defense.solvers import solve_zero_sum

    matrix = load_payoff(args.payoff)
    log.info("solving %s (%d x %d) with %s", args.payoff, *matrix.shape, args.method)
    equilibrium = solve_zero_sum(matrix, args.method, select=args.select, tol=args.tol)
    print(format_equilibrium(equilibrium, matrix, source=str(args.payoff)))
    if args.out is not None:
        text = json.dumps(equilibrium.to_dict(), indent=2, allow_nan=False)
        try:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise OSError(f"{args.out}: cannot write the equilibrium ({exc.strerror or exc})") from None
        print(f"wrote {args.out}")
    return 0


def format_equilibrium(equilibrium: Any, matrix: PayoffMatrix, *, source: str | None = None) -> str:
    """A short plain-text table of an equilibrium of ``matrix``.

    One line per defender (its probability and worst-case accuracy as a pure strategy),
    the attacker's mixture, then value, exploitability, method and status.
    """
    labels = ("defender", "attacker", "value", "exploitability", "method", "status")
    name_width = max(len(x) for x in (*labels, *matrix.defenders, *matrix.attackers))
    lines = []
    if source:
        lines.append(f"{source}: {matrix.n_defenders} defenders x {matrix.n_attackers} attackers")
    lines.append(f"{'defender':<{name_width}}  probability  worst-case accuracy")
    worst = matrix.values.min(axis=1)
    for name, p, w in zip(matrix.defenders, equilibrium.defender_strategy, worst, strict=True):
        lines.append(f"{name:<{name_width}}  {float(p):>11.4f}  {float(w):>19.2%}")
    lines.append(f"{'attacker':<{name_width}}  probability")
    for name, q in zip(matrix.attackers, equilibrium.attacker_strategy, strict=True):
        lines.append(f"{name:<{name_width}}  {float(q):>11.4f}")
    value = float(equilibrium.value)
    lines += [
        f"{'value':<{name_width}}  {value:>11.6f}  ({value:.2%} accuracy guaranteed)",
        f"{'exploitability':<{name_width}}  {float(equilibrium.exploitability):>11.2e}",
        f"{'method':<{name_width}}  {equilibrium.method}",
        f"{'status':<{name_width}}  {equilibrium.status}",
    ]
    return "\n".join(lines)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value
