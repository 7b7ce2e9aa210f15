"""Bring your own model: any architecture, plain PyTorch files, normalisation, consent to import code,
clear errors, the config and CLI paths, Ray, and the runnable example (docs/models.md)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gametheory_defense.attacks import FGSM, PGD
from gametheory_defense.checkpoint import import_model, load_checkpoint, load_model, read_state_dict, save_checkpoint
from gametheory_defense.cli import main as cli_main
from gametheory_defense.config import parse_config
from gametheory_defense.data import as_tensors, load_dataset
from gametheory_defense.ensemble import MixedStrategyModel
from gametheory_defense.errors import AttackError, CheckpointError, ConfigError, UntrustedCodeError
from gametheory_defense.evaluation import evaluate
from gametheory_defense.training import accuracy
from gametheory_defense.models import (
    ENTRY_POINT_GROUP,
    build_model,
    check_classifier,
    parse_normalize,
    register_model,
    registered_models,
)
from gametheory_defense.models import _REGISTERED  # the process registry, reset between tests
from payoff import DefenderSpec, build_payoff_matrix

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import bring_your_own_model as byom  # noqa: E402  (the example's TinyResNet and plain training loop)

ARCH = "bring_your_own_model:TinyResNet"
NORM = {"mean": byom.MEAN, "std": byom.STD}


@pytest.fixture(autouse=True)
def _clean_registry():
    saved = dict(_REGISTERED)
    yield
    _REGISTERED.clear()
    _REGISTERED.update(saved)


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any]:
    return load_dataset("digits", "train", progress=False), load_dataset("digits", "test", progress=False)


@pytest.fixture(scope="module")
def resnet(digits) -> nn.Module:
    """TinyResNet trained by the example's plain PyTorch loop on normalised digits (a few seconds)."""
    train, _ = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = byom.TinyResNet(width=8)
    return byom.train_plain(net, train.images, train.labels, epochs=4, generator=torch.Generator().manual_seed(0))


def normalised(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(byom.MEAN).view(1, -1, 1, 1), torch.tensor(byom.STD).view(1, -1, 1, 1)
    with torch.no_grad():
        return net((x - mean) / std)


# --------------------------------------------------------------------------- plain files


def test_every_plain_file_form_loads_the_same_model(resnet: nn.Module, digits, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _, test = digits
    x = test.images[:64]
    want = normalised(resnet, x)
    acc = (want.argmax(1) == test.labels[:64]).float().mean().item()
    assert acc > 0.8  # the plain loop really trained it
    sd = resnet.state_dict()
    assert any(k.endswith("running_mean") for k in sd)  # BatchNorm buffers travel with the weights
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 4}, tmp_path / "ddp.pth")
    torch.save({"model_state_dict": sd, "optimizer": {"lr": 0.01}}, tmp_path / "ckpt.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bare.safetensors"))
    for name in ["plain.pt", "ddp.pth", "ckpt.pt", "bare.safetensors"]:
        model = load_model(
            tmp_path / name, architecture=ARCH, kwargs={"width": 8}, input_shape=(1, 8, 8),
            normalize=NORM, trust_code=True,
        )
        assert not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)
        assert model.architecture == {
            "name": ARCH, "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {"width": 8},
            "normalize": parse_normalize(NORM),
        }


def test_pickled_objects_are_refused_not_unpickled(resnet: nn.Module, tmp_path: Path) -> None:
    torch.save(resnet, tmp_path / "whole.pt")  # a whole pickled module: would run code on load
    with pytest.raises(CheckpointError, match=r"weights_only=True.*Python objects other than tensors"):
        read_state_dict(tmp_path / "whole.pt")
    torch.save({"net": resnet.state_dict(), "note": "x"}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="entries that are not tensors"):
        read_state_dict(tmp_path / "odd.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown weights file type"):
        read_state_dict(tmp_path / "w.npz")


def test_mismatched_weights_name_the_file_and_what_to_check(resnet: nn.Module, tmp_path: Path) -> None:
    torch.save(resnet.state_dict(), tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=r"r\.pt: tensor .* has shape .*check the architecture's kwargs"):
        load_model(tmp_path / "r.pt", architecture=ARCH, kwargs={"width": 4}, input_shape=(1, 8, 8), trust_code=True)
    # a model whose own Normalize buffers are missing from the file: the hint names the option
    wrapped = nn.Sequential(byom_normalize(), byom.TinyResNet(width=8))
    register_model(lambda: wrapped, name="wrapped-resnet")
    torch.save({f"1.{k}": v for k, v in resnet.state_dict().items()}, tmp_path / "nobuf.pt")
    with pytest.raises(CheckpointError, match=r"missing 2 tensor\(s\).*gametheory_defense\.models\.Normalize"):
        load_model(tmp_path / "nobuf.pt", architecture="wrapped-resnet", input_shape=(1, 8, 8))


