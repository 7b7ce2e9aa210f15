"""Tests of gametheory_defense.checkpoint: round trips, corruption, and no unpickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gametheory_defense.checkpoint import (
    FORMAT,
    Checkpoint,
    checkpoint_paths,
    load_checkpoint,
    model_identity,
    read_metadata,
    save_checkpoint,
    weights_digest,
)
from gametheory_defense.errors import CheckpointError
from gametheory_defense.models import build_model
from gametheory_defense.sap import apply_sap, sap_settings
from gametheory_defense.stochastic import use_generator


def _mlp(seed: int = 0) -> torch.nn.Module:
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(seed))


def _inputs(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(123))


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = _mlp()
    base = save_checkpoint(
        model,
        tmp_path / "mlp",
        training={"method": "standard", "epochs": 2},
        dataset="digits",
        metrics={"clean_accuracy": 0.97},
        extra={"note": "unit test"},
    )
    return model, base


# --------------------------------------------------------------------------- round trips


def test_round_trip_gives_identical_outputs_and_metadata(saved: tuple[torch.nn.Module, Path]) -> None:
    model, base = saved
    ckpt = load_checkpoint(base)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.path == base
    assert not ckpt.model.training
    x = _inputs()
    model.eval()
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))
    assert weights_digest(ckpt.model) == weights_digest(model)
    meta = ckpt.metadata
    assert meta["format"] == FORMAT and meta["format_version"] == 1
    assert meta["architecture"] == {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10}
    assert meta["sap"] is None
    assert meta["dataset"] == "digits"
    assert meta["training"] == {"method": "standard", "epochs": 2}
    assert meta["metrics"] == {"clean_accuracy": 0.97}
    assert meta["extra"] == {"note": "unit test"}
    assert meta["torch_version"] and meta["library_version"]
    assert ckpt.model.architecture == model.architecture


@pytest.mark.parametrize("suffix", ["", ".safetensors", ".json"])
def test_path_with_or_without_suffix(tmp_path: Path, suffix: str) -> None:
    model = _mlp()
    base = save_checkpoint(model, tmp_path / f"net.v2{suffix}")
    assert base == tmp_path / "net.v2"
    assert (tmp_path / "net.v2.safetensors").is_file() and (tmp_path / "net.v2.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.v2.json", "net.v2.safetensors"]  # no temp files left
    assert weights_digest(load_checkpoint(tmp_path / f"net.v2{suffix}").model) == weights_digest(model)


def test_sidecar_records_weights_sha256(saved: tuple[torch.nn.Module, Path]) -> None:
    import hashlib

    _, base = saved
    weights, sidecar = checkpoint_paths(base)
    meta = json.loads(sidecar.read_text())
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_sap_round_trip_same_generator_same_outputs(tmp_path: Path) -> None:
    base_model = _mlp()
    sap_model = apply_sap(base_model, 0.5, mode="exact", layers=[-1])
    base = save_checkpoint(sap_model, tmp_path / "sap")
    meta = read_metadata(base)
    assert meta["sap"] == sap_settings(sap_model)
    assert meta["sap"]["frac"] == 0.5 and meta["sap"]["mode"] == "exact"
    # base weights only: the file holds exactly the base model's tensors
    assert set(load_file(str(checkpoint_paths(base)[0]))) == set(base_model.state_dict())

    loaded = load_checkpoint(base).model
    assert sap_settings(loaded) == sap_settings(sap_model)
    x = _inputs(32)
    sap_model.eval()
    outs = []
    for m in (sap_model, loaded):
        with torch.no_grad(), use_generator(m, torch.Generator().manual_seed(7)):
            outs.append(m(x))
    assert torch.equal(outs[0], outs[1])
    # and it really is stochastic: another generator gives other outputs
    with torch.no_grad(), use_generator(loaded, torch.Generator().manual_seed(8)):
        assert not torch.equal(loaded(x), outs[0])


def test_sap_override_at_load(tmp_path: Path) -> None:
    base = save_checkpoint(apply_sap(_mlp(), 0.5), tmp_path / "sap")
    plain = load_checkpoint(base, sap=None).model
    assert sap_settings(plain) is None
    other = load_checkpoint(base, sap={"frac": 0.8, "mode": "fast", "layers": None}).model
    assert sap_settings(other)["frac"] == 0.8 and sap_settings(other)["mode"] == "fast"
    # a base checkpoint becomes a SAP defender on request
    base2 = save_checkpoint(_mlp(), tmp_path / "plain")
    assert sap_settings(load_checkpoint(base2).model) is None
    assert sap_settings(load_checkpoint(base2, sap={"frac": 1.0}).model)["frac"] == 1.0
    with pytest.raises(CheckpointError, match="plain.json.*frac"):
        load_checkpoint(base2, sap={"frac": -1.0})
    with pytest.raises(CheckpointError, match="plain.json"):
        load_checkpoint(base2, sap={"frac": 0.5, "layers": ["no-such-relu"]})
    # the "activations" setting (absent in earlier versions: ReLU) is checked and passed on
    with_kind = load_checkpoint(base2, sap={"frac": 0.5, "layers": None, "activations": "relu"}).model
    assert sap_settings(with_kind) == sap_settings(load_checkpoint(base2, sap={"frac": 0.5}).model)
    with pytest.raises(CheckpointError, match="plain.json.*activations"):
        load_checkpoint(base2, sap={"frac": 0.5, "activations": 3})
    with pytest.raises(CheckpointError, match="plain.json.*gelu"):  # the MLP has no GELU
        load_checkpoint(base2, sap={"frac": 0.5, "activations": "gelu"})


# --------------------------------------------------------------------------- identities


def test_weights_digest_depends_on_values_not_object() -> None:
    a, b, c = _mlp(0), _mlp(0), _mlp(1)
    assert weights_digest(a) == weights_digest(b)
    assert weights_digest(a) != weights_digest(c)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)
    assert len(weights_digest(a)) == 64


def test_model_identity_includes_sap_settings() -> None:
    m = _mlp()
    s1, s2 = apply_sap(m, 0.5), apply_sap(m, 0.6)
    assert weights_digest(m) == weights_digest(s1) == weights_digest(s2)
    ids = {model_identity(m), model_identity(s1), model_identity(s2), model_identity(apply_sap(m, 0.5, mode="fast"))}
    assert len(ids) == 4
    assert model_identity(apply_sap(_mlp(), 0.5)) == model_identity(s1)


# --------------------------------------------------------------------------- save errors


def test_model_without_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="architecture.*build_model"):
        save_checkpoint(torch.nn.Linear(3, 2), tmp_path / "lin")
    assert not list(tmp_path.iterdir())


def test_non_json_metrics_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="metrics"):
        save_checkpoint(_mlp(), tmp_path / "m", metrics={"acc": torch.tensor(0.5)})
    with pytest.raises(CheckpointError, match="metrics"):
        save_checkpoint(_mlp(), tmp_path / "m", metrics={"acc": float("nan")})


# --------------------------------------------------------------------------- corruption


def _rewrite_json(base: Path, *, resign: bool = True, **changes: object) -> None:
    """Edit the sidecar; ``resign`` also updates its digest, so only the deeper checks can object."""
    from gametheory_defense.checkpoint import SIDECAR_DIGEST, sidecar_digest

    sidecar = checkpoint_paths(base)[1]
    meta = json.loads(sidecar.read_text())
    meta.update(changes)
    if resign:
        meta[SIDECAR_DIGEST] = sidecar_digest(meta)
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes",
    [
        {"architecture": {"name": "mlp", "input_shape": [1, 4, 16], "num_classes": 10}},
        {"sap": {"frac": 9.0, "mode": "exact", "layers": None}},
        {"extra": {"recipe": {"epochs": 99}}},
    ],
)
def test_edited_sidecar_is_an_error_naming_the_file(saved: tuple[torch.nn.Module, Path], changes: dict) -> None:
    """Issue 14: a sidecar field changed by hand (input_shape, SAP frac, recipe) is refused, not loaded."""
    _, base = saved
    _rewrite_json(base, resign=False, **changes)
    msg = _load_error(base)
    assert "mlp.json" in msg and "edited" in msg


def test_sidecar_records_torch_threads(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    meta = json.loads(checkpoint_paths(base)[1].read_text())
    assert meta["torch_threads"] == torch.get_num_threads()


def _rewrite_weights(base: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and re-sign them, so only the structural check can object."""
    import hashlib

    weights = checkpoint_paths(base)[0]
    save_file(tensors, str(weights))
    _rewrite_json(base, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())


