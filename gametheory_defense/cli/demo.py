"""``gtdefense demo --out DIR``: the pipeline on the embedded digits data (examples/digits.toml)."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from gametheory_defense.cli.run import add_run_options, execute


def demo_config_path() -> Path:
    """The packaged copy of ``examples/digits.toml`` (identical; a test checks it)."""
    return Path(str(resources.files("gametheory_defense") / "configs" / "digits.toml"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the full pipeline on the embedded digits data (a few minutes on a CPU)",
        description="Run examples/digits.toml end to end: train, build the game, solve, evaluate, report.",
    )
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = ["gtdefense", "demo", "--out", str(args.out), "--resume"]
    if args.device != "cpu":
        command += ["--device", args.device]
    return execute(demo_config_path(), args, command)
