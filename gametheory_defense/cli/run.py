"""``gtdefense run CONFIG --out DIR``: the whole pipeline from a TOML configuration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gametheory_defense.cli import add_trust_code_option


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo``."""
    from payoff.executors import EXECUTORS

    p.add_argument("--out", required=True, type=Path, help="output directory (must be empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="reuse trained models, payoff cells and evaluations in --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--executor", choices=list(EXECUTORS), default=None, help="payoff-cell executor (default: config)")
    p.add_argument("--data-dir", default=None, help="directory holding the data set files (overrides the config)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train defenders, build and solve the payoff matrix, save the ensemble, evaluate, report",
        description="Run the whole pipeline described by a TOML configuration (see docs/config.md).",
    )
    p.add_argument("config", type=Path, help="TOML configuration file")
    add_run_options(p)
    add_trust_code_option(p)
    p.set_defaults(func=run)


def execute(config_path: Path, args: argparse.Namespace, command: list[str]) -> int:
    from gametheory_defense.config import load_config
    from gametheory_defense.identity import support_indices
    from gametheory_defense.pipeline import run_pipeline
    from gametheory_defense.report import pct
    from gametheory_defense.stats import game_value_interval

    config = load_config(config_path)
    result = run_pipeline(
        config,
        args.out,
        resume=args.resume,
        device=args.device,
        executor=args.executor,
        data_dir=args.data_dir,
        command=command,
        progress=not args.no_progress,
        trust_code=getattr(args, "trust_code", False),
    )
    eq = result.equilibrium
    iv = game_value_interval(result.matrix, eq)
    ci = f" (95% CI [{pct(iv.low)}, {pct(iv.high)}])" if iv.low == iv.low else ""  # nan: no stderr
    print(f"game value (configured attackers): {pct(eq.value)}{ci}   exploitability {eq.exploitability:.1e}")
    for i in support_indices(eq.defender_strategy):  # as the ensemble keeps it (LP round-off left out)
        print(f"  {eq.defender_strategy[i]:7.4f}  {eq.defenders[i]}")
    if result.robustness is not None:
        r = result.robustness
        print("adaptive worst case: " + ", ".join(
            f"{k} {pct(v['worst_case_accuracy'])}" for k, v in r.items() if k != "threat_model"
        ))
    print(f"wrote {result.out}/report.md ({result.seconds['total']:.0f} s)")
    return 0


def run(args: argparse.Namespace) -> int:
    command = ["gtdefense", "run", str(args.config), "--out", str(args.out), "--resume"]
    if args.device != "cpu":
        command += ["--device", args.device]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if args.executor:
        command += ["--executor", args.executor]
    if args.trust_code:
        command += ["--trust-code"]
    return execute(args.config, args, command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
