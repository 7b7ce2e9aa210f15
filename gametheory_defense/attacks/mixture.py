"""PGD on a mixed strategy's expected loss (Athalye et al., 2018; Dbouk & Shanbhag, 2022).

A defender that plays a mixture ``(f_i, p_i)`` of classifiers (a
:class:`~gametheory_defense.ensemble.MixedStrategyModel`) answers each query with a member
drawn from the mixture. The attacker's objective is the mixture's expected loss

.. math::

    L(x) = \\sum_i p_i \\, \\mathbb{E}_{\\omega}\\big[\\ell(f_i(x; \\omega), y)\\big],

where ``omega`` is a member's own randomness (SAP). Differentiating one random forward
pass of the mixture gives an unbiased but very noisy estimate of ``grad L``; this module
computes it exactly over the members and with Expectation over Transformation over each
stochastic member's draws (Athalye et al., 2018).

The helpers here (:func:`mixture_components`, :func:`expected_loss_gradient`,
:func:`member_accuracy`, :func:`expected_accuracy`) are shared with :mod:`.arc`.
A model without ``members``/``strategy`` is treated as a one-member mixture, so every
function also works on a plain (or SAP) model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gametheory_defense.attacks.base import (
    Attack,
    EOTGradient,
    eot_gradient,
    gradient_step,
    linf_bounds,
    project,
    random_start,
    register_attack,
)
from gametheory_defense.attacks.losses import DEFAULT_KAPPA, LossFn
from gametheory_defense.stochastic import is_stochastic

__all__ = [
    "MixtureComponent",
    "MixturePGD",
    "is_mixture",
    "mixture_components",
    "expected_loss_gradient",
    "member_accuracy",
    "expected_accuracy",
    "MixtureAwareMixin",
]


@dataclass(frozen=True)
class MixtureComponent:
    """One pure strategy of a mixture, as the attacks see it.

    Attributes
    ----------
    index : int
        Position of the member in the mixture (0 for a plain model).
    name : str
        The member's name.
    weight : float
        Its probability ``p_i > 0``.
    module : nn.Module
        The member itself (logits out).
    draws : int
        Forward passes to average over: ``eot_samples`` for a stochastic member, 1 for a
        deterministic one (more draws of a deterministic member would change nothing).
    """

    index: int
    name: str
    weight: float
    module: nn.Module
    draws: int


def is_mixture(model: nn.Module) -> bool:
    """Whether ``model`` is a mixture of members (a ``MixedStrategyModel`` or look-alike).

    Duck-typed on ``members`` (an ``nn.ModuleList``) and ``strategy`` (one probability per
    member), so the attacks do not depend on :mod:`gametheory_defense.ensemble`.
    """
    members = getattr(model, "members", None)
    strategy = getattr(model, "strategy", None)
    return isinstance(members, nn.ModuleList) and strategy is not None and len(strategy) == len(members)


def mixture_components(model: nn.Module, *, eot_samples: int = 1) -> tuple[MixtureComponent, ...]:
    """The members of ``model`` with positive probability, most probable first.

    Zero-weight members are skipped. Ties keep the mixture's order (a stable sort), which
    is the order Dbouk & Shanbhag's ARC iterates over. A plain model is one component of
    weight 1 that always gets ``eot_samples`` draws (so attacks built on these helpers
    reduce to EOT attacks on it).

    Parameters
    ----------
    model : nn.Module
        A mixture (see :func:`is_mixture`) or any classifier.
    eot_samples : int
        Draws per stochastic member.

    Returns
    -------
    tuple of MixtureComponent
    """
    if not is_mixture(model):
        return (MixtureComponent(0, "model", 1.0, model, int(eot_samples)),)
    strategy = [float(p) for p in model.strategy]  # type: ignore[union-attr]
    names = list(getattr(model, "names", None) or [f"member{i}" for i in range(len(strategy))])
    members: nn.ModuleList = model.members  # type: ignore[assignment]
    order = sorted((i for i, p in enumerate(strategy) if p > 0), key=lambda i: -strategy[i])
    return tuple(
        MixtureComponent(
            i,
            str(names[i]),
            strategy[i],
            members[i],
            int(eot_samples) if is_stochastic(members[i]) else 1,
        )
        for i in order
    )


def expected_loss_gradient(
    components: Sequence[MixtureComponent],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    max_batch: int | None = None,
) -> EOTGradient:
    """Gradient of the mixture's expected loss ``sum_i p_i E[loss(f_i(x), y)]`` (Athalye et al., 2018).

    Each member's term is an EOT average over its ``draws`` stochastic forward passes,
    stacked into the batch dimension (:func:`~gametheory_defense.attacks.base.eot_gradient`).

    Returns
    -------
    EOTGradient
        ``grad`` ``(N, ...)``, ``loss`` ``(N,)`` (both the ``p``-weighted sums) and
        ``logits`` ``(N, K)``, the ``p``-weighted average of the members' mean logits.
    """
    total: EOTGradient | None = None
    for c in components:
        g = eot_gradient(c.module, x, y, loss_fn, eot_samples=c.draws, max_batch=max_batch)
        if total is None:
            total = EOTGradient(grad=g.grad * c.weight, loss=g.loss * c.weight, logits=g.logits * c.weight)
        else:
            total.grad.add_(g.grad, alpha=c.weight)
            total.loss.add_(g.loss, alpha=c.weight)
            total.logits.add_(g.logits, alpha=c.weight)
    if total is None:
        raise ValueError("a mixture needs at least one member with positive probability")
    return total


@torch.no_grad()
def member_accuracy(
    components: Sequence[MixtureComponent],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Each member's probability of classifying each example correctly (fraction of its draws).

    Shape
    -----
    - x: ``(N, ...)``; y: ``(N,)``.
    - Output: ``(M, N)`` float in [0, 1], one row per component (in the given order).
    """
    n = x.shape[0]
    rows = []
    for c in components:
        s = c.draws
        cap = n * s if max_batch is None else max(int(max_batch), n)
        per = max(1, cap // max(n, 1))
        hits = torch.zeros(n, device=x.device, dtype=torch.float32)
        done = 0
        while done < s:
            k = min(per, s - done)
            inp = x if k == 1 else x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
            pred = c.module(inp).argmax(dim=1).view(k, n)
            hits += (pred == y.unsqueeze(0)).sum(dim=0).float()
            done += k
        rows.append(hits / s)
    return torch.stack(rows)


def expected_accuracy(
    components: Sequence[MixtureComponent],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_batch: int | None = None,
) -> torch.Tensor:
    """The mixture's expected 0-1 accuracy per example, ``sum_i p_i P[f_i(x) = y]``.

    Exact over the members, a ``draws``-sample average over a stochastic member's
    randomness. Shape ``(N,)``.
    """
    acc = member_accuracy(components, x, y, max_batch=max_batch)
    w = torch.tensor([c.weight for c in components], dtype=acc.dtype, device=acc.device)
    return (w.unsqueeze(1) * acc).sum(dim=0)


class MixtureAwareMixin:
    """Attack hooks for mixtures: member-wise runtime checks and scoring by expected accuracy.

    A mixture's forward pass is random (the member draw), but an attack that works on the
    members sees no randomness there: only stochastic *members* need EOT. So the runtime
    checks of :class:`Attack` run on each member, and restarts are compared by the
    mixture's expected accuracy (exact over members) instead of one random forward pass.
    """

    eot_samples: int
    max_batch: int | None

    def _runtime_checks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        if not is_mixture(model):
            Attack._runtime_checks(self, model, x, y)  # type: ignore[arg-type]
            return
        for c in mixture_components(model, eot_samples=self.eot_samples):
            Attack._runtime_checks(self, c.module, x, y)  # type: ignore[arg-type]

    def _score(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fooled, loss)``: fooled by every member on every draw, and the expected 0-1 error."""
        comps = mixture_components(model, eot_samples=self.eot_samples)
        acc = expected_accuracy(comps, x_adv, y, max_batch=self.max_batch)
        return acc <= 0.0, 1.0 - acc


@register_attack("mixture-pgd")
class MixturePGD(MixtureAwareMixin, Attack):
    """PGD on a mixture's expected loss (Madry et al., 2018; EOT of Athalye et al., 2018; mixtures as in Dbouk & Shanbhag, 2022).

    Projected gradient ascent on ``sum_i p_i E_omega[loss(f_i(x; omega), y)]``: every
    member with ``p_i > 0`` contributes its gradient weighted by its probability (the
    zero-weight ones are not run), and a stochastic member's gradient is the EOT average
    of ``eot_samples`` draws stacked into the batch. This is the "adaptive PGD" against
    randomized ensembles of Pinot et al. (2020) made exact over the members. On a plain
    model it is EOT-PGD (PGD when the model is deterministic and ``eot_samples=1``).

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units.
    step_size : float, optional
        Step length; default ``2.5 * eps / steps``.
    steps : int
        Steps per restart.
    norm : {"linf", "l2"}
        Threat model.
    loss : {"ce", "cw"}
        Per-member loss (cross-entropy or Carlini-Wagner margin).
    random_start : bool, optional
        Start at a random point of the ball; default as for
        :class:`~gametheory_defense.attacks.PGD` (L-inf: yes; L2: only with restarts).
    restarts : int
        Independent runs; each example keeps the one with the lowest expected accuracy.
    eot_samples : int
        Draws per gradient for each stochastic member (default 20; deterministic members
        always use one).
    kappa : float
        Clamp of the ``"cw"`` loss.
    max_batch : int, optional
        Most rows per forward pass (memory only).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from gametheory_defense.ensemble import MixedStrategyModel
    >>> mix = MixedStrategyModel([nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(2)], [0.7, 0.3])
    >>> x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> x_adv = MixturePGD(0.1, steps=5)(mix, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
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
        eot_samples: int = 20,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        if step_size is None and isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
            if isinstance(eps, (int, float)) and not isinstance(eps, bool):
                step_size = 2.5 * eps / steps
        if random_start is None:
            from gametheory_defense.attacks.pgd import default_random_start

            random_start = default_random_start(norm, restarts)
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

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One restart of projected gradient ascent on the expected loss."""
        comps = mixture_components(model, eot_samples=self.eot_samples)
        bounds = linf_bounds(x, self.eps) if self.norm == "linf" else None
        x_adv = random_start(x, eps=self.eps, norm=self.norm, generator=generator) if self.random_start else x.clone()
        for _ in range(self.steps):
            g = expected_loss_gradient(comps, x_adv, y, self._loss_fn, max_batch=self.max_batch)
            gradient_step(x_adv, g.grad, step_size=self.step_size, norm=self.norm)
            project(x_adv, x, eps=self.eps, norm=self.norm, bounds=bounds)
        return x_adv
