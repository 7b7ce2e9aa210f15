"""Model checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (sidecar), never pickled.

A checkpoint stores the *base* weights of a model built by
:func:`gametheory_defense.models.build_model` together with a JSON sidecar that records
how to rebuild it (``architecture``), the Stochastic Activation Pruning settings applied
on top (``sap``; SAP has no parameters, so a SAP model's ``state_dict`` equals its base
model's), the SHA-256 of the weights file, and free-form provenance (``training``,
``dataset``, ``metrics``, ``extra``). The sidecar format is fixed in
``docs/architecture.md``::

    {
      "format": "gametheory-defense/checkpoint", "format_version": 1,
      "architecture": {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10},
      "sap": null,
      "weights_sha256": "...",
      "training": {...}, "dataset": "digits", "metrics": {...}, "extra": {...},
      "library_version": "0.1.0", "torch_version": "2.13.0"
    }

Loading never unpickles anything: weights are read with ``safetensors`` and the sidecar
with :mod:`json`; every inconsistency raises a one-line
:class:`~gametheory_defense.errors.CheckpointError` that names the file.

Two hashes identify models independently of files: :func:`weights_digest` (the
``state_dict`` tensors, what a weights file holds) and
:func:`~gametheory_defense.identity.model_identity` (everything that changes a model's
outputs; re-exported here), the defender's identity in every cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gametheory_defense import __version__
from gametheory_defense.errors import CheckpointError
from gametheory_defense.identity import model_identity

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "checkpoint_paths",
    "weights_digest",
    "model_identity",
]

log = logging.getLogger(__name__)

FORMAT = "gametheory-defense/checkpoint"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model : torch.nn.Module
        The rebuilt model in ``eval()`` mode on the requested device, with SAP applied
        if the sidecar records it (or as overridden at load time).
    metadata : dict
        The sidecar's content exactly as stored on disk.
    path : pathlib.Path
        The checkpoint's base path, without suffix (``NAME`` of ``NAME.safetensors``).
    """

    model: nn.Module
    metadata: dict[str, Any]
    path: Path

    @property
    def weights_path(self) -> Path:
        """The ``NAME.safetensors`` file."""
        return checkpoint_paths(self.path)[0]

    @property
    def sidecar_path(self) -> Path:
        """The ``NAME.json`` file."""
        return checkpoint_paths(self.path)[1]


# --------------------------------------------------------------------------- paths


