"""Auto-PGD with the cross-entropy and DLR losses (Croce & Hein, ICML 2020), with EOT.

Croce & Hein ("Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", 2020, Algorithm 1) replace PGD's fixed step by a budget-aware
schedule. With ``N`` iterations:

- checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (:func:`apgd_checkpoints`);
- the first step is a plain projected step of size ``eta = 2 eps``; later steps add
  momentum, ``z = P(x_k + eta * s(grad))``,
  ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with
  ``alpha = 0.75`` (``s`` is ``sign`` for L-inf, the normalised gradient for L2);
- at each checkpoint ``w_j`` the step of an example is halved, and its iterate reset to
  the best point found so far, when (1) its loss increased at fewer than
  ``rho = 0.75`` of the steps since ``w_{j-1}``, or (2) its step was not halved at
  ``w_{j-1}`` and its best loss has not improved since.

Everything is per example. With ``eot_samples > 1`` every loss and gradient is the EOT
average over stochastic forward passes (the ``rand`` version of AutoAttack uses 20).
"""

from __future__ import annotations

import torch
from torch import nn

from gametheory_defense.attacks.base import (
    Attack,
    eot_gradient,
    expected_output,
    linf_bounds,
    project,
    random_start,
    register_attack,
)
from gametheory_defense.attacks.losses import DEFAULT_KAPPA, LossFn, cw_loss, dlr_targeted_loss
from gametheory_defense.errors import AttackError