def _load_error(base: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(base)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_truncated_weights(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    weights = checkpoint_paths(base)[0]
    weights.write_bytes(weights.read_bytes()[:100])
    msg = _load_error(base)
    assert "mlp.safetensors" in msg and "SHA-256" in msg


def test_truncated_weights_even_when_resigned(saved: tuple[torch.nn.Module, Path]) -> None:
    import hashlib

    _, base = saved
    weights = checkpoint_paths(base)[0]
    weights.write_bytes(weights.read_bytes()[:100])
    _rewrite_json(base, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    msg = _load_error(base)
    assert "mlp.safetensors" in msg and "safetensors" in msg


def test_flipped_byte_fails_sha(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    weights = checkpoint_paths(base)[0]
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the tensor payload: the file still parses
    weights.write_bytes(bytes(data))
    msg = _load_error(base)
    assert "mlp.safetensors" in msg and "does not match" in msg


def test_missing_json(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    checkpoint_paths(base)[1].unlink()
    msg = _load_error(base)
    assert "mlp.json" in msg and "not found" in msg


def test_missing_weights(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    checkpoint_paths(base)[0].unlink()
    assert "mlp.safetensors" in _load_error(base)


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2, 3]", "\x00\xff"])
def test_json_garbage(saved: tuple[torch.nn.Module, Path], garbage: str) -> None:
    _, base = saved
    checkpoint_paths(base)[1].write_bytes(garbage.encode("latin-1"))
    assert "mlp.json" in _load_error(base)


def test_wrong_format_and_version(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    _rewrite_json(base, format="something-else")
    assert "mlp.json" in _load_error(base)
    _rewrite_json(base, format=FORMAT, format_version=99)
    assert "upgrade" in _load_error(base)


def test_unknown_model_name(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    _rewrite_json(base, architecture={"name": "resnet9000", "input_shape": [1, 8, 8], "num_classes": 10})
    msg = _load_error(base)
    assert "mlp.json" in msg and "resnet9000" in msg and "small-cnn" in msg


def test_wrong_architecture(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    # a real architecture, but not the one the weights belong to
    _rewrite_json(base, architecture={"name": "small-cnn", "input_shape": [1, 8, 8], "num_classes": 10})
    msg = _load_error(base)
    assert "mlp.safetensors" in msg and ("missing" in msg or "unexpected" in msg)


def test_malformed_architecture(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    _rewrite_json(base, architecture={"name": "mlp", "input_shape": [8, 8], "num_classes": 10})
    assert "input_shape" in _load_error(base)


def test_missing_tensor(saved: tuple[torch.nn.Module, Path]) -> None:
    model, base = saved
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    _rewrite_weights(base, tensors)
    msg = _load_error(base)
    assert "mlp.safetensors" in msg and "missing" in msg and dropped in msg


def test_extra_tensor(saved: tuple[torch.nn.Module, Path]) -> None:
    model, base = saved
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["backdoor.weight"] = torch.zeros(3)
    _rewrite_weights(base, tensors)
    msg = _load_error(base)
    assert "unexpected" in msg and "backdoor.weight" in msg


def test_wrong_shape(saved: tuple[torch.nn.Module, Path]) -> None:
    model, base = saved
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)
    _rewrite_weights(base, tensors)
    msg = _load_error(base)
    assert name in msg and "shape" in msg


def test_invalid_sap_in_sidecar(saved: tuple[torch.nn.Module, Path]) -> None:
    _, base = saved
    _rewrite_json(base, sap={"frac": "half"})
    assert "frac" in _load_error(base)
    _rewrite_json(base, sap={"frac": 0.5, "mode": "psychic", "layers": None})
    msg = _load_error(base)
    assert "mlp.json" in msg and "SAP" in msg


# --------------------------------------------------------------------------- never unpickle


def test_load_never_unpickles(saved: tuple[torch.nn.Module, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, base = saved

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = load_checkpoint(base)
    assert weights_digest(ckpt.model) == weights_digest(model)


def test_pickled_weights_are_not_loaded(tmp_path: Path) -> None:
    """A torch.save pickle posing as a checkpoint is rejected, never executed."""
    import hashlib

    model = _mlp()
    base = save_checkpoint(model, tmp_path / "evil")
    weights = checkpoint_paths(base)[0]
    torch.save(model.state_dict(), weights)
    _rewrite_json(base, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    assert "evil.safetensors" in _load_error(base)
