"""Tests of ``gtdefense train`` and ``gtdefense attack`` (in-process, digits, CPU)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from pathlib import Path

import pytest

from gametheory_defense import cli
from gametheory_defense.cli.attack import NON_EOT_WARNING

ACC = re.compile(r"clean accuracy (\d\.\d{4}), adversarial accuracy (\d\.\d{4})")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _accuracies(out: str) -> tuple[float, float]:
    match = ACC.search(out)
    assert match, out
    return float(match.group(1)), float(match.group(2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ckpt") / "mlp-std"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main([
            "train", "--dataset", "digits", "--model", "mlp", "--method", "standard", "--epochs", "20",
            "--lr", "3e-3", "--batch-size", "64", "--seed", "0", "--eval-size", "300", "--no-progress",
            "--out", str(out),
        ])
    assert code == 0
    return out, buf.getvalue()


def test_train_writes_checkpoint_and_prints_summary(trained: tuple[Path, str]) -> None:
    out, stdout = trained
    assert len(stdout.strip().splitlines()) == 1
    match = re.search(r"clean accuracy (\d\.\d{4}) on 300 test images", stdout)
    assert match, stdout
    clean = float(match.group(1))
    assert clean >= 0.93
    assert "mlp-std.safetensors" in stdout
    meta = json.loads(out.with_name("mlp-std.json").read_text())
    assert meta["dataset"] == "digits"
    assert meta["architecture"] == {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10}
    assert meta["training"]["config"]["method"] == "standard"
    assert meta["training"]["config"]["seed"] == 0
    assert len(meta["training"]["history"]) == 20
    assert meta["metrics"]["clean_accuracy"] == pytest.approx(clean, abs=1e-4)
    assert meta["metrics"]["eval_size"] == 300


def test_attack_breaks_standard_model(trained: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    code, stdout, stderr = _run(
        ["attack", str(out), "--attack", "pgd", "--eps", "0.3", "--steps", "20", "--n", "200", "--no-progress"],
        capsys,
    )
    assert code == 0, stderr
    clean, adv = _accuracies(stdout)
    assert clean >= 0.9 and adv < 0.10
    assert "200 digits test images" in stdout
    assert NON_EOT_WARNING not in stderr


def test_attack_is_seeded(trained: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    argv = ["attack", str(out) + ".json", "--eps", "0.1", "--steps", "5", "--n", "100", "--no-progress"]
    first = _accuracies(_run(argv, capsys)[1])
    assert _accuracies(_run(argv, capsys)[1]) == first
    fgsm = _accuracies(_run([*argv[:2], "--attack", "fgsm", "--eps", "0.1", "--n", "100"], capsys)[1])
    assert fgsm[0] == first[0]  # same clean accuracy, a different attack
    assert fgsm[1] >= first[1] - 0.05  # 5-step PGD is at least about as strong as FGSM


def test_sap_without_eot_warns(trained: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    base = ["attack", str(out), "--eps", "0.1", "--steps", "3", "--n", "50", "--sap-frac", "0.5", "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the attack's own warning is not repeated on top of the CLI's
        code, stdout, stderr = _run(base, capsys)
    assert code == 0
    assert NON_EOT_WARNING in stderr
    assert "SAP frac=0.5 mode=exact" in stdout
    code, stdout, stderr = _run([*base, "--eot-samples", "2"], capsys)
    assert code == 0 and NON_EOT_WARNING not in stderr


def test_pgd_at_train_reports_robust_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlp-at"
    code, stdout, stderr = _run([
        "train", "--dataset", "digits", "--model", "mlp", "--method", "pgd-at", "--eps", "0.1",
        "--attack-steps", "3", "--epochs", "2", "--lr", "3e-3", "--batch-size", "64", "--eval-size", "64",
        "--eval-steps", "5", "--no-progress", "--out", str(out),
    ], capsys)
    assert code == 0, stderr
    match = re.search(r"clean accuracy (\d\.\d{4}), PGD-5 accuracy at eps=0.1 (\d\.\d{4})", stdout)
    assert match, stdout
    clean, robust = float(match.group(1)), float(match.group(2))
    assert robust <= clean
    meta = json.loads((tmp_path / "mlp-at.json").read_text())
    assert meta["metrics"]["robust_accuracy"] == pytest.approx(robust, abs=1e-4)
    assert meta["metrics"]["robust_attack"]["steps"] == 5
    assert meta["training"]["config"]["method"] == "pgd-at"
    assert meta["training"]["config"]["eps"] == 0.1


# --------------------------------------------------------------------------- errors


def _one_error_line(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], stderr


def test_corrupt_checkpoint_exit_2(trained: tuple[Path, str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    bad = tmp_path / "bad"
    bad.with_name("bad.json").write_text(out.with_name("mlp-std.json").read_text())
    data = bytearray(out.with_name("mlp-std.safetensors").read_bytes())
    data[-3] ^= 0xFF
    bad.with_name("bad.safetensors").write_bytes(bytes(data))
    code, _, stderr = _run(["attack", str(bad), "--n", "10", "--steps", "1"], capsys)
    assert code == 2
    _one_error_line(stderr, "gtdefense attack: error:", "bad.safetensors", "SHA-256")


def test_missing_checkpoint_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = _run(["attack", str(tmp_path / "nothing"), "--n", "10"], capsys)
    assert code == 2
    _one_error_line(stderr, "nothing.json", "not found")


def test_bad_attack_argument_exit_2(trained: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    code, _, stderr = _run(["attack", str(out), "--attack", "pgd", "--steps", "0"], capsys)
    assert code == 2
    _one_error_line(stderr, "steps")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dataset", "digits", "--model", "resnet9000", "--out", "x"],
        ["train", "--dataset", "imagenet", "--model", "mlp", "--out", "x"],
        ["train", "--dataset", "digits", "--model", "mlp", "--method", "trades", "--out", "x"],
        ["attack", "ckpt", "--attack", "deepfool"],
        ["attack", "ckpt", "--dataset", "imagenet"],
    ],
)
def test_unknown_choices_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    _one_error_line(capsys.readouterr().err, "invalid choice")


def test_bad_training_value_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = _run([
        "train", "--dataset", "digits", "--model", "mlp", "--method", "pgd-at", "--eps", "8", "--epochs", "1",
        "--no-progress", "--out", str(tmp_path / "m"),
    ], capsys)
    assert code == 2
    _one_error_line(stderr, "gtdefense train: error:", "8/255")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["gpu", "cuda"])
@pytest.mark.parametrize("command", ["attack", "train"])
def test_bad_or_missing_device_exit_2(
    trained: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, device: str
) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out, _ = trained
    argv = (
        ["attack", str(out), "--n", "10", "--steps", "1", "--no-progress"]
        if command == "attack"
        else ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-progress",
              "--out", str(tmp_path / "m")]
    )
    code, _, stderr = _run([*argv, "--device", device], capsys)
    assert code == 2
    _one_error_line(stderr, f"gtdefense {command}: error:", repr(device))


def test_attack_with_sap_on_gelu_activations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--sap-activations gelu`` puts SAP after the GELU of a GELU-only model; the ReLU default finds no site."""
    import torch
    from torch import nn

    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.data import load_dataset
    from gametheory_defense.models import _REGISTERED, register_model
    from gametheory_defense.training import train

    def gelu_net() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))

    saved = dict(_REGISTERED)
    register_model(gelu_net, name="gelu-cli-test")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = gelu_net()
        train(model, load_dataset("digits", "train", progress=False), epochs=5, lr=0.01, progress=False,
              generator=torch.Generator().manual_seed(0))
        ckpt = save_checkpoint(model, tmp_path / "gelu", dataset="digits",
                               architecture={"name": "gelu-cli-test", "input_shape": [1, 8, 8]})
        base = ["attack", str(ckpt), "--attack", "fgsm", "--eps", "0.1", "--eot-samples", "2", "--n", "100",
                "--sap-frac", "2", "--no-progress"]
        code, stdout, stderr = _run([*base, "--sap-activations", "gelu"], capsys)
        assert code == 0, stderr
        assert "SAP frac=2 mode=exact activations=gelu" in stdout
        clean, adv = _accuracies(stdout)
        plain = _accuracies(_run(base[:-3] + ["--no-progress"], capsys)[1])
        assert clean >= 0.8 and clean != plain[0]  # SAP changed the GELU model's outputs without breaking it
        code, _, stderr = _run(base, capsys)  # default relu: the model has no ReLU to prune after
        assert code == 2
        _one_error_line(stderr, "relu")
        code, _, stderr = _run([*base[:-3], "--sap-activations", "gelu", "--no-progress"], capsys)
        assert code == 2
        _one_error_line(stderr, "--sap-activations needs --sap-frac")
        with pytest.raises(SystemExit) as info:
            cli.main([*base, "--sap-activations", "tanh"])
        assert info.value.code == 2
        _one_error_line(capsys.readouterr().err, "invalid choice: 'tanh'")
    finally:
        _REGISTERED.clear()
        _REGISTERED.update(saved)
