"""Transfer from a randomized model's deterministic base (Athalye et al., 2018; Tramer et al., 2020).

A randomized defense (SAP, a mixture of SAP members) is often attacked best by ignoring
its randomness: craft PGD on the *base* model with the randomness switched off
(:func:`~gametheory_defense.stochastic.deterministic`) and play the result against the
real, randomized model. Tramer et al. ("On adaptive attacks to adversarial example
defenses", 2020) list this transfer as a standard step of an adaptive evaluation. On a
mixture the source is one member (``member``, its index in the mixture); one such attack
per member covers the mixture.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from gametheory_defense.attacks.base import RandomizedDefenseWarning, register_attack
from gametheory_defense.attacks.losses import DEFAULT_KAPPA
from gametheory_defense.attacks.mixture import is_mixture
from gametheory_defense.attacks.pgd import PGD
from gametheory_defense.errors import AttackError
from gametheory_defense.stochastic import deterministic

__all__ = ["TransferPGD"]


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
        if member is not None and (isinstance(member, bool) or not isinstance(member, int) or member < 0):
            raise AttackError(f"member must be None or a mixture member's index >= 0, got {member!r}")
        self.member = member

    def _source(self, model: nn.Module) -> nn.Module:
        if self.member is None:
            return model
        if not is_mixture(model):
            raise AttackError(f"transfer-pgd with member={self.member} needs a mixture; use member=None")
        members = model.members  # type: ignore[attr-defined]
        if self.member >= len(members):
            raise AttackError(f"member={self.member} but the mixture has {len(members)} members")
        return members[self.member]

    def _runtime_checks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The base checks, without the no-EOT warning: ignoring the randomness is the point."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomizedDefenseWarning)
            super()._runtime_checks(model, x, y)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        source = self._source(model)
        with deterministic(source):
            return super()._perturb(source, x, y, generator=generator)