def byom_normalize() -> nn.Module:
    from gametheory_defense.models import Normalize

    return Normalize(byom.MEAN, byom.STD)


def test_normalize_errors_name_the_layer() -> None:
    for bad in [{"mean": [0.5]}, {"mean": [0.5], "std": [0.0]}, {"mean": [0.1, 0.2], "std": [0.3]}, [0.5]]:
        with pytest.raises(ValueError, match=r"gametheory_defense\.models\.Normalize"):
            parse_normalize(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"3 channel statistics but the inputs have 1.*gametheory_defense\.models\.Normalize"):
        build_model("mlp", input_shape=(1, 8, 8), num_classes=10, normalize={"mean": [0.1] * 3, "std": [0.2] * 3})
    with pytest.raises(ValueError, match=r"Normalize, or the normalize"):
        as_tensors((torch.full((2, 1, 8, 8), 2.0), torch.tensor([0, 1])))


# --------------------------------------------------------------------------- consent to import code


def write_module(tmp_path: Path, name: str) -> Path:
    """A model module that leaves a mark when it is imported (i.e. when its code runs)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from torch import nn
        Path({str(tmp_path / (name + '.imported'))!r}).write_text("ran")

        def Net(hidden=16):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    """))
    return tmp_path / f"{name}.imported"


def test_a_sidecar_never_imports_code_without_consent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mark = write_module(tmp_path, "marked_net_a")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    arch = {"name": "marked_net_a:Net", "kwargs": {"hidden": 16}, "input_shape": [1, 8, 8]}
    base = save_checkpoint(model, tmp_path / "m", architecture=arch)  # num_classes read from a forward pass
    assert json.loads((tmp_path / "m.json").read_text())["architecture"]["num_classes"] == 10
    with pytest.raises(UntrustedCodeError, match=r"m\.json: architecture 'marked_net_a:Net' is code to import.*trust_code=True"):
        load_checkpoint(base)
    ens = MixedStrategyModel([model], [1.0], names=["m"])
    model.architecture = {**arch, "num_classes": 10}
    ens.save(tmp_path / "ens")
    with pytest.raises(UntrustedCodeError):
        MixedStrategyModel.load(tmp_path / "ens")
    assert not mark.exists()  # nothing was imported
    x = torch.rand(4, 1, 8, 8)
    loaded = load_checkpoint(base, trust_code=True).model
    assert mark.exists()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
        torch.testing.assert_close(MixedStrategyModel.load(tmp_path / "ens", trust_code=True).members[0](x), model(x))


def test_registration_and_entry_points_are_consent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "marked_net_b")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    base = save_checkpoint(model, tmp_path / "m", architecture={"name": "marked_net_b:Net", "input_shape": [1, 8, 8]})
    assert register_model("marked_net_b:Net") == "marked_net_b:Net"
    assert "marked_net_b:Net" in registered_models()
    load_checkpoint(base)  # registered in this process: no trust_code needed
    _REGISTERED.clear()
    with pytest.raises(UntrustedCodeError):
        load_checkpoint(base)
    # an installed package's entry point registers it for every process
    ep = importlib.metadata.EntryPoint(name="marked-net", value="marked_net_b:Net", group=ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **kw: [ep] if kw.get("group") == ENTRY_POINT_GROUP else real(**kw)
    )
    load_checkpoint(base)
    short = build_model("marked-net", input_shape=(1, 8, 8), kwargs={"hidden": 4})  # by the entry point's name
    assert short.architecture["num_classes"] == 10 and short[1].out_features == 4
    with pytest.raises(ValueError, match="built-in model name"):
        register_model("marked_net_b:Net", name="mlp")
    with pytest.raises(ValueError, match="unknown model 'no-such-net'"):
        build_model("no-such-net", input_shape=(1, 8, 8))


