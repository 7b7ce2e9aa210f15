"""Module structure: no import cycles between the modules named in issue 14, choices from their owners."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(rel: str) -> set[str]:
    """Every module ``rel`` imports, at any depth (function-level imports included)."""
    tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("payoff/executors.py", "payoff.builder"),
        ("payoff/tasks.py", "payoff.builder"),
        ("payoff/tasks.py", "payoff.executors"),
        ("gametheory_defense/report.py", "gametheory_defense.pipeline"),
        ("gametheory_defense/provenance.py", "gametheory_defense.pipeline"),
        ("gametheory_defense/provenance.py", "gametheory_defense.report"),
    ],
)
def test_no_import_cycle(module: str, forbidden: str) -> None:
    assert forbidden not in _imports(module)


def test_config_choices_come_from_their_owners() -> None:
    from gametheory_defense import config, sap, training
    from gametheory_defense.attacks import NORMS
    from gametheory_defense.oracles import DEFENSE_ORACLES
    from gametheory_defense.solvers import SELECTIONS
    from payoff.builder import FORMULATIONS
    from payoff.executors import EXECUTORS

    assert config._CHOICES == {
        "models.method": tuple(training.METHODS),
        "models.optimizer": tuple(training.OPTIMIZERS),
        "defenders.sap_mode": tuple(sap.SAP_MODES),
        "game.formulation": tuple(FORMULATIONS),
        "game.executor": tuple(EXECUTORS),
        "game.select": tuple(SELECTIONS),
        "evaluation.norm": tuple(NORMS),
        "double_oracle.defense_oracle": tuple(DEFENSE_ORACLES),
        "double_oracle.defense.optimizer": tuple(training.OPTIMIZERS),
        "double_oracle.defense.sap_mode": tuple(sap.SAP_MODES),
    }
    text = (ROOT / "gametheory_defense" / "config.py").read_text()
    for literal in ('("standard", "pgd-at")', '("exact", "fast")', '("serial", "ray")', '("linf", "l2")'):
        assert literal not in text


def test_training_settings_are_declared_once() -> None:
    """[[models]] defaults and `gtdefense train` defaults are train()'s own."""
    import argparse
    import dataclasses

    from gametheory_defense.cli import train as cli_train
    from gametheory_defense.config import ModelConfig
    from gametheory_defense.training import TRAIN_SETTINGS, train_defaults

    d = train_defaults()
    fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert {k: fields[k] for k in TRAIN_SETTINGS} == d
    parser = argparse.ArgumentParser()
    cli_train.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--dataset", "digits", "--model", "mlp", "--out", "x"])
    assert {k: getattr(args, k) for k in TRAIN_SETTINGS} == d
    assert ModelConfig("m", "mlp").training_kwargs() == d
