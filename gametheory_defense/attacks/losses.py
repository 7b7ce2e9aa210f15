"""Per-example attack losses on logits (the attacker maximises them).

Every loss maps logits ``(N, K)`` and integer labels ``(N,)`` to one value per example
``(N,)``; attacks sum them before differentiating, so each example's gradient is the
gradient of its own loss (examples never interact unless the model couples them, e.g.
batch norm in training mode).

=========  ===============================================================  ===============
name       value for one example with logits ``z`` and label ``y``          reference
=========  ===============================================================  ===============
``ce``     ``-log softmax(z)_y``                                            Goodfellow 2015
``cw``     ``min(max_{j != y} z_j - z_y, kappa)``                           Carlini 2017
``dlr``    ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)``          Croce 2020
=========  ===============================================================  ===============

``z_(k)`` is the k-th largest logit. The margin loss is positive exactly when the example
is misclassified. Its clamp at ``kappa`` stops pushing an example once its margin reaches
``kappa``. We default to ``kappa = 50``, the value of Madry et al.'s MNIST-challenge
code: large enough that PGD never stalls on a barely-fooled example, small enough that
the loss stays finite and comparable across restarts. ``kappa = 0`` gives the "stop once
fooled" variant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gametheory_defense.errors import AttackError

__all__ = ["LossFn", "LOSSES", "DEFAULT_KAPPA", "ce_loss", "cw_loss", "dlr_loss", "dlr_targeted_loss", "get_loss"]

#: A per-example loss: ``loss(logits (N, K), y (N,)) -> (N,)``.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Default clamp of the Carlini-Wagner margin loss (Madry et al.'s MNIST challenge).
DEFAULT_KAPPA: float = 50.0


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example (Goodfellow et al., 2015, "Explaining and harnessing ...").

    Shape
    -----
    - logits: ``(N, K)``; y: ``(N,)`` int64 in ``[0, K)``.
    - Output: ``(N,)``.
    """
    return F.cross_entropy(logits, y, reduction="none")


def _top_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_y, max_{j != y} z_j)`` per example, both differentiable in ``logits``."""
    idx = y.unsqueeze(1)
    z_y = logits.gather(1, idx).squeeze(1)
    z_other = logits.scatter(1, idx, float("-inf")).amax(dim=1)
    return z_y, z_other


def cw_loss(logits: torch.Tensor, y: torch.Tensor, *, kappa: float = DEFAULT_KAPPA) -> torch.Tensor:
    """Carlini-Wagner margin ``min(max_{j != y} z_j - z_y, kappa)`` (Carlini & Wagner, 2017).

    Computed on logits (not probabilities). Positive iff the example is misclassified.

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, K)`` with ``K >= 2``.
    y : torch.Tensor
        ``(N,)`` int64 labels.
    kappa : float
        Confidence at which the loss stops growing (``>= 0``).

    Shape
    -----
    - Output: ``(N,)``.
    """
    z_y, z_other = _top_other(logits, y)
    return (z_other - z_y).clamp(max=kappa)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein, 2020, "Reliable evaluation ...", eq. 6).

    ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)``: the margin, made invariant to
    shifting and scaling the logits. Needs at least 3 classes.

    Shape
    -----
    - logits: ``(N, K)`` with ``K >= 3``; y: ``(N,)``.
    - Output: ``(N,)``.
    """
    if logits.shape[1] < 3:
        raise AttackError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}; use loss='cw'")
    z_y, z_other = _top_other(logits, y)
    top = logits.topk(3, dim=1).values
    return (z_other - z_y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Targeted difference-of-logits-ratio loss (Croce & Hein, 2020, "Reliable evaluation ...", eq. 7).

    ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)`` for true class ``y`` and
    target ``t``: maximising it pushes ``z_t`` above ``z_y``. Invariant to shifting and
    scaling the logits. With exactly 3 classes the scale is ``z_(1) - z_(3)``.

    Shape
    -----
    - logits: ``(N, K)`` with ``K >= 3``; labels: ``(N, 2)`` int64 rows ``[y, t]``.
    - Output: ``(N,)``.
    """
    k = logits.shape[1]
    if k < 3:
        raise AttackError(f"the targeted DLR loss needs at least 3 classes, got {k}")
    if labels.dim() != 2 or labels.shape[1] != 2:
        raise AttackError(f"the targeted DLR loss takes (N, 2) label rows [y, target], got shape {tuple(labels.shape)}")
    z_y = logits.gather(1, labels[:, :1]).squeeze(1)
    z_t = logits.gather(1, labels[:, 1:]).squeeze(1)
    top = logits.topk(min(k, 4), dim=1).values
    low = top[:, 2] if k == 3 else 0.5 * (top[:, 2] + top[:, 3])
    return (z_t - z_y) / (top[:, 0] - low + 1e-12)


#: Registry of per-example losses by name; ``cw`` takes the keyword ``kappa``; ``dlr-t``
#: takes ``(N, 2)`` label rows ``[y, target]``.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": ce_loss,
    "cw": cw_loss,
    "dlr": dlr_loss,
    "dlr-t": dlr_targeted_loss,
}


def get_loss(name: str, *, kappa: float = DEFAULT_KAPPA) -> LossFn:
    """The per-example loss called ``name`` (see :data:`LOSSES`), with ``kappa`` bound for ``cw``."""
    fn = LOSSES.get(name)
    if fn is None:
        raise AttackError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    if name == "cw":
        return functools.partial(cw_loss, kappa=kappa)
    return fn
