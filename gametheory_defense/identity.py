"""Identities, digests and seeds: what makes two results the same result.

Every cache in the library (payoff cells, trained models, adaptive evaluations, ensembles,
double-oracle cells) is keyed by the identities defined here, and every random stream is
seeded from them, so this module is the one place that decides when two computations
are interchangeable. The rule: **an identity covers everything that changes a model's
outputs**, and two different defenders that still hash alike are refused, never merged.

What :func:`model_identity` covers, for any ``nn.Module``:

- every parameter and every buffer, persistent or not (dtype, shape and raw bytes; the
  device is not part of it, so CPU and CUDA copies agree);
- the module tree: each submodule's path, its class's qualified name (module and
  ``__qualname__``), its ``extra_repr()``, its plain-data attributes (numbers, strings,
  booleans, tuples, lists and dicts of them, enums, tensors and arrays held as plain
  attributes, and the qualified names of functions held as attributes), and the
  qualified names of its forward hooks and pre-hooks;
- the ``architecture`` record and SAP settings (plain attributes of the model and of its
  :class:`~gametheory_defense.sap.StochasticActivationPruning` modules);
- an optional user tag, for what cannot be seen from outside (a custom ``forward`` whose
  class name did not change, a closure): :func:`set_identity_tag` or ``tag=``.

Not covered, on purpose: ``training`` (the library evaluates in ``eval()`` mode and
restores modes), the ``generator`` a stochastic module draws from (it is set per call),
and private attributes (leading underscore) other than hooks.

Bumping :data:`IDENTITY_VERSION` changes every identity and so invalidates every cache.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gametheory_defense.errors import GTDError

__all__ = [
    "IDENTITY_VERSION",
    "SUPPORT_TOL",
    "IdentityCollisionError",
    "canonical_json",
    "digest",
    "tensor_digest",
    "model_record",
    "model_identity",
    "mixture_identity",
    "defender_identity",
    "set_identity_tag",
    "check_distinct",
    "support_indices",
    "data_digest",
    "cell_seed",
    "cell_generator",
]

#: Version of the identity rules; part of every identity, so bumping it invalidates every cache.
#: 1: weights, ``architecture`` and SAP settings (up to 0.1.0). 2: parameters and buffers,
#: the module tree, hooks and a user tag.
IDENTITY_VERSION = 2

#: The one cut-off for "a member of the support": probabilities at or below it are solver
#: round-off (HiGHS works at 1e-9 feasibility, iterative solvers coarser) and are left out
#: of ensembles, mixture identities and reports alike.
SUPPORT_TOL = 1e-6

#: The attribute :func:`set_identity_tag` sets, read by :func:`model_identity`.
TAG_ATTRIBUTE = "gtd_identity"

_MAX_DEPTH = 4  # nesting depth of plain-data attributes that is described


class IdentityCollisionError(GTDError, ValueError):
    """Two different defenders have the same identity (the message names both)."""


# --------------------------------------------------------------------------- primitives


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON (sorted keys, no spaces, no NaN): the text that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(obj: Any) -> str:
    """SHA-256 (64 hex digits) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_digest(t: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (device-independent)."""
    if isinstance(t, np.ndarray):
        arr = np.ascontiguousarray(t)
        header, data = f"numpy|{arr.dtype.str}|{list(arr.shape)}|", arr.tobytes()
    else:
        header, data = f"torch|{t.dtype}|{list(t.shape)}|", _tensor_bytes(t)
    h = hashlib.sha256(header.encode())
    h.update(data)
    return h.hexdigest()


def _qualname(obj: Any) -> str:
    """``module.qualname`` of a class or function (its type's for other objects)."""
    target = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def _describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able description of an attribute value, or ``None`` to leave it out."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return {"enum": _qualname(type(value)), "name": value.name}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, bytes):
        return {"bytes": hashlib.sha256(value).hexdigest()}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, (np.generic,)):
        return _describe(value.item(), depth)
    if isinstance(value, (torch.dtype, torch.device)):
        return None if isinstance(value, torch.device) else {"dtype": str(value)}
    if isinstance(value, torch.Generator):
        return None  # set per call
    if isinstance(value, nn.Module):
        # A module held as a plain attribute (not a registered submodule): its tensors.
        tensors = [*value.named_parameters(remove_duplicate=False), *value.named_buffers(remove_duplicate=False)]
        return {"module": _qualname(type(value)), "tensors": [[k, tensor_digest(t)] for k, t in tensors]}
    if depth >= _MAX_DEPTH:
        return {"type": _qualname(value)}
    if isinstance(value, Mapping):
        return {"mapping": [[str(k), _describe(v, depth + 1)] for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]}
    if isinstance(value, (list, tuple)):
        return {"sequence": [_describe(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted(canonical_json(_describe(v, depth + 1)) for v in value)}
    if callable(value):
        return {"callable": _callable_name(value)}
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return {
            "object": _qualname(value),
            "fields": {k: _describe(v, depth + 1) for k, v in sorted(fields.items()) if not k.startswith("_")},
        }
    return {"type": _qualname(value), "repr": repr(value)[:200]}


def _callable_name(fn: Any) -> Any:
    """Qualified name of a function, method or partial (with its bound arguments)."""
    func = getattr(fn, "func", None)
    if func is not None and hasattr(fn, "args"):  # functools.partial
        return {
            "partial": _callable_name(func),
            "args": _describe(list(fn.args), _MAX_DEPTH - 1),
            "keywords": _describe(dict(fn.keywords or {}), _MAX_DEPTH - 1),
        }
    if isinstance(fn, nn.Module):
        return _qualname(type(fn))
    inner = getattr(fn, "__func__", fn)
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', type(inner).__qualname__)}"


def _hooks(module: nn.Module) -> dict[str, list[Any]]:
    out = {}
    for attr in ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks"):
        hooks = getattr(module, attr, None) or {}
        if hooks:
            out[attr.strip("_")] = [_callable_name(h) for h in hooks.values()]
    return out


_SKIP_ATTRIBUTES = frozenset({"training", "generator"})


def _module_record(module: nn.Module) -> dict[str, Any]:
    attrs = {}
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key in _SKIP_ATTRIBUTES:
            continue
        described = _describe(value)
        if described is not None:
            attrs[key] = described
    try:
        extra = module.extra_repr()
    except Exception as exc:  # a user's extra_repr that fails still must not break identities
        extra = f"<extra_repr raised {type(exc).__name__}>"
    record: dict[str, Any] = {
        "class": _qualname(type(module)),
        "extra_repr": extra,
        "attributes": attrs,
        "parameters": {k: (None if p is None else tensor_digest(p)) for k, p in module._parameters.items()},
        "buffers": {k: (None if b is None else tensor_digest(b)) for k, b in module._buffers.items()},
    }
    hooks = _hooks(module)
    if hooks:
        record["hooks"] = hooks
    return record


# --------------------------------------------------------------------------- models


def model_record(model: nn.Module, *, tag: str | None = None) -> dict[str, Any]:
    """The JSON-able record that :func:`model_identity` hashes (useful to see why two differ).

    Parameters
    ----------
    model : torch.nn.Module
        Any module.
    tag : str, optional
        A user identity string for what cannot be seen from outside the model; added to
        the one set by :func:`set_identity_tag`, if any.

    Returns
    -------
    dict
        ``{"version", "tree": [[path, record], ...], "architecture", "tag"}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_identity needs an nn.Module, got {type(model).__name__}")
    tree = [[name, _module_record(m)] for name, m in model.named_modules(remove_duplicate=False)]
    return {
        "version": IDENTITY_VERSION,
        "tree": tree,
        "architecture": _describe(getattr(model, "architecture", None)),
        "tag": [getattr(model, TAG_ATTRIBUTE, None), tag],
    }


def model_identity(model: nn.Module, *, tag: str | None = None) -> str:
    """SHA-256 identifying what a model computes (see the module docstring for what it covers).

    Two models with the same identity compute the same (distribution of) outputs, unless
    they differ in code the library cannot see; give such models distinct tags.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.
    tag : str, optional
        A user identity string (e.g. ``"my-forward-v2"``), combined with the model's own
        :func:`set_identity_tag` tag.

    Returns
    -------
    str
        64 lowercase hex digits.

    Examples
    --------
    >>> import torch
    >>> a = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> b = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> model_identity(a) == model_identity(b)      # different random weights
    False
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_identity(a) == model_identity(b)
    True
    """
    return digest(model_record(model, tag=tag))


def set_identity_tag(model: nn.Module, tag: str | None) -> nn.Module:
    """Attach a user identity string to ``model`` (``None`` removes it); returns ``model``.

    Use it when two models differ in a way that parameters, buffers and attributes do not
    show, e.g. two instances of one class whose ``forward`` reads a global setting.
    """
    if tag is not None and not isinstance(tag, str):
        raise TypeError(f"an identity tag must be a string, got {type(tag).__name__}")
    if tag is None:
        model.__dict__.pop(TAG_ATTRIBUTE, None)
    else:
        setattr(model, TAG_ATTRIBUTE, tag)
    return model


def support_indices(strategy: Sequence[float] | np.ndarray, *, tol: float = SUPPORT_TOL) -> list[int]:
    """Indices of the pure strategies with probability above ``tol`` (:data:`SUPPORT_TOL`)."""
    p = np.asarray(strategy, dtype=float).reshape(-1)
    return [int(i) for i in np.flatnonzero(p > tol)]


def mixture_identity(member_identities: Sequence[str], strategy: Sequence[float] | np.ndarray, sample: str) -> str:
    """Identity of a mixed strategy: members with positive probability, exact probabilities, sampling mode.

    Members with probability 0 are never drawn (and do not move the random stream), so
    they are left out; probabilities are hashed exactly, not rounded, so two mixtures that
    differ in any weight are different defenders.
    """
    p = np.asarray(strategy, dtype=float).reshape(-1)
    if len(member_identities) != p.shape[0]:
        raise ValueError(f"{len(member_identities)} member identities for {p.shape[0]} probabilities")
    keep = [i for i in range(p.shape[0]) if p[i] > 0]
    return digest(
        {
            "version": IDENTITY_VERSION,
            "kind": "mixture",
            "members": [member_identities[i] for i in keep],
            "strategy": [float(p[i]) for i in keep],
            "sample": sample,
        }
    )


def defender_identity(model: nn.Module, *, tag: str | None = None) -> str:
    """The identity of a defender: :func:`model_identity`, or :func:`mixture_identity` for a
    :class:`~gametheory_defense.ensemble.MixedStrategyModel` (and its tag, if any)."""
    from gametheory_defense.ensemble import MixedStrategyModel

    if isinstance(model, MixedStrategyModel):
        ident = mixture_identity([defender_identity(m) for m in model.members], model.strategy, model.sample)
        extra = [getattr(model, TAG_ATTRIBUTE, None), tag]
        return ident if extra == [None, None] else digest({"mixture": ident, "tag": extra})
    return model_identity(model, tag=tag)


def check_distinct(identities: Mapping[str, str], models: Mapping[str, object] | None = None) -> None:
    """Refuse two different defenders (different names, different objects) with one identity.

    The same object given under two names is allowed, with a warning: its results are
    computed once and shown on both rows.

    Parameters
    ----------
    identities : mapping of str to str
        Defender name to identity.
    models : mapping of str to object, optional
        Defender name to the object the identity was computed from; without it every
        shared identity is refused.

    Raises
    ------
    IdentityCollisionError
        Naming the first two names whose (different) models share an identity: they
        would get one row of results copied twice.
    """
    seen: dict[str, str] = {}
    for name, ident in identities.items():
        first = seen.get(ident)
        if first is None:
            seen[ident] = name
            continue
        if models is not None and models.get(first) is models.get(name) and models.get(name) is not None:
            warnings.warn(f"defenders {[first, name]} are the same model object; its results are computed once", stacklevel=3)
            continue
        raise IdentityCollisionError(
            f"defenders {first!r} and {name!r} are different objects with the same identity (same parameters, "
            "buffers, modules and settings), so they would get the same results; remove one, or if they differ "
            "in code the library cannot see, give each a distinct tag with "
            "gametheory_defense.identity.set_identity_tag(model, 'TAG')"
        )


# --------------------------------------------------------------------------- data and seeds


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of an evaluation set: shapes, dtypes and raw bytes of images and labels."""
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cell_seed(*parts: object) -> int:
    """A 63-bit generator seed from the SHA-256 of ``"|".join(parts)``."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


def cell_generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`cell_seed` of ``parts``."""
    return torch.Generator().manual_seed(cell_seed(*parts))
