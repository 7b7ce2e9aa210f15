"""`gtdefense demo` end to end: files, report numbers equal the JSON, resume, the example script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gametheory_defense.report import pct
from payoff import PayoffMatrix

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def gtdefense(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gametheory_defense", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = gtdefense("demo", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_writes_every_output(demo):
    out, proc = demo
    for rel in [
        "models/standard.safetensors", "models/standard.json", "models/pgd-at.safetensors",
        "payoff.json", "payoff.csv", "equilibrium.json", "payoff.png", "ensemble/ensemble.json",
        "report.md", "robustness.json", "double_oracle.json", "double_oracle.png",
    ]:
        assert (out / rel).is_file(), rel
    assert "game value" in proc.stdout


def test_report_numbers_equal_the_json(demo):
    out, _ = demo
    matrix = PayoffMatrix.from_json(out / "payoff.json")
    eq = json.loads((out / "equilibrium.json").read_text())
    report = (out / "report.md").read_text()
    assert f"**{pct(eq['value'])}**" in report
    # the game value is shown with its confidence interval (gametheory_defense.stats)
    from types import SimpleNamespace

    from gametheory_defense.stats import game_value_interval

    solved = SimpleNamespace(
        value=eq["value"],
        defender_strategy=[eq["defender_strategy"][d] for d in matrix.defenders],
        attacker_strategy=[eq["attacker_strategy"][a] for a in matrix.attackers],
    )
    iv = game_value_interval(matrix, solved)
    assert iv.low < iv.high
    assert f"**{pct(eq['value'])}** (95% CI [{pct(iv.low)}, {pct(iv.high)}]" in report
    for i, name in enumerate(matrix.defenders):
        row = f"| `{name}` | {pct(matrix.clean_accuracy[i])} | {pct(matrix.values[i].min())}"
        assert row in report, row
        assert f"{eq['defender_strategy'][name]:.4f} |" in report
    # the equilibrium in the file is certified on the matrix in the file
    x = np.array([eq["defender_strategy"][d] for d in matrix.defenders])
    y = np.array([eq["attacker_strategy"][a] for a in matrix.attackers])
    A = matrix.values
    assert abs(x @ A @ y - eq["value"]) < 1e-7
    assert (A @ y).max() - (x @ A).min() <= eq["exploitability"] + 1e-9
    robustness = json.loads((out / "robustness.json").read_text())
    for name, r in robustness.items():
        if name == "threat_model":
            continue
        assert f"**{pct(r['worst_case_accuracy'])}**" in report


def test_robustness_json_schema(demo):
    out, _ = demo
    matrix = PayoffMatrix.from_json(out / "payoff.json")
    r = json.loads((out / "robustness.json").read_text())
    assert r["threat_model"] == {"norm": "linf", "eps": 0.1}
    assert list(r)[1] == "mixture"
    for name in ["mixture", *matrix.defenders]:
        entry = r[name]
        assert 0.0 <= entry["worst_case_accuracy"] <= min(entry["attacks"].values()) + 1e-12
        assert entry["worst_case_accuracy"] <= entry["clean_accuracy"]
        assert len(entry["attacks"]) >= 2


def test_demo_numbers_make_sense(demo):
    out, _ = demo
    m = PayoffMatrix.from_json(out / "payoff.json")
    i_std, i_at = m.defenders.index("standard"), m.defenders.index("pgd-at")
    assert m.clean_accuracy[i_std] >= 0.9
    # adversarial training helps under the strongest configured attack
    assert m.values[i_at].min() > m.values[i_std].min() + 0.2
    # SAP rows carry a standard error; the deterministic ones have one draw
    i_sap = m.defenders.index("standard+sap0.5")
    assert m.n_samples[i_sap, 0] == 3 * m.n_samples[i_std, 0]


def test_resume_reuses_everything(demo):
    out, _ = demo
    before = (out / "payoff.json").read_text()
    proc = gtdefense("-v", "demo", "--out", str(out), "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing trained model standard" in proc.stderr and "training standard" not in proc.stderr
    after = json.loads((out / "payoff.json").read_text())
    assert after["values"] == json.loads(before)["values"]


def test_rerun_without_resume_refuses(demo):
    out, _ = demo
    proc = gtdefense("demo", "--out", str(out))
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_example_script_classifies_with_the_saved_ensemble(demo):
    out, _ = demo
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "classify_with_ensemble.py"), str(out / "ensemble"), "--n", "32"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    acc = float(proc.stdout.strip().splitlines()[-1].split("sampled ")[1].split(",")[0])
    assert acc > 0.8


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text((ROOT / "examples" / "digits.toml").read_text().replace("eval_size = 200", "eval_size = -3"))
    proc = gtdefense("run", str(cfg), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "data.eval_size" in proc.stderr


def test_transfer_game_with_chosen_sources(demo, tmp_path):
    """[game] sources: columns are (attack, source) for those sources only; the diagonal is the self game."""
    import shutil
    import tomllib

    from gametheory_defense.config import parse_config
    from gametheory_defense.pipeline import run_pipeline

    out, _ = demo
    raw = tomllib.loads((ROOT / "examples" / "digits.toml").read_text())
    raw["game"].update(formulation="transfer", sources=["standard", "pgd-at"])
    raw["evaluation"]["enabled"] = False
    raw.setdefault("double_oracle", {})["enabled"] = False
    config = parse_config(raw)
    shutil.copytree(out / "models", tmp_path / "t" / "models")  # same models: no training
    res = run_pipeline(config, tmp_path / "t", resume=True, progress=False)
    attacks = [a.name for a in config.attackers]
    assert sorted(res.matrix.attackers) == sorted(f"{a}@{s}" for a in attacks for s in ("standard", "pgd-at"))
    self_game = PayoffMatrix.from_json(out / "payoff.json")
    for d in ("standard", "pgd-at"):  # deterministic defender attacked through itself = the self game's cell
        for a in attacks:
            i, j = self_game.defenders.index(d), self_game.attackers.index(a)
            k, m = res.matrix.defenders.index(d), res.matrix.attackers.index(f"{a}@{d}")
            assert res.matrix.values[k, m] == self_game.values[i, j]


def test_resume_reuses_models_whose_names_contain_dots(tmp_path, caplog):
    """A model named "pgd-at-0.1" is found again on resume (its sidecar is pgd-at-0.1.json)."""
    import logging
    import tomllib

    from gametheory_defense.config import parse_config
    from gametheory_defense.data import load_dataset
    from gametheory_defense.pipeline import _train_models

    raw = tomllib.loads((ROOT / "examples" / "digits.toml").read_text())
    raw["models"] = [dict(raw["models"][0], name="std-0.1", epochs=1)]
    config = parse_config(raw)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    import torch

    paths = _train_models(config, tmp_path, train, test, device=torch.device("cpu"), resume=True, progress=False)
    stamp = paths["std-0.1"].with_name("std-0.1.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="gametheory_defense.pipeline"):
        _train_models(config, tmp_path, train, test, device=torch.device("cpu"), resume=True, progress=False)
    assert "reusing trained model std-0.1" in caplog.text
    assert paths["std-0.1"].with_name("std-0.1.safetensors").stat().st_mtime_ns == stamp


def test_demo_runs_psro(demo):
    """The demo's defense oracle trains defenders: rows added, bounds labelled, the final mixture evaluated."""
    out, _ = demo
    summary = json.loads((out / "double_oracle.json").read_text())
    calls = json.loads((out / "double_oracle" / "defense_oracle.json").read_text())["calls"]
    rows = PayoffMatrix.from_json(out / "payoff.json").defenders
    assert calls and calls[0]["method"] == "pgd-at" and calls[0]["warm_start"] in rows  # warm started
    added = summary["added_defenders"]
    assert added == [c["name"] for c in calls if c["added"]]
    for name in added:  # every added row is a checkpoint that resumes, and is evaluated adaptively
        assert (out / "double_oracle" / "defenders" / name / "model.safetensors").is_file()
    robustness = json.loads((out / "robustness.json").read_text())
    report = (out / "report.md").read_text()
    assert "## 2. PSRO" in report and "**Lower bound** (estimate)" in report and "**Upper bound** (estimate)" in report
    h = summary["history"]
    assert all(r["lower_bound"] <= r["value"] + 1e-12 <= r["upper_bound"] + 2e-12 for r in h)
    if added:
        assert all(name in robustness for name in added) and "mixture-double-oracle" in robustness
        assert "The final double-oracle mixture reaches" in report
        # PGD-AT fine-tuned against the attacker's mixture beats the game's initial value.
        assert summary["final_value"] > summary["initial_value"]


