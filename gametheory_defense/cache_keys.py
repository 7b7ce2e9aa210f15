"""Cache keys of a run's reusable artefacts: trained models, payoff cells, evaluations, double-oracle cells.

Each reusable artefact is stored with its *identity* (a JSON record of everything that
changes its result) and reused only when the identity a new run computes is the same
(its key, the SHA-256 of the identity's canonical JSON, matches) and the stored content
still matches the digest written with it. The rules:

- **payoff cells** (:func:`payoff_cell_identity`): result version, data digest, run seed,
  batch size (it changes the random stream of stochastic models and random starts), the
  defender's identity, and for adversarial cells the attack's settings, the source's
  identity and the draws;
- **double-oracle cells** (:func:`double_oracle_cell_identity`): the same, with the
  mixture the attack was crafted against (member identities over the support and exact
  probabilities) in place of a source;
- **trained models** (:func:`model_recipe`): result version, architecture, data set and
  the digest of the training images, training size, seed and every training setting;
- **evaluations** (:func:`evaluation_identity`): result version, the model's identity
  (for a mixture: members, strategy and sampling mode), every attack's settings, eps,
  norm, suite, repeats, draws, the evaluation seed, the data digest and the image range,
  and the batch size.

This module extends :mod:`gametheory_defense.identity` (which owns model, mixture and data
identities, digests, seeds and ``SUPPORT_TOL``): identities say *what* a model or data set
is, the keys here say *which result* an artefact holds. Bumping
:data:`~gametheory_defense.identity.IDENTITY_VERSION` changes every identity and so every key
below; bumping :data:`RESULT_VERSION` changes every key without touching identities. See
``docs/reliability.md`` for what each key guarantees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from gametheory_defense.identity import canonical_json, digest

__all__ = [
    "RESULT_VERSION",
    "key_of",
    "content_digest",
    "identity_changes",
    "payoff_cell_identity",
    "double_oracle_cell_identity",
    "model_recipe",
    "evaluation_identity",
]

#: Version of the library's results: part of every key; bump it when a computation's
#: results change (every cache is then recomputed).
RESULT_VERSION = 1


def key_of(identity: Mapping[str, Any]) -> str:
    """The cache key of an identity: SHA-256 (hex) of its canonical JSON (as :func:`payoff.store.cell_key`)."""
    return digest(dict(identity))


def content_digest(key: str, content: Any) -> str:
    """SHA-256 over a stored artefact's key and content: an edit of either changes it."""
    return hashlib.sha256(canonical_json({"key": key, "content": content}).encode("utf-8")).hexdigest()


def identity_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Top-level fields whose values differ between two identities (sorted)."""
    if not isinstance(old, Mapping):
        return sorted(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def payoff_cell_identity(
    kind: str,
    *,
    data: str,
    seed: int,
    batch_size: int,
    defender: str,
    draws: int,
    attack: Mapping[str, Any] | None = None,
    source: str | None = None,
    source_draws: int | None = None,
) -> dict[str, Any]:
    """Identity of a payoff cell (``kind`` ``"clean"`` or ``"adversarial"``).

    Parameters
    ----------
    data : str
        Digest of the evaluation images and labels.
    defender, source : str
        Defender identities.
    attack : Mapping
        The attack's ``config()``.
    """
    identity: dict[str, Any] = {
        "version": RESULT_VERSION,
        "data": data,
        "seed": int(seed),
        "batch_size": int(batch_size),
        "kind": kind,
        "defender": defender,
        "draws": int(draws),
    }
    if kind == "adversarial":
        if attack is None or source is None or source_draws is None:
            raise ValueError("an adversarial cell needs attack, source and source_draws")
        identity.update(attack=dict(attack), source=source, source_draws=int(source_draws))
    elif kind != "clean":
        raise ValueError(f"kind must be 'clean' or 'adversarial', got {kind!r}")
    return identity


def double_oracle_cell_identity(
    *,
    defender: str,
    mixture: str,
    attack: Mapping[str, Any],
    data: str,
    seed: int,
    draws: int,
    batch_size: int,
) -> dict[str, Any]:
    """Identity of a double-oracle cell: ``defender`` on an attack crafted against a mixture.

    ``mixture`` is the :func:`~gametheory_defense.identity.mixture_identity` of the mixture
    (its support's member identities, exact renormalised probabilities, sampling mode).
    """
    return {
        "version": RESULT_VERSION,
        "kind": "double-oracle",
        "defender": defender,
        "mixture": mixture,
        "attack": dict(attack),
        "data": data,
        "seed": int(seed),
        "draws": int(draws),
        "batch_size": int(batch_size),
    }


def model_recipe(
    *,
    architecture: str,
    dataset: str,
    train_size: int | None,
    train_data: str,
    seed: int,
    training: Mapping[str, Any],
    kwargs: Mapping[str, Any] | None = None,
    normalize: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Identity of a trained model: everything its weights depend on (given the torch build).

    ``training`` is the model's :func:`~gametheory_defense.training.train` settings,
    ``train_data`` the digest of the training images and labels, ``kwargs`` and
    ``normalize`` the architecture's keyword arguments and input normalisation, if any.
    """
    return {
        "version": RESULT_VERSION,
        "architecture": architecture,
        **({"kwargs": dict(kwargs)} if kwargs else {}),
        **({"normalize": dict(normalize)} if normalize is not None else {}),
        "dataset": dataset,
        "train_size": train_size,
        "train_data": train_data,
        "seed": int(seed),
        **dict(training),
    }


def evaluation_identity(
    *,
    model: str,
    attacks: Mapping[str, Mapping[str, Any]],
    eps: float,
    norm: str,
    suite: str,
    repeats: int,
    draws: int,
    seed: int,
    data: str,
    data_range: Sequence[int],
    batch_size: int,
) -> dict[str, Any]:
    """Identity of an adaptive evaluation of one model (``model``: its identity)."""
    return {
        "version": RESULT_VERSION,
        "kind": "evaluation",
        "model": model,
        "attacks": {k: dict(v) for k, v in attacks.items()},
        "eps": float(eps),
        "norm": norm,
        "suite": suite,
        "repeats": int(repeats),
        "draws": int(draws),
        "seed": int(seed),
        "data": data,
        "data_range": [int(i) for i in data_range],
        "batch_size": int(batch_size),
    }
