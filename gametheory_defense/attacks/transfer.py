"""Transfer from a randomized model's deterministic base (Athalye et al., 2018; Tramer et al., 2020).

A randomized defense (SAP, a mixture of SAP members) is often attacked best by ignoring
its randomness: craft PGD on the *base* model with the randomness switched off
(:func:`~gametheory_defense.stochastic.deterministic`) and play the result against the
real, randomized model. Tramer et al. ("On adaptive attacks to adversarial example
defenses", 2020) list this transfer as a standard step of an adaptive evaluation. On a
mixture the source is one member (``member``, its index in the mixture); one such attack
per member covers the mixture.

:class:`TransferPGD` crafts with PGD; :class:`Transfer` with any registered attack (the
adaptive suite uses it for APGD-T and Square, so that a randomized model meets at least
the attacks its deterministic base meets in the ``autoattack`` suite).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gametheory_defense.attacks.base import Attack, RandomizedDefenseWarning, build_attack, register_attack
from gametheory_defense.attacks.losses import DEFAULT_KAPPA
from gametheory_defense.attacks.mixture import is_mixture
from gametheory_defense.attacks.pgd import PGD
from gametheory_defense.errors import AttackError
from gametheory_defense.stochastic import deterministic

__all__ = ["Transfer", "TransferPGD"]


@register_attack("transfer-pgd")
class TransferPGD(PGD):
    """PGD crafted on a deterministic base model, evaluated on the real one (Athalye et al., 2018, "Obfuscated gradients ...").

    The adversarial example is PGD (Madry et al., 2018) on ``source`` with every
    stochastic module switched to its deterministic version, where ``source`` is the
    attacked model itself (``member=None``) or member ``member`` of a mixture. The attacked
    model is only queried by the runtime checks and by ``restarts`` (which keep the
    worst case on one draw of the real model).

    Parameters
    ----------
    eps, step_size, steps, norm, loss, random_start, restarts, kappa, max_batch
        As for :class:`~gametheory_defense.attacks.PGD` (``step_size`` defaults to
        ``2.5 * eps / steps``; ``random_start`` to PGD's rule).
    eot_samples : int
        Must be 1: the source model is deterministic.
    member : int, optional
        Index of the mixture member to craft on; ``None`` crafts on the model itself.
    """

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 100,
        *,
        norm: str = "linf",
        loss: str = "ce",
        random_start: bool | None = None,
        restarts: int = 1,
        eot_samples: int = 1,
        member: int | None = None,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps, step_size, steps, norm=norm, loss=loss, random_start=random_start, restarts=restarts,
            eot_samples=eot_samples, kappa=kappa, max_batch=max_batch,
        )
        if self.eot_samples != 1:
            raise AttackError("transfer-pgd crafts on a deterministic model: eot_samples must be 1")
        self.member = _check_member(member)

    def _runtime_checks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The base checks, without the no-EOT warning: ignoring the randomness is the point."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomizedDefenseWarning)
            super()._runtime_checks(model, x, y)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        source = _source(model, self.member, self.name)
        with deterministic(source):
            return super()._perturb(source, x, y, generator=generator)


def _check_member(member: Any) -> int | None:
    if member is not None and (isinstance(member, bool) or not isinstance(member, int) or member < 0):
        raise AttackError(f"member must be None or a mixture member's index >= 0, got {member!r}")
    return member


def _source(model: nn.Module, member: int | None, name: str) -> nn.Module:
    """The model to craft on: ``model`` itself, or member ``member`` of a mixture."""
    if member is None:
        return model
    if not is_mixture(model):
        raise AttackError(f"{name} with member={member} needs a mixture; use member=None")
    members = model.members  # type: ignore[attr-defined]
    if member >= len(members):
        raise AttackError(f"member={member} but the mixture has {len(members)} members")
    return members[member]


#: Attacks that cannot be the inner attack of :class:`Transfer` (they need the randomness,
#: a mixture, or are transfers themselves).
_NOT_TRANSFERABLE = frozenset({"transfer", "transfer-pgd", "eot-pgd", "mixture-pgd", "arc"})


@register_attack("transfer")
class Transfer(Attack):
    """Any registered attack crafted on a deterministic base model, evaluated on the real one.

    The generalisation of :class:`TransferPGD` (Athalye et al., 2018; Tramer et al., 2020):
    ``attack`` (e.g. ``"apgd-t"`` or the gradient-free ``"square"``) is run with
    ``settings`` on ``source``, the attacked model (``member=None``) or member ``member``
    of a mixture, with every stochastic module switched to its deterministic version.
    The randomized model itself is not queried (but for the runtime checks), so the
    adversarial example is fixed and the evaluation classifies it as often as it likes.

    Parameters
    ----------
    eps : float
        Radius of the threat model.
    attack : str, default "square"
        Registry name of the attack to transfer (not an EOT, mixture or transfer attack).
    settings : Mapping, optional
        Its constructor arguments other than ``eps`` and ``norm`` (JSON-able values);
        ``eot_samples`` must be absent or 1.
    norm : {"linf", "l2"}
        Threat model.
    eot_samples : int
        Must be 1 (the source is deterministic).
    member : int, optional
        Index of the mixture member to craft on; ``None`` crafts on the model itself.
    max_batch : int, optional
        Passed to the inner attack (memory only).

    Examples
    --------
    >>> from gametheory_defense.attacks import build_attack
    >>> t = build_attack("transfer", eps=0.3, attack="square", settings={"steps": 100})
    >>> t.config()["attack"], t.config()["settings"]
    ('square', {'steps': 100})
    """

    def __init__(
        self,
        eps: float,
        *,
        attack: str = "square",
        settings: Mapping[str, Any] | None = None,
        norm: str = "linf",
        eot_samples: int = 1,
        member: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps, step_size=1.0, steps=1, norm=norm, loss="ce", random_start=False, restarts=1,
            eot_samples=eot_samples, max_batch=max_batch,
        )
        if self.eot_samples != 1:
            raise AttackError("transfer crafts on a deterministic model: eot_samples must be 1")
        if not isinstance(attack, str) or attack in _NOT_TRANSFERABLE:
            raise AttackError(
                f"transfer cannot wrap {attack!r}: choose a white-box or query attack such as square, apgd-t, pgd"
            )
        if settings is not None and not isinstance(settings, Mapping):
            raise AttackError(f"transfer settings must be a mapping of the inner attack's arguments, got {settings!r}")
        self.attack = attack
        self.settings: dict[str, Any] = dict(sorted((settings or {}).items()))
        for key in ("eps", "norm"):
            if key in self.settings:
                raise AttackError(f"transfer settings must not set {key!r}: the transfer's own {key} is used")
        if self.settings.get("eot_samples", 1) != 1:
            raise AttackError("transfer crafts on a deterministic model: the inner attack's eot_samples must be 1")
        inner = dict(self.settings)
        if max_batch is not None and "max_batch" in _inner_parameters(attack):
            inner["max_batch"] = max_batch
        self.inner = build_attack(attack, eps=self.eps, norm=self.norm, **inner)
        self.member = _check_member(member)

    def _runtime_checks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The base checks, without the no-EOT warning: ignoring the randomness is the point."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomizedDefenseWarning)
            super()._runtime_checks(model, x, y)

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        source = _source(model, self.member, self.name)
        with deterministic(source):
            return self.inner(source, x, y, generator=generator)


def _inner_parameters(name: str) -> tuple[str, ...]:
    from gametheory_defense.attacks.base import ATTACKS, _init_parameters

    cls = ATTACKS.get(name)
    return tuple(_init_parameters(cls)) if cls is not None else ()