def test_seeded_builds_of_any_class_are_reproducible_and_leave_torch_rng_alone(tmp_path: Path, monkeypatch) -> None:
    write_module(tmp_path, "marked_net_c")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.random.get_rng_state()
    a, b, c = (
        build_model("marked_net_c:Net", input_shape=(1, 8, 8), trust_code=True, generator=torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)


@pytest.mark.slow
def test_pipeline_trains_an_imported_architecture(tmp_path: Path, monkeypatch) -> None:
    from gametheory_defense.pipeline import run_pipeline

    write_module(tmp_path, "marked_net_d")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = parse_config({
        **base_config({"net": {"architecture": "marked_net_d:Net", "kwargs": {"hidden": 32}, "epochs": 2, "lr": 0.01,
                               "normalize": {"mean": [0.3], "std": [0.4]}}}),
        "evaluation": {"enabled": False},
    })
    with pytest.raises(UntrustedCodeError, match=r"models\.net: .*--trust-code"):
        run_pipeline(cfg, tmp_path / "refused", progress=False)
    result = run_pipeline(cfg, tmp_path / "out", progress=False, trust_code=True)
    assert result.matrix.clean_accuracy[0] > 0.8  # it really trained
    arch = json.loads((tmp_path / "out" / "models" / "net.json").read_text())["architecture"]
    assert arch == {"name": "marked_net_d:Net", "input_shape": [1, 8, 8], "num_classes": 10,
                    "kwargs": {"hidden": 32}, "normalize": {"mean": [0.3], "std": [0.4]}}
    ens = MixedStrategyModel.load(tmp_path / "out" / "ensemble", trust_code=True)
    assert ens.metadata["dataset"] == "digits"


# --------------------------------------------------------------------------- clear errors


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


class ThreeD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)[:, :, None]


def small_set(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (TupleOut(), r"returned a tuple \[\(\d+, 10\), \(\d+, 1, 8, 8\)\].*returns only the logits"),
        (ThreeD(), r"returned shape \(\d+, 10, 1\).*2-D logits"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double(), r"torch\.float64 weights \('1\.weight'\).*model\.float\(\)"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 10)), r"first convolution '0' expects 3 input channel"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), r"first linear layer '1' expects 784 input features, the inputs have 64"),
        (build_model("mlp", input_shape=(1, 28, 28), num_classes=10), r"expects inputs of shape \[1, 28, 28\]"),
    ],
)
def test_mistakes_fail_in_one_line_at_every_entry_point(model: nn.Module, pattern: str) -> None:
    x, y = small_set()
    model.eval()
    with pytest.raises(ValueError, match=pattern):
        check_classifier(model, x)
    with pytest.raises(ValueError, match=f"defender 'd' .*{pattern}".replace(".*.*", ".*")):
        build_payoff_matrix({"d": model}, {"fgsm": FGSM(0.1)}, (x, y), progress=False)
    with pytest.raises(ValueError, match=pattern):
        evaluate(model, (x, y), {"fgsm": FGSM(0.1)}, progress=False)
    with pytest.raises(AttackError, match=pattern):
        PGD(0.1, steps=1)(model, x, y)
    with pytest.raises(ValueError, match=pattern):
        accuracy(model, (x, y), attack=FGSM(0.1))


def test_dataloader_is_accepted_and_gives_the_same_matrix() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    x, y = small_set(24)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(1)).eval()
    attacks = {"fgsm": FGSM(0.1), "pgd": PGD(0.1, steps=2)}
    ref = build_payoff_matrix({"m": model}, attacks, (x, y), progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    got = build_payoff_matrix({"m": model}, attacks, loader, progress=False)
    np.testing.assert_array_equal(ref.values, got.values)
    assert got.metadata["data"]["sha256"] == ref.metadata["data"]["sha256"]
    rep = evaluate(model, loader, {"fgsm": FGSM(0.1)}, sanity_checks=False, progress=False)
    assert rep.attack("fgsm").accuracy == pytest.approx(ref.values[0, 0])
    assert accuracy(model, loader, attack=FGSM(0.1)) == pytest.approx(ref.values[0, 0])
    with pytest.warns(UserWarning, match="DataLoader shuffles"):
        as_tensors(DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True))


# --------------------------------------------------------------------------- config and CLI


def base_config(models: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {"dataset": "digits", "eval_size": 32},
        "models": models,
        "attackers": [{"name": "fgsm", "attack": "fgsm", "eps": 0.1}],
    }