__all__ = ["APGD", "APGDCE", "APGDDLR", "APGDT", "apgd_checkpoints", "top_targets"]


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations at which APGD may halve its step (Croce & Hein, 2020, Section 3.2).

    ``w_j = ceil(p_j * steps)`` for ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, while ``p_j <= 1``. The ``p_j``
    are computed exactly (in hundredths) so that e.g. ``0.41 * 100`` gives 41, not 42;
    repeated values (possible for small ``steps``) are dropped.

    Examples
    --------
    >>> apgd_checkpoints(100)
    (0, 22, 41, 57, 70, 80, 87, 93, 99)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttackError(f"steps must be an integer >= 1, got {steps!r}")
    p_prev, p = 0, 22  # hundredths
    points = [0]
    while p <= 100:
        w = -(-p * steps // 100)  # exact ceil
        if w > points[-1]:
            points.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return tuple(points)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    gnorm = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-12)
    return grad / gnorm.view(-1, *([1] * (grad.dim() - 1)))


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class APGD(Attack):
    """Auto-PGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").

    Not registered itself: use :class:`APGDCE` (``"apgd-ce"``) or :class:`APGDDLR`
    (``"apgd-dlr"``). Returns, per example, the first iterate that the model
    misclassifies if there is one, else the iterate of highest loss; with
    ``eot_samples > 1`` always the iterate of highest (EOT-averaged) loss.

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units.
    step_size : float, optional
        Initial step ``eta``; default ``2 * eps`` (the paper's).
    steps : int
        Iterations ``N`` (default 100).
    norm : {"linf", "l2"}
        Threat model.
    loss : str
        The loss to maximise (``"ce"``, ``"dlr"`` or ``"cw"``).
    random_start : bool
        Start at a uniformly random point of the ball (as AutoAttack does).
    restarts : int
        Independent runs; the per-example worst case is kept.
    eot_samples : int
        Stochastic forward passes averaged per loss and gradient (default 1; 20 for
        randomized defenses, as in AutoAttack's ``rand`` version).
    alpha : float
        Momentum weight (0.75).
    rho : float
        Fraction of loss-increasing steps below which the step is halved (0.75).
    kappa : float
        Clamp of the ``"cw"`` loss.
    max_batch : int, optional
        Most rows per forward pass (memory only).
    """

    loss_choices = ("ce", "dlr", "cw")

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 100,
        *,
        norm: str = "linf",
        loss: str = "ce",
        random_start: bool = True,
        restarts: int = 1,
        eot_samples: int = 1,
        alpha: float = 0.75,
        rho: float = 0.75,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        if step_size is None and isinstance(eps, (int, float)) and not isinstance(eps, bool):
            step_size = 2.0 * eps
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
        for name, value in (("alpha", alpha), ("rho", rho)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise AttackError(f"{name} must be a number in (0, 1], got {value!r}")
        self.alpha = float(alpha)
        self.rho = float(rho)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One run of Algorithm 1 of Croce & Hein (2020) on the attack's own loss."""
        return self._apgd(model, x, y, y, self._loss_fn, generator=generator)

    def _apgd(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        labels: torch.Tensor,
        loss_fn: LossFn,
        *,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Algorithm 1 maximising ``loss_fn(logits, labels)``; ``y`` (the true labels) decides "fooled".

        ``labels`` is ``y`` for an untargeted loss, or ``(N, 2)`` rows ``[y, target]`` for
        the targeted DLR loss of :class:`APGDT`.
        """
        n = x.shape[0]
        bounds = linf_bounds(x, self.eps) if self.norm == "linf" else None

        def proj(v: torch.Tensor) -> torch.Tensor:
            return project(v, x, eps=self.eps, norm=self.norm, bounds=bounds)

        def evaluate(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            g = eot_gradient(model, v, labels, loss_fn, eot_samples=self.eot_samples, max_batch=self.max_batch)
            return g.grad, g.loss, g.logits.argmax(dim=1) != y

        x_cur = random_start(x, eps=self.eps, norm=self.norm, generator=generator) if self.random_start else x.clone()
        grad, loss, fooled = evaluate(x_cur)
        x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()
        x_fooled, ever_fooled = x_cur.clone(), fooled.clone()
        eta = torch.full((n,), self.step_size, device=x.device, dtype=x.dtype)
        x_prev = x_cur.clone()

        checkpoints = set(apgd_checkpoints(self.steps)[1:])
        last_check = 0
        increases = torch.zeros(n, device=x.device)
        loss_best_at_check = loss_best.clone()
        halved_at_check = torch.zeros(n, dtype=torch.bool, device=x.device)  # eta^(w_0) = eta^(w_1)

        for k in range(self.steps):
            a = 1.0 if k == 0 else self.alpha
            z = proj(x_cur + _col(eta, x) * _direction(grad, self.norm))
            x_new = proj(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev))
            x_prev = x_cur
            x_cur = x_new
            loss_old = loss
            grad, loss, fooled = evaluate(x_cur)

            newly = fooled & ~ever_fooled
            x_fooled[newly] = x_cur[newly]
            ever_fooled |= fooled
            increases += (loss > loss_old).float()
            better = loss > loss_best
            x_best[better] = x_cur[better]
            grad_best[better] = grad[better]
            loss_best = torch.where(better, loss, loss_best)

            it = k + 1
            if it in checkpoints:
                cond1 = increases < self.rho * (it - last_check)
                cond2 = ~halved_at_check & (loss_best <= loss_best_at_check)
                halve = cond1 | cond2
                eta = torch.where(halve, eta / 2.0, eta)
                x_cur = torch.where(_col(halve, x), x_best, x_cur)
                grad = torch.where(_col(halve, x), grad_best, grad)
                loss = torch.where(halve, loss_best, loss)
                halved_at_check = halve
                loss_best_at_check = loss_best.clone()
                increases.zero_()
                last_check = it
        if self.eot_samples > 1:  # "fooled" by mean logits is no proof against a randomized model
            return x_best
        return torch.where(_col(ever_fooled, x), x_fooled, x_best)


@register_attack("apgd-ce")
class APGDCE(APGD):
    """APGD on the cross-entropy loss (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness ...").

    :class:`APGD` with ``loss="ce"`` (the only choice). See :class:`APGD` for the
    parameters.
    """

    loss_choices = ("ce",)

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 100,
        *,
        norm: str = "linf",
        loss: str = "ce",
        random_start: bool = True,
        restarts: int = 1,
        eot_samples: int = 1,
        alpha: float = 0.75,
        rho: float = 0.75,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps, step_size, steps, norm=norm, loss=loss, random_start=random_start, restarts=restarts,
            eot_samples=eot_samples, alpha=alpha, rho=rho, kappa=kappa, max_batch=max_batch,
        )


@register_attack("apgd-dlr")
class APGDDLR(APGD):
    """APGD on the Difference-of-Logits-Ratio loss (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness ...").

    :class:`APGD` with ``loss="dlr"`` (the only choice):
    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3) + 1e-12)``, invariant to shifts and
    rescalings of the logits. Needs at least 3 classes. See :class:`APGD` for the
    parameters.
    """

    loss_choices = ("dlr",)

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 100,
        *,
        norm: str = "linf",
        loss: str = "dlr",
        random_start: bool = True,
        restarts: int = 1,
        eot_samples: int = 1,
        alpha: float = 0.75,
        rho: float = 0.75,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps, step_size, steps, norm=norm, loss=loss, random_start=random_start, restarts=restarts,
            eot_samples=eot_samples, alpha=alpha, rho=rho, kappa=kappa, max_batch=max_batch,
        )



def top_targets(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` classes other than ``y`` with the highest logits, most likely first.

    Shape
    -----
    - logits: ``(N, K)``; y: ``(N,)``; output: ``(N, min(k, K - 1))`` int64.
    """
    others = logits.detach().scatter(1, y.unsqueeze(1), float("-inf"))
    return others.topk(min(k, logits.shape[1] - 1), dim=1).indices


@register_attack("apgd-t")
class APGDT(APGD):
    """Targeted APGD on the DLR loss over the top-k classes (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness ...").

    For each of the ``targets`` classes with the highest logits at ``x`` (other than the
    true class; the (EOT-averaged) logits of the clean input), one run of APGD
    (Algorithm 1) maximises the targeted DLR loss ``-(z_y - z_t) / (z_(1) - (z_(3) +
    z_(4)) / 2)`` (:func:`~gametheory_defense.attacks.losses.dlr_targeted_loss`), the
    version in AutoAttack's standard suite (9 targets, 100 steps, 1 restart each). Per
    example the result of the target that does most damage is kept: the largest margin
    ``max_{j != y} z_j - z_y`` of the (EOT-averaged) logits, so a deterministic model's
    misclassified point always wins. On a deterministic model (``eot_samples == 1``) a
    target is run only on the examples that no earlier target has fooled (as
    AutoAttack does: it changes the cost, not the result's accuracy). Needs at least 3
    classes.

    Parameters
    ----------
    eps, step_size, steps, norm, random_start, restarts, eot_samples, alpha, rho, max_batch
        As for :class:`APGD` (``restarts`` repeats the whole loop over targets).
    loss : {"dlr-t"}
        The targeted DLR loss (the only choice).
    targets : int
        Number of target classes ``k`` (default 9; capped at ``K - 1``).
    kappa : float
        Unused by the targeted loss; kept for the shared vocabulary.
    """

    loss_choices = ("dlr-t",)

    def __init__(
        self,
        eps: float,
        step_size: float | None = None,
        steps: int = 100,
        *,
        norm: str = "linf",
        loss: str = "dlr-t",
        random_start: bool = True,
        restarts: int = 1,
        eot_samples: int = 1,
        targets: int = 9,
        alpha: float = 0.75,
        rho: float = 0.75,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps, step_size, steps, norm=norm, loss=loss, random_start=random_start, restarts=restarts,
            eot_samples=eot_samples, alpha=alpha, rho=rho, kappa=kappa, max_batch=max_batch,
        )
        if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
            raise AttackError(f"targets must be an integer >= 1, got {targets!r}")
        self.targets = targets

    def _margin(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``max_{j != y} z_j - z_y`` of the logits averaged over ``eot_samples`` draws, ``(N,)``."""
        out = expected_output(model, x, draws=self.eot_samples, max_batch=self.max_batch)
        return cw_loss(out, y, kappa=float("inf"))

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One run of APGD per target class; per example the largest final margin wins."""
        clean = expected_output(model, x, draws=self.eot_samples, max_batch=self.max_batch)
        if clean.shape[1] < 3:
            raise AttackError(f"APGD-T needs at least 3 classes, got {clean.shape[1]}")
        order = top_targets(clean, y, self.targets)
        best = x.clone()
        best_margin = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        for j in range(order.shape[1]):
            # deterministic model: skip what an earlier target already fooled
            todo = (best_margin <= 0) if self.eot_samples == 1 else torch.ones_like(best_margin, dtype=torch.bool)
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs, ys = x[idx], y[idx]
            labels = torch.stack([ys, order[idx, j]], dim=1)
            cand = self._apgd(model, xs, ys, labels, self._loss_fn, generator=generator)
            margin = self._margin(model, cand, ys)
            better = margin > best_margin[idx]
            best[idx[better]] = cand[better]
            best_margin[idx[better]] = margin[better]
        return best

    def _score(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fooled, margin)`` per example from one forward pass (restarts compare margins across targets)."""
        margin = self._margin(model, x_adv, y)
        return margin > 0, margin
