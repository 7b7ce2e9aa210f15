"""ARC, the attack on randomized ensembles of Dbouk & Shanbhag (ICML 2022).

Dbouk & Shanbhag ("Adversarial Vulnerability of Randomized Ensembles", ICML 2022) show
that PGD on a randomized ensemble's expected loss can stall at perturbations that fool
the most probable members only, even when one perturbation of the same size fools them
all. ARC instead works member by member on the decision boundaries. For a mixture
``(f_i, p_i)`` it keeps a perturbation ``delta`` (the centre of a small "local" ball of
radius ``eta``) and, every iteration:

1. starts a local perturbation ``delta_l = 0`` in the ``eta``-ball around ``x + delta``;
2. for each member ``f_m`` in order of decreasing probability, linearises ``f_m`` at the
   current point ``x + delta + delta_l`` and finds its nearest linearised decision
   boundary (the DeepFool step of Moosavi-Dezfooli et al., 2016): over the classes
   ``j`` other than the predicted ``c``, ``zeta_j = |z_c - z_j| / ||grad z_c - grad z_j||_q``
   with ``q`` the dual norm (1 for L-inf, 2 for L2); ``zeta`` is the smallest, ``w`` its
   gradient difference, and ``g = -sign(w)`` (L-inf) or ``-w / ||w||_2`` (L2) the
   steepest direction towards that boundary;
3. moves along ``g`` by the adaptive step ``beta`` (:func:`arc_step_size`): the full
   ``eta`` for the first member and when the boundary is out of reach; otherwise the
   smallest step that puts the local perturbation, rescaled to the ``eta``-sphere, past
   ``f_m``'s linearised boundary (keeping as much as possible of the progress on the more
   probable members), plus a margin ``rho``;
4. keeps the candidate ``delta_l`` only if the mixture's expected 0-1 loss
   ``sum_i p_i 1[f_i(x') != y]`` (``x'`` the candidate, projected to the ``eps``-ball and
   the box) does not decrease;
5. after all members, moves the centre ``delta <- proj(delta + delta_l)`` under the same
   acceptance rule.

See ``docs/evaluation.md`` for what is implemented and where it departs from the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gametheory_defense.attacks.base import Attack, project, random_start, register_attack
from gametheory_defense.attacks.losses import DEFAULT_KAPPA
from gametheory_defense.attacks.mixture import (
    MixtureAwareMixin,
    MixtureComponent,
    expected_accuracy,
    mixture_components,
)
from gametheory_defense.errors import AttackError

__all__ = ["ARC", "Linearization", "BoundaryStep", "linearize", "nearest_boundary", "arc_step_size"]


@dataclass(frozen=True)
class Linearization:
    """A member's (EOT-averaged) logits and their input Jacobian at one point.

    Attributes
    ----------
    logits : torch.Tensor
        ``(N, K)``, mean logits over the member's draws.
    jacobian : torch.Tensor
        ``(K, N, ...)``, ``jacobian[k, n] = d logits[n, k] / d x[n]`` averaged over draws.
    """

    logits: torch.Tensor
    jacobian: torch.Tensor


@dataclass(frozen=True)
class BoundaryStep:
    """The nearest linearised decision boundary of one member (Dbouk & Shanbhag, 2022, eq. for ``zeta``, ``g``).

    Attributes
    ----------
    zeta : torch.Tensor
        ``(N,)`` distance, in the attack's norm, from the point to the boundary
        (``inf`` where every gradient difference vanishes).
    direction : torch.Tensor
        ``(N, ...)`` the step direction ``g`` (``-sign(w)`` for L-inf, ``-w / ||w||_2``
        for L2): a unit vector of the attack's norm.
    unit : torch.Tensor
        ``(N, ...)`` ``-w / ||w||_q``: for any ``v``, ``<unit, v>`` is how far ``v`` moves
        the point towards the boundary, measured in units of ``zeta``.
    target : torch.Tensor
        ``(N,)`` int64, the class on the other side of the boundary.
    """

    zeta: torch.Tensor
    direction: torch.Tensor
    unit: torch.Tensor
    target: torch.Tensor


def linearize(
    module: nn.Module, x: torch.Tensor, *, draws: int = 1, max_batch: int | None = None
) -> Linearization:
    """Logits and input Jacobian of ``module`` at ``x``, averaged over ``draws`` stochastic passes.

    The draws are stacked into the batch dimension (in chunks of at most ``max_batch``
    rows); the Jacobian takes one backward pass per class.
    """
    n = x.shape[0]
    per = draws if max_batch is None else max(1, min(draws, int(max_batch) // max(n, 1)))
    logits_sum: torch.Tensor | None = None
    jac_sum: torch.Tensor | None = None
    done = 0
    while done < draws:
        k = min(per, draws - done)
        leaf = x.detach().requires_grad_(True)
        inp = leaf if k == 1 else leaf.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        with torch.enable_grad():
            out = module(inp)
            classes = out.shape[1]
            rows = []
            for c in range(classes):
                (g,) = torch.autograd.grad(out[:, c].sum(), leaf, retain_graph=c < classes - 1)
                rows.append(g)
        jac = torch.stack(rows)
        lg = out.detach().view(k, n, classes).sum(0)
        logits_sum = lg if logits_sum is None else logits_sum + lg
        jac_sum = jac if jac_sum is None else jac_sum + jac
        done += k
    assert logits_sum is not None and jac_sum is not None
    return Linearization(logits=logits_sum / draws, jacobian=jac_sum / draws)


def nearest_boundary(lin: Linearization, *, norm: str) -> BoundaryStep:
    """The nearest linearised decision boundary of the predicted class (DeepFool, Moosavi-Dezfooli et al., 2016).

    For the predicted class ``c`` and each other class ``j``:
    ``w_j = grad z_c - grad z_j`` and ``zeta_j = (z_c - z_j) / ||w_j||_q``; the boundary
    with the smallest ``zeta_j`` is returned (``q = 1`` for L-inf, 2 for L2).
    """
    logits, jac = lin.logits, lin.jacobian
    classes, n = jac.shape[0], jac.shape[1]
    rows = torch.arange(n, device=logits.device)
    pred = logits.argmax(dim=1)
    flat = jac.reshape(classes, n, -1)
    w = flat[pred, rows].unsqueeze(0) - flat  # (K, N, D)
    gap = (logits[rows, pred].unsqueeze(1) - logits).t()  # (K, N), >= 0
    dual = w.abs().sum(dim=2) if norm == "linf" else w.norm(dim=2)
    zeta_all = gap / dual.clamp_min(1e-30)
    zeta_all = torch.where(dual > 0, zeta_all, torch.full_like(zeta_all, float("inf")))
    zeta_all[pred, rows] = float("inf")
    zeta, target = zeta_all.min(dim=0)
    w_star = w[target, rows]  # (N, D)
    d_star = dual[target, rows].clamp_min(1e-30).unsqueeze(1)
    unit = -w_star / d_star
    direction = -w_star.sign() if norm == "linf" else unit
    finite = torch.isfinite(zeta).unsqueeze(1)
    unit = torch.where(finite, unit, torch.zeros_like(unit))
    direction = torch.where(finite, direction, torch.zeros_like(direction))
    shape = jac.shape[1:]
    return BoundaryStep(zeta=zeta, direction=direction.view(shape), unit=unit.view(shape), target=target)


def arc_step_size(
    zeta: torch.Tensor, progress: torch.Tensor, *, eta: float, rho: float, first: bool
) -> torch.Tensor:
    r"""ARC's adaptive step ``beta`` along a member's direction (Dbouk & Shanbhag, 2022).

    With ``eta`` the radius of the local ball, ``zeta`` the distance from the current
    point ``x + delta + delta_l`` to the member's linearised boundary and
    ``a = <unit, delta_l>`` (``progress``) the part of the local perturbation already
    pointing at that boundary:

    .. math::

        \beta = \begin{cases}
            \eta & \text{first (most probable) member, or } \zeta \ge \eta \\
            \dfrac{\eta\,|\zeta - a|}{\eta - \zeta} + \rho & \text{otherwise.}
        \end{cases}

    The candidate local perturbation is then ``eta * (delta_l + beta g) / ||delta_l + beta g||``.
    Where the formula comes from: if the boundary lies at distance ``zeta`` from the
    *centre* ``x + delta``, the candidate moves the centre at least
    ``eta (a + beta) / (eta + beta)`` towards it (triangle inequality), which reaches
    ``zeta`` exactly when ``beta >= eta (zeta - a) / (eta - zeta)``: the smallest step that
    is sure to flip the member while keeping as much of ``delta_l`` (the progress on the
    more probable members) as possible; ``rho`` lands strictly past the boundary. As in
    the authors' release, ``zeta`` is measured at the current point, where the member is
    linearised (see ``docs/evaluation.md``); the acceptance test of ARC keeps only
    candidates that do not lower the expected 0-1 loss.

    Parameters
    ----------
    zeta : torch.Tensor
        ``(N,)`` distances to the boundary (may be ``inf``).
    progress : torch.Tensor
        ``(N,)`` ``a = <unit, delta_l>``.
    eta : float
        Radius of the local ball.
    rho : float
        Margin added to the adaptive step (input units).
    first : bool
        Whether this is the first member of the iteration.

    Returns
    -------
    torch.Tensor
        ``(N,)`` step lengths ``beta > 0``.

    Examples
    --------
    >>> import torch
    >>> arc_step_size(torch.tensor([0.1, 0.3]), torch.tensor([-0.05, 0.0]), eta=0.2, rho=0.01, first=False)
    tensor([0.3100, 0.2000])
    """
    full = torch.full_like(zeta, eta)
    if first:
        return full
    reachable = torch.isfinite(zeta) & (zeta < eta)
    denom = torch.where(reachable, eta - zeta, torch.ones_like(zeta))
    adaptive = eta * torch.where(reachable, (zeta - progress).abs(), torch.zeros_like(zeta)) / denom + rho
    return torch.where(reachable, adaptive, full)


def _norms(v: torch.Tensor, norm: str) -> torch.Tensor:
    flat = v.reshape(v.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@register_attack("arc")
class ARC(MixtureAwareMixin, Attack):
    """ARC (Dbouk & Shanbhag, 2022, "Adversarial Vulnerability of Randomized Ensembles"), L-inf and L2.

    Attacks a mixed strategy through its members' decision boundaries (see the module
    docstring for the algorithm), accepting a move only when the mixture's expected 0-1
    loss does not decrease. Stochastic members (SAP) are linearised with EOT: logits and
    Jacobians averaged over ``eot_samples`` draws, and their 0-1 loss is the fraction of
    ``eot_samples`` draws that misclassify. A plain model is a one-member mixture.

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units.
    step_size : float, optional
        ``eta``, the radius of the local ball searched in one iteration; default ``eps``
        (the local search then spans the whole threat model; the acceptance test makes
        large local steps safe, and the motivating example of the paper needs them).
    steps : int
        Iterations ``K`` over all members.
    norm : {"linf", "l2"}
        Threat model.
    loss : {"cw"}
        ARC works on logit margins (the unclamped ``"cw"`` margin); kept for the uniform
        interface.
    random_start : bool
        Start from a uniformly random point of the ball (the authors' default).
    restarts : int
        Independent runs; each example keeps the one with the lowest expected accuracy.
    eot_samples : int
        Draws per stochastic member for linearisation and for the 0-1 loss (default 20).
    rho : float
        Margin added to the adaptive step, as a fraction of ``eps`` (default 0.05, the
        authors' value).
    kappa : float
        Unused by ARC (kept for the uniform interface).
    max_batch : int, optional
        Most rows per forward pass (memory only).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from gametheory_defense.ensemble import MixedStrategyModel
    >>> mix = MixedStrategyModel([nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(2)], [0.6, 0.4])
    >>> x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> x_adv = ARC(0.5, steps=5, norm="l2")(mix, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6)
    True
    """

    loss_choices = ("cw",)

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 20,
        *,
        norm: str = "linf",
        loss: str = "cw",
        random_start: bool = True,
        restarts: int = 1,
        eot_samples: int = 20,
        rho: float = 0.05,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        if step_size is None and isinstance(eps, (int, float)) and not isinstance(eps, bool):
            step_size = float(eps)
        super().__init__(
            eps,
            step_size=step_size,  # type: ignore[arg-type]
            steps=steps,
            norm=norm,
            loss=loss,
            random_start=random_start,
            restarts=restarts,
            eot_samples=eot_samples,
            kappa=kappa,
            max_batch=max_batch,
        )
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise AttackError(f"rho must be a finite number >= 0 (a fraction of eps), got {rho!r}")
        self.rho = float(rho)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One run of ARC from a random (or the clean) start."""
        comps = mixture_components(model, eot_samples=self.eot_samples)
        eta, rho = self.step_size, self.rho * self.eps
        centre = random_start(x, eps=self.eps, norm=self.norm, generator=generator) if self.random_start else x.clone()
        acc = self._accuracy(comps, centre, y)
        for _ in range(self.steps):
            local = torch.zeros_like(x)
            acc_local = acc.clone()
            for m, comp in enumerate(comps):
                point = self._project(centre + local, x)
                lin = linearize(comp.module, point, draws=comp.draws, max_batch=self.max_batch)
                step = nearest_boundary(lin, norm=self.norm)
                progress = (step.unit * local).reshape(x.shape[0], -1).sum(dim=1)
                beta = arc_step_size(step.zeta, progress, eta=eta, rho=rho, first=m == 0)
                cand = local + _col(beta, x) * step.direction
                scale = eta / _norms(cand, self.norm).clamp_min(1e-30)
                cand = cand * _col(torch.where(_norms(cand, self.norm) > 0, scale, torch.zeros_like(scale)), x)
                cand_acc = self._accuracy(comps, self._project(centre + cand, x), y)
                take = cand_acc <= acc_local
                local = torch.where(_col(take, x), cand, local)
                acc_local = torch.where(take, cand_acc, acc_local)
            moved = self._project(centre + local, x)
            new_acc = self._accuracy(comps, moved, y)
            take = new_acc <= acc
            centre = torch.where(_col(take, x), moved, centre)
            acc = torch.where(take, new_acc, acc)
        return centre

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return project(x_adv.clone(), x, eps=self.eps, norm=self.norm)

    def _accuracy(self, comps: tuple[MixtureComponent, ...], x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return expected_accuracy(comps, x_adv, y, max_batch=self.max_batch)
