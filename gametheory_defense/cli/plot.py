"""``gtdefense plot``: draw a payoff matrix, optionally with its equilibrium, to an image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from payoff.matrix import load_payoff

__all__ = ["register", "run", "load_equilibrium"]


def register(subparsers: Any) -> None:
    """Add the ``plot`` subcommand."""
    parser = subparsers.add_parser(
        "plot",
        help="draw a payoff matrix (and its equilibrium) as an annotated heatmap",
        description=(
            "Draw PAYOFF (.json or .csv) as a heatmap of defender accuracies; with "
            "--equilibrium, add the mixed strategies as bar charts and the value in the title."
        ),
    )
    parser.add_argument("payoff", type=Path, metavar="PAYOFF", help="payoff file (.json or .csv)")
    parser.add_argument(
        "--equilibrium", "-e", type=Path, default=None, metavar="EQ.json",
        help="equilibrium written by 'gtdefense solve --out'",
    )
    parser.add_argument(
        "-o", "--out", type=Path, required=True, metavar="FIG.png",
        help="output image; the suffix picks the format (png, pdf, svg, ...)",
    )
    parser.add_argument("--cmap", default="viridis", help="matplotlib colour map (default: %(default)s)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of raster images (default: %(default)s)")
    parser.add_argument(
        "--no-annotate", dest="annotate", action="store_false", help="do not write values in the cells"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the payoff (and equilibrium), draw, save."""
    from matplotlib import colormaps
    from matplotlib.backend_bases import FigureCanvasBase

    from gametheory_defense.plots import plot_payoff

    out = Path(args.out)
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in formats:
        raise ValueError(
            f"{out}: unknown image type {out.suffix or '(none)'!r}; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    if args.cmap not in colormaps:
        raise ValueError(f"unknown colour map {args.cmap!r}; try viridis, cividis, magma or Greys")
    if args.dpi <= 0:
        raise ValueError(f"--dpi must be positive, got {args.dpi}")
    matrix = load_payoff(args.payoff)
    equilibrium = None if args.equilibrium is None else load_equilibrium(args.equilibrium)
    try:
        fig = plot_payoff(matrix, equilibrium, annotate=args.annotate, cmap=args.cmap)
    except ValueError as exc:
        if equilibrium is None:
            raise
        raise ValueError(f"{args.equilibrium} does not fit {args.payoff}: {exc}") from None
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def load_equilibrium(path: str | Path) -> Any:
    """Read an equilibrium JSON file written by ``gtdefense solve --out``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not valid JSON or not an equilibrium (the message names the file).
    """
    from gametheory_defense.solvers import Equilibrium

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such equilibrium file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be an equilibrium file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an equilibrium file holds a JSON object, got {type(data).__name__}")
    try:
        return Equilibrium.from_dict(data)
    except KeyError as exc:
        raise ValueError(f"{path}: not an equilibrium file (missing key {exc})") from None
    except (TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: not an equilibrium file ({first})") from None
