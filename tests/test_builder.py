"""Tests of payoff.build_payoff_matrix, payoff.PayoffStore and the executors."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from _builder_worker import _train, game
from gametheory_defense.attacks import FGSM, PGD
from gametheory_defense.checkpoint import save_checkpoint
from gametheory_defense.data import as_tensors, load_dataset
from gametheory_defense.sap import apply_sap
from payoff import DefenderSpec, PayoffMatrix, PayoffStore, build_payoff_matrix
from payoff.store import bootstrap_ci, cell_key

pytestmark = pytest.mark.filterwarnings("ignore::gametheory_defense.attacks.RandomizedDefenseWarning")

WORKER = Path(__file__).with_name("_builder_worker.py")
N = 64


@pytest.fixture(scope="module")
def trained() -> dict[str, nn.Module]:
    torch.set_num_threads(1)
    x, y = as_tensors(load_dataset("digits", "train"))
    return {name: _train(seed, x, y) for seed, name in enumerate(["a", "b", "c"])}


@pytest.fixture(scope="module")
def evalset() -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = as_tensors(load_dataset("digits", "test"))
    return xt[:N], yt[:N]


class Counting:
    """Wraps an attack and counts its calls (same config, so the same store keys)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: Any = None) -> torch.Tensor:
        self.calls += 1
        return self.inner(model, x, y, generator=generator)

    def config(self) -> dict[str, Any]:
        return self.inner.config()


def same_matrix(a: PayoffMatrix, b: PayoffMatrix) -> None:
    assert a.defenders == b.defenders and a.attackers == b.attackers
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    np.testing.assert_array_equal(a.n_samples, b.n_samples)
    np.testing.assert_array_equal(a.clean_accuracy, b.clean_accuracy)


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return (model(x).argmax(1) == y).double().numpy()


# --------------------------------------------------------------------------- self / transfer


def test_self_game_matches_direct_computation(trained: dict[str, nn.Module], evalset: tuple) -> None:
    x, y = evalset
    defenders = {"a": trained["a"], "b": trained["b"]}
    attacks = {"fgsm": FGSM(0.1), "pgd": PGD(0.1, steps=3, random_start=False)}
    m = build_payoff_matrix(defenders, attacks, (x, y), progress=False)
    assert m.defenders == ("a", "b") and m.attackers == ("fgsm", "pgd")
    for i, model in enumerate(defenders.values()):
        clean = correct(model, x, y)
        assert m.clean_accuracy[i] == clean.mean() and clean.mean() > 0.8
        for j, attack in enumerate(attacks.values()):
            c = correct(model, attack(model, x, y), y)
            assert m.values[i, j] == c.mean()
            assert m.stderr[i, j] == pytest.approx(c.std(ddof=1) / np.sqrt(N), rel=1e-12)
            assert m.values[i, j] < clean.mean() - 0.3  # the attacks really bite
    np.testing.assert_array_equal(m.n_samples, np.full((2, 2), N))
    md = m.metadata
    assert md["formulation"] == "self" and md["crafts"] == 4 and md["cells_computed"] == 6
    assert md["data"]["n"] == N and md["attacks"]["pgd"] == attacks["pgd"].config()
    assert set(md["versions"]) >= {"torch", "numpy", "gametheory-defense"}


def test_transfer_game_crafts_once_per_attack_and_source(
    trained: dict[str, nn.Module], evalset: tuple, tmp_path: Path
) -> None:
    x, y = evalset
    defenders = dict(trained)  # a, b, c
    attacks = {"fgsm": Counting(FGSM(0.1)), "pgd": Counting(PGD(0.1, steps=3))}
    store = PayoffStore(tmp_path / "store")
    selfgame = build_payoff_matrix(defenders, attacks, (x, y), store=store, progress=False)
    assert selfgame.metadata["crafts"] == 6  # |attacks| x |defenders|
    for a in attacks.values():
        a.calls = 0

    tr = build_payoff_matrix(
        defenders, attacks, (x, y), formulation="transfer", sources=["a", "b"], store=store, progress=False
    )
    assert tr.attackers == ("fgsm@a", "fgsm@b", "pgd@a", "pgd@b")
    # |attacks| x |sources| = 4 crafts, not x |defenders| = 12; one batch per craft
    assert tr.metadata["crafts"] == 4 and tr.metadata["crafts_needed"] == 4
    assert sum(a.calls for a in attacks.values()) == 4
    # the diagonal (a vs *@a, b vs *@b) is the self game's cells, reused from the store
    assert tr.metadata["cells_reused"] == 4 + 3 and tr.metadata["cells_computed"] == 12 - 4
    for d in ("a", "b"):
        for atk in ("fgsm", "pgd"):
            i = tr.defenders.index(d)
            assert tr.values[i, tr.attackers.index(f"{atk}@{d}")] == selfgame.values[i, selfgame.attackers.index(atk)]
    # the same diagonal computed without the store
    fresh = build_payoff_matrix(defenders, attacks, (x, y), formulation="transfer", sources=["a", "b"], progress=False)
    same_matrix(fresh, tr)
    # an off-diagonal cell by hand: defender c on FGSM crafted against a
    c = correct(trained["c"], FGSM(0.1)(trained["a"], x, y), y)
    assert tr.values[2, 0] == c.mean()
    assert tr.metadata["columns"]["pgd@b"] == {"attack": "pgd", "source": "b"}


