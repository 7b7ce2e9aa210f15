"""Shared machinery of every attack: the :class:`Attack` base, the registry and helpers.

An attack is a callable object ``attack(model, x, y, *, generator=None) -> x_adv`` built
from keyword settings with the same names everywhere (``eps``, ``step_size``, ``steps``,
``norm``, ``loss``, ``random_start``, ``restarts``, ``eot_samples``). The base class owns
everything that is not the attack's own update rule:

- input validation and the runtime checks that warn on likely mistakes
  (:class:`RandomizedDefenseWarning`, :class:`ProbabilityOutputWarning`), after
  AutoAttack (Croce & Hein, 2020);
- the model contract (:func:`preserve_model_state`): train/eval modes are never touched
  and are restored per submodule, every parameter's ``requires_grad`` is switched off
  during the attack and restored exactly (also on error), so no gradient reaches the
  parameters, and every buffer (BatchNorm running statistics in ``train()`` mode) is
  restored to its values from before the attack;
- randomness: the whole attack runs inside ``use_generator(model, generator)`` and draws
  its random starts with ``random_tensor``, so one generator state gives one result;
- restarts, keeping each example's worst case (:meth:`Attack._keep_worst`);
- Expectation over Transformation (:func:`eot_gradient`, Athalye et al., 2018): the
  gradient averaged over ``eot_samples`` stochastic forward passes, stacked into the
  batch dimension (one forward and one backward), chunked by ``max_batch``.

A subclass sets its defaults in its own ``__init__`` (every argument stored as an
attribute of the same name, which is what :meth:`Attack.config` reads) and overrides
:meth:`Attack._perturb` (one restart) when its update rule is not the projected
gradient ascent implemented here. Register it with ``@register_attack("name")``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from gametheory_defense.attacks.losses import DEFAULT_KAPPA, LossFn, get_loss
from gametheory_defense.errors import AttackError
from gametheory_defense.stochastic import random_tensor, use_generator

__all__ = [
    "Attack",
    "ATTACKS",
    "register_attack",
    "build_attack",
    "RandomizedDefenseWarning",
    "ProbabilityOutputWarning",
    "EOTGradient",
    "eot_gradient",
    "preserve_model_state",
    "random_start",
    "gradient_step",
    "project",
    "linf_bounds",
    "NORMS",
]

#: Threat models every built-in attack supports.
NORMS: tuple[str, ...] = ("linf", "l2")

#: Number of examples the runtime checks run the model on (no gradient).
_CHECK_EXAMPLES = 8

#: Constructor arguments that tune memory or speed only; left out of :meth:`Attack.config`.
_NOT_IN_CONFIG = frozenset({"max_batch"})

_AttackClass = TypeVar("_AttackClass", bound="type[Attack]")


class RandomizedDefenseWarning(UserWarning):
    """A randomized model is attacked with ``eot_samples=1`` (its robustness is overestimated)."""


class ProbabilityOutputWarning(UserWarning):
    """The model seems to return probabilities, not logits (gradients of the losses vanish)."""


#: Registry of attack classes by name, filled by :func:`register_attack`.
ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[_AttackClass], _AttackClass]:
    """Class decorator adding an :class:`Attack` subclass to :data:`ATTACKS` as ``name``.

    Sets the class attribute ``name``. Registering a second class under a taken name
    raises :class:`AttackError`.
    """
    if not isinstance(name, str) or not name:
        raise AttackError(f"an attack's registry name must be a non-empty string, got {name!r}")

    def decorate(cls: _AttackClass) -> _AttackClass:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise AttackError(f"@register_attack({name!r}) must decorate an Attack subclass, got {cls!r}")
        old = ATTACKS.get(name)
        if old is not None and _qualified(old) != _qualified(cls):  # re-importing a module is fine
            raise AttackError(f"attack name {name!r} is already registered by {_qualified(old)}")
        own = cls.__dict__.get("name")
        if own and own != name:
            raise AttackError(
                f"{_qualified(cls)} is already registered as {own!r}; register a subclass per name "
                "(one that changes the defaults, like EOTPGD)"
            )
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return decorate


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _init_parameters(cls: type[Attack]) -> dict[str, inspect.Parameter]:
    """The named constructor arguments of ``cls`` (without ``self``)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p
        for k, p in params.items()
        if k != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def build_attack(name: str, **kwargs: Any) -> Attack:
    """Build the registered attack ``name`` with keyword settings.

    Parameters
    ----------
    name : str
        A key of :data:`ATTACKS` (``"fgsm"``, ``"pgd"``, ``"eot-pgd"``, ...).
    **kwargs
        The attack's constructor arguments (``eps`` is required by every attack).

    Raises
    ------
    AttackError
        Unknown attack (the message lists the choices), unknown or missing argument
        (the message lists the valid arguments), or an invalid value.
    """
    cls = ATTACKS.get(name)
    if cls is None:
        raise AttackError(f"unknown attack {name!r}; choose one of {', '.join(sorted(ATTACKS))}")
    params = _init_parameters(cls)
    valid = ", ".join(params)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise AttackError(f"unknown argument {unknown[0]!r} for attack {name!r}; valid arguments: {valid}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise AttackError(f"attack {name!r} needs argument {missing[0]!r}; valid arguments: {valid}")
    return cls(**kwargs)


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def preserve_model_state(model: nn.Module) -> Iterator[None]:
    """Freeze ``model``'s parameters inside the block; restore modes, flags and buffers exactly on exit.

    Every parameter's ``requires_grad`` is set to ``False`` (no gradient is computed for
    it, and ``p.grad`` stays as it was) and restored on exit, also when the block raises.
    The train/eval mode of every submodule is recorded and restored too; the attack
    itself never changes it (a user's dropout or batch norm stays as the user set it).

    Every buffer is restored as well, the same tensor object with its values from before
    the block: a BatchNorm layer left in ``train()`` mode is attacked with batch
    statistics, as its mode says, but its ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` (and any other buffer a forward pass updates) are left
    exactly as they were found.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [
        (m, name, buf, buf.detach().clone())
        for m in model.modules()
        for name, buf in m._buffers.items()
        if buf is not None
    ]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for m, name, buf, saved in buffers:
                m._buffers[name] = buf
                buf.copy_(saved)


@dataclass(frozen=True, slots=True)
class EOTGradient:
    """Result of :func:`eot_gradient` (all tensors detached).

    Attributes
    ----------
    grad : torch.Tensor
        ``(N, ...)``, the gradient of each example's loss averaged over the draws.
    loss : torch.Tensor
        ``(N,)``, each example's loss averaged over the draws.
    logits : torch.Tensor
        ``(N, K)``, the logits averaged over the draws.
    """

    grad: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor


def eot_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    eot_samples: int = 1,
    max_batch: int | None = None,
) -> EOTGradient:
    """Expectation-over-Transformation gradient (Athalye et al., 2018, "Obfuscated gradients ...").

    ``grad_i = (1/S) sum_s d loss(model_s(x_i), y_i) / d x_i`` over ``S = eot_samples``
    stochastic forward passes. The ``S`` copies of the batch are stacked into the batch
    dimension (draw-major: rows ``s*N .. s*N+N-1`` are draw ``s``), so one forward and one
    backward pass serve all draws. When ``S * N > max_batch`` the stack is cut into chunks
    of at most ``max_batch`` rows (whole copies of the batch when ``N <= max_batch``,
    slices of the batch otherwise), each with its own forward and backward pass.

    Randomness comes from the model's stochastic modules; wrap the call in
    ``use_generator(model, generator)`` to control it. The model's parameters should
    not require gradients (see :func:`preserve_model_state`).

    Parameters
    ----------
    model : nn.Module
        Returns logits ``(M, K)`` for inputs ``(M, ...)``.
    x : torch.Tensor
        ``(N, ...)`` point at which to take the gradient (not modified).
    y : torch.Tensor
        ``(N,)`` int64 labels.
    loss_fn : callable
        Per-example loss ``(logits, y) -> (M,)`` (see :mod:`.losses`).
    eot_samples : int
        Number of stochastic forward passes ``S >= 1``.
    max_batch : int, optional
        Most rows per forward pass; ``None`` means no limit.

    Returns
    -------
    EOTGradient
    """
    n = x.shape[0]
    s_total = int(eot_samples)
    cap = n * s_total if max_batch is None else max(1, int(max_batch))
    if n <= cap:
        slices = [(0, n)]
        per_chunk = max(1, cap // n)
    else:
        slices = [(a, min(a + cap, n)) for a in range(0, n, cap)]
        per_chunk = 1
    if len(slices) == 1 and per_chunk >= s_total:
        return _eot_chunk(model, x, y, loss_fn, s_total, s_total)
    grads, losses, logits = [], [], []
    for a, b in slices:
        xs, ys = x[a:b], y[a:b]
        parts = [
            _eot_chunk(model, xs, ys, loss_fn, min(per_chunk, s_total - s), s_total)
            for s in range(0, s_total, per_chunk)
        ]
        grads.append(torch.stack([p.grad for p in parts]).sum(0))
        losses.append(torch.stack([p.loss for p in parts]).sum(0))
        logits.append(torch.stack([p.logits for p in parts]).sum(0))
    return EOTGradient(grad=torch.cat(grads), loss=torch.cat(losses), logits=torch.cat(logits))


def _eot_chunk(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, copies: int, total: int
) -> EOTGradient:
    """``copies`` stacked draws at ``x``; sums over draws divided by ``total``."""
    leaf = x.detach().requires_grad_(True)
    n = x.shape[0]
    if copies == 1:
        inp, target = leaf, y
    else:
        inp = leaf.unsqueeze(0).expand(copies, *leaf.shape).reshape(copies * n, *leaf.shape[1:])
        target = y.repeat(copies)
    out = model(inp)
    loss = loss_fn(out, target)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    grad = grad.contiguous()  # autograd may return a broadcast view; steps update it in place
    out = out.detach()
    loss = loss.detach()
    if copies > 1:
        out = out.view(copies, n, -1).sum(0)
        loss = loss.view(copies, n).sum(0)
    if total > 1:
        grad.div_(total)
        out = out / total
        loss = loss / total
    return EOTGradient(grad=grad, loss=loss, logits=out)


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(N,)`` to ``(N, 1, ..., 1)`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def random_start(
    x: torch.Tensor, *, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniformly random point of the ``norm``-ball of radius ``eps`` around ``x``, clipped to [0, 1].

    L-inf: ``x + U(-eps, eps)`` per coordinate (Madry et al., 2018). L2: a uniform
    direction (a normalised Gaussian) times the radius ``eps * U^(1/d)`` with ``d`` the
    number of coordinates per example, which is uniform in the ball.

    Shape
    -----
    - x: ``(N, ...)``; output: same shape, a new tensor.
    """
    kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "linf":
        delta = random_tensor("rand", x.shape, **kw).mul_(2 * eps).sub_(eps)
    else:
        delta = random_tensor("randn", x.shape, **kw)
        d = delta[0].numel()
        radius = random_tensor("rand", (x.shape[0],), **kw).pow_(1.0 / d).mul_(eps)
        norms = delta.reshape(x.shape[0], -1).norm(dim=1).clamp_min_(1e-12)
        delta.mul_(_per_example(radius / norms, delta))
    return delta.add_(x).clamp_(0.0, 1.0)


def gradient_step(x_adv: torch.Tensor, grad: torch.Tensor, *, step_size: float, norm: str) -> torch.Tensor:
    """Steepest-ascent step of length ``step_size`` in ``norm``, applied to ``x_adv`` in place.

    L-inf: ``x_adv += step_size * sign(grad)``. L2: ``x_adv += step_size * grad / ||grad||_2``
    per example (no step where the gradient is zero). ``grad`` is overwritten.
    """
    if norm == "linf":
        return x_adv.add_(grad.sign_(), alpha=step_size)
    gnorm = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min_(1e-12)
    return x_adv.addcdiv_(grad, _per_example(gnorm, grad), value=step_size)


def project(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Project ``x_adv`` in place onto the ``norm``-ball of radius ``eps`` around ``x``, then onto [0, 1].

    For L-inf this is the exact projection onto the intersection,
    ``clamp(x_adv, max(x - eps, 0), min(x + eps, 1))`` (pass the two bounds as ``bounds``
    to reuse them across steps). For L2 the perturbation is scaled back to norm ``eps``
    and the result clipped to the box; clipping only shrinks each coordinate's distance
    to ``x`` (which is in the box), so the result stays in the ball.
    """
    if norm == "linf":
        lo, hi = bounds if bounds is not None else linf_bounds(x, eps)
        return x_adv.clamp_(lo, hi)
    delta = x_adv.sub_(x)
    dnorm = delta.reshape(delta.shape[0], -1).norm(dim=1)
    factor = (eps / dnorm.clamp_min(1e-12)).clamp_max_(1.0)
    return delta.mul_(_per_example(factor, delta)).add_(x).clamp_(0.0, 1.0)


def linf_bounds(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate bounds ``(max(x - eps, 0), min(x + eps, 1))`` of the L-inf ball in the box."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


# ----------------------------------------------------------------------------- validation


def _check_real(name: str, value: Any, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise AttackError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise AttackError(f"{name} must be {relation} {minimum}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AttackError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise AttackError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise AttackError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


# ----------------------------------------------------------------------------- the base


class Attack:
    """Base of all attacks: projected gradient ascent with EOT, restarts and safety checks.

    Implements the iterative method of Madry et al. (2018, "Towards deep learning models
    resistant to adversarial attacks") that FGSM (one step) and PGD specialise; the
    subclasses only choose defaults. Not registered itself.

    Parameters
    ----------
    eps : float
        Radius of the threat model in input units (``>= 0``).
    step_size : float
        Length of each step in ``norm`` (``> 0``; may be 0 only when ``eps`` is 0).
    steps : int
        Number of gradient steps per restart (``>= 1``).
    norm : {"linf", "l2"}
        Threat model.
    loss : str
        Loss to maximise, one of the class's ``loss_choices`` (see :mod:`.losses`).
    random_start : bool
        Start each restart at a uniformly random point of the ball (else at ``x``).
    restarts : int
        Independent runs; each example keeps its worst case (``>= 1``).
    eot_samples : int
        Stochastic forward passes averaged per gradient (``>= 1``).
    kappa : float
        Clamp of the ``"cw"`` margin loss (``>= 0``).
    max_batch : int, optional
        Most rows per forward pass (``eot_samples * N`` rows are needed per gradient);
        ``None`` means no limit. Changes memory, not the attack (left out of :meth:`config`).

    Notes
    -----
    Subclasses store every constructor argument as an attribute of the same name;
    :meth:`config` reads them back from the constructor's signature, so
    ``build_attack(c["name"], **{k: v for k, v in c.items() if k != "name"})``
    rebuilds an equal attack. No per-example early stopping is done: every example takes
    all ``steps`` steps (the EOT gradient stays an honest average, and a stochastic
    model's "fooled" on one draw is not a reason to stop).
    """

    name: ClassVar[str] = ""
    norm_choices: ClassVar[tuple[str, ...]] = NORMS
    loss_choices: ClassVar[tuple[str, ...]] = ("ce", "cw")

    def __init__(
        self,
        eps: float,
        *,
        step_size: float,
        steps: int,
        norm: str,
        loss: str,
        random_start: bool,
        restarts: int,
        eot_samples: int,
        kappa: float = DEFAULT_KAPPA,
        max_batch: int | None = None,
    ) -> None:
        self.eps = _check_real("eps", eps, minimum=0.0, strict=False)
        self.steps = _check_int("steps", steps, minimum=1)
        self.step_size = _check_real("step_size", step_size, minimum=0.0, strict=self.eps > 0)
        self.norm = _check_choice("norm", norm, self.norm_choices)
        self.loss = _check_choice("loss", loss, self.loss_choices)
        if not isinstance(random_start, bool):
            raise AttackError(f"random_start must be True or False, got {random_start!r}")
        self.random_start = random_start
        self.restarts = _check_int("restarts", restarts, minimum=1)
        self.eot_samples = _check_int("eot_samples", eot_samples, minimum=1)
        self.kappa = _check_real("kappa", kappa, minimum=0.0, strict=False)
        self.max_batch = None if max_batch is None else _check_int("max_batch", max_batch, minimum=1)
        self._loss_fn: LossFn = get_loss(self.loss, kappa=self.kappa)

    # ------------------------------------------------------------------ public API

    def config(self) -> dict[str, Any]:
        """JSON-able settings including ``"name"``: every constructor argument but ``max_batch``.

        Stable (same settings, same dict) and complete (enough to rebuild the attack with
        :func:`build_attack`), so it can be part of a cache key.
        """
        out: dict[str, Any] = {"name": self.name}
        for key in _init_parameters(type(self)):
            if key in _NOT_IN_CONFIG:
                continue
            if not hasattr(self, key):
                raise AttributeError(
                    f"{type(self).__name__} must store its constructor argument {key!r} as an attribute"
                )
            out[key] = getattr(self, key)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Adversarial examples for ``model`` at ``(x, y)``.

        Parameters
        ----------
        model : nn.Module
            Maps ``(N, ...)`` inputs in [0, 1] to logits ``(N, K)``. Its modes are left as
            they are; its parameters' ``requires_grad`` and ``grad`` are unchanged after.
        x : torch.Tensor
            ``(N, ...)`` floating inputs in [0, 1] (not modified).
        y : torch.Tensor
            ``(N,)`` integer labels in ``[0, K)`` (not modified).
        generator : torch.Generator, optional
            Source of all randomness (random starts and the model's stochastic layers);
            the same generator state gives the same result. ``None`` uses each stochastic
            module's own generator and torch's default one for random starts.

        Returns
        -------
        torch.Tensor
            ``x_adv``, detached, same shape, dtype and device as ``x``, within ``eps`` of
            ``x`` in ``norm`` and in [0, 1].

        Raises
        ------
        AttackError
            Inputs of the wrong shape, dtype or range, or labels out of range.

        Warns
        -----
        RandomizedDefenseWarning
            ``eot_samples == 1`` and two identical forward passes give different outputs.
        ProbabilityOutputWarning
            The outputs look like probabilities (rows in [0, 1] summing to 1).
        """
        x, y = self._check_inputs(x, y)
        if x.shape[0] == 0 or self.eps == 0.0:
            return x.clone()
        with preserve_model_state(model):
            self._runtime_checks(model, x, y)
            with use_generator(model, generator):
                return self._attack(model, x, y, generator=generator)

    # ------------------------------------------------------------------ hooks

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One restart: projected gradient ascent on the EOT gradient (override for other rules).

        Called with the model frozen and ``use_generator`` active; ``x`` and ``y`` are
        validated and detached. Must return a new tensor inside the ball and the box.
        """
        bounds = linf_bounds(x, self.eps) if self.norm == "linf" else None
        if self.random_start:
            x_adv = random_start(x, eps=self.eps, norm=self.norm, generator=generator)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            g = eot_gradient(model, x_adv, y, self._loss_fn, eot_samples=self.eot_samples, max_batch=self.max_batch)
            gradient_step(x_adv, g.grad, step_size=self.step_size, norm=self.norm)
            project(x_adv, x, eps=self.eps, norm=self.norm, bounds=bounds)
        return x_adv

    # ------------------------------------------------------------------ internals

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Run the restarts and keep each example's worst case."""
        best = self._perturb(model, x, y, generator=generator)
        if self.restarts == 1:
            return best
        best_fooled, best_loss = self._score(model, best, y)
        for _ in range(1, self.restarts):
            cand = self._perturb(model, x, y, generator=generator)
            fooled, loss = self._score(model, cand, y)
            self._keep_worst(best, best_fooled, best_loss, cand, fooled, loss)
        return best

    def _score(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fooled, loss)`` per example from one forward pass (one draw of a stochastic model)."""
        step = x_adv.shape[0] if self.max_batch is None else self.max_batch
        fooled, losses = [], []
        with torch.no_grad():
            for a in range(0, x_adv.shape[0], step):
                out = model(x_adv[a : a + step])
                fooled.append(out.argmax(dim=1) != y[a : a + step])
                losses.append(self._loss_fn(out, y[a : a + step]))
        return torch.cat(fooled), torch.cat(losses)

    @staticmethod
    def _keep_worst(
        best: torch.Tensor,
        best_fooled: torch.Tensor,
        best_loss: torch.Tensor,
        cand: torch.Tensor,
        fooled: torch.Tensor,
        loss: torch.Tensor,
    ) -> None:
        """Update the running worst case in place, per example.

        The order is lexicographic in ``(fooled, loss)``: a fooling candidate replaces a
        non-fooling one; between two that agree on ``fooled`` the higher loss wins (ties
        keep the earlier restart). So an example misclassified by any restart (on its
        scoring draw) stays misclassified.
        """
        better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
        best[better] = cand[better]
        best_fooled |= fooled
        torch.where(better, loss, best_loss, out=best_loss)

    def _check_inputs(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise AttackError("x must be a floating tensor of shape (N, ...) with values in [0, 1]")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise AttackError(f"y must be a 1-D tensor of {x.shape[0]} labels, one per row of x")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise AttackError(f"y must hold integer class labels (int64), got dtype {y.dtype}")
        if y.device != x.device:
            raise AttackError(f"x and y must be on the same device, got {x.device} and {y.device}")
        x = x.detach()
        if x.numel():
            lo, hi = torch.aminmax(x)
            if not (lo.item() >= 0.0 and hi.item() <= 1.0):
                raise AttackError(
                    "x must lie in [0, 1] (normalise inside the model), "
                    f"got values in [{lo.item():.4g}, {hi.item():.4g}]"
                )
        return x, y.detach().long()

    def _runtime_checks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Cheap AutoAttack-style checks on a few examples, with a private generator.

        The private generator keeps the caller's generator stream untouched, so the
        checks do not change the attack's result.
        """
        xs = x[:_CHECK_EXAMPLES]
        check_gen = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad(), use_generator(model, check_gen):
                out1 = model(xs)
                out2 = model(xs) if self.eot_samples == 1 else None
        except (RuntimeError, TypeError) as exc:  # say why in one line (shape, dtype) instead of torch's message
            from gametheory_defense.models import check_classifier

            try:
                check_classifier(model, xs)
            except ValueError as clear:
                raise AttackError(str(clear)) from None
            raise exc
        from gametheory_defense.models import check_logits

        try:
            check_logits(out1, batch=xs.shape[0])
        except ValueError as exc:
            raise AttackError(str(exc)) from None
        k = out1.shape[1]
        y_lo, y_hi = torch.aminmax(y)
        if y_lo.item() < 0 or y_hi.item() >= k:
            raise AttackError(f"labels must lie in [0, {k - 1}] for a model with {k} outputs")
        if out2 is not None:
            scale = 1.0 + out1.abs().max().item()
            if (out1 - out2).abs().max().item() > 1e-5 * scale:
                warnings.warn(
                    f"{type(self).__name__} with eot_samples=1 is attacking a randomized model (two identical "
                    "forward passes differ); its robustness will be overestimated: set eot_samples > 1 "
                    "(Athalye et al., 2018)",
                    RandomizedDefenseWarning,
                    stacklevel=3,
                )
        if k > 1 and out1.min().item() >= 0.0 and out1.max().item() <= 1.0:
            if (out1.sum(dim=1) - 1.0).abs().max().item() < 1e-4:
                warnings.warn(
                    "the model's outputs look like probabilities (rows in [0, 1] summing to 1); attacks "
                    "need logits: remove the final softmax",
                    ProbabilityOutputWarning,
                    stacklevel=3,
                )