def test_config_models_by_name_with_architecture_kwargs_and_checkpoint(tmp_path: Path) -> None:
    cfg = parse_config(
        base_config(
            {
                "resnet": {"architecture": ARCH, "kwargs": {"width": 8}, "checkpoint": "w/resnet.pt", "normalize": NORM},
                "mlp": {"architecture": "mlp", "epochs": 1},
            }
        ),
        source=str(tmp_path / "run.toml"),
    )
    resnet, mlp = cfg.models
    assert (resnet.name, resnet.architecture, dict(resnet.kwargs)) == ("resnet", ARCH, {"width": 8})
    assert resnet.checkpoint == str(tmp_path / "w" / "resnet.pt")  # relative to the config file
    assert resnet.normalize == parse_normalize(NORM) and mlp.checkpoint is None and mlp.epochs == 1
    assert json.loads(json.dumps(cfg.to_dict()))["models"][0]["kwargs"] == {"width": 8}
    bad = [
        ({"r": {"architecture": ARCH, "checkpoint": "r.pt", "epochs": 3}}, r"models\.r: 'epochs' configures training.*no training"),
        ({"r": {"architecture": "mlp", "kwargs": {"hidden": 3}}}, r"models\.r\.kwargs: only for"),
        ({"r": {"architecture": ARCH, "normalize": {"mean": [0.1]}}}, r"models\.r\.normalize.*gametheory_defense\.models\.Normalize"),
        ({"r": {"architecture": "no-such-net"}}, r"models\.r\.architecture: unknown model 'no-such-net'"),
        ({"r": {"epochs": 1}}, r"missing required key 'architecture' \(or a pretrained 'checkpoint'\)"),
        ({"r": {"name": "s", "architecture": "mlp"}}, r"differs from the table's name"),
    ]
    for models, pattern in bad:
        with pytest.raises(ConfigError, match=pattern):
            parse_config(base_config(models))