def test_same_model_twice_is_computed_once(trained: dict[str, nn.Module], evalset: tuple) -> None:
    x, y = evalset
    attack = Counting(FGSM(0.1))
    with pytest.warns(UserWarning, match="are the same model object"):
        m = build_payoff_matrix(
            {"a": trained["a"], "a-again": trained["a"]}, {"fgsm": attack}, (x, y), progress=False
        )
    # one clean cell and one adversarial cell: nothing counted twice, nothing negative
    assert m.metadata["cells_computed"] == 2 and m.metadata["cells_reused"] == 0
    assert m.metadata["crafts"] == 1 and attack.calls == 1
    np.testing.assert_array_equal(m.values[0], m.values[1])
    assert m.clean_accuracy[0] == m.clean_accuracy[1]


# --------------------------------------------------------------------------- stochastic defenders


def test_stochastic_defender_gets_repeats_and_stderr(
    trained: dict[str, nn.Module], evalset: tuple, tmp_path: Path
) -> None:
    x, y = evalset
    defenders = {"a": trained["a"], "a+sap": apply_sap(trained["a"], 0.5)}
    store = PayoffStore(tmp_path / "store")
    m = build_payoff_matrix(defenders, {"fgsm": FGSM(0.1)}, (x, y), repeats=4, store=store, progress=False)
    np.testing.assert_array_equal(m.n_samples, [[N], [4 * N]])
    assert m.metadata["stochastic_defenders"] == ["a+sap"]

    sap = store.outcomes("a+sap", "fgsm")
    assert sap.shape == (4, N) and sap.dtype == np.bool_
    assert len({row.tobytes() for row in sap}) > 1  # independent draws really differ
    per_example = sap.mean(axis=0)
    assert m.values[1, 0] == pytest.approx(sap.mean(), abs=1e-15)
    assert m.stderr[1, 0] == pytest.approx(per_example.std(ddof=1) / np.sqrt(N), rel=1e-12)
    assert m.stderr[1, 0] > 0
    assert store.outcomes("a", "fgsm").shape == (1, N)
    clean = store.clean_outcomes("a+sap")
    assert clean.shape == (4, N) and m.clean_accuracy[1] == pytest.approx(clean.mean(), abs=1e-15)

    ci = bootstrap_ci(sap, generator=np.random.default_rng(0))
    assert ci.low < m.values[1, 0] < ci.high
    assert 0.6 < (ci.high - ci.low) / (2 * 1.96 * m.stderr[1, 0]) < 1.4

    other = build_payoff_matrix(defenders, {"fgsm": FGSM(0.1)}, (x, y), repeats=4, seed=1, progress=False)
    assert other.values[0, 0] == m.values[0, 0]  # deterministic row: seed-independent
    assert other.values[1, 0] != m.values[1, 0]  # stochastic row: new draws


