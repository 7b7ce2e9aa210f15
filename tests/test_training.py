"""Tests of gametheory_defense.training on the embedded 8x8 digits (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from gametheory_defense.attacks import PGD
from gametheory_defense.checkpoint import weights_digest
from gametheory_defense.data import ArrayDataset, load_dataset
from gametheory_defense.errors import ConfigError, DataError
from gametheory_defense.models import build_model
from gametheory_defense.training import EpochStats, TrainResult, accuracy, train

EPOCHS = 30
SETTINGS = {"batch_size": 64, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def _mlp(seed: int) -> nn.Module:
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(seed))


def _robust(model: nn.Module, data: ArrayDataset, eps: float, steps: int = 20) -> float:
    return accuracy(model, data, attack=PGD(eps, steps=steps), generator=torch.Generator().manual_seed(99))


@pytest.fixture(scope="module")
def standard(digits: tuple[ArrayDataset, ArrayDataset]) -> tuple[nn.Module, TrainResult]:
    train_set, test_set = digits
    model = _mlp(0)
    result = train(model, train_set, method="standard", epochs=EPOCHS, eval_data=test_set.subset(200),
                   generator=torch.Generator().manual_seed(1), **SETTINGS)
    return model, result


@pytest.fixture(scope="module")
def adversarial(digits: tuple[ArrayDataset, ArrayDataset]) -> tuple[nn.Module, TrainResult]:
    train_set, _ = digits
    model = _mlp(0)
    result = train(model, train_set, method="pgd-at", epochs=EPOCHS, eps=0.1, attack_steps=5,
                   generator=torch.Generator().manual_seed(1), **SETTINGS)
    return model, result


# --------------------------------------------------------------------------- what training achieves


def test_standard_training_reaches_95_percent(standard, digits) -> None:
    model, result = standard
    assert accuracy(model, digits[1]) >= 0.95
    assert not model.training
    assert len(result.history) == EPOCHS
    assert all(isinstance(e, EpochStats) for e in result.history)
    assert [e.epoch for e in result.history] == list(range(1, EPOCHS + 1))
    assert result.history[-1].loss < 0.5 * result.history[0].loss
    assert result.final.train_accuracy > 0.98
    # per-epoch evaluation on the 200 held-out images; no attack for standard training
    assert result.final.eval_clean_accuracy is not None and result.final.eval_clean_accuracy >= 0.93
    assert all(e.eval_robust_accuracy is None for e in result.history)
    assert all(e.eps == 0.0 for e in result.history)
    assert result.seconds == pytest.approx(sum(e.seconds for e in result.history))


def test_large_eps_pgd_breaks_standard_model(standard, digits) -> None:
    model, _ = standard
    assert _robust(model, digits[1], 0.3) < 0.10


def test_pgd_at_lifts_robust_accuracy(standard, adversarial, digits) -> None:
    test_set = digits[1]
    std_model, _ = standard
    at_model, result = adversarial
    std_robust, at_robust = _robust(std_model, test_set, 0.1), _robust(at_model, test_set, 0.1)
    assert at_robust >= std_robust + 0.30, (std_robust, at_robust)
    assert accuracy(at_model, test_set) >= 0.90  # clean accuracy stays high at this eps
    # train accuracy is measured on the adversarial examples: below the clean figure
    assert result.final.train_accuracy < 0.99
    assert all(e.eps == pytest.approx(0.1) for e in result.history)


def test_config_is_json_and_complete(adversarial) -> None:
    _, result = adversarial
    cfg = result.config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["method"] == "pgd-at" and cfg["eps"] == 0.1 and cfg["attack_steps"] == 5
    assert cfg["step_size"] == pytest.approx(2.5 * 0.1 / 5)
    assert cfg["seed"] == 1 and cfg["optimizer"] == "adam" and cfg["amp"] is False
    assert cfg["dataset"] == "digits" and cfg["train_size"] == 1347
    assert cfg["eval_attack"] is None  # no eval_data, nothing evaluated
    d = result.as_dict()
    assert json.loads(json.dumps(d))["history"][0]["epoch"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.history = ()  # type: ignore[misc]


# --------------------------------------------------------------------------- determinism


def _tiny(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)


def test_same_generator_gives_identical_weights() -> None:
    data = _tiny(0)
    digests = []
    for eval_data in (None, _tiny(1), None):
        model = _mlp(3)
        train(model, data, method="pgd-at", epochs=2, eps=0.1, attack_steps=3, batch_size=32,
              generator=torch.Generator().manual_seed(5), eval_data=eval_data, progress=False)
        digests.append(weights_digest(model))
    # same seed -> same weights, and evaluating on the side does not change training
    assert digests[0] == digests[1] == digests[2]
    model = _mlp(3)
    train(model, data, method="pgd-at", epochs=2, eps=0.1, attack_steps=3, batch_size=32,
          generator=torch.Generator().manual_seed(6), progress=False)
    assert weights_digest(model) != digests[0]


def test_dropout_is_deterministic_and_global_rng_untouched() -> None:
    data = _tiny(0)
    digests = []
    for _ in range(2):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
        model.load_state_dict(_seeded_state(model))
        state = torch.get_rng_state()
        train(model, data, epochs=2, batch_size=32, generator=torch.Generator().manual_seed(5), progress=False)
        assert torch.equal(torch.get_rng_state(), state)
        digests.append(weights_digest(model))
    assert digests[0] == digests[1]


def _seeded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- mechanics


class _ModeRecorder(nn.Module):
    """Identity that records the train/eval mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.training)
        return x


