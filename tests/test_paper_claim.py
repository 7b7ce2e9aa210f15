"""benchmarks/paper_claim.py: argument checks, and one tiny end-to-end run on digits with a fixed mixture."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from payoff import PayoffMatrix

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_claim.py"

_spec = importlib.util.spec_from_file_location("paper_claim", SCRIPT)
paper_claim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_claim)

TINY = """
[run]
name = "tiny-claim"
seed = 0

[data]
dataset = "digits"
eval_size = 60

[[models]]
name = "standard"
architecture = "mlp"
method = "standard"
epochs = 3
batch_size = 64

[[models]]
name = "at"
architecture = "mlp"
method = "pgd-at"
eps = 0.1
attack_steps = 3
epochs = 3
batch_size = 64

[defenders]
sap_fracs = [0.5, 2.0]

[[attackers]]
name = "fgsm"
attack = "fgsm"
eps = 0.1

[[attackers]]
name = "pgd5"
attack = "pgd"
eps = 0.1
steps = 5

[game]
repeats = 2

[evaluation]
suite = "quick"
eps = 0.1
size = 40
draws = 3
"""


def test_mixture_spec_parses_and_renormalises():
    name, weights = paper_claim.mixture_spec("half=at+sap0.5:1, at+sap2:3")
    assert name == "half"
    assert weights == {"at+sap0.5": 0.25, "at+sap2": 0.75}
    assert paper_claim.mixture_spec("multi-sap") == ("multi-sap", None)


@pytest.mark.parametrize(
    "text", ["nameonly", "=a:1", "m=", "m=a", "m=a:0", "m=a:-1", "m=a:nan", "m=a:x", "m=a:1,a:2", "m=:1"]
)
def test_mixture_spec_rejects_malformed(text):
    with pytest.raises(argparse.ArgumentTypeError):
        paper_claim.mixture_spec(text)


def test_check_mixture_specs_names_the_problem(tmp_path):
    from gametheory_defense.config import defender_names, load_config

    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    config = load_config(cfg_path)
    rows = defender_names(config)
    assert paper_claim.check_mixture_specs([("multi-sap", None), ("m", {"at": 1.0})], rows, config) is None
    assert "unknown defender" in paper_claim.check_mixture_specs([("m", {"nope": 1.0})], rows, config)
    assert "taken" in paper_claim.check_mixture_specs([("mixture", {"at": 1.0})], rows, config)
    assert "taken" in paper_claim.check_mixture_specs([("at", {"at": 1.0})], rows, config)
    assert "twice" in paper_claim.check_mixture_specs([("m", {"at": 1.0}), ("m", {"standard": 1.0})], rows, config)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )


def test_bad_mixture_is_one_line_and_exit_2(tmp_path):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    proc = run_script("--config", str(cfg_path), "--out", str(tmp_path / "out"), "--mixture", "m=ghost:1")
    assert proc.returncode == 2
    assert "unknown defender(s) ghost" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_run_with_fixed_mixture(tmp_path):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    out = tmp_path / "out"
    args = ("--config", str(cfg_path), "--out", str(out), "--eps", "0.05", "0.1", "--skip-transfer",
            "--threads", "1", "--no-progress", "--mixture", "multi-sap", "--mixture", "pair=standard:1,at+sap2:1")
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    mixtures = results["mixtures"]
    # the fixed mixtures, then the equilibrium mixture and the most robust PGD-AT model, all on the same images
    assert list(mixtures) == ["multi-sap", "pair", "mixture", "at"]
    assert all(v["n"] == 40 for v in mixtures.values())
    assert mixtures["multi-sap"]["weights"] == pytest.approx({"at+sap0.5": 0.5, "at+sap2": 0.5})
    assert mixtures["pair"]["weights"] == pytest.approx({"standard": 0.5, "at+sap2": 0.5})
    # a mixture with two members gets the mixture-aware attacks; a pure model does not
    assert {"mixture-pgd-ce", "arc", "eot-pgd-ce"} <= set(mixtures["multi-sap"]["attacks"])
    assert "arc" not in mixtures["at"]["attacks"]
    # the paper-protocol figure is the mixture's expected payoff against its worst configured column
    matrix = PayoffMatrix.from_json(out / "self" / "payoff.json")
    x = np.array([mixtures["pair"]["weights"].get(d, 0.0) for d in matrix.defenders])
    payoffs = x @ matrix.values
    assert mixtures["pair"]["paper_protocol"] == pytest.approx(payoffs.min())
    assert mixtures["pair"]["paper_protocol_attack"] == matrix.attackers[int(np.argmin(payoffs))]
    # the worst case is per example, so it is no higher than any single attack
    for v in mixtures.values():
        assert v["worst_case_accuracy"] <= min(v["clean"], *v["attacks"].values()) + 1e-12
    text = (out / "results.md").read_text()
    assert "## Fixed mixtures" in text and "Paired difference multi-sap - mixture" in text
    # resumable: a rerun reuses every cached evaluation and prints the same table
    cached = json.loads((out / "mixtures.json").read_text())
    proc2 = run_script(*args)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert json.loads((out / "mixtures.json").read_text()) == cached
    assert json.loads((out / "results.json").read_text())["mixtures"] == mixtures
    # a cache written before clean accuracy was kept gets it measured alone, from the same seed,
    # so it equals the full evaluation's figure (for the randomized mixtures too)
    old = {k: {kk: vv for kk, vv in v.items() if kk != "clean"} for k, v in cached.items()}
    (out / "mixtures.json").write_text(json.dumps(old))
    proc3 = run_script(*args)
    assert proc3.returncode == 0, proc3.stderr[-3000:]
    assert json.loads((out / "mixtures.json").read_text()) == cached


def test_environment_records_the_cpu_kernels():
    # gradients differ between torch's AVX2 and AVX-512 kernels, so reports must say which ran
    import torch

    from gametheory_defense.pipeline import environment

    env = environment()
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu"] and env["torch"] == torch.__version__
