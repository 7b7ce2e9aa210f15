"""The ``gtdefense`` command line.

Each subcommand lives in its own module of this package, which defines
``register(subparsers)``: it adds its parser and sets ``func`` (a callable taking the
parsed ``argparse.Namespace`` and returning an exit code). The CLI only parses
arguments and calls the library; every expected error becomes one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from gametheory_defense import __version__

# Subcommand modules, in the order ``gtdefense --help`` lists them.
COMMANDS = ["solve", "plot", "train", "attack", "run", "demo", "evaluate", "import-model"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_trust_code_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-code``: consent to import model classes that files name (docs/models.md)."""
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="import model classes that checkpoints or configs name as package.module:Class (this runs "
        "their code: only for files you trust); built-in and registered architectures need no consent",
    )


def add_sap_activations_option(parser: argparse.ArgumentParser) -> None:
    """``--sap-activations``: the activation families SAP follows (choices from the SAP registry)."""
    from gametheory_defense.sap import SAP_ACTIVATIONS

    parser.add_argument(
        "--sap-activations",
        nargs="+",
        default=None,
        choices=list(SAP_ACTIVATIONS),
        metavar="ACT",
        help=f"activations SAP follows, one or more of {', '.join(SAP_ACTIVATIONS)} (default relu, the paper's "
        "setting); needs --sap-frac",
    )


def sap_request(args: argparse.Namespace) -> dict[str, Any] | str:
    """The ``sap`` argument of ``load_checkpoint`` from ``--sap-frac/--sap-mode/--sap-activations``.

    ``"keep"`` (the checkpoint's own settings) without ``--sap-frac``; a ``ValueError``
    when ``--sap-activations`` is given without it.
    """
    if args.sap_frac is None:
        if args.sap_activations is not None:
            raise ValueError("--sap-activations needs --sap-frac (the SAP draw fraction)")
        return "keep"
    sap: dict[str, Any] = {"frac": args.sap_frac, "mode": args.sap_mode, "layers": None}
    if args.sap_activations is not None:
        sap["activations"] = list(args.sap_activations)
    return sap


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gtdefense",
        description="Game-theoretic adversarial defense: solve, plot, train, attack, run, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"gametheory-defense {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"gametheory_defense.cli.{name.replace('-', '_')}").register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from gametheory_defense.errors import GTDError

    return (GTDError, ValueError, OSError)  # OSError: missing, existing or unreadable files


def warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Show a Python warning as one log line: its category and message, nothing else.

    Replaces :func:`warnings.showwarning` while the CLI runs. The default (and
    ``logging.captureWarnings``) prints ``file:line: Category: message`` followed by the
    source line of the ``warnings.warn`` call, which is noise for a command-line user.
    Newlines inside the message are folded into spaces.
    """
    text = " ".join(str(message).split())
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gtdefense``; returns the process exit code."""
    saved: Any = warnings.showwarning
    warnings.showwarning = warning_line  # one line per warning, no source-line echo
    try:
        return _main(argv)
    finally:
        warnings.showwarning = saved


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("gtdefense: interrupted (finished work is kept; rerun with --resume)", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        msg = str(exc).strip().splitlines()
        text = msg[0] if msg else type(exc).__name__
        print(f"gtdefense {args.command}: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