def test_attack_crafted_in_eval_mode_update_in_train_mode() -> None:
    recorder = _ModeRecorder()
    model = nn.Sequential(recorder, nn.Flatten(), nn.Linear(64, 10))
    x, y = _tiny(0)
    train(model, (x, y), method="pgd-at", epochs=1, eps=0.1, attack_steps=4, batch_size=32,
          generator=torch.Generator().manual_seed(0), progress=False)
    n_batches = 3
    assert recorder.calls.count(True) == n_batches  # one training forward per batch
    assert recorder.calls.count(False) >= n_batches * 4  # PGD steps, all in eval mode
    assert not model.training


def test_eps_warmup_is_linear() -> None:
    result = train(_mlp(0), _tiny(0), method="pgd-at", epochs=3, eps=0.2, attack_steps=2, eps_warmup_epochs=2,
                   batch_size=32, generator=torch.Generator().manual_seed(0), progress=False)
    assert [e.eps for e in result.history] == pytest.approx([0.1, 0.2, 0.2])


def test_pgd_at_default_eval_reports_robust_accuracy(digits) -> None:
    _, test_set = digits
    result = train(_mlp(0), _tiny(0), method="pgd-at", epochs=1, eps=0.1, attack_steps=2, batch_size=32,
                   eval_data=test_set.subset(64), generator=torch.Generator().manual_seed(0), progress=False)
    stats = result.final
    assert stats.eval_clean_accuracy is not None and stats.eval_robust_accuracy is not None
    assert 0.0 <= stats.eval_robust_accuracy <= stats.eval_clean_accuracy <= 1.0
    attack = result.config()["eval_attack"]
    assert attack["name"] == "pgd" and attack["eps"] == 0.1 and attack["steps"] == 20
    assert attack["norm"] == "linf" and attack["random_start"] is True


def test_accuracy_restores_modes_and_counts(digits) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0))  # always predicts class 9
    model.train()
    test_set = digits[1]
    expected = float((test_set.labels == 9).float().mean())
    assert accuracy(model, test_set, batch_size=7) == pytest.approx(expected)
    assert model.training


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "fgsm-at"}, ConfigError, "unknown training method"),
        ({"epochs": 0}, ConfigError, "epochs"),
        ({"eps": -0.1, "method": "pgd-at"}, ConfigError, "eps"),
        ({"eps": 8.0, "method": "pgd-at"}, ConfigError, "8/255"),
        ({"eps": 0.0, "method": "pgd-at"}, ConfigError, "eps > 0"),
        ({"attack_steps": 0, "method": "pgd-at"}, ConfigError, "attack_steps"),
        ({"optimizer": "lbfgs"}, ConfigError, "optimizer"),
        ({"batch_size": 0}, ConfigError, "batch_size"),
        ({"lr": -1.0}, ConfigError, "lr"),
        ({"amp": True}, ConfigError, "CUDA"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, ConfigError, "device"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"epochs": 1, "progress": False, **kwargs}
    with pytest.raises(error, match=match) as info:
        train(_mlp(0), _tiny(0), **args)
    assert "\n" not in str(info.value)


def test_bad_data_raises() -> None:
    x, y = _tiny(0)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        train(_mlp(0), (x * 255, y), epochs=1, progress=False)
    with pytest.raises(DataError, match="floats"):
        train(_mlp(0), ((x * 255).to(torch.uint8), y), epochs=1, progress=False)
    with pytest.raises(DataError, match="labels"):
        train(_mlp(0), (x, y + 5), epochs=1, progress=False)
    with pytest.raises(DataError, match="N x C x H x W"):
        train(_mlp(0), (x.flatten(1), y), epochs=1, progress=False)
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


def test_warmup_longer_than_training_warns() -> None:
    with pytest.warns(UserWarning, match="never reaches"):
        train(_mlp(0), _tiny(0), method="pgd-at", epochs=1, eps=0.1, attack_steps=1, eps_warmup_epochs=3,
              batch_size=96, progress=False, generator=torch.Generator().manual_seed(0))
