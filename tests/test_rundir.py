"""Trustworthy run directories (issue 14): verified caches, one writer, no stale results, no writes outside --out.

One tiny pipeline run (digits, one MLP trained for one epoch, 24 images) is made once;
each probe copies it, changes something as a careful user might, resumes, and checks that
the result is what a fresh run of the (new) configuration gives, or that the run stops
with one line saying why.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gametheory_defense.config import parse_config
from gametheory_defense.errors import ConfigError
from gametheory_defense.pipeline import run_pipeline
from gametheory_defense.rundir import LOCK_NAME, RunDirectory, RunLockedError, config_changes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::gametheory_defense.attacks.RandomizedDefenseWarning"),
]

TINY = {
    "run": {"name": "tiny", "seed": 0},
    "data": {"dataset": "digits", "eval_size": 24, "train_size": 300},
    "models": [{"name": "std", "architecture": "mlp", "epochs": 1, "batch_size": 64}],
    "defenders": {"sap_fracs": [1.0]},
    "attackers": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1}],
    "game": {"repeats": 2, "batch_size": 16},
    "evaluation": {"suite": "quick", "eps": 0.1, "repeats": 1, "draws": 1, "size": 16},
}


def tiny(**changes: dict) -> dict:
    raw = copy.deepcopy(TINY)
    for section, values in changes.items():
        raw[section].update(values)
    return raw


def _toml(raw: dict) -> str:
    """The TINY configuration as TOML (for the CLI probes)."""
    lines = []
    for section, body in raw.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            for k, v in table.items():
                lines.append(f"{k} = {json.dumps(v)}")
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == raw
    return text


def run(raw: dict, out: Path, **kwargs):
    return run_pipeline(parse_config(raw), out, resume=True, progress=False, **kwargs)


def gtdefense(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gametheory_defense", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rundir") / "base"
    run(TINY, out)
    return out


@pytest.fixture()
def copy_of(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out, symlinks=True)
    return out


def robustness(out: Path) -> dict:
    return json.loads((out / "robustness.json").read_text())


# ----------------------------------------------------------------- 1. verified caches


def test_edited_cached_evaluation_is_recomputed(base: Path, copy_of: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = copy_of / "robustness" / "std.json"
    body = json.loads(cache.read_text())
    truth = body["report"]["worst_case_accuracy"]
    body["report"]["worst_case_accuracy"] = 0.9  # the probe: 0.5 -> 0.9 by hand
    cache.write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        res = run(TINY, copy_of)
    assert res.robustness["std"]["worst_case_accuracy"] == truth != 0.9
    assert any(str(cache) in r.getMessage() and "digest" in r.getMessage() for r in caplog.records)
    assert "90.00%" not in (copy_of / "report.md").read_text().split("## 3.")[1].split("`std`")[1].split("\n")[0]
    assert robustness(copy_of) == robustness(base)


def test_edited_cached_model_is_retrained(base: Path, copy_of: Path, caplog: pytest.LogCaptureFixture) -> None:
    sidecar = copy_of / "models" / "std.json"
    meta = json.loads(sidecar.read_text())
    meta["architecture"]["input_shape"] = [1, 4, 16]
    sidecar.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        res = run(TINY, copy_of)
    assert any(str(sidecar) in r.getMessage() and "edited" in r.getMessage() for r in caplog.records)
    assert json.loads(sidecar.read_text())["architecture"]["input_shape"] == [1, 8, 8]
    assert res.matrix.values.tolist() == json.loads((base / "payoff.json").read_text())["values"]


# ----------------------------------------------------------------- 2. stale results after a config change


def test_changed_config_recomputes_what_it_changes_and_equals_a_fresh_run(
    copy_of: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    changed = tiny(data={"eval_offset": 24}, game={"batch_size": 8})
    with caplog.at_level(logging.WARNING):
        resumed = run(changed, copy_of)
    text = caplog.text
    assert "data.eval_offset: 0 -> 24" in text and "game.batch_size: 16 -> 8" in text
    assert "recomputing what depends on it: payoff cells, equilibrium, double oracle, evaluations" in text
    assert "computed for another configuration" in text and "data_range" in text
    fresh = run(changed, tmp_path / "fresh")
    assert robustness(copy_of) == robustness(tmp_path / "fresh")
    assert resumed.matrix.values.tolist() == fresh.matrix.values.tolist()
    history = json.loads((copy_of / "config.json").read_text())["history"]
    assert len(history) == 2 and history[0]["changes"] == []
    assert "data.eval_offset: 0 -> 24" in history[1]["changes"]
    assert history[1]["torch_threads"] == str(__import__("torch").get_num_threads())


def test_config_changes_lists_every_difference() -> None:
    old = {"seed": 0, "models": [{"epochs": 1}], "game": {"batch_size": 16}}
    new = {"seed": 1, "models": [{"epochs": 2}], "game": {"batch_size": 16, "sources": ["a"]}}
    assert config_changes(old, new) == ["seed: 0 -> 1", "models[0].epochs: 1 -> 2", 'game.sources: added (["a"])']


# ----------------------------------------------------------------- 3. one writer


def test_second_writer_is_refused_with_one_line(copy_of: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(_toml(TINY))
    with RunDirectory(copy_of).lock(command="gtdefense run first.toml"):
        with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()}"):
            run(TINY, copy_of)
        proc = gtdefense("run", str(cfg), "--out", str(copy_of), "--resume", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"pid {os.getpid()}" in proc.stderr and "first.toml" in proc.stderr


def test_stale_lock_of_a_dead_process_is_taken_over(copy_of: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (copy_of / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "here", "command": "killed run"}))
    res = run(TINY, copy_of)
    assert res.robustness is not None


# ----------------------------------------------------------------- 6. symlinks


@pytest.mark.parametrize("name", ["payoff.json", "payoff.csv", "payoff.png", "report.md", "config.json"])
def test_writes_never_follow_symlinks(copy_of: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside-{name}"
    outside.write_text("precious\n")
    (copy_of / name).unlink()
    (copy_of / name).symlink_to(outside)
    run(TINY, copy_of)
    assert outside.read_text() == "precious\n"
    assert not (copy_of / name).is_symlink() and (copy_of / name).stat().st_size > 0


def test_linked_subdirectory_is_refused(copy_of: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.move(copy_of / "robustness", outside)
    (copy_of / "robustness").symlink_to(outside)
    with pytest.raises(ConfigError, match="robustness: is a symbolic link"):
        run(TINY, copy_of)


# ----------------------------------------------------------------- 8. evaluate OUT/ensemble


def test_evaluate_the_pipeline_ensemble(copy_of: Path) -> None:
    manifest = json.loads((copy_of / "ensemble" / "ensemble.json").read_text())
    assert manifest["metadata"]["dataset"] == "digits"
    assert manifest["metadata"]["threat_model"] == {"norm": "linf", "eps": 0.1}
    proc = gtdefense(
        "evaluate", str(copy_of / "ensemble"), "--n", "16", "--suite", "quick", "--eps", "0.1", "--no-progress",
        "--out-json", str(copy_of / "e.json"), "--out-md", str(copy_of / "e.md"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((copy_of / "e.json").read_text())["n_examples"] == 16


# ----------------------------------------------------------------- 9. thread count recorded


def test_thread_count_is_recorded(base: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    assert f"torch_threads {threads}" in (base / "report.md").read_text()
    assert json.loads((base / "models" / "std.json").read_text())["torch_threads"] == threads
    assert json.loads((base / "ensemble" / "ensemble.json").read_text())["torch_threads"] == threads
    assert json.loads((base / "robustness" / "std.json").read_text())["torch_threads"] == threads
    assert json.loads((base / "payoff.json").read_text())["metadata"]["versions"]["torch_threads"] == str(threads)


def test_thread_change_on_resume_is_said(copy_of: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = json.loads((copy_of / "config.json").read_text())
    body["history"][-1]["torch_threads"] = "97"
    (copy_of / "config.json").write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        run(TINY, copy_of)
    assert "written with 97 torch threads" in caplog.text