def test_order_of_defenders_and_attackers_does_not_matter(trained: dict[str, nn.Module], evalset: tuple) -> None:
    x, y = evalset
    sap = apply_sap(trained["b"], 0.5)
    d1 = {"a": trained["a"], "b+sap": sap, "c": trained["c"]}
    a1 = {"pgd": PGD(0.1, steps=2), "fgsm": FGSM(0.1)}
    m1 = build_payoff_matrix(d1, a1, (x, y), repeats=2, progress=False)
    m2 = build_payoff_matrix(dict(reversed(d1.items())), dict(reversed(a1.items())), (x, y), repeats=2, progress=False)
    assert m2.defenders == ("c", "b+sap", "a")
    for d in m1.defenders:
        for a in m1.attackers:
            i1, j1, i2, j2 = m1.defenders.index(d), m1.attackers.index(a), m2.defenders.index(d), m2.attackers.index(a)
            assert m1.values[i1, j1] == m2.values[i2, j2]
            assert m1.stderr[i1, j1] == m2.stderr[i2, j2]
        assert m1.clean_accuracy[m1.defenders.index(d)] == m2.clean_accuracy[m2.defenders.index(d)]


# --------------------------------------------------------------------------- resumable store


def _cells(store_dir: Path) -> list[Path]:
    return sorted((store_dir / "cells").glob("*.safetensors")) if (store_dir / "cells").is_dir() else []


