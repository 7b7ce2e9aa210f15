"""Square Attack: score-based random search (Andriushchenko et al., ECCV 2020), L-inf and L2.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search" (2020). No gradients: each iteration changes the
current perturbation inside a random square window and keeps the change only if the loss
rises (one query per iteration). It is in AutoAttack's standard suite because gradient
masking cannot fool it.

- **Square size.** The window covers a fraction ``p`` of the pixels: side
  ``s = round(sqrt(p * h * w))``, clipped to ``[1, h - 1]`` (``[3, h - 1]`` for L2 where the
  image allows), with ``p`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000
  and 8000 of a 10000-query run (the schedule is rescaled to ``steps`` queries),
  starting from ``p_init`` (AutoAttack: 0.8).
- **L-inf** (Algorithm 2): start from vertical stripes ``x +- eps`` (one random sign per
  channel and column); an update sets the window, per channel, to ``x + eps`` or
  ``x - eps`` (random sign), a vertex of the ball; a draw that changes nothing is replaced by
  the opposite signs, which always change the window (for one channel this is the
  paper's redraw-until-changed; AutoAttack redraws).
- **L2** (Algorithm 3): start from a grid of "pseudo-Gaussian" tiles with random signs,
  scaled to norm ``eps``; an update picks two windows ``W1``, ``W2`` and, per channel,
  moves the perturbation's mass in ``W1 u W2`` plus the unused budget
  ``eps^2 - ||delta||^2`` into ``W1`` along the old direction there plus a new random
  two-signed pseudo-Gaussian pattern, and clears ``W2``.

Randomized models: the accept/reject test compares the loss of the model's **expected
prediction**, the softmax averaged over ``eot_samples`` draws per query (its logarithm
stands in for logits), so a lucky draw is not mistaken for progress; every example then
uses all ``steps`` queries. On a deterministic model (``eot_samples == 1``) an example
stops being queried once it is misclassified, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gametheory_defense.attacks.base import Attack, expected_output, linf_bounds, register_attack
from gametheory_defense.attacks.losses import DEFAULT_KAPPA, cw_loss
from gametheory_defense.errors import AttackError
from gametheory_defense.stochastic import random_tensor

__all__ = ["Square", "square_fraction", "pseudo_gaussian_pattern"]

#: Iterations (of a 10000-query run) at which the fraction ``p`` is halved (paper, Appendix).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, it: int, steps: int) -> float:
    """The fraction of pixels the square covers at iteration ``it`` of ``steps`` (Andriushchenko et al., 2020).

    ``p_init`` halved at each of 10, 50, 200, ..., 8000 passed, with ``it`` rescaled to a
    10000-query run.

    Examples
    --------
    >>> square_fraction(0.8, 0, 5000), square_fraction(0.8, 5, 5000), square_fraction(0.8, 4999, 5000)
    (0.8, 0.4, 0.0015625)
    """
    scaled = int(it / steps * 10000)
    return p_init / 2 ** sum(scaled > t for t in _HALVINGS)


def _eta(h1: int, h2: int) -> torch.Tensor:
    """``eta^{(h1, h2)}_{r, s} = sum_{k=0}^{M(r, s)} 1 / (n + 1 - k)^2`` (paper, Sec. 3.2), ``n = h1 // 2``."""
    n = h1 // 2
    r = torch.arange(1, h1 + 1).view(-1, 1)
    s = torch.arange(1, h2 + 1).view(1, -1)
    m = n - torch.maximum((r - n - 1).abs(), (s - h2 // 2 - 1).abs())
    cum = torch.cumsum(1.0 / (n + 1 - torch.arange(n + 1, dtype=torch.float64)) ** 2, 0)
    return torch.where(m >= 0, cum[m.clamp(min=0)], torch.zeros((), dtype=torch.float64))


def pseudo_gaussian_pattern(s: int, *, transpose: bool = False) -> torch.Tensor:
    """The L2 update's ``s x s`` pattern: ``eta`` on the left half, ``-eta`` on the right, unit norm.

    Andriushchenko et al. (2020, Sec. 3.2): ``(eta^{(s, k)}, -eta^{(s, s - k)})`` with
    ``k = s // 2``, transposed when ``transpose``. For ``s == 1`` it is ``[[1]]``.
    """
    if s == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    k = s // 2
    pat = torch.cat([_eta(s, k), -_eta(s, s - k)], dim=1)
    pat = pat.t() if transpose else pat
    return pat / pat.norm()


def _place(pattern: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(m, 1, h, w)`` canvases holding ``pattern`` (``s x s``) at rows ``vh`` and columns ``vw`` per example."""
    s = pattern.shape[0]
    rr = torch.arange(h, device=vh.device).view(1, -1) - vh.view(-1, 1)  # (m, h)
    cc = torch.arange(w, device=vh.device).view(1, -1) - vw.view(-1, 1)  # (m, w)
    inside = ((rr >= 0) & (rr < s)).unsqueeze(2) & ((cc >= 0) & (cc < s)).unsqueeze(1)
    vals = pattern[rr.clamp(0, s - 1).unsqueeze(2), cc.clamp(0, s - 1).unsqueeze(1)]
    return (vals * inside).unsqueeze(1)


def _norm2(v: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return v.pow(2).sum(dim=dims, keepdim=True).sqrt()


@register_attack("square")
class Square(Attack):
    """Square Attack (Andriushchenko et al., 2020, "Square Attack: a query-efficient black-box adversarial attack via random search").

    Gradient-free random search over square-shaped updates (see the module docstring for
    the algorithm). Inputs must be images ``(N, C, H, W)`` with ``H, W >= 2``.

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units.
    steps : int
        Query budget per restart: iterations of the random search, one query each (on a
        randomized model one query is ``eot_samples`` forward passes); AutoAttack uses 5000.
    norm : {"linf", "l2"}
        Threat model.
    loss : {"cw", "ce"}
        The loss the random search raises: ``"cw"`` is the paper's margin loss.
    p_init : float
        Initial fraction of pixels changed per update, in (0, 1] (AutoAttack: 0.8).
    random_start : bool
        Start from the paper's initialisation (stripes for L-inf, tiles for L2); else from
        ``x`` itself.
    restarts : int
        Independent runs; the per-example worst case is kept.
    eot_samples : int
        Draws of a randomized model averaged per query (its softmax), the expected
        prediction the accept/reject step compares.
    kappa : float
        Clamp of the ``"cw"`` loss.
    max_batch : int, optional
        Most rows per forward pass (memory only).

    Notes
    -----
    Square has no step: ``step_size`` (an attribute for the shared vocabulary, not a
    constructor argument) is ``eps``, the size of an L-inf update's coordinates.
    """

    loss_choices = ("cw", "ce")

    def __init__(
        self,
        eps: float,
        steps: int = 5000,
        *,
        norm: str = "linf",
        loss: str = "cw",
        p_init: float = 0.8,
        random_start: bool = True,
        restarts: int = 1,
        eot_samples: int = 1,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            eps,
            step_size=eps,
            steps=steps,
            norm=norm,
            loss=loss,
            random_start=random_start,
            restarts=restarts,
            eot_samples=eot_samples,
            kappa=kappa,
            max_batch=max_batch,
        )
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0.0 < p_init <= 1.0:
            raise AttackError(f"p_init must be a number in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)

    # ------------------------------------------------------------------ queries

    def _query(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, margin)`` per example; on a randomized model of the expected prediction."""
        if self.eot_samples == 1:
            out = expected_output(model, x, max_batch=self.max_batch)
        else:
            probs = expected_output(model, x, draws=self.eot_samples, probabilities=True, max_batch=self.max_batch)
            out = probs.clamp_min(1e-30).log()
        return self._loss_fn(out, y), cw_loss(out, y, kappa=float("inf"))

    def _score(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, margin = self._query(model, x_adv, y)
        return margin > 0, loss

    def _rand(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return random_tensor("rand", shape, generator=generator, device=like.device, dtype=like.dtype)

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._rand(shape, like, generator).lt_(0.5).to(like.dtype).mul_(2).sub_(1)

    def _positions(
        self, m: int, s: int, h: int, w: int, like: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random top-left corners ``(vh, vw)`` of ``m`` windows of side ``s``, uniform over the image."""
        vh = (self._rand((m,), like, g) * (h - s + 1)).long().clamp_(max=h - s)
        vw = (self._rand((m,), like, g) * (w - s + 1)).long().clamp_(max=w - s)
        return vh, vw

    # ------------------------------------------------------------------ the search

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One run of the random search (Algorithm 2 for L-inf, 3 for L2)."""
        if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
            raise AttackError(f"Square needs images of shape (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if self.norm == "linf":
            lo, hi = linf_bounds(x, self.eps)
            if self.random_start:
                x_best = (x + self.eps * self._signs((n, c, 1, w), x, generator)).clamp_(lo, hi)
            else:
                x_best = x.clone()
        else:
            lo = hi = None
            x_best = self._l2_init(x, generator) if self.random_start else x.clone()
        loss_best, margin = self._query(model, x_best, y)
        for it in range(self.steps):
            active = (margin <= 0).nonzero().squeeze(1) if self.eot_samples == 1 else None
            if active is not None and active.numel() == 0:
                break
            xa = x if active is None else x[active]
            xb = x_best if active is None else x_best[active]
            p = square_fraction(self.p_init, it, self.steps)
            if self.norm == "linf":
                assert lo is not None and hi is not None
                la, ha = (lo, hi) if active is None else (lo[active], hi[active])
                x_new = self._linf_update(xa, xb, la, ha, p, generator)
            else:
                x_new = self._l2_update(xa, xb, p, generator)
            ya = y if active is None else y[active]
            loss_new, margin_new = self._query(model, x_new, ya)
            better = loss_new > (loss_best if active is None else loss_best[active])
            idx = better.nonzero().squeeze(1) if active is None else active[better]
            x_best[idx] = x_new[better]
            loss_best[idx] = loss_new[better]
            margin[idx] = margin_new[better]
        return x_best

    def _linf_update(
        self,
        x: torch.Tensor,
        x_best: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        p: float,
        g: torch.Generator | None,
    ) -> torch.Tensor:
        m, c, h, w = x.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1, w - 1)
        vh, vw = self._positions(m, s, h, w, x, g)
        window = _place(torch.ones(s, s, dtype=x.dtype, device=x.device), vh, vw, h, w).bool()
        signs = self._signs((m, c, 1, 1), x, g)
        x_new = torch.where(window, x + self.eps * signs, x_best).clamp_(lo, hi)
        unchanged = (x_new == x_best).flatten(1).all(dim=1)
        if unchanged.any():  # the draw repeated the window: take the opposite vertex, which differs
            signs[unchanged] = -signs[unchanged]
            x_new = torch.where(window, x + self.eps * signs, x_best).clamp_(lo, hi)
        return x_new

    def _l2_init(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        t = max(h // 5, 1)
        pattern = pseudo_gaussian_pattern(t).to(device=x.device, dtype=x.dtype)
        delta = torch.zeros_like(x)
        for i in range(0, h, t):
            for j in range(0, w, t):
                ph, pw = min(t, h - i), min(t, w - j)
                delta[:, :, i : i + ph, j : j + pw] += pattern[:ph, :pw] * self._signs((n, c, 1, 1), x, g)
        return self._l2_finish(x, delta)

    def _l2_finish(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``clip(x + eps * delta / ||delta||)`` (norm ``<= eps`` after clipping to the box)."""
        norm = _norm2(delta, (1, 2, 3)).clamp_min(1e-12)
        return (x + delta * (self.eps / norm)).clamp_(0.0, 1.0)

    def _l2_update(self, x: torch.Tensor, x_best: torch.Tensor, p: float, g: torch.Generator | None) -> torch.Tensor:
        m, c, h, w = x.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 3), h - 1, w - 1)
        delta = x_best - x
        vh1, vw1 = self._positions(m, s, h, w, x, g)
        vh2, vw2 = self._positions(m, s, h, w, x, g)
        ones = torch.ones(s, s, dtype=x.dtype, device=x.device)
        w1 = _place(ones, vh1, vw1, h, w)
        union = torch.maximum(w1, _place(ones, vh2, vw2, h, w))
        transpose = bool(self._rand((1,), x, g).item() < 0.5)
        pattern = pseudo_gaussian_pattern(s, transpose=transpose).to(device=x.device, dtype=x.dtype)
        eta = _place(pattern, vh1, vw1, h, w) * self._signs((m, c, 1, 1), x, g)  # (m, c, h, w)
        old = delta * w1
        direction = old / _norm2(old, (2, 3)).clamp_min(1e-12) + eta
        direction = direction / _norm2(direction, (2, 3)).clamp_min(1e-12)
        unused = (self.eps**2 - delta.pow(2).sum(dim=(1, 2, 3), keepdim=True)).clamp_min(0.0)
        mass = (unused / c + (delta * union).pow(2).sum(dim=(2, 3), keepdim=True)).sqrt()
        new_delta = delta * (1 - union) + direction * mass
        return self._l2_finish(x, new_delta)
