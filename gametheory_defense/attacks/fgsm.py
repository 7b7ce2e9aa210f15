"""Fast Gradient Sign Method (Goodfellow et al., 2015)."""

from __future__ import annotations

from gametheory_defense.attacks.base import Attack, register_attack
from gametheory_defense.attacks.losses import DEFAULT_KAPPA

__all__ = ["FGSM"]


@register_attack("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al., 2015, "Explaining and harnessing adversarial examples").

    One step of length ``eps`` from the clean input: ``x + eps * sign(grad)`` for L-inf,
    ``x + eps * grad / ||grad||_2`` for L2 (the "fast gradient method"), clipped to
    [0, 1]. With ``eot_samples > 1`` the gradient is the EOT average over stochastic
    forward passes (Athalye et al., 2018).

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units (``>= 0``).
    norm : {"linf", "l2"}
        Threat model.
    loss : {"ce", "cw"}
        Cross-entropy or Carlini-Wagner margin (see :mod:`.losses`).
    eot_samples : int
        Stochastic forward passes averaged for the gradient.
    kappa : float
        Clamp of the ``"cw"`` margin loss.
    max_batch : int, optional
        Most rows per forward pass (memory only).

    Notes
    -----
    The fixed settings are attributes too: ``step_size == eps``, ``steps == 1``,
    ``random_start is False``, ``restarts == 1``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> x_adv = FGSM(0.1)(model, x, y)
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
    True
    """

    def __init__(
        self,
        eps: float,
        *,
        norm: str = "linf",
        loss: str = "ce",
        eot_samples: int = 1,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps,
            step_size=eps,
            steps=1,
            norm=norm,
            loss=loss,
            random_start=False,
            restarts=1,
            eot_samples=eot_samples,
            kappa=kappa,
            max_batch=max_batch,
        )
