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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gametheory_defense import __version__
from gametheory_defense.errors import CheckpointError
from gametheory_defense.identity import digest, model_identity

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
    "sidecar_digest",
    "SIDECAR_DIGEST",
    "read_state_dict",
    "load_model",
    "import_model",
    "PLAIN_SUFFIXES",
]

log = logging.getLogger(__name__)

FORMAT = "gametheory-defense/checkpoint"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
_CHUNK = 1 << 20
#: Sidecar key holding the SHA-256 of the sidecar's other fields (see :func:`sidecar_digest`).
SIDECAR_DIGEST = "sidecar_sha256"


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


def sidecar_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a sidecar's canonical JSON, every field but :data:`SIDECAR_DIGEST` itself.

    Written into the sidecar by :func:`save_checkpoint` and checked by :func:`read_metadata`:
    an edited field (``input_shape``, SAP ``frac``, the training recipe, ...) is an error
    naming the file, never a silently different model.
    """
    return digest({k: v for k, v in meta.items() if k != SIDECAR_DIGEST})


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


def _architecture_of(model: nn.Module, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    arch = given if given is not None else getattr(model, "architecture", None)
    if not isinstance(arch, Mapping) or not {"name", "input_shape"} <= set(arch):
        raise CheckpointError(
            f"cannot checkpoint a {type(model).__name__} without an `architecture`: build it with "
            "gametheory_defense.models.build_model(...) or load_model(...) (which set model.architecture), or "
            "set model.architecture = {'name': 'package.module:Class', 'kwargs': {...}, 'input_shape': [C, H, W]} "
            "(save_checkpoint also takes it as architecture=...); see docs/models.md"
        )
    unknown = set(arch) - {"name", "input_shape", "num_classes", "kwargs", "normalize"}
    if unknown:
        raise CheckpointError(
            f"architecture has unknown key(s) {sorted(unknown)}; allowed: name, input_shape, num_classes, kwargs, normalize"
        )
    from gametheory_defense.models import check_classifier, parse_normalize

    try:
        shape = [int(d) for d in arch["input_shape"]]
        num_classes = arch.get("num_classes")
        if num_classes is None:  # read it from one forward pass
            num_classes = check_classifier(model, input_shape=shape, name=f"model {arch['name']!r}")
        out: dict[str, Any] = {"name": str(arch["name"]), "input_shape": shape, "num_classes": int(num_classes)}
        if arch.get("kwargs"):
            out["kwargs"] = _check_json_field("architecture.kwargs", dict(arch["kwargs"]))
        if arch.get("normalize") is not None:
            out["normalize"] = parse_normalize(arch["normalize"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid architecture {dict(arch)!r}: {exc}") from None
    return out


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
    architecture: Mapping[str, Any] | None = None,
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
        A model with an ``architecture`` attribute (set by ``build_model``), or any model
        when ``architecture`` is given.
    path : str or os.PathLike
        ``NAME``, ``NAME.safetensors`` or ``NAME.json``; parent directories are created.
    training, metrics, extra : mapping, optional
        JSON-serialisable provenance (e.g. ``TrainResult.config()``, accuracies).
    dataset : str, optional
        Name of the data set the model was trained on.
    architecture : mapping, optional
        How to rebuild the model, instead of ``model.architecture``:
        ``{"name": "package.module:Class", "kwargs": {...}, "input_shape": [C, H, W]}``
        (``num_classes`` is read from a forward pass when left out; ``normalize`` when the
        model is wrapped by :func:`~gametheory_defense.models.with_normalize`).

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

    architecture = _architecture_of(model, architecture)
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
        "torch_threads": int(torch.get_num_threads()),  # trained weights differ between thread counts
    }
    sidecar[SIDECAR_DIGEST] = sidecar_digest(sidecar)
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
    recorded = meta.get(SIDECAR_DIGEST)
    if recorded is None:
        log.warning("%s: no %s (written by an older version); its fields cannot be verified", sidecar_path, SIDECAR_DIGEST)
    elif recorded != sidecar_digest(meta):
        raise CheckpointError(
            f"{sidecar_path}: the sidecar was edited after it was written (its fields do not match its "
            f"{SIDECAR_DIGEST}); restore it or re-save the checkpoint with save_checkpoint"
        )
    return meta


def _validate_architecture(arch: Any, where: Path) -> None:
    from gametheory_defense.models import MODELS, is_import_spec, parse_normalize, registered_models

    if not isinstance(arch, dict):
        raise CheckpointError(
            f"{where}: 'architecture' must be an object with name, input_shape and num_classes, got {arch!r}"
        )
    name, shape, classes = arch.get("name"), arch.get("input_shape"), arch.get("num_classes")
    if not isinstance(name, str):
        raise CheckpointError(f"{where}: architecture 'name' must be a string, got {name!r}")
    if name not in MODELS and not is_import_spec(name) and name not in registered_models():
        raise CheckpointError(
            f"{where}: unknown architecture {name!r}; known models: {', '.join(sorted(registered_models()))} "
            "(or a 'package.module:Class')"
        )
    unknown = set(arch) - {"name", "input_shape", "num_classes", "kwargs", "normalize"}
    if unknown:
        raise CheckpointError(f"{where}: architecture has unknown key(s) {sorted(unknown)}")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise CheckpointError(f"{where}: architecture 'input_shape' must be [C, H, W] positive ints, got {shape!r}")
    if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2):
        raise CheckpointError(f"{where}: architecture 'num_classes' must be an int >= 2, got {classes!r}")
    kwargs = arch.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: architecture 'kwargs' must be an object, got {kwargs!r}")
    if kwargs and name in MODELS:
        raise CheckpointError(f"{where}: the built-in architecture {name!r} takes no kwargs, got {sorted(kwargs)}")
    try:
        parse_normalize(arch.get("normalize"))
    except ValueError as exc:
        raise CheckpointError(f"{where}: architecture {exc}") from None


def _validate_sap(sap: Any, where: Path) -> dict[str, Any]:
    if not isinstance(sap, Mapping):
        raise CheckpointError(f"{where}: 'sap' must be null or an object with frac, mode, layers; got {sap!r}")
    unknown = set(sap) - {"frac", "mode", "layers", "activations"}
    if unknown:
        raise CheckpointError(
            f"{where}: unknown SAP setting(s) {sorted(unknown)}; allowed: frac, mode, layers, activations"
        )
    frac, mode, layers = sap.get("frac"), sap.get("mode", "exact"), sap.get("layers")
    activations = sap.get("activations", "relu")
    if not (isinstance(frac, (int, float)) and not isinstance(frac, bool) and math.isfinite(frac) and frac > 0):
        raise CheckpointError(f"{where}: SAP 'frac' must be a positive number, got {frac!r}")
    if not isinstance(mode, str):
        raise CheckpointError(f"{where}: SAP 'mode' must be a string, got {mode!r}")
    if layers is not None and not (isinstance(layers, list) and all(isinstance(n, str) for n in layers)):
        raise CheckpointError(f"{where}: SAP 'layers' must be null or a list of layer names, got {layers!r}")
    if not (
        isinstance(activations, str)
        or (isinstance(activations, list) and activations and all(isinstance(a, str) for a in activations))
    ):
        raise CheckpointError(f"{where}: SAP 'activations' must be a name or a list of names, got {activations!r}")
    out = {"frac": float(frac), "mode": mode, "layers": None if layers is None else list(layers)}
    if sap.get("activations") is not None:  # absent in earlier versions: ReLU
        out["activations"] = activations if isinstance(activations, str) else list(activations)
    return out


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


def _build_recorded(arch: Mapping[str, Any], where: Path, *, trust_code: bool) -> nn.Module:
    """``build_model`` from a recorded architecture; errors name ``where``."""
    from gametheory_defense.errors import UntrustedCodeError
    from gametheory_defense.models import build_model

    try:
        # a throw-away seeded init (overwritten by the weights) leaves torch's global RNG untouched
        return build_model(
            arch["name"],
            input_shape=tuple(arch["input_shape"]),
            num_classes=arch.get("num_classes"),
            kwargs=arch.get("kwargs"),
            normalize=arch.get("normalize"),
            trust_code=trust_code,
            generator=torch.Generator().manual_seed(0),
        )
    except UntrustedCodeError as exc:
        raise UntrustedCodeError(f"{where}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot build architecture {arch['name']!r} ({exc})") from None


def _some(names: list[str], k: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    sap: Mapping[str, Any] | None | Literal["keep"] = "keep",
    trust_code: bool = False,
) -> Checkpoint:
    """Rebuild a model from ``NAME.safetensors`` + ``NAME.json`` without unpickling anything.

    Checks, in order: the sidecar (format, version, architecture well formed, SAP
    settings well formed), the SHA-256 of the weights file; then builds the model with
    ``build_model``, checks that the stored tensors are exactly those of the architecture
    (names, shapes), loads the weights strictly and applies SAP.

    An architecture named as ``"package.module:Class"`` is imported only when it is
    registered (:func:`~gametheory_defense.models.register_model`, or an entry point of
    an installed package) or ``trust_code`` is true: the sidecar alone never makes this
    function import code.

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
    trust_code : bool, default False
        Allow importing an unregistered ``"package.module:Class"`` named by the sidecar.

    Returns
    -------
    Checkpoint
        The model in ``eval()`` mode, the sidecar as ``metadata`` and the base path.

    Raises
    ------
    CheckpointError
        One line naming the offending file and what is wrong with it.
    UntrustedCodeError
        The sidecar names code to import and ``trust_code`` is false.
    """
    from gametheory_defense.models import build_model

    base = _base_path(path)
    weights_path, sidecar_path = checkpoint_paths(base)
    meta = read_metadata(base)
    tensors = _read_tensors(weights_path, meta["weights_sha256"])

    arch = meta["architecture"]
    model = _build_recorded(arch, sidecar_path, trust_code=trust_code)
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
            model = apply_sap(
                model,
                settings["frac"],
                mode=settings["mode"],
                layers=settings["layers"],
                activations=settings.get("activations", "relu"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{sidecar_path}: invalid SAP settings {settings} ({exc})") from None

    model.to(device)
    model.eval()
    log.info("loaded checkpoint %s (%s, sap=%s)", weights_path, arch["name"], settings)
    return Checkpoint(model=model, metadata=meta, path=base)


# --------------------------------------------------------------------------- plain PyTorch files

#: Suffixes of plain PyTorch weight files :func:`read_state_dict` reads with
#: ``torch.load(weights_only=True)`` (``.safetensors`` is read with safetensors).
PLAIN_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".ckpt")

# Keys under which training scripts commonly nest the model's state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict")
# Prefixes added by DataParallel/DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a plain PyTorch weights file, never unpickling arbitrary objects.

    ``.pt``/``.pth``/``.bin``/``.ckpt`` files are read with ``torch.load(weights_only=True)``
    (PyTorch's restricted unpickler: tensors and plain containers only); ``.safetensors``
    files with safetensors. A state dict nested as ``{"state_dict": ...}`` or
    ``{"model_state_dict": ...}`` is unwrapped, and a ``module.`` (DataParallel) or
    ``_orig_mod.`` (``torch.compile``) prefix shared by every key is removed.

    Parameters
    ----------
    path : str or os.PathLike
        The weights file.

    Returns
    -------
    dict[str, torch.Tensor]
        Tensor name -> tensor, on the CPU.

    Raises
    ------
    CheckpointError
        Missing file, another suffix, a file that is not a state dict of tensors (e.g. a
        whole pickled model), or an unreadable file; one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file not found")
    suffix = p.suffix.lower()
    if suffix == WEIGHTS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({_first(exc)})") from None
    elif suffix in PLAIN_SUFFIXES:
        import pickle

        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
            why = _first(exc)
            if "Weights only load failed" in why:
                why = "it holds Python objects other than tensors, e.g. a whole pickled model"
            raise CheckpointError(
                f"{p}: cannot be read with torch.load(weights_only=True) ({why}); only state dicts of "
                "tensors are loaded: save them with torch.save(model.state_dict(), path)"
            ) from None
    else:
        raise CheckpointError(
            f"{p}: unknown weights file type {p.suffix!r}; give a {', '.join(PLAIN_SUFFIXES)} state dict or a "
            ".safetensors file"
        )
    if isinstance(obj, nn.Module):  # unreachable with weights_only=True; kept as a guard
        raise CheckpointError(f"{p}: holds a whole model; save model.state_dict() instead")
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{p}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{p}: entries that are not tensors: {_some(bad)}; expected a state dict (or {{'state_dict': ...}})"
        )
    tensors = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_model(
    weights: str | os.PathLike[str],
    *,
    architecture: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    normalize: Mapping[str, Sequence[float]] | None = None,
    trust_code: bool = False,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Any classifier from its weights: a checkpoint, or a plain PyTorch file plus its architecture.

    Parameters
    ----------
    weights : str or os.PathLike
        A checkpoint (``NAME``/``NAME.safetensors`` with its ``NAME.json`` sidecar; then
        the other arguments must be left out), or a plain state dict file (see
        :func:`read_state_dict`: ``.pt``, ``.pth``, ``.bin``, ``.ckpt`` or a bare
        ``.safetensors`` without sidecar).
    architecture : str
        For a plain file: a built-in name, a registered name or ``"package.module:Class"``.
    input_shape : sequence of int
        For a plain file: ``(C, H, W)`` of one input in [0, 1].
    num_classes : int, optional
        Checked against a forward pass (read from it when left out).
    kwargs : mapping, optional
        Keyword arguments of the constructor (JSON).
    normalize : mapping, optional
        ``{"mean": [...], "std": [...]}`` when the model expects normalised inputs: the
        loaded weights go into the model behind a
        :class:`~gametheory_defense.models.Normalize` layer.
    trust_code : bool, default False
        Allow importing an unregistered ``"package.module:Class"``.
    device : str or torch.device, default "cpu"

    Returns
    -------
    nn.Module
        In ``eval()`` mode, with ``model.architecture`` set (so it can be checkpointed,
        served in an ensemble and shipped to Ray workers).

    Raises
    ------
    CheckpointError
        Unreadable file, or tensors that do not match the architecture (missing,
        unexpected, wrong shape), naming the file.
    UntrustedCodeError
        ``architecture`` must be imported and ``trust_code`` is false.
    ValueError
        Missing or bad arguments.
    """
    p = Path(weights)
    sidecar = checkpoint_paths(p)[1]
    is_checkpoint = p.suffix.lower() not in PLAIN_SUFFIXES and sidecar.is_file()
    if is_checkpoint:
        if architecture is not None or kwargs is not None or normalize is not None:
            raise ValueError(
                f"{p} is a checkpoint with a sidecar that records its architecture; leave out architecture, "
                "kwargs and normalize"
            )
        return load_checkpoint(p, device=device, trust_code=trust_code).model
    if architecture is None or input_shape is None:
        raise ValueError(
            f"{p} is a plain weights file: give architecture= ('package.module:Class' or a built-in name) and "
            "input_shape=(C, H, W)"
        )
    tensors = read_state_dict(p)
    model = _build_recorded(
        {
            "name": architecture,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "kwargs": kwargs,
            "normalize": normalize,
        },
        p,
        trust_code=trust_code,
    )
    target = model.model if normalize is not None else model  # type: ignore[union-attr]
    expected = target.state_dict()
    try:
        _check_state(expected, tensors, p)
    except CheckpointError as exc:
        missing = sorted(set(expected) - set(tensors))
        hint = ""
        if missing and all(k.rsplit(".", 1)[-1] in ("mean", "std") for k in missing):
            hint = (
                "; if these are normalisation statistics, give them with normalize={'mean': [...], 'std': [...]} "
                "(gametheory_defense.models.Normalize) or add them to the state dict"
            )
        elif "has shape" in str(exc):
            hint = f"; check the architecture's kwargs (given: {dict(kwargs or {})})"
        raise CheckpointError(f"{exc}{hint}") from None
    target.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    model.to(device)
    model.eval()
    log.info("loaded %s into %s", p, architecture)
    return model


def import_model(
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    architecture: str,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    normalize: Mapping[str, Sequence[float]] | None = None,
    trust_code: bool = False,
    dataset: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a plain PyTorch weights file into a checkpoint (``OUT.safetensors`` + ``OUT.json``).

    Loads ``weights`` with :func:`load_model` (so a mismatch fails here, naming the file)
    and saves it with :func:`save_checkpoint`; the sidecar records the architecture
    (name, ``kwargs``, ``input_shape``, ``num_classes``, ``normalize``) and, under
    ``extra.imported_from``, the source file's name and SHA-256. ``gtdefense
    import-model`` is this function.

    Returns
    -------
    pathlib.Path
        The checkpoint's base path.
    """
    src = Path(weights)
    model = load_model(
        src,
        architecture=architecture,
        input_shape=input_shape,
        num_classes=num_classes,
        kwargs=kwargs,
        normalize=normalize,
        trust_code=trust_code,
    )
    return save_checkpoint(
        model,
        out,
        dataset=dataset,
        metrics=metrics,
        extra={"imported_from": {"file": src.name, "sha256": _sha256_file(src)}},
    )