@pytest.mark.parametrize("stop_after", [1, 5])
def test_sigkill_then_resume_recomputes_only_missing_cells(tmp_path: Path, stop_after: int) -> None:
    """A build SIGKILLed after its K-th cell resumes computing exactly the missing cells.

    The worker stops itself after K cells and waits for the kill, so the test knows how
    many cells exist whatever the machine's load (an earlier version killed a worker that
    kept writing every 0.5 s after a fixed deadline of 120 s: on a cold, loaded machine the
    worker could miss the deadline or outrun the kill).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / "worker.log"
    store_dir = tmp_path / "store"
    total = 3 * 2 + 3  # adversarial cells + clean cells
    threads = torch.get_num_threads()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), "--stop-after", str(stop_after), "--threads", str(threads)],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
        deadline = time.monotonic() + 600  # a hang guard only: a cold start may take minutes
        try:
            while not (tmp_path / "stopped").exists():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "worker did not reach its stopping point in 10 minutes"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "done").exists()
    present = len(_cells(store_dir))
    assert present == stop_after < total

    resumed = build_payoff_matrix(**game(tmp_path), store=store_dir)
    assert resumed.metadata["cells_reused"] == present
    assert resumed.metadata["cells_computed"] == total - present
    assert len(_cells(store_dir)) == total

    uninterrupted = build_payoff_matrix(**game(tmp_path), store=tmp_path / "fresh")
    assert uninterrupted.metadata["cells_computed"] == total
    same_matrix(resumed, uninterrupted)
    # a third run computes nothing
    again = build_payoff_matrix(**game(tmp_path), store=store_dir)
    assert again.metadata["cells_computed"] == 0 and again.metadata["crafts"] == 0
    same_matrix(again, uninterrupted)


def _flip_last_bit(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 1  # a valid bool, a wrong outcome: only the checksum catches it
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "garbage": lambda p, other: p.write_bytes(b"definitely not safetensors"),
    "truncated": lambda p, other: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "flipped outcome": lambda p, other: _flip_last_bit(p),
    "another cell's file": lambda p, other: p.write_bytes(other.read_bytes()),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_cell_is_reported_and_recomputed(
    trained: dict[str, nn.Module], evalset: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    x, y = evalset
    store = PayoffStore(tmp_path / "s")
    args = ({"a": trained["a"], "b": trained["b"]}, {"fgsm": FGSM(0.1)}, (x, y))
    first = build_payoff_matrix(*args, store=store, progress=False)
    manifest = store.run_manifest(first.metadata["run_id"])
    victim = store.cell_path(manifest["cells"]["b"]["fgsm"])
    CORRUPTIONS[case](victim, store.cell_path(manifest["clean"]["a"]))
    with caplog.at_level(logging.WARNING, logger="payoff.store"):
        second = build_payoff_matrix(*args, store=store, progress=False)
    assert any(str(victim) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert second.metadata["cells_computed"] == 1 and second.metadata["cells_reused"] == 3
    same_matrix(first, second)
    assert store.get(victim.stem) is not None  # rewritten and valid


def test_store_round_trip_and_shape_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = PayoffStore(tmp_path)
    identity = {"kind": "test", "n": 3}
    key = cell_key(identity)
    out = np.array([[True, False, True], [False, False, True]])
    store.put(key, out, identity=identity, info={"note": "x"})
    rec = store.get(key)
    assert rec is not None and rec.accuracy == pytest.approx(0.5)
    np.testing.assert_array_equal(rec.outcomes, out)
    assert rec.identity == identity and rec.info == {"note": "x"}
    with caplog.at_level(logging.WARNING, logger="payoff.store"):
        assert store.get(key, expected_shape=(1, 3)) is None
    assert "differs from the expected" in caplog.text
    with pytest.raises(ValueError, match="does not match its identity"):
        store.put(cell_key({"other": 1}), out, identity=identity)
    with pytest.raises(ValueError, match="bool"):
        store.put(key, out.astype(np.int8), identity=identity)
    assert [p.name for p in tmp_path.joinpath("cells").iterdir()] == [f"{key}.safetensors"]  # no temp files


def test_bootstrap_ci_covers_the_truth_with_normal_width() -> None:
    rng = np.random.default_rng(1)
    outcomes = rng.random((1, 2000)) < 0.7
    ci = bootstrap_ci(outcomes, confidence=0.95, n_resamples=2000, generator=np.random.default_rng(2))
    assert ci.low < 0.7 < ci.high
    normal_width = 2 * 1.96 * np.sqrt(0.21 / 2000)
    assert ci.high - ci.low == pytest.approx(normal_width, rel=0.15)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(outcomes, confidence=1.5, generator=rng)


# --------------------------------------------------------------------------- arguments


def test_bad_arguments_raise(trained: dict[str, nn.Module], evalset: tuple, tmp_path: Path) -> None:
    d, a, data = {"a": trained["a"]}, {"fgsm": FGSM(0.1)}, evalset
    with pytest.raises(ValueError, match="formulation must be one of"):
        build_payoff_matrix(d, a, data, formulation="mtd")
    with pytest.raises(ValueError, match="sources only applies"):
        build_payoff_matrix(d, a, data, sources=["a"])
    with pytest.raises(ValueError, match=r"unknown source model\(s\) \['z'\]"):
        build_payoff_matrix(d, a, data, formulation="transfer", sources=["z"])
    with pytest.raises(ValueError, match="repeats must be"):
        build_payoff_matrix(d, a, data, repeats=0)
    with pytest.raises(ValueError, match="executor must be"):
        build_payoff_matrix(d, a, data, executor="dask")
    with pytest.raises(ValueError, match="defenders is empty"):
        build_payoff_matrix({}, a, data)
    with pytest.raises(ValueError, match="give an nn.Module or a DefenderSpec"):
        build_payoff_matrix({"a": "model.pt"}, a, data)
    with pytest.raises(ValueError, match="is given under the key"):
        build_payoff_matrix({"b": DefenderSpec("a", tmp_path / "a")}, a, data)


# --------------------------------------------------------------------------- ray


@pytest.mark.ray
def test_ray_executor_equals_serial(
    trained: dict[str, nn.Module], evalset: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    x, y = evalset
    save_checkpoint(trained["a"], tmp_path / "ckpt" / "a")
    monkeypatch.chdir(tmp_path)
    base = Path("ckpt") / "a"  # relative paths (spec and store) are resolved before shipping to workers
    defenders: dict[str, Any] = {
        "a": DefenderSpec("a", base),  # shipped as a spec
        "a+sap": DefenderSpec("a+sap", base, sap={"frac": 0.5, "mode": "exact", "layers": None}),
        "b": trained["b"],  # shipped as safetensors bytes
    }
    attacks = {"fgsm": FGSM(0.1), "pgd": PGD(0.1, steps=2)}
    kwargs: dict[str, Any] = {"formulation": "transfer", "sources": ["a", "b"], "repeats": 2, "progress": False}
    serial = build_payoff_matrix(defenders, attacks, (x, y), **kwargs)
    ray_m = build_payoff_matrix(
        defenders, attacks, (x, y), **kwargs, executor="ray", store="store", ray_options={"num_cpus": 2}
    )
    same_matrix(serial, ray_m)
    assert ray_m.metadata["crafts"] == 4 and ray_m.metadata["cells_computed"] == 3 * 4 + 3
    assert len(list((tmp_path / "store" / "cells").glob("*.safetensors"))) == 15


def test_missing_ray_says_install_the_extra(
    trained: dict[str, nn.Module], evalset: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match="install the ray extra"):
        build_payoff_matrix(
            {"a": trained["a"]}, {"fgsm": FGSM(0.1)}, evalset, executor="ray", store=tmp_path, progress=False
        )
