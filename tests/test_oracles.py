"""Tests of the training defense oracles (PSRO): resumable training, rows, the three oracles, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gametheory_defense.attacks import build_attack
from gametheory_defense.checkpoint import weights_digest
from gametheory_defense.data import load_dataset
from gametheory_defense.double_oracle import double_oracle
from gametheory_defense.models import build_model
from gametheory_defense.oracles import BuilderRows, TrainingOracle, train_resumable, training_attack
from gametheory_defense.stochastic import is_stochastic
from payoff import PayoffStore, build_payoff_matrix

ROOT = Path(__file__).resolve().parents[1]


def make_model(g: torch.Generator) -> torch.nn.Module:
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=g)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    train = load_dataset("digits", "train").subset(400)
    test = load_dataset("digits", "test").subset(80)
    base = make_model(torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(base.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(base(train.images), train.labels).backward()
        opt.step()
    attacks = {"fgsm": build_attack("fgsm", eps=0.1), "pgd": build_attack("pgd", eps=0.1, steps=5)}
    return train, test, base.eval(), attacks


# --------------------------------------------------------------------------- resumable training


def _train_once(tmp: Path, stop_after: int | None = None) -> torch.nn.Module:
    data = load_dataset("digits", "train").subset(120)
    model = make_model(torch.Generator().manual_seed(1))
    attack = build_attack("pgd", eps=0.1, steps=3)

    def on_epoch(epoch: int, stats: object) -> None:
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt  # an interruption right after the epoch's state was written

    train_resumable(
        model, (data.images, data.labels), epochs=4, draw_attack=lambda g: attack,
        generator=torch.Generator().manual_seed(3), state_dir=tmp, recipe={"test": 1}, batch_size=32, lr=1e-2,
        progress=False, on_epoch=on_epoch,
    )
    return model


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    full = _train_once(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _train_once(tmp_path / "b", stop_after=2)
    meta = json.loads((tmp_path / "b" / "state.json").read_text())
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    resumed = _train_once(tmp_path / "b")  # a fresh model and generator: everything comes from the state
    assert weights_digest(resumed) == weights_digest(full)
    # The state is safetensors + JSON: the tensors file is not a pickle (no zip/pickle magic).
    head = (tmp_path / "b" / "state.safetensors").read_bytes()[:2]
    assert head not in (b"PK", b"\x80\x02") and json.loads((tmp_path / "b" / "state.json").read_text())["format"]


def test_a_state_for_other_settings_is_ignored(tmp_path: Path) -> None:
    _train_once(tmp_path)
    data = load_dataset("digits", "train").subset(120)
    model = make_model(torch.Generator().manual_seed(1))
    history, resumed = train_resumable(
        model, (data.images, data.labels), epochs=1, draw_attack=lambda g: None,
        generator=torch.Generator().manual_seed(3), state_dir=tmp_path, recipe={"test": 2}, progress=False,
    )
    assert resumed == 0 and len(history) == 1


def test_training_attack_is_shortened_and_single_restart() -> None:
    a = build_attack("pgd", eps=0.3, steps=100, step_size=0.01, restarts=3)
    t = training_attack(a, max_steps=10)
    cfg = t.config()
    assert cfg["steps"] == 10 and cfg["restarts"] == 1 and cfg["step_size"] == pytest.approx(0.075)
    fgsm = build_attack("fgsm", eps=0.1)
    assert training_attack(fgsm, max_steps=10).config() == fgsm.config()


# --------------------------------------------------------------------------- the oracle


def test_pgd_at_oracle_trains_a_robust_row_with_the_builders_keys(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    train, test, base, attacks = digits
    store = PayoffStore(tmp_path / "cells")
    members = {"standard": base}
    matrix = build_payoff_matrix(members, attacks, test, store=store, progress=False)

    def attack_for(column: str):  # type: ignore[no-untyped-def]
        if column == "fgsm":
            raise AssertionError("a column with zero weight must not be used in training")
        return attacks[column]

    oracle = TrainingOracle(make_model, train, BuilderRows(attacks, test, store=store), attack_for, epochs=8,
                            batch_size=50, lr=1e-2, members=members, workdir=tmp_path / "oracle", progress=False)
    resp = oracle(np.array([0.0, 1.0]), matrix)
    assert resp.name == "psro1-pgd-at" and resp.name in members
    # Adversarial training against PGD gives a row far above the clean model's.
    assert resp.payoffs[1] > matrix.values[0, 1] + 0.2
    assert 0.0 < resp.clean_accuracy <= 1.0 and resp.stderr is not None
    # The row's cells are the builder's: building the new defender's row again computes nothing.
    again = build_payoff_matrix({resp.name: members[resp.name]}, attacks, test, store=store, progress=False)
    assert again.metadata["cells_computed"] == 0
    np.testing.assert_allclose(again.values[0], resp.payoffs)
    # A second oracle with the same inputs reuses the finished model.
    oracle2 = TrainingOracle(make_model, train, BuilderRows(attacks, test, store=store), attack_for, epochs=8,
                             batch_size=50, lr=1e-2, members={"standard": base}, workdir=tmp_path / "oracle",
                             progress=False)
    resp2 = oracle2(np.array([0.0, 1.0]), matrix)
    assert oracle2.calls[0].resumed_from_epoch == -1
    np.testing.assert_array_equal(resp2.payoffs, resp.payoffs)


def test_psro_with_user_models_raises_the_value(digits) -> None:  # type: ignore[no-untyped-def]
    train, test, base, attacks = digits
    members = {"standard": base}
    matrix = build_payoff_matrix(members, attacks, test, progress=False)
    oracle = TrainingOracle(make_model, train, BuilderRows(attacks, test), attacks, epochs=6, batch_size=50,
                            lr=1e-2, members=members, progress=False, warm_start=True)
    result = double_oracle(matrix, None, oracle, max_iterations=2, tol=0.01, progress=False)
    assert result.added_defenders and result.equilibrium.value > result.initial_value + 0.2
    assert oracle.calls[0].warm_start == "standard"
    first = result.history[0]
    # No attack oracle: the columns are the full set, the lower bound is the restricted value itself,
    # and the defense oracle's row pushes the upper bound above it.
    assert first.lower_bound == pytest.approx(first.value) and first.upper_bound > first.value + 0.2


@pytest.mark.filterwarnings("ignore:.*attacking a randomized model")
def test_sap_oracle_returns_the_best_variant(digits) -> None:  # type: ignore[no-untyped-def]
    train, test, base, attacks = digits
    matrix = build_payoff_matrix({"standard": base}, attacks, test, progress=False, repeats=2)
    y = np.array([0.5, 0.5])
    oracle = TrainingOracle(make_model, train, BuilderRows(attacks, test, repeats=2), attacks, method="sap",
                            epochs=3, batch_size=50, lr=1e-2, sap_fracs=(0.5, 2.0), progress=False)
    resp = oracle(y, matrix)
    cands = oracle.calls[0].candidates
    assert set(cands) == {"psro1-sap", "psro1-sap+sap0.5", "psro1-sap+sap2"}
    assert resp.name == max(cands, key=cands.get)
    assert float(resp.payoffs @ y) == pytest.approx(max(cands.values()))
    assert is_stochastic(oracle.members[resp.name]) == ("+sap" in resp.name)


def test_boost_oracle_weights_what_the_mixture_gets_wrong(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    train, test, base, attacks = digits
    members = {"standard": base}
    matrix = build_payoff_matrix(members, attacks, test, progress=False)
    oracle = TrainingOracle(make_model, train, BuilderRows(attacks, test), attacks, method="boost", epochs=3,
                            batch_size=50, lr=1e-2, members=members, boost_weight=3.0, workdir=tmp_path,
                            progress=False)
    resp = oracle(np.array([0.0, 1.0]), matrix)
    w = load_file(str(tmp_path / resp.name / "boost_weights.safetensors"))["weights"]
    assert w.shape == (len(train),) and float(w.min()) >= 1.0 and float(w.max()) <= 4.0 + 1e-6
    # The clean model loses most PGD examples: most weights are high, and the rest are 1.
    assert float((w > 3.9).float().mean()) > 0.5 and float((w < 1.1).float().mean()) > 0.02
    assert resp.payoffs[1] > matrix.values[0, 1]


def test_transfer_rows_equal_the_builders(digits) -> None:  # type: ignore[no-untyped-def]
    train, test, base, attacks = digits
    other = make_model(torch.Generator().manual_seed(5)).eval()
    new = make_model(torch.Generator().manual_seed(6)).eval()
    sources = {"standard": base, "other": other}
    matrix = build_payoff_matrix(sources, attacks, test, formulation="transfer", progress=False)
    full = build_payoff_matrix({**sources, "new": new}, attacks, test, formulation="transfer",
                               sources=["standard", "other"], progress=False)
    resp = BuilderRows(attacks, test, formulation="transfer", sources=sources)("new", new, matrix)
    np.testing.assert_array_equal(resp.payoffs, full.values[2])
    assert resp.clean_accuracy == full.clean_accuracy[2]
    # A column no configured attack makes is evaluated by the caller's function.
    extra = {"fixed": lambda name, model: np.array([[True, False, True, True]])}
    odd = build_payoff_matrix({"standard": base}, {"fgsm": attacks["fgsm"]}, test, progress=False)
    from payoff.matrix import PayoffMatrix

    wider = PayoffMatrix(np.c_[odd.values, [[0.5]]], defenders=["standard"], attackers=["fgsm", "fixed"])
    row = BuilderRows(attacks, test, extra=extra)("new", new, wider)
    assert row.payoffs[1] == pytest.approx(0.75)


def test_bad_settings_are_one_line_errors(digits) -> None:  # type: ignore[no-untyped-def]
    train, test, base, attacks = digits
    rows = BuilderRows(attacks, test)
    with pytest.raises(ValueError, match="unknown defense oracle"):
        TrainingOracle(make_model, train, rows, attacks, method="nope")
    with pytest.raises(ValueError, match="members"):
        TrainingOracle(make_model, train, rows, attacks, warm_start=True)
    with pytest.raises(ValueError, match="epochs"):
        TrainingOracle(make_model, train, rows, attacks, epochs=0)
    matrix = build_payoff_matrix({"standard": base}, {"fgsm": attacks["fgsm"]}, test, progress=False)
    from payoff.matrix import PayoffMatrix

    odd = PayoffMatrix(np.c_[matrix.values, matrix.values], defenders=["standard"], attackers=["fgsm", "mystery"])
    with pytest.raises(ValueError, match="mystery"):
        rows("new", base, odd)


def test_time_limit_stops_the_loop(digits) -> None:  # type: ignore[no-untyped-def]
    train, test, base, attacks = digits
    matrix = build_payoff_matrix({"standard": base}, attacks, test, progress=False)
    oracle = TrainingOracle(make_model, train, BuilderRows(attacks, test), attacks, epochs=1, time_limit=1e-9,
                            progress=False)
    time.sleep(0.01)
    result = double_oracle(matrix, None, oracle, max_iterations=3, progress=False)
    assert result.stop_reason == "oracle-returned-none" and not oracle.calls


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    code = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "psro.md").read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/psro.md", "exec"), {})
    out = capsys.readouterr().out
    before, arrow, after = out.split()[-3:]
    assert "'psro1-pgd-at'" in out and arrow == "->" and float(after) > float(before) + 0.1
    assert (tmp_path / "psro-run" / "oracle" / "psro1-pgd-at" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_sigkill_during_oracle_training_resumes_to_the_same_result(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, str(ROOT / "tests" / "_psro_worker.py")]
    full = subprocess.run([*worker, str(tmp_path / "full")], capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    expected = json.loads(full.stdout.strip().splitlines()[-1])

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*worker, str(killed), "--pause", "0.5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    state = killed / "oracle" / "psro1-pgd-at" / "state" / "state.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never reached epoch 2 of its first oracle training")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    epoch_at_kill = json.loads(state.read_text())["epoch"]
    assert 2 <= epoch_at_kill < 4 and not (killed / "oracle" / "psro1-pgd-at" / "model.json").exists()

    again = subprocess.run([*worker, str(killed)], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["resumed_from"][0] == epoch_at_kill  # the first training continued, not restarted
    assert resumed["weights"] == expected["weights"]
    assert resumed["values"] == expected["values"] and resumed["value"] == expected["value"]