def _base_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix in (WEIGHTS_SUFFIX, SIDECAR_SUFFIX):
        return p.with_suffix("")
    return p


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The ``(NAME.safetensors, NAME.json)`` pair of a checkpoint given with or without suffix.

    Examples
    --------
    >>> [p.name for p in checkpoint_paths("runs/mlp")]
    ['mlp.safetensors', 'mlp.json']
    >>> [p.name for p in checkpoint_paths("runs/mlp.v2.json")]
    ['mlp.v2.safetensors', 'mlp.v2.json']
    """
    base = _base_path(path)
    return base.with_name(base.name + WEIGHTS_SUFFIX), base.with_name(base.name + SIDECAR_SUFFIX)


@contextlib.contextmanager
def _atomic_target(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` if the block succeeds."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- hashing


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's ``state_dict``: sorted names, dtypes, shapes and raw bytes.

    The digest depends only on the tensors, not on the device they live on or on the
    order modules were registered in, so the same weights give the same digest on CPU and
    CUDA. SAP settings are not part of it (SAP has no parameters); see
    :func:`model_identity`.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode()
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        data = _tensor_bytes(tensor)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so JSON round trips compare equal."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- save


def _architecture_of(model: nn.Module) -> dict[str, Any]:
    arch = getattr(model, "architecture", None)
    if not isinstance(arch, Mapping) or not {"name", "input_shape", "num_classes"} <= set(arch):
        raise CheckpointError(
            f"cannot checkpoint a {type(model).__name__} without an `architecture` attribute; "
            "build it with gametheory_defense.models.build_model(...) (which sets "
            "model.architecture = {'name', 'input_shape', 'num_classes'})"
        )
    return {
        "name": str(arch["name"]),
        "input_shape": [int(d) for d in arch["input_shape"]],
        "num_classes": int(arch["num_classes"]),
    }


def _check_json_field(name: str, value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint field {name!r} is not JSON-serialisable ({exc}); pass plain dicts, lists, "
            "strings and finite numbers"
        ) from None
    return _jsonable(value)


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    training: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``PATH.safetensors`` and its ``PATH.json`` sidecar atomically (format of ``docs/architecture.md``).

    The weights are the model's ``state_dict`` as contiguous CPU tensors (SAP layers hold no
    tensors, so a SAP model saves its base weights); the sidecar records the architecture,
    the SAP settings, the SHA-256 of the weights file and the given provenance. Each file is
    written to a temporary name and renamed into place, the sidecar last, so a crash never
    leaves a sidecar that vouches for the wrong weights.

    Parameters
    ----------
    model : torch.nn.Module
        A model with an ``architecture`` attribute (set by ``build_model``).
    path : str or os.PathLike
        ``NAME``, ``NAME.safetensors`` or ``NAME.json``; parent directories are created.
    training, metrics, extra : mapping, optional
        JSON-serialisable provenance (e.g. ``TrainResult.config()``, accuracies).
    dataset : str, optional
        Name of the data set the model was trained on.

    Returns
    -------
    pathlib.Path
        The base path ``NAME`` (pass it to :func:`load_checkpoint`).

    Raises
    ------
    CheckpointError
        If the model has no ``architecture`` or a provenance field is not JSON-serialisable.
    """
    from safetensors.torch import save_file

    from gametheory_defense.sap import sap_settings

    architecture = _architecture_of(model)
    sap = _check_json_field("sap", sap_settings(model))
    fields = {
        "training": _check_json_field("training", dict(training) if training is not None else None),
        "dataset": _check_json_field("dataset", dataset),
        "metrics": _check_json_field("metrics", dict(metrics) if metrics is not None else None),
        "extra": _check_json_field("extra", dict(extra) if extra is not None else None),
    }
    base = _base_path(path)
    weights_path, sidecar_path = checkpoint_paths(base)
    weights_path.parent.mkdir(parents=True, exist_ok=True)

    # clone: safetensors refuses tensors that share storage (tied weights, views)
    tensors = {
        name: t.detach().to("cpu", copy=True).contiguous() for name, t in model.state_dict().items()
    }
    with _atomic_target(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        digest = _sha256_file(tmp)

    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "sap": sap,
        "weights_sha256": digest,
        **fields,
        "library_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    with _atomic_target(sidecar_path) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    log.info("saved checkpoint %s (%d tensors, sha256 %s)", weights_path, len(tensors), digest[:12])
    return base


# --------------------------------------------------------------------------- load


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint's JSON sidecar, without touching the weights.

    Parameters
    ----------
    path : str or os.PathLike
        ``NAME``, ``NAME.safetensors`` or ``NAME.json``.

    Returns
    -------
    dict
        The sidecar's content.

    Raises
    ------
    CheckpointError
        If the sidecar is missing, not JSON, of another format or version, or lacks or
        mangles the ``architecture``, ``sap`` or ``weights_sha256`` fields.
    """
    _, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        raise CheckpointError(
            f"{sidecar_path}: checkpoint sidecar not found; a checkpoint is NAME.safetensors + "
            "NAME.json as written by save_checkpoint / `gtdefense train --out NAME`"
        )
    try:
        meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{sidecar_path}: not a text file; the sidecar must be UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{sidecar_path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{sidecar_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{sidecar_path}: format is {meta.get('format')!r}, expected {FORMAT!r}; "
            "this is not a gametheory-defense checkpoint sidecar"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade gametheory-defense" if isinstance(version, int) and version > FORMAT_VERSION else "re-save it"
        raise CheckpointError(
            f"{sidecar_path}: format_version {version!r} is not supported (this library reads "
            f"{FORMAT_VERSION}); {hint}"
        )
    _validate_architecture(meta.get("architecture"), sidecar_path)
    sha = meta.get("weights_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise CheckpointError(f"{sidecar_path}: 'weights_sha256' must be 64 lowercase hex digits, got {sha!r}")
    if meta.get("sap") is not None:
        _validate_sap(meta["sap"], sidecar_path)
    return meta


def _validate_architecture(arch: Any, where: Path) -> None:
    from gametheory_defense.models import MODELS

    if not isinstance(arch, dict):
        raise CheckpointError(
            f"{where}: 'architecture' must be an object with name, input_shape and num_classes, got {arch!r}"
        )
    name, shape, classes = arch.get("name"), arch.get("input_shape"), arch.get("num_classes")
    if not isinstance(name, str):
        raise CheckpointError(f"{where}: architecture 'name' must be a string, got {name!r}")
    if name not in MODELS:
        raise CheckpointError(
            f"{where}: unknown architecture {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise CheckpointError(f"{where}: architecture 'input_shape' must be [C, H, W] positive ints, got {shape!r}")
    if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2):
        raise CheckpointError(f"{where}: architecture 'num_classes' must be an int >= 2, got {classes!r}")


def _validate_sap(sap: Any, where: Path) -> dict[str, Any]:
    if not isinstance(sap, Mapping):
        raise CheckpointError(f"{where}: 'sap' must be null or an object with frac, mode, layers; got {sap!r}")
    unknown = set(sap) - {"frac", "mode", "layers"}
    if unknown:
        raise CheckpointError(f"{where}: unknown SAP setting(s) {sorted(unknown)}; allowed: frac, mode, layers")
    frac, mode, layers = sap.get("frac"), sap.get("mode", "exact"), sap.get("layers")
    if not (isinstance(frac, (int, float)) and not isinstance(frac, bool) and math.isfinite(frac) and frac > 0):
        raise CheckpointError(f"{where}: SAP 'frac' must be a positive number, got {frac!r}")
    if not isinstance(mode, str):
        raise CheckpointError(f"{where}: SAP 'mode' must be a string, got {mode!r}")
    if layers is not None and not (isinstance(layers, list) and all(isinstance(n, str) for n in layers)):
        raise CheckpointError(f"{where}: SAP 'layers' must be null or a list of layer names, got {layers!r}")
    return {"frac": float(frac), "mode": mode, "layers": None if layers is None else list(layers)}


def _read_tensors(weights_path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found (the sidecar refers to it)")
    actual = _sha256_file(weights_path)
    if actual != expected_sha:
        raise CheckpointError(
            f"{weights_path}: SHA-256 {actual[:12]}... does not match the sidecar's "
            f"{expected_sha[:12]}...; the file is corrupt or was replaced"
        )
    try:
        return load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({first})") from None


def _check_state(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(
            f"{where}: missing {len(missing)} tensor(s) for this architecture: {_some(missing)}"
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: {len(unexpected)} unexpected tensor(s) for this architecture: {_some(unexpected)}"
        )
    for name in sorted(expected):
        want, got = tuple(expected[name].shape), tuple(found[name].shape)
        if want != got:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(got)}, the architecture needs {list(want)}")
        if expected[name].is_floating_point() != found[name].is_floating_point():
            raise CheckpointError(
                f"{where}: tensor {name!r} has dtype {found[name].dtype}, the architecture needs {expected[name].dtype}"
            )


def _some(names: list[str], k: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    sap: Mapping[str, Any] | None | Literal["keep"] = "keep",
) -> Checkpoint:
    """Rebuild a model from ``NAME.safetensors`` + ``NAME.json`` without unpickling anything.

    Checks, in order: the sidecar (format, version, architecture known to ``MODELS``, SAP
    settings well formed), the SHA-256 of the weights file, that the stored tensors are
    exactly those of the architecture (names, shapes); then builds the model with
    ``build_model``, loads the weights strictly and applies SAP.

    Parameters
    ----------
    path : str or os.PathLike
        ``NAME``, ``NAME.safetensors`` or ``NAME.json``.
    device : str or torch.device, default "cpu"
        Where the returned model lives.
    sap : mapping, None or "keep", default "keep"
        ``"keep"`` applies the SAP settings recorded in the sidecar; ``None`` loads the
        plain base model; a mapping ``{"frac": ..., "mode": ..., "layers": ...}`` applies
        those settings instead (one base checkpoint serves several SAP defenders).

    Returns
    -------
    Checkpoint
        The model in ``eval()`` mode, the sidecar as ``metadata`` and the base path.

    Raises
    ------
    CheckpointError
        One line naming the offending file and what is wrong with it.
    """
    from gametheory_defense.models import build_model

    base = _base_path(path)
    weights_path, sidecar_path = checkpoint_paths(base)
    meta = read_metadata(base)
    tensors = _read_tensors(weights_path, meta["weights_sha256"])

    arch = meta["architecture"]
    try:
        # a throw-away seeded init (overwritten below) leaves torch's global RNG untouched
        model = build_model(
            arch["name"],
            input_shape=tuple(arch["input_shape"]),
            num_classes=arch["num_classes"],
            generator=torch.Generator().manual_seed(0),
        )
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{sidecar_path}: cannot build architecture {arch!r} ({exc})") from None
    _check_state(model.state_dict(), tensors, weights_path)
    model.load_state_dict(tensors, strict=True)

    if isinstance(sap, str):
        if sap != "keep":
            raise ValueError(f"sap must be 'keep', None or a dict of SAP settings, got {sap!r}")
        settings = None if meta.get("sap") is None else _validate_sap(meta["sap"], sidecar_path)
    elif sap is None:
        settings = None
    else:
        settings = _validate_sap(sap, sidecar_path)
    if settings is not None:
        from gametheory_defense.sap import apply_sap

        try:
            model = apply_sap(model, settings["frac"], mode=settings["mode"], layers=settings["layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{sidecar_path}: invalid SAP settings {settings} ({exc})") from None

    model.to(device)
    model.eval()
    log.info("loaded checkpoint %s (%s, sap=%s)", weights_path, arch["name"], settings)
    return Checkpoint(model=model, metadata=meta, path=base)