def test_pretrained_checkpoints_are_used_as_they_are(resnet: nn.Module, digits, tmp_path: Path) -> None:
    from gametheory_defense.pipeline import _check_architectures, _pretrained

    train, test = digits
    torch.save(resnet.state_dict(), tmp_path / "r.pt")
    zoo = import_model(tmp_path / "r.pt", tmp_path / "zoo", architecture=ARCH, kwargs={"width": 8},
                       input_shape=(1, 8, 8), normalize=NORM, trust_code=True, dataset="digits")
    cfg = parse_config(base_config({
        "zoo": {"checkpoint": "zoo"},  # a checkpoint with its sidecar: no architecture needed
        "plain": {"architecture": ARCH, "kwargs": {"width": 8}, "normalize": NORM, "checkpoint": "r.pt"},
    }), source=str(tmp_path / "run.toml"))
    with pytest.raises(UntrustedCodeError, match=r"models\.zoo: architecture .* --trust-code"):
        _check_architectures(cfg, trust_code=False)
    _check_architectures(cfg, trust_code=True)
    x = test.images[:32]
    for m in cfg.models:
        path = _pretrained(m, tmp_path / "out" / m.name, train, "digits", resume=False, trust_code=True)
        loaded = load_checkpoint(path, trust_code=True).model
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), normalised(resnet, x))  # the weights, untouched
        assert json.loads((tmp_path / "out" / f"{m.name}.json").read_text())["extra"]["recipe"]["sha256"]
    assert load_checkpoint(zoo, trust_code=True).metadata["architecture"]["name"] == ARCH
    wrong = parse_config(base_config({"z": {"architecture": ARCH, "checkpoint": "zoo"}}), source=str(tmp_path / "run.toml"))
    with pytest.raises(ConfigError, match="records its own architecture"):
        _check_architectures(wrong, trust_code=True)
    forgot = parse_config(base_config({"z": {"architecture": ARCH, "kwargs": {"width": 8}, "checkpoint": "r.pt"}}),
                          source=str(tmp_path / "run.toml"))
    with torch.no_grad():  # the weights read unnormalised inputs at chance level
        resnet_acc = (resnet(test.images[:256]).argmax(1) == test.labels[:256]).float().mean().item()
    assert resnet_acc < 0.15
    with pytest.warns(UserWarning, match=r"near chance.*normalize = \{mean, std\}"):
        _pretrained(forgot.models[0], tmp_path / "out" / "z", train, "digits", resume=False, trust_code=True,
                    eval_set=test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right preprocessing: no warning
        _pretrained(cfg.models[1], tmp_path / "out" / "p2", train, "digits", resume=False, trust_code=True, eval_set=test)
    nosidecar = parse_config(base_config({"z": {"checkpoint": "r.pt"}}), source=str(tmp_path / "run.toml"))
    with pytest.raises(ConfigError, match="give the architecture of this plain weights file"):
        _check_architectures(nosidecar, trust_code=True)


def test_cli_import_model_and_its_errors(resnet: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save({"state_dict": resnet.state_dict()}, tmp_path / "r.pt")
    args = ["import-model", str(tmp_path / "r.pt"), "--architecture", ARCH, "--kwargs", '{"width": 8}',
            "--dataset", "digits", "--normalize-mean", *map(str, byom.MEAN), "--normalize-std", *map(str, byom.STD),
            "--out", str(tmp_path / "ck")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-code" in err[0] and "register_model" in err[0]
    assert cli_main([*args, "--trust-code"]) == 0
    assert capsys.readouterr().err.startswith("wrote ")
    meta = json.loads((tmp_path / "ck.json").read_text())
    assert meta["dataset"] == "digits" and meta["architecture"]["normalize"] == parse_normalize(NORM)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "ck", trust_code=True).model(x), normalised(resnet, x))
    half = ["import-model", str(tmp_path / "r.pt"), "--architecture", ARCH, "--dataset", "digits",
            "--normalize-mean", "0.3", "--out", str(tmp_path / "c2"), "--trust-code"]
    assert cli_main(half) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gametheory_defense.models.Normalize" in err[0]


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``gtdefense ...`` in a fresh process that can import the example's model module."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "gametheory_defense", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.mark.slow
def test_resnet_pt_through_config_run_ensemble_and_evaluate_in_fresh_processes(
    resnet: nn.Module, digits, tmp_path: Path
) -> None:
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}}, tmp_path / "resnet.pt")
    (tmp_path / "run.toml").write_text(textwrap.dedent(f"""
        [run]
        name = "byom"
        [data]
        dataset = "digits"
        eval_size = 48
        [models.resnet]
        architecture = "{ARCH}"
        kwargs = {{ width = 8 }}
        normalize = {{ mean = {byom.MEAN}, std = {byom.STD} }}
        checkpoint = "resnet.pt"
        [defenders]
        sap_fracs = [2.0]
        [[attackers]]
        name = "fgsm"
        attack = "fgsm"
        eps = 0.1
        eot_samples = 2
        [[attackers]]
        name = "pgd"
        attack = "pgd"
        eps = 0.1
        steps = 5
        eot_samples = 2
        [game]
        repeats = 2
        [evaluation]
        enabled = false
    """))
    out = tmp_path / "out"
    refused = run_cli("run", "run.toml", "--out", str(out), "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "--trust-code" in refused.stderr
    assert not out.exists()  # refused before any work

    done = run_cli("run", "run.toml", "--out", str(out), "--no-progress", "--trust-code", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    payoff = json.loads((out / "payoff.json").read_text())
    assert payoff["defenders"] == ["resnet", "resnet+sap2"]
    _, test = digits
    clean = (normalised(resnet, test.images[:48]).argmax(1) == test.labels[:48]).float().mean().item()
    assert payoff["clean_accuracy"][0] == pytest.approx(clean)  # the pretrained weights, used as they are
    assert clean > 0.8 and max(payoff["values"][0]) < clean - 0.2  # and the attacks really bite
    manifest = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert {m["architecture"]["name"] for m in manifest["members"]} == {ARCH}
    report = (out / "report.md").read_text()
    reproduce = next(line for line in report.splitlines() if line.startswith("gtdefense run"))
    assert "--trust-code" in reproduce and "--resume" in reproduce

    again = run_cli(*reproduce.split()[1:], "--no-progress", cwd=tmp_path)  # the Reproduce line, fresh process
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "payoff.json").read_text())["values"] == payoff["values"]

    untrusted = run_cli("evaluate", str(out / "ensemble"), "--n", "32", "--no-progress", cwd=tmp_path)
    assert untrusted.returncode == 2 and "--trust-code" in untrusted.stderr
    ev = run_cli("evaluate", str(out / "ensemble"), "--trust-code", "--attack", "pgd", "--eps", "0.1", "--steps", "5",
                 "--eot-samples", "2", "--n", "32", "--no-progress", "--no-sanity-checks", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((out / "ensemble" / "evaluation.json").read_text())
    assert result["clean_accuracy"] > 0.7 and result["worst_case_accuracy"] < result["clean_accuracy"] - 0.2


def test_a_model_without_its_normalisation_is_not_served_the_cached_cells(resnet: nn.Module, digits, tmp_path: Path) -> None:
    _, test = digits
    torch.save(resnet.state_dict(), tmp_path / "r.pt")
    kw: dict[str, Any] = {"architecture": ARCH, "kwargs": {"width": 8}, "input_shape": (1, 8, 8), "trust_code": True}
    right = load_model(tmp_path / "r.pt", normalize=NORM, **kw)
    missing = load_model(tmp_path / "r.pt", **kw)  # the same weights, its mean/std forgotten
    x, y = test.images[:48], test.labels[:48]
    attacks = {"fgsm": FGSM(0.1)}
    first = build_payoff_matrix({"resnet": right}, attacks, (x, y), store=tmp_path / "cells", progress=False)
    second = build_payoff_matrix({"resnet": missing}, attacks, (x, y), store=tmp_path / "cells", progress=False)
    assert second.metadata["cells_reused"] == 0  # its own cells, not the correct model's
    with torch.no_grad():
        own = (missing(x).argmax(1) == y).float().mean().item()
    assert second.clean_accuracy[0] == pytest.approx(own)
    assert first.clean_accuracy[0] - own > 0.05  # and they really differ
    again = build_payoff_matrix({"resnet": load_model(tmp_path / "r.pt", normalize=NORM, **kw)}, attacks, (x, y),
                                store=tmp_path / "cells", progress=False)
    assert again.metadata["cells_computed"] == 0 and again.values[0, 0] == first.values[0, 0]


# --------------------------------------------------------------------------- Ray


class BitDepth(nn.Module):
    """Parameter-free input quantisation (a plain attribute, no tensors)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return x + ((x * levels).round() / levels - x).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_accepts_every_model_the_serial_one_does(
    resnet: nn.Module, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    # workers import the example's module (on this process's sys.path) and this test module by name
    torch.save(resnet.state_dict(), tmp_path / "r.pt")
    imported = import_model(tmp_path / "r.pt", tmp_path / "r", architecture=ARCH, kwargs={"width": 8},
                            input_shape=(1, 8, 8), normalize=NORM, trust_code=True)
    in_memory = load_model(tmp_path / "r.pt", architecture=ARCH, kwargs={"width": 8}, input_shape=(1, 8, 8),
                           normalize=NORM, trust_code=True)
    with torch.no_grad():
        in_memory.model.head.bias[0] += 0.5  # another model than the checkpoint's
    defenders: dict[str, Any] = {
        "spec": DefenderSpec("spec", imported, trust_code=True),  # a checkpoint naming 'package.module:Class'
        "byname": in_memory,  # rebuilt on the workers from its architecture record
        # parameter-free wrappers, no architecture: shipped as objects, one row each
        **{f"bits{b}": nn.Sequential(BitDepth(b), in_memory).eval() for b in (1, 2, 8)},
    }
    x, y = as_tensors(load_dataset("digits", "test", progress=False).subset(24))
    attacks = {"fgsm": FGSM(0.1)}
    serial = build_payoff_matrix(defenders, attacks, (x, y), progress=False)
    ray_m = build_payoff_matrix(
        defenders, attacks, (x, y), executor="ray", store=tmp_path / "store", ray_options={"num_cpus": 1}, progress=False
    )
    np.testing.assert_array_equal(serial.values, ray_m.values)
    np.testing.assert_array_equal(serial.clean_accuracy, ray_m.clean_accuracy)
    assert ray_m.metadata["cells_computed"] == 2 * 5  # every row computed on the workers, none copied
    assert len(set(serial.clean_accuracy[2:])) > 1  # the three bit depths are three different defenders


# --------------------------------------------------------------------------- the example


@pytest.mark.slow
def test_example_script_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "bring_your_own_model.py"), "--out", str(tmp_path / "byom"), "--epochs", "4", "--n", "64"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "game value" in proc.stdout and "| eot-pgd |" in proc.stdout
    assert (tmp_path / "byom" / "models" / "resnet.json").is_file()
    # the command it prints for a fresh process works as printed (plus a short attack)
    command = next(line for line in proc.stdout.splitlines() if line.startswith("in a fresh process:"))
    assert command.endswith(f"gtdefense evaluate {tmp_path / 'byom' / 'ensemble'} --trust-code")
    ev = run_cli("evaluate", str(tmp_path / "byom" / "ensemble"), "--trust-code", "--attack", "fgsm", "--eps", "0.1",
                 "--n", "32", "--no-progress", "--no-sanity-checks", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