class GeluNet(__import__("torch").nn.Sequential):
    """A tiny digits MLP with one GELU and one ReLU layer (for ``[defenders] sap_activations``)."""

    def __init__(self, hidden: int = 32) -> None:
        from torch import nn

        super().__init__(
            nn.Flatten(), nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )


def test_sap_activations_from_the_config_reach_the_game(tmp_path):
    """sap_activations = "gelu": SAP after the GELU only, really stochastic; changing it recomputes the SAP cells."""
    import logging

    import torch

    from gametheory_defense.config import parse_config
    from gametheory_defense.models import _REGISTERED, register_model
    from gametheory_defense.pipeline import defender_specs, load_defenders, run_pipeline
    from gametheory_defense.sap import sap_settings
    from gametheory_defense.stochastic import use_generator

    saved = dict(_REGISTERED)
    register_model(GeluNet, name="gelu-net-test")

    def config(acts):
        return parse_config({
            "run": {"seed": 0},
            "data": {"dataset": "digits", "eval_size": 32},
            "models": {"g": {"architecture": "gelu-net-test", "epochs": 2, "lr": 0.01}},
            "defenders": {"sap_fracs": [0.5], "sap_activations": acts},
            "attackers": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1}],
            "game": {"repeats": 2},
            "evaluation": {"enabled": False},
        })

    try:
        out = tmp_path / "run"
        first = run_pipeline(config("gelu"), out, progress=False)
        assert first.matrix.defenders == ("g", "g+sap0.5")
        specs = defender_specs(config("gelu"), {"g": out / "models" / "g"})
        sap_model = load_defenders(specs, "cpu")["g+sap0.5"]
        settings = sap_settings(sap_model)
        assert settings["activations"] == "gelu" and settings["layers"] == ["2"]  # the GELU, not the ReLU "4"
        x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        draws = []
        for s in (1, 2):
            with torch.no_grad(), use_generator(sap_model, torch.Generator().manual_seed(s)):
                draws.append(sap_model(x))
        assert (draws[0] - draws[1]).abs().max() > 1e-3  # a stochastic row: outputs vary between draws
        np.testing.assert_array_equal(first.matrix.n_samples[1], 2 * first.matrix.n_samples[0])  # 2 draws vs 1

        both = run_pipeline(config(["gelu", "relu"]), out, resume=True, progress=False)
        meta = both.matrix.metadata
        per_row = (meta["cells_reused"] + meta["cells_computed"]) // 2
        assert meta["cells_reused"] == meta["cells_computed"] == per_row >= 2  # base row kept, SAP row new
        assert sap_settings(load_defenders(defender_specs(config(["relu", "gelu"]), {"g": out / "models" / "g"}),
                                           "cpu")["g+sap0.5"])["layers"] == ["2", "4"]
        again = run_pipeline(config("gelu"), out, resume=True, progress=False)
        assert again.matrix.metadata["cells_computed"] == 0  # the GELU cells of the first run are still valid
        np.testing.assert_array_equal(again.matrix.values, first.matrix.values)
    finally:
        _REGISTERED.clear()
        _REGISTERED.update(saved)


def test_sap_activations_the_model_lacks_are_a_config_error(tmp_path):
    from gametheory_defense.config import parse_config
    from gametheory_defense.errors import ConfigError
    from gametheory_defense.pipeline import run_pipeline

    cfg = parse_config({
        "data": {"dataset": "digits", "eval_size": 16},
        "models": {"m": {"architecture": "mlp", "epochs": 1}},  # ReLU only
        "defenders": {"sap_fracs": [1.0], "sap_activations": "gelu"},
        "attackers": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1}],
        "evaluation": {"enabled": False},
    })
    with pytest.raises(ConfigError, match=r"^defenders\.sap_activations: model 'm' has no gelu call site") as info:
        run_pipeline(cfg, tmp_path / "o", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o" / "cells").exists()  # refused before the payoff build began
