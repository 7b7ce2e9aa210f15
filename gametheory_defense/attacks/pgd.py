"""Projected Gradient Descent (Madry et al., 2018) and its EOT form (Athalye et al., 2018)."""

from __future__ import annotations

import numbers
from typing import Any

from gametheory_defense.attacks.base import Attack, register_attack
from gametheory_defense.attacks.losses import DEFAULT_KAPPA

__all__ = ["PGD", "EOTPGD", "default_random_start"]


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def default_random_start(norm: Any, restarts: Any) -> bool:
    """PGD's default ``random_start``: always for L-inf; for L2 only when ``restarts > 1``.

    One L2 PGD run from ``x`` is stronger than from a random start (paired over images
    and seeds, ``benchmarks/l2_random_start.py``: +0.3 to +2.0 points over a uniform-radius
    start, +0.8 to +4.0 over a start uniform in the ball); restarts need random starts,
    or every run would be the same.
    """
    if norm != "l2":
        return True
    return not (isinstance(restarts, int) and not isinstance(restarts, bool) and restarts <= 1)


@register_attack("pgd")
class PGD(Attack):
    """Projected Gradient Descent (Madry et al., 2018, "Towards deep learning models resistant to adversarial attacks").

    From a random point of the ball (or ``x``), ``steps`` times: take a steepest-ascent
    step on the loss (``sign`` of the gradient for L-inf, the normalised gradient for
    L2), then project onto the ``eps``-ball around ``x`` and the box [0, 1]. With
    ``restarts > 1`` each example keeps its worst case over restarts (a restart that
    fools it wins, then the highest loss). With ``eot_samples > 1`` every gradient is the
    EOT average over stochastic forward passes stacked into one batch.

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units (``>= 0``).
    step_size : float, optional
        Step length; default ``2.5 * eps / steps`` (Madry et al.'s rule: enough to reach
        the boundary from any starting point).
    steps : int
        Steps per restart.
    norm : {"linf", "l2"}
        Threat model.
    loss : {"ce", "cw"}
        Cross-entropy or Carlini-Wagner margin (see :mod:`.losses`).
    random_start : bool, optional
        Start at a random point of the ball (:func:`~gametheory_defense.attacks.random_start`).
        Default: ``True`` for L-inf; for L2 ``True`` only with ``restarts > 1`` (one L2 run
        is strongest from ``x`` itself, measured in ``docs/attacks.md``; restarts need
        random starts to differ).
    restarts : int
        Independent runs; the per-example worst case is kept.
    eot_samples : int
        Stochastic forward passes averaged per gradient.
    kappa : float
        Clamp of the ``"cw"`` margin loss.
    max_batch : int, optional
        Most rows per forward pass (memory only).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> attack = PGD(0.5, steps=10, norm="l2")
    >>> attack.step_size
    0.125
    >>> x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6)
    True
    """

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 40,
        *,
        norm: str = "linf",
        loss: str = "ce",
        random_start: bool | None = None,
        restarts: int = 1,
        eot_samples: int = 1,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        if random_start is None:
            random_start = default_random_start(norm, restarts)
        if step_size is None and _is_number(eps) and _is_number(steps) and steps >= 1:
            step_size = 2.5 * float(eps) / int(steps)  # invalid eps/steps are reported by the base
        super().__init__(
            eps,
            step_size=step_size,  # type: ignore[arg-type]  # None falls through to validation
            steps=steps,
            norm=norm,
            loss=loss,
            random_start=random_start,
            restarts=restarts,
            eot_samples=eot_samples,
            kappa=kappa,
            max_batch=max_batch,
        )


@register_attack("eot-pgd")
class EOTPGD(PGD):
    """PGD with Expectation over Transformation (Athalye et al., 2018, "Obfuscated gradients ...").

    Exactly :class:`PGD` with ``eot_samples=20`` by default: every gradient is averaged
    over 20 stochastic forward passes, the attack to use against randomized defenses
    such as Stochastic Activation Pruning. With ``eot_samples=1`` it is PGD.

    Parameters
    ----------
    eps, step_size, steps, norm, loss, random_start, restarts, kappa, max_batch
        As for :class:`PGD`.
    eot_samples : int
        Stochastic forward passes averaged per gradient (default 20).
    """

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 40,
        *,
        norm: str = "linf",
        loss: str = "ce",
        random_start: bool | None = None,
        restarts: int = 1,
        eot_samples: int = 20,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps,
            step_size,
            steps,
            norm=norm,
            loss=loss,
            random_start=random_start,
            restarts=restarts,
            eot_samples=eot_samples,
            kappa=kappa,
            max_batch=max_batch,
        )
