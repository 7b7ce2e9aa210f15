"""Stochastic Activation Pruning (Dhillon et al., ICLR 2018).

SAP is a post-hoc stochastic defense: after each chosen activation layer it keeps a random
subset of units, chosen with probability proportional to their magnitude, and rescales
the survivors so that the layer's output is unbiased (``E[SAP(h)] = h``). No retraining is
needed and no parameters are added.

For one example and one layer with activations ``h`` (all non-batch dimensions flattened,
``n`` units) and ``r = ceil(frac * n)`` draws:

* ``p_j = |h_j| / sum_k |h_k|``;
* ``exact`` mode (the paper): draw ``r`` indices **with replacement** from ``p``, keep the
  units drawn at least once and zero the rest;
* each kept unit is scaled by ``1 / q_j`` with ``q_j = 1 - (1 - p_j)^r``, the probability
  that unit ``j`` is drawn at least once, so every unit is unbiased;
* ``fast`` mode keeps each unit independently with the same probability ``q_j``. It has
  the same expectation and the same per-unit marginals as ``exact`` but a different joint
  law (units are independent, and the number kept is not bounded by ``r``).

Gradients follow the convention of the paper and of the attack on it by Athalye et al.
(ICML 2018): the keep mask and the scale are computed from the *detached* magnitudes and
act as constants, so the output is ``h * mask * scale`` and its gradient with respect to
``h`` is ``mask * scale``. Expectation over Transformation averages this over draws.
"""

from __future__ import annotations

import copy
import math
import inspect
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from gametheory_defense.errors import GTDError
from gametheory_defense.stochastic import StochasticModule, _derived_generator, random_tensor

__all__ = [
    "StochasticActivationPruning",
    "SAPForward",
    "SAPCoverageError",
    "SAP_MODES",
    "SAP_ACTIVATIONS",
    "apply_sap",
    "remove_sap",
    "sap_settings",
    "activation_sites",
    "relu_layer_names",
]

log = logging.getLogger(__name__)

#: The sampling modes of :class:`StochasticActivationPruning`.
SAP_MODES: tuple[str, ...] = ("exact", "fast")


def _check_frac(frac: float) -> float:
    if isinstance(frac, bool) or not isinstance(frac, (int, float)):
        raise ValueError(f"SAP frac must be a positive number, got {frac!r}")
    frac = float(frac)
    if not math.isfinite(frac) or frac <= 0.0:
        raise ValueError(
            f"SAP frac must be a finite number > 0 (the number of draws per layer as a "
            f"fraction of its units; 1.0 is the paper's default), got {frac!r}"
        )
    return frac


def _check_mode(mode: str) -> str:
    if mode not in SAP_MODES:
        raise ValueError(f"SAP mode must be one of {list(SAP_MODES)}, got {mode!r}")
    return mode


class StochasticActivationPruning(StochasticModule):
    """Stochastic Activation Pruning of Dhillon et al. (ICLR 2018), batched and unbiased.

    Keeps a random, magnitude-weighted subset of the units of each example and rescales
    the kept units so that ``E[output] = input`` exactly (see the module docstring for the
    sampling law). Stays stochastic in ``eval()`` mode; with ``stochastic = False`` it is
    the identity, which is its expectation.

    Parameters
    ----------
    frac : float, default 1.0
        Number of draws per example and layer as a fraction of the layer's units:
        ``r = ceil(frac * n)``. Any finite ``frac > 0`` is allowed; ``frac > 1`` means more
        draws than units (fewer units pruned), which is legitimate for sampling with
        replacement. Even ``frac = 1`` prunes many units, because draws repeat.
    mode : {"exact", "fast"}, default "exact"
        ``"exact"``: ``r`` draws with replacement (the paper; at most ``r`` units kept).
        ``"fast"``: independent Bernoulli keeps with the same marginal probabilities.

    Attributes
    ----------
    generator : torch.Generator or None
        Source of randomness (see :mod:`gametheory_defense.stochastic`).
    stochastic : bool
        ``False`` makes the forward pass the identity.

    Notes
    -----
    No Python loop over examples. ``fast`` mode costs ``O(B n)``. ``exact`` mode finds
    the units hit by the ``r`` draws with an exact sampler chosen by device: on
    accelerators (and for ``r < 256``) inverse-CDF sampling, ``torch.searchsorted`` of
    sorted uniforms in each row's cumulative sum, ``O(B (n + r log n))``; on the CPU,
    where each binary search costs tens of nanoseconds, Poissonisation with a deficit
    (see :func:`_draw_hits`), which replaces all but about ``6 sqrt(r)`` of the searches
    per row by elementwise work. Both give exactly the law above up to float rounding.

    Probabilities are computed in float32 (float64 for float64 inputs) after dividing by
    the per-example maximum, and ``q_j`` as ``-expm1(r * log1p(-p_j))``, so inputs
    spanning ``1e-30`` to ``1e30`` produce neither ``inf`` nor ``NaN`` in the forward or
    backward pass. Because ``q_j >= p_j``, every output satisfies
    ``|out_j| <= sum_k |h_k|``: it is finite whenever the layer's L1 norm is. Units whose
    keep probability is below the resolution of the uniforms (about ``2**-24`` in
    float32) are kept with a probability rounded to that grid. A unit with ``h_j = 0`` is
    never kept, and a layer whose activations are all zero passes through unchanged.
    Half-precision inputs are processed in float32 and returned in their own dtype.

    Shape
    -----
    - Input: ``(B, *)``, any number of non-batch dimensions.
    - Output: same shape and dtype as the input.

    Examples
    --------
    >>> import torch
    >>> sap = StochasticActivationPruning(frac=1.0)
    >>> sap.generator = torch.Generator().manual_seed(0)
    >>> h = torch.tensor([[0.0, 1.0, 3.0]])
    >>> out = sap(h)
    >>> bool(out[0, 0] == 0)
    True
    >>> sap.stochastic = False
    >>> torch.equal(sap(h), h)
    True
    """

    def __init__(self, frac: float = 1.0, *, mode: str = "exact") -> None:
        super().__init__()
        self.frac: float = _check_frac(frac)
        self.mode: str = _check_mode(mode)

    def extra_repr(self) -> str:
        return f"frac={self.frac}, mode={self.mode!r}"

    def num_draws(self, num_units: int) -> int:
        """Draws per example for a layer of ``num_units`` units: ``ceil(frac * num_units)``.

        The product is rounded to 9 decimals first, so ``0.3 * 10`` gives 3 draws, not 4.
        """
        return max(1, math.ceil(round(self.frac * num_units, 9)))

    def keep_probability(self, h: torch.Tensor) -> torch.Tensor:
        """Probability ``q_j = 1 - (1 - p_j)^r`` that each unit of ``h`` is kept.

        Parameters
        ----------
        h : torch.Tensor
            Activations, shape ``(B, *)``.

        Returns
        -------
        torch.Tensor
            ``q`` with the shape of ``h`` (float32, or float64 for float64 input), in
            [0, 1]; 0 exactly where ``h`` is 0. Both modes keep unit ``j`` with this
            probability and scale it by ``1 / q_j``.
        """
        p = _unit_probabilities(h)
        return _keep_prob(p, self.num_draws(p.shape[1])).reshape(h.shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Prune and rescale ``h``; the identity when ``stochastic`` is ``False``."""
        if not self.stochastic or h.numel() == 0:
            return h
        p = _unit_probabilities(h)  # (B, n), detached, rows sum to 1 (or are all 0)
        r = self.num_draws(p.shape[1])
        q = _keep_prob(p, r)
        if self.mode == "exact":
            keep = _draw_hits(p, r, generator=self.generator)
        else:
            u = random_tensor("rand", p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
            keep = u < q  # q = 0 (a zero unit) is never kept, since u >= 0
            del u
        # mask * scale, finite everywhere: 1/q only where kept (q > 0 there).
        factor = q.clamp_min_(torch.finfo(q.dtype).tiny).reciprocal_().mul_(keep)
        factor = factor.reshape(h.shape)
        if factor.dtype != h.dtype:
            # Rescale in the (wider) probability dtype, then return in the input's dtype.
            return (h.to(factor.dtype) * factor).to(h.dtype)
        return h * factor


def _unit_probabilities(h: torch.Tensor) -> torch.Tensor:
    """``p = |h| / sum |h|`` per example, detached, flattened to ``(B, n)``.

    Computed in float32 (float64 for float64 input) after dividing by the row maximum, so
    no intermediate overflows; ``p <= 1`` exactly (correctly rounded division of
    ``w <= sum w``). All-zero rows give ``p = 0``.
    """
    if h.dim() == 0:
        raise ValueError("SAP needs a batched tensor of shape (B, *), got a scalar")
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    a = h.detach().reshape(h.shape[0], -1).to(dtype).abs()
    peak = a.amax(dim=1, keepdim=True)
    a.div_(torch.where(peak > 0, peak, torch.ones_like(peak)))
    total = a.sum(dim=1, keepdim=True)
    return a.div_(torch.where(total > 0, total, torch.ones_like(total)))


def _keep_prob(p: torch.Tensor, r: int) -> torch.Tensor:
    """``1 - (1 - p)^r`` without cancellation: ``-expm1(r * log1p(-p))`` for p in [0, 1]."""
    # p = 1 gives log1p(-1) = -inf and q = 1 exactly; p = 0 gives q = 0.
    return torch.neg(p).log1p_().mul_(r).expm1_().neg_()


# ----------------------------------------------------------------------------------------
# Exact sampling: which units do r draws with replacement hit?
# ----------------------------------------------------------------------------------------

#: Below this many draws (or on accelerators) the plain inverse-CDF sampler is used.
_POISSON_MIN_DRAWS = 256
#: Poisson rates above this are sampled by ``torch.poisson`` instead of inverse CDF.
_HEAVY_RATE = 16.0
#: The Poisson stage uses ``lambda = r - DEFICIT_SIGMAS * sqrt(r)`` draws on average.
_DEFICIT_SIGMAS = 3.0
#: Inverse-CDF Poisson levels evaluated for every unit (the rest only where undecided).
_FULL_LEVELS = 4
#: Inverse-CDF Poisson levels beyond this are not examined (probability < 1e-30).
_MAX_LEVEL = 96


def _draw_hits(
    p: torch.Tensor,
    r: int,
    *,
    generator: torch.Generator | None,
    method: str = "auto",
    deficit_sigmas: float = _DEFICIT_SIGMAS,
) -> torch.Tensor:
    """Which units ``r`` i.i.d. draws from each row of ``p`` hit at least once.

    Two exact samplers of the same law (the support of ``Multinomial(r, p)``):

    ``"direct"``
        Inverse-CDF sampling: ``r`` uniforms per row located in the row's cumulative
        sum with ``torch.searchsorted``; ``O(B (n + r log n))``. Fast on accelerators,
        but about 60 ns per draw on one CPU thread (unpredictable branches).
    ``"poisson"``
        Poissonisation with a deficit: with ``lambda = r - c sqrt(r)``, draw independent
        counts ``N_j ~ Poisson(lambda p_j)`` (elementwise, mostly from one uniform each by
        inverse CDF) and their total ``T``. Given ``T = t``, ``N`` is
        ``Multinomial(t, p)``, so adding ``r - t`` further draws by the direct sampler
        gives exactly ``Multinomial(r, p)``. Rows with ``T > r`` (probability about
        ``Phi(-c)``) are redrawn by the direct sampler, which leaves the law unchanged.
        Only about ``2 c sqrt(r)`` binary searches per row remain.

    ``"auto"`` uses ``"poisson"`` on the CPU for ``r >= 256`` and ``"direct"`` otherwise.

    Parameters
    ----------
    p : torch.Tensor
        ``(B, n)`` probabilities, rows summing to 1 or all zero (then nothing is hit).
    r : int
        Draws per row.
    generator : torch.Generator or None
        Source of randomness (may live on another device than ``p``).
    method : {"auto", "direct", "poisson"}
        Sampler.
    deficit_sigmas : float
        ``c`` above (``"poisson"`` only).

    Returns
    -------
    torch.Tensor
        ``(B, n)`` bool; never true where ``p`` is 0; at most ``r`` true per row.
    """
    if method == "auto":
        method = "poisson" if p.device.type == "cpu" and r >= _POISSON_MIN_DRAWS else "direct"
    if method not in ("direct", "poisson"):
        raise ValueError(f"unknown SAP sampler {method!r}; use 'auto', 'direct' or 'poisson'")
    cdf = torch.cumsum(p, dim=1)
    lam = r - deficit_sigmas * math.sqrt(r)
    if method == "direct" or lam <= 0:
        return _inverse_cdf_hits(cdf, r, None, generator=generator)
    hits, total = _poisson_hits(p, lam, generator=generator)
    deficit = total.neg_().add_(r)  # draws still to make, per row
    fix = int(deficit.max().item())
    if fix > 0:
        hits |= _inverse_cdf_hits(cdf, fix, deficit.clamp(min=0), generator=generator)
    over = (deficit < 0).nonzero().squeeze(1)
    if over.numel():  # T > r: redraw those rows from scratch
        hits[over] = _inverse_cdf_hits(cdf[over], r, None, generator=generator)
    return hits


def _inverse_cdf_hits(
    cdf: torch.Tensor,
    draws: int,
    per_row: torch.Tensor | None,
    *,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Units hit by ``draws`` (or ``per_row[i] <= draws``) inverse-CDF draws per row.

    The uniforms of a row are generated already sorted, from normalised cumulative sums
    of exponential spacings (``U_(k) = S_k / S_{d+1}``, ``S_k = E_1 + ... + E_k``), which
    makes the binary searches of ``torch.searchsorted`` about twice as fast on a CPU
    (predictable branches) and lets each row take its own number ``d`` of draws.
    """
    batch, n = cdf.shape
    total = cdf[:, -1:]
    spacing = random_tensor("rand", (batch, draws + 1), generator=generator, device=cdf.device, dtype=cdf.dtype)
    cumulative = spacing.neg_().log1p_().cumsum_(dim=1)  # -S_k, decreasing (E_k = -log(1 - v))
    last = cumulative[:, -1:] if per_row is None else cumulative.gather(1, per_row.unsqueeze(1))
    u = torch.div(cumulative[:, :draws], last).mul_(total)  # sorted uniforms on [0, total]
    # First index with cdf > u: unit j is drawn iff cdf[j-1] <= u < cdf[j], so units with
    # zero mass (an empty interval) are never drawn. u == total (rounding) and all-zero
    # rows give index n: a spare column that is dropped.
    idx = torch.searchsorted(cdf, u, right=True)
    del spacing, cumulative, u
    if per_row is not None:
        unused = torch.arange(draws, device=cdf.device) >= per_row.unsqueeze(1)
        idx.masked_fill_(unused, n)
    hits = torch.zeros((batch, n + 1), dtype=torch.bool, device=cdf.device)
    hits.scatter_(1, idx, True)
    return hits[:, :n]


def _count(mask: torch.Tensor) -> torch.Tensor:
    """Number of true entries per row of a 2-D bool tensor, as int64."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()  # int32: no int64 copy


def _poisson_hits(
    p: torch.Tensor, lam: float, *, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N >= 1, sum N)`` per row for independent ``N_j ~ Poisson(lam * p_j)``.

    ``N_j`` is the inverse CDF of one uniform ``u_j``: ``N_j >= k + 1`` iff
    ``u_j >= P(N_j <= k)``. Levels ``k < _FULL_LEVELS`` are evaluated for all units in
    ``p``'s dtype; higher levels only for the few units still undecided, in float64.
    Rates above ``_HEAVY_RATE`` are sampled by ``torch.poisson`` instead.
    """
    batch, n = p.shape
    neg_mu = p * (-lam)
    u = random_tensor("rand", p.shape, generator=generator, device=p.device, dtype=p.dtype)
    cdf_k = torch.exp(neg_mu)  # P(N = 0)
    term = torch.mul(cdf_k, neg_mu).neg_()  # P(N = 1)
    levels = [u >= cdf_k]  # levels[k]: N >= k + 1
    for k in range(1, _FULL_LEVELS):
        if k > 1:
            term.mul_(neg_mu).div_(-k)  # P(N = k)
        cdf_k.add_(term)  # P(N <= k)
        levels.append(u >= cdf_k)
    del cdf_k, term
    hits, last = levels[0], levels[-1]
    total = sum(_count(level) for level in levels)
    flat_mu, flat_u = neg_mu.view(-1), u.view(-1)
    if lam * float(p.amax()) > _HEAVY_RATE:
        where = (neg_mu < -_HEAVY_RATE).view(-1).nonzero().squeeze(1)
        rows = where.div(n, rounding_mode="floor")
        for level in levels:  # drop their inverse-CDF counts
            total.index_add_(0, rows, -level.view(-1).index_select(0, where).long())
        last.view(-1).index_fill_(0, where, False)
        counts = _poisson(flat_mu.index_select(0, where).neg().double(), generator=generator)
        hits.view(-1).index_put_((where,), counts > 0)
        total.index_add_(0, rows, counts.long())

    # Light units with N >= _FULL_LEVELS: walk up the CDF in float64 until it passes u.
    where = last.view(-1).nonzero().squeeze(1)
    rows = where.div(n, rounding_mode="floor")
    mu = flat_mu.index_select(0, where).neg_().double()
    uu = flat_u.index_select(0, where).double()
    term = torch.exp(-mu)
    cdf_k = term.clone()
    for k in range(1, _FULL_LEVELS):
        term.mul_(mu).div_(k)
        cdf_k.add_(term)  # P(N <= _FULL_LEVELS - 1)
    beyond = []
    for k in range(_FULL_LEVELS, _MAX_LEVEL):
        if rows.numel() == 0:
            break
        term.mul_(mu).div_(k)  # P(N = k)
        cdf_k.add_(term)
        more = torch.ge(uu, cdf_k).nonzero().squeeze(1)  # N >= k + 1
        rows, mu, uu, term, cdf_k = (t.index_select(0, more) for t in (rows, mu, uu, term, cdf_k))
        beyond.append(rows)
    if beyond:
        total += torch.bincount(torch.cat(beyond), minlength=batch)
    return hits, total


def _poisson(rates: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """``torch.poisson`` on ``rates``' device, from ``generator`` as :func:`random_tensor` draws."""
    if generator is None or generator.device.type == rates.device.type:
        return torch.poisson(rates, generator=generator)
    local = _derived_generator(generator, rates.device)
    if local is not None:
        return torch.poisson(rates, generator=local)
    return torch.poisson(rates.to(generator.device), generator=generator).to(rates.device)


# ----------------------------------------------------------------------------------------
# Putting SAP into a trained model: activation call sites
# ----------------------------------------------------------------------------------------


class SAPCoverageError(GTDError, ValueError):
    """SAP cannot be placed at every activation call site asked for (the message names them)."""


@dataclass(frozen=True)
class _ActivationKind:
    """One activation family: its module classes, functions and tensor methods."""

    name: str
    modules: tuple[type[nn.Module], ...]
    functions: tuple[Callable[..., Any], ...]
    inplace_functions: tuple[Callable[..., Any], ...]
    methods: tuple[str, ...]
    inplace_methods: tuple[str, ...]
    #: Words whose presence in a module's source suggests it may call this activation.
    words: tuple[str, ...]


_KINDS: dict[str, _ActivationKind] = {
    k.name: k
    for k in (
        _ActivationKind(
            "relu", (nn.ReLU,), (F.relu, torch.relu), (F.relu_, torch.relu_), ("relu",), ("relu_",), ("relu",)
        ),
        _ActivationKind("gelu", (nn.GELU,), (F.gelu,), (), (), (), ("gelu",)),
        _ActivationKind("silu", (nn.SiLU,), (F.silu,), (), (), (), ("silu", "swish")),
        _ActivationKind(
            "leaky_relu", (nn.LeakyReLU,), (F.leaky_relu,), (F.leaky_relu_,), (), (), ("leaky_relu", "leakyrelu")
        ),
        _ActivationKind("elu", (nn.ELU,), (F.elu,), (F.elu_,), (), (), ("elu",)),
    )
}

#: Activations SAP can follow (the ``activations`` choices of :func:`apply_sap`).
#: ``"relu"`` is the default and the setting of Dhillon et al. (ICLR 2018).
SAP_ACTIVATIONS: tuple[str, ...] = tuple(_KINDS)

#: torch.nn classes with submodules whose forward calls activations (traced into).
_TORCH_COMPOSITES: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)

#: Name of the ModuleDict holding the SAP modules of a :class:`SAPForward`.
_SITES_ATTR = "_sap_sites"


def _check_activations(activations: str | Sequence[str]) -> tuple[str, ...]:
    """Validated activation names, in the canonical order of :data:`SAP_ACTIVATIONS`."""
    items = [activations] if isinstance(activations, str) else activations
    try:
        names = list(items)
    except TypeError:
        names = [items]  # type: ignore[list-item]
    bad = [a for a in names if not isinstance(a, str) or a not in _KINDS]
    if bad or not names:
        raise ValueError(
            f"SAP activations must be one of {list(SAP_ACTIVATIONS)} or a list of them, got {activations!r}"
        )
    return tuple(k for k in SAP_ACTIVATIONS if k in names)


def _module_kind(m: nn.Module) -> str | None:
    """The activation family of an activation module (or of a SAP wrapper's activation)."""
    if _is_sap_wrapper(m):
        m = m[0]  # type: ignore[index]
    for kind in _KINDS.values():
        if isinstance(m, kind.modules):
            return kind.name
    return None


def _activation_of(m: nn.Module) -> nn.Module:
    """The activation module itself (unwrapping a SAP wrapper)."""
    return m[0] if _is_sap_wrapper(m) else m  # type: ignore[index]


def _node_kind(node: fx.Node) -> tuple[str, bool] | None:
    """``(family, in_place)`` of a functional or method activation call, else ``None``."""
    for kind in _KINDS.values():
        if node.op == "call_function":
            if node.target in kind.functions:
                return kind.name, bool(node.kwargs.get("inplace", False))
            if node.target in kind.inplace_functions:
                return kind.name, True
        elif node.op == "call_method":
            if node.target in kind.methods:
                return kind.name, False
            if node.target in kind.inplace_methods:
                return kind.name, True
    return None


def _is_sap_wrapper(m: nn.Module) -> bool:
    """The ``nn.Sequential(activation, SAP)`` layout that :func:`apply_sap` creates."""
    return (
        type(m) is nn.Sequential
        and len(m) == 2
        and isinstance(m[1], StochasticActivationPruning)
        and any(isinstance(m[0], kind.modules) for kind in _KINDS.values())
    )


def _traced_into(m: nn.Module) -> bool:
    """Whether discovery traces ``m``'s own forward (else it is an opaque leaf)."""
    if _module_kind(m) is not None or isinstance(m, StochasticModule):
        return False
    if isinstance(m, SAPForward):
        return True
    if type(m).__module__.startswith(("torch.nn", "torch.ao.nn")):
        return isinstance(m, _TORCH_COMPOSITES)
    return True


class _OwnerTracer(fx.Tracer):
    """Traces one module's own forward; every submodule call is a ``call_module`` node."""

    def __init__(self, owner: nn.Module) -> None:
        # No autowrapping of ``math`` functions: patching them costs more than tracing a
        # block, and a forward applying them to traced values is reported as untraceable.
        super().__init__(autowrap_modules=())
        self._owner = owner

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._owner


def _trace_owner(owner: nn.Module) -> tuple[fx.Graph, nn.Module]:
    """The fx graph of ``owner``'s own forward (submodules are not traced into), and its root.

    The root is a shallow copy of ``owner`` (for a :class:`SAPForward`, of its original),
    so attributes that tracing adds (tensor constants) do not land on the model.
    """
    root = owner._shadow() if isinstance(owner, SAPForward) else copy.copy(owner)
    return _OwnerTracer(root).trace(root), root


@dataclass(frozen=True)
class _Site:
    """One activation call site found by :func:`_discover`."""

    name: str
    kind: str
    owner: nn.Module
    node: str
    module: nn.Module | None  # the activation module for module calls
    inplace: bool
    input_used_later: bool  # an in-place site whose input is read again afterwards


@dataclass
class _Discovery:
    """Every activation call site of a model, in forward order, and what could not be traced."""

    sites: list[_Site]
    names: dict[int, str]  # id(module) -> qualified name
    graphs: dict[int, fx.Graph]  # id(owner) -> its graph
    node_sites: dict[int, dict[str, _Site]]  # id(owner) -> node name -> site
    opaque: list[tuple[str, nn.Module, str]]  # (name, module, reason)
    module_calls: dict[int, int]  # id(activation module) -> number of call sites
    owners: dict[int, nn.Module]  # id(owner) -> owner, for every traced owner
    modules: dict[str, nn.Module]  # qualified name -> module

    def relevant_opaque(self, kinds: tuple[str, ...]) -> list[tuple[str, nn.Module, str]]:
        return [o for o in self.opaque if _may_call(o[1], kinds)]


def _discover(model: nn.Module) -> _Discovery:
    """Trace ``model`` module by module with ``torch.fx`` and list its activation call sites.

    Each module whose forward is traced (an *owner*) is traced on its own, its submodules
    appearing as calls; owners reached by those calls are traced in turn, in call order,
    so the sites come out in forward order. A module that is called but whose forward
    cannot be traced (data-dependent control flow, ...) is recorded as opaque.
    """
    names: dict[int, str] = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name)
    found = _Discovery([], names, {}, {}, [], {}, {}, dict(model.named_modules()))
    module_nodes: list[tuple[nn.Module, nn.Module, str, str, bool, bool]] = []
    pending: list[tuple[str, nn.Module, str, bool, bool]] = []  # functional sites, in order
    order: list[tuple[str, int]] = []  # ("m", index into module_nodes) or ("f", index into pending)
    seen: set[int] = set()

    def visit(owner: nn.Module) -> None:
        if id(owner) in seen:
            return
        seen.add(id(owner))
        try:
            graph, _ = _trace_owner(owner)
        except Exception as exc:  # noqa: BLE001 - any tracing failure makes the module opaque
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            found.opaque.append((names.get(id(owner), "?"), owner, f"{type(exc).__name__}: {reason}"))
            return
        found.graphs[id(owner)] = graph
        found.owners[id(owner)] = owner
        found.node_sites[id(owner)] = {}
        nodes = list(graph.nodes)
        position = {n: i for i, n in enumerate(nodes)}
        functional_count: dict[str, int] = {}
        for node in nodes:
            if node.op == "call_module":
                sub = owner.get_submodule(str(node.target))
                kind = _module_kind(sub)
                if kind is not None:
                    inplace = bool(getattr(_activation_of(sub), "inplace", False))
                    later = inplace and _input_used_after(node, position)
                    order.append(("m", len(module_nodes)))
                    module_nodes.append((sub, owner, node.name, kind, inplace, later))
                elif _traced_into(sub):
                    visit(sub)
            else:
                hit = _node_kind(node)
                if hit is not None:
                    kind, inplace = hit
                    k = functional_count.get(kind, 0)
                    functional_count[kind] = k + 1
                    owner_name = names.get(id(owner), "?")
                    later = inplace and _input_used_after(node, position)
                    order.append(("f", len(pending)))
                    pending.append((f"{owner_name}:{kind}#{k}", owner, node.name, kind, inplace, later))  # type: ignore[arg-type]

    if _module_kind(model) is not None:  # the model itself is an activation module
        found.sites.append(_Site("", _module_kind(model) or "", model, "", model, False, False))
        found.module_calls[id(model)] = 1
        return found
    if _traced_into(model):
        visit(model)
    for sub, *_ in module_nodes:
        found.module_calls[id(sub)] = found.module_calls.get(id(sub), 0) + 1
    calls_so_far: dict[int, int] = {}
    for what, i in order:
        if what == "m":
            sub, owner, node_name, kind, inplace, later = module_nodes[i]
            base = names[id(sub)]
            k = calls_so_far.get(id(sub), 0)
            calls_so_far[id(sub)] = k + 1
            name = base if found.module_calls[id(sub)] == 1 else f"{base}#{k}"
            site = _Site(name, kind, owner, node_name, sub, inplace, later)
        else:
            name, owner, node_name, kind, inplace, later = pending[i]  # type: ignore[misc]
            site = _Site(name, kind, owner, node_name, None, inplace, later)
        found.sites.append(site)
        found.node_sites[id(site.owner)][site.node] = site
    return found


def _input_used_after(node: fx.Node, position: dict[fx.Node, int]) -> bool:
    """Whether an in-place call's input is read by a node after the call."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    return any(position.get(u, -1) > position[node] for u in node.args[0].users if u is not node)


def _may_call(m: nn.Module, kinds: tuple[str, ...]) -> bool:
    """Whether an untraceable module may make an activation call of one of ``kinds``.

    True when it holds an activation module of those kinds, holds an activation
    function as an attribute, or its class source mentions the activation (or cannot
    be read). Only the absence of all three clears it.
    """
    chosen = [_KINDS[k] for k in kinds]
    if any(_module_kind(s) in kinds for s in m.modules()):
        return True
    funcs = {f for k in chosen for f in (*k.functions, *k.inplace_functions)}
    if any(callable(v) and v in funcs for v in vars(m).values() if not isinstance(v, torch.Tensor)):
        return True
    words = [w for k in chosen for w in k.words]
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    for cls in type(m).__mro__:
        if cls in (nn.Module, object) or cls.__module__.startswith("torch.nn.modules.module"):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            return True
        if pattern.search(source):
            return True
    return False


def _describe_opaque(opaque: list[tuple[str, nn.Module, str]]) -> str:
    """``'blocks.0' (Block; TraceError: ...), ...``: the untraceable modules and why."""
    return ", ".join(f"{name or '<model>'!r} ({type(m).__qualname__}; {reason})" for name, m, reason in opaque)


def activation_sites(model: nn.Module, activations: str | Sequence[str] = "relu") -> list[str]:
    """Names of the activation call sites of ``model`` that SAP can follow, in forward order.

    Sites are found by tracing each module's forward with ``torch.fx``:

    * an activation module called once is named by its qualified name (``"features.1"``);
      one called at several places gets one site per call, ``"name#0"``, ``"name#1"``, ...;
      a module that is declared but never called has no site;
    * a functional call (``F.relu``, ``torch.relu``, ``x.relu()``, their in-place forms,
      ``F.gelu``, ...) is named ``"owner:relu#k"``: the qualified name of the module whose
      forward makes it (empty for the model itself) and its rank among that forward's
      calls of the same activation.

    Parameters
    ----------
    model : nn.Module
        Any model.
    activations : str or sequence of str, default "relu"
        Activation families, from :data:`SAP_ACTIVATIONS`.

    Returns
    -------
    list of str
        Site names, which :func:`apply_sap` accepts in ``layers`` (integer ``layers`` index
        this list).

    Raises
    ------
    SAPCoverageError
        A module that may call one of these activations cannot be traced; the message
        names it and why.
    """
    kinds = _check_activations(activations)
    found = _discover(model)
    opaque = found.relevant_opaque(kinds)
    if opaque:
        raise SAPCoverageError(
            f"cannot list every {'/'.join(kinds)} call site: torch.fx cannot trace the forward of "
            f"{_describe_opaque(opaque)}"
        )
    return [s.name for s in found.sites if s.kind in kinds]


def relu_layer_names(model: nn.Module) -> list[str]:
    """Names of the ReLU call sites of ``model``, in forward order (see :func:`activation_sites`).

    For the built-in models (every activation its own ``nn.ReLU``, called once) these are
    the qualified names of the ``nn.ReLU`` modules, in registration order.
    """
    return activation_sites(model, "relu")


# ----------------------------------------------------------------------------------------
# SAPForward: a module whose forward is its original's with SAP at chosen call sites
# ----------------------------------------------------------------------------------------

_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"_sap_base", "_sap_fn"}


class SAPForward(nn.Module):
    """A module run as its original forward, with SAP after chosen activation call sites.

    :func:`apply_sap` puts one in place of a module whose forward makes an activation call
    that cannot be wrapped as a module: a functional ``F.relu``/``torch.relu`` call, or a
    call of an activation module that is called more than once (each call site gets its
    own :class:`StochasticActivationPruning`). The original forward is traced with
    ``torch.fx`` and a SAP call inserted after each chosen call; an in-place activation
    whose input is read again is followed by SAP for those reads too.

    The module has the original's submodules, parameters and buffers (the same objects, so
    the ``state_dict`` keys are unchanged) and its plain attributes; other attributes and
    methods are looked up on the original class. The SAP modules live in the ModuleDict
    ``_sap_sites`` keyed by the fx node name of their call site. The generated forward is
    rebuilt after copying or unpickling, from the original forward.

    Parameters
    ----------
    base : nn.Module
        The original module (kept, for :func:`remove_sap`).
    saps : mapping of str to StochasticActivationPruning
        fx node name of a call site in ``base``'s traced forward -> its SAP module.
    """

    def __init__(self, base: nn.Module, saps: dict[str, StochasticActivationPruning]) -> None:
        super().__init__()
        if _SITES_ATTR in base._modules:
            raise ValueError(f"{type(base).__qualname__} already has a submodule named {_SITES_ATTR!r}")
        self.__dict__["_sap_base"] = base
        for key, value in vars(base).items():
            if key not in _MODULE_INTERNALS:
                self.__dict__[key] = value
        self.__dict__["_parameters"] = base._parameters
        self.__dict__["_buffers"] = base._buffers
        self.__dict__["_non_persistent_buffers_set"] = base._non_persistent_buffers_set
        self._modules.update(base._modules)
        sites = nn.ModuleDict(saps)
        for m in sites.modules():
            m.training = base.training
        self.add_module(_SITES_ATTR, sites)
        self.training = base.training
        self._compile()

    def extra_repr(self) -> str:
        base = type(self._sap_base)
        return f"base={base.__module__}.{base.__qualname__}, sites={list(self._modules[_SITES_ATTR].keys())}"

    def _shadow(self) -> nn.Module:
        """A shallow copy of the original with this module's current state: traced for the forward."""
        shadow = copy.copy(self._sap_base)
        shadow.__dict__["_modules"] = {k: v for k, v in self._modules.items() if k != _SITES_ATTR}
        shadow.__dict__["_parameters"] = self._parameters
        shadow.__dict__["_buffers"] = self._buffers
        shadow.__dict__["training"] = self.training
        for key, value in vars(self).items():
            if key not in _MODULE_INTERNALS:
                shadow.__dict__[key] = value
        return shadow

    def _restored(self) -> nn.Module:
        """The original module with this module's current submodules, tensors and mode."""
        return self._shadow()

    def _compile(self) -> Callable[..., Any]:
        graph, root = _trace_owner(self)
        for key, value in vars(root).items():  # tensor constants made by tracing
            if key.startswith("_tensor_constant") and key not in self.__dict__:
                self.__dict__[key] = value
        nodes = list(graph.nodes)
        by_name = {n.name: n for n in nodes}
        keys = list(self._modules[_SITES_ATTR].keys())
        for key in keys:
            node = by_name.get(key)
            if node is None:
                raise RuntimeError(
                    f"SAP call site {key!r} is no longer in the forward of {type(self._sap_base).__qualname__}"
                )
            if node.op == "call_module":
                inplace = bool(getattr(_activation_of(self.get_submodule(str(node.target))), "inplace", False))
            else:
                hit = _node_kind(node)
                inplace = hit is not None and hit[1]
            _insert_sap(graph, node, f"{_SITES_ATTR}.{key}", inplace=inplace)
        graph.lint()
        code = graph.python_code(root_module="self")
        namespace = dict(code.globals)
        exec(compile(code.src, f"<SAP forward of {type(self._sap_base).__qualname__}>", "exec"), namespace)  # noqa: S102
        fn = namespace["forward"]
        self.__dict__["_sap_fn"] = fn
        return fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.__dict__.get("_sap_fn") or self._compile()
        return fn(self, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_sap_fn", None)  # generated code: rebuilt on first use
        return state

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_sap_base")
            if base is None or name.startswith("__"):
                raise
            attr = getattr(type(base), name, None)
            if attr is None:
                raise
            return attr.__get__(self, type(self)) if hasattr(attr, "__get__") else attr


def _insert_sap(graph: fx.Graph, node: fx.Node, target: str, *, inplace: bool) -> None:
    """Insert ``target(node)`` after ``node`` and route every later read of its value through it.

    For an in-place activation the later reads of its *input* (the same tensor) are
    routed through SAP as well.
    """
    with graph.inserting_after(node):
        sap_node = graph.call_module(target, (node,))
    node.replace_all_uses_with(sap_node, delete_user_cb=lambda user: user is not sap_node)
    if inplace and node.args and isinstance(node.args[0], fx.Node):
        position = {n: i for i, n in enumerate(graph.nodes)}
        source = node.args[0]
        for user in list(source.users):
            if user is not node and user is not sap_node and position[user] > position[sap_node]:
                user.replace_input_with(source, sap_node)


# ----------------------------------------------------------------------------------------
# apply_sap / sap_settings / remove_sap
# ----------------------------------------------------------------------------------------


def _shared_generators_memo(model: nn.Module) -> dict[int, object]:
    """A ``deepcopy`` memo that keeps generators shared instead of cloning their state.

    A cloned generator would replay the same random stream as the original, silently
    correlating two models that were meant to draw independently.
    """
    memo: dict[int, object] = {}
    for m in model.modules():
        gen = getattr(m, "generator", None)
        if isinstance(gen, torch.Generator):
            memo[id(gen)] = gen
    return memo


def _copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model, _shared_generators_memo(model))


def _replace_everywhere(root: nn.Module, old: nn.Module, new: nn.Module) -> nn.Module:
    """Put ``new`` wherever ``old`` is registered in ``root``; returns the (new) root."""
    if root is old:
        return new
    for m in list(root.modules()):  # listed first: ``new`` may hold ``old`` (a wrapper)
        for key, child in m._modules.items():
            if child is old:
                m._modules[key] = new
    return root


def _select(found: _Discovery, kinds: tuple[str, ...], layers: Sequence[str | int] | None) -> tuple[list[_Site], list[str]]:
    """The chosen sites in forward order, plus activation modules to wrap whose calls are unseen."""
    available = [s for s in found.sites if s.kind in kinds]
    wanted = " or ".join(f"nn.{_KINDS[k].modules[0].__name__}" for k in kinds)
    if layers is None:
        opaque = found.relevant_opaque(kinds)
        if opaque:
            raise SAPCoverageError(
                f"cannot put SAP after every {'/'.join(kinds)} call: torch.fx cannot trace the forward of "
                f"{_describe_opaque(opaque)}, so the call sites in it are unknown; pass layers=[...] naming "
                "the activation modules or call sites to prune, or make that forward traceable"
            )
        if not available:
            raise ValueError(
                f"model has no {wanted} module or functional {'/'.join(kinds)} call to put SAP after "
                f"(activations={list(kinds)}; choices: {list(SAP_ACTIVATIONS)})"
            )
        return available, []
    if isinstance(layers, (str, int)):
        raise ValueError(f"layers must be a list of call site names or indices (e.g. [{layers!r}]), got {layers!r}")
    names = [s.name for s in available]
    by_name = {s.name: s for s in available}
    groups: dict[str, list[_Site]] = {}  # a reused module's name selects all its calls
    for s in available:
        if s.module is not None and found.module_calls.get(id(s.module), 0) > 1:
            groups.setdefault(found.names[id(s.module)], []).append(s)
    other_kinds = {s.name: s.kind for s in found.sites if s.kind not in kinds}
    modules = found.modules
    chosen: list[_Site] = []
    blind: list[str] = []
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(f"layers entries must be call site names or integer indices, got {item!r}")
        if isinstance(item, int):
            if not -len(available) <= item < len(available):
                raise ValueError(
                    f"call site index {item} out of range: the model has {len(available)} "
                    f"{'/'.join(kinds)} call sites (indices 0..{len(available) - 1}): {names}"
                )
            picked = [available[item]]
        elif item in by_name:
            picked = [by_name[item]]
        elif item in groups:
            picked = groups[item]
        elif item in other_kinds or (item in modules and _module_kind(modules[item]) not in (None, *kinds)):
            kind = other_kinds.get(item) or _module_kind(modules[item])
            raise ValueError(
                f"{item!r} is a {kind} call site; add {kind!r} to activations (now {list(kinds)}) to prune it"
            )
        elif item in modules and _module_kind(modules[item]) in kinds:
            if found.relevant_opaque(kinds):  # called where tracing cannot see: wrap the module
                if item not in blind:
                    blind.append(item)
                continue
            raise ValueError(
                f"{type(modules[item]).__name__} {item!r} is declared but never called in the forward pass; "
                f"{'/'.join(kinds)} call sites: {names}"
            )
        else:
            unseen = found.relevant_opaque(kinds)
            hint = f" (torch.fx cannot trace the forward of {_describe_opaque(unseen)})" if unseen else ""
            raise ValueError(
                f"no {'/'.join(kinds)} call site named {item!r} in the model; available call sites: {names}{hint}"
            )
        chosen.extend(s for s in picked if s not in chosen)
    if not chosen and not blind:
        raise ValueError("layers is empty; pass layers=None to put SAP after every activation call site")
    return [s for s in available if s in chosen], blind


def apply_sap(
    model: nn.Module,
    frac: float,
    *,
    mode: str = "exact",
    layers: Sequence[str | int] | None = None,
    activations: str | Sequence[str] = "relu",
) -> nn.Module:
    """Add Stochastic Activation Pruning (Dhillon et al., ICLR 2018) to a trained model.

    Returns a deep copy of ``model`` with SAP after every chosen activation call site
    (see :func:`activation_sites`; the sites are found by tracing with ``torch.fx``):

    * an activation module called once is replaced by
      ``nn.Sequential(activation, StochasticActivationPruning(frac, mode=mode))`` (the
      layout of every built-in model);
    * a module whose forward makes a functional call (``F.relu``, ``torch.relu``,
      ``x.relu()``, ...) or calls one activation module at several places is replaced by
      a :class:`SAPForward` that runs its forward with one SAP module per call site.

    Either way SAP has no parameters or buffers, so the copy's ``state_dict`` keys equal
    the original's and base weights load into it unchanged. The original model is not
    modified; attributes such as ``architecture`` are copied, and generators already
    attached to stochastic submodules are shared with the copy, not cloned. SAP is never
    applied partially: when a site asked for cannot be covered the call raises.

    Parameters
    ----------
    model : nn.Module
        A trained model.
    frac : float
        Draws per layer as a fraction of its units (see :class:`StochasticActivationPruning`).
    mode : {"exact", "fast"}, default "exact"
        Sampling mode.
    layers : sequence of str or int, optional
        Call sites to follow with SAP: names from :func:`activation_sites` (the name of an
        activation module called at several places selects all its calls), or indices
        into that list (negative ones count from the end). ``None``: every call site of
        the chosen activations.
    activations : str or sequence of str, default "relu"
        Activation families SAP follows, from :data:`SAP_ACTIVATIONS` (``"relu"``,
        ``"gelu"``, ``"silu"``, ``"leaky_relu"``, ``"elu"``); ReLU is the paper's setting.

    Returns
    -------
    nn.Module
        The SAP model (same train/eval modes as ``model``).

    Raises
    ------
    SAPCoverageError
        ``layers=None`` and a module that may make one of these activation calls cannot
        be traced (data-dependent control flow, ...): the message names it.
    ValueError
        Bad ``frac``, ``mode`` or ``activations``; no call site of those activations; an
        unknown site name or index, or an activation module that is never called (the
        message lists the available sites); the model already contains SAP (call
        :func:`remove_sap` first).
    """
    template = StochasticActivationPruning(frac, mode=mode)  # validates frac and mode
    kinds = _check_activations(activations)
    if any(isinstance(m, StochasticActivationPruning) for m in model.modules()):
        raise ValueError("model already contains SAP layers; call remove_sap(model) first to change them")
    out = _copy_model(model)
    found = _discover(out)
    chosen, blind = _select(found, kinds, layers)

    def new_sap(training: bool) -> StochasticActivationPruning:
        sap = StochasticActivationPruning(template.frac, mode=template.mode)
        sap.train(training)
        return sap

    def wrap(act: nn.Module) -> nn.Sequential:
        wrapper = nn.Sequential(act, new_sap(act.training))
        wrapper.train(act.training)
        return wrapper

    rewrite: dict[int, list[_Site]] = {}
    for site in chosen:
        if site.module is not None and found.module_calls[id(site.module)] == 1 and not site.input_used_later:
            out = _replace_everywhere(out, site.module, wrap(site.module))
        else:
            rewrite.setdefault(id(site.owner), []).append(site)
    for name in blind:
        log.info("SAP: %r is called only inside untraceable modules; wrapping the module (all its calls)", name)
        act = out.get_submodule(name)
        out = _replace_everywhere(out, act, wrap(act))
    depth = {id(s.owner): found.names.get(id(s.owner), "").count(".") + bool(found.names.get(id(s.owner))) for s in chosen}
    for owner_id in sorted(rewrite, key=lambda i: -depth[i]):
        owner = rewrite[owner_id][0].owner
        saps = {s.node: new_sap(owner.training) for s in rewrite[owner_id]}
        out = _replace_everywhere(out, owner, SAPForward(owner, saps))
    return out


def _sap_modules(model: nn.Module) -> list[tuple[str, StochasticActivationPruning]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, StochasticActivationPruning)]


def _settings(frac: float, mode: str, layers: list[str], kinds: set[str]) -> dict[str, object]:
    out: dict[str, object] = {"frac": frac, "mode": mode, "layers": layers}
    if kinds - {"relu"}:
        ordered = [k for k in SAP_ACTIVATIONS if k in kinds]
        out["activations"] = ordered[0] if len(ordered) == 1 else ordered
    return out


def sap_settings(model: nn.Module) -> dict[str, object] | None:
    """The SAP settings of a model, for saving it and rebuilding it with :func:`apply_sap`.

    Works for models made by :func:`apply_sap` and for models where
    :class:`StochasticActivationPruning` modules were inserted by hand, as long as each
    one is called right after an activation call site (``nn.Sequential(..., nn.ReLU(),
    StochasticActivationPruning(0.5), ...)``, ``self.sap(F.relu(x))``, ...).

    Parameters
    ----------
    model : nn.Module
        Any model.

    Returns
    -------
    dict or None
        ``{"frac": float, "mode": str, "layers": [site names]}`` plus
        ``"activations"`` when SAP follows activations other than ReLU, such that
        ``apply_sap(remove_sap(model), **settings)`` puts SAP at the same call sites; or
        ``None`` when the model has no SAP. For models made by :func:`apply_sap` with
        activation modules only, ``layers`` are their names in module order, as in
        earlier versions.

    Raises
    ------
    ValueError
        The SAP modules disagree in ``frac`` or ``mode``; a hand-inserted SAP module does
        not follow an activation call, or sits in a forward that cannot be traced.
    """
    saps = _sap_modules(model)
    if not saps:
        return None
    configs = {(m.frac, m.mode) for _, m in saps}
    if len(configs) > 1:
        detail = ", ".join(f"{name}: frac={m.frac}, mode={m.mode}" for name, m in saps)
        raise ValueError(f"SAP layers disagree in frac/mode ({detail}); one setting per model is supported")
    ((frac, mode),) = configs
    wrappers = [(name, m) for name, m in model.named_modules() if _is_sap_wrapper(m)]
    if len(wrappers) == len(saps):  # the layout of apply_sap on activation modules: no tracing needed
        return _settings(frac, mode, [name for name, _ in wrappers], {_module_kind(m) or "relu" for _, m in wrappers})
    found = _discover(model)
    site_of: dict[int, list[_Site]] = {}
    for site in found.sites:
        if site.module is not None and _is_sap_wrapper(site.module):
            site_of.setdefault(id(site.module[1]), []).append(site)  # type: ignore[index]
    bad: list[str] = []
    for owner_id, owner in found.owners.items():
        node_sites = found.node_sites[owner_id]
        if isinstance(owner, SAPForward):
            for key, sap in owner._modules[_SITES_ATTR].items():  # type: ignore[union-attr]
                if key in node_sites:
                    site_of.setdefault(id(sap), []).append(node_sites[key])
        for node in found.graphs[owner_id].nodes:
            if node.op != "call_module":
                continue
            sub = owner.get_submodule(str(node.target))
            if not isinstance(sub, StochasticActivationPruning):
                continue
            arg = node.args[0] if node.args else None
            site = node_sites.get(arg.name) if isinstance(arg, fx.Node) else None
            if site is None:
                what = f"{arg.op} {arg.target!r}" if isinstance(arg, fx.Node) else repr(arg)
                bad.append(f"{found.names.get(id(sub), '?')!r} follows {what}")
            else:
                site_of.setdefault(id(sub), []).append(site)
    if bad:
        raise ValueError(
            "SAP modules must be called right after an activation call for sap_settings to describe "
            f"their layout: {'; '.join(bad)}"
        )
    unseen = [name for name, m in saps if id(m) not in site_of]
    if unseen and found.opaque:
        raise ValueError(
            f"cannot locate SAP modules {unseen}: they are called inside forwards that cannot be traced "
            f"with torch.fx ({_describe_opaque(found.opaque)})"
        )
    rank = {s.name: i for i, s in enumerate(found.sites)}
    sites = {s.name: s for group in site_of.values() for s in group}
    layers = sorted(sites, key=rank.__getitem__)
    return _settings(frac, mode, layers, {s.kind for s in sites.values()})


def remove_sap(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without SAP: the inverse of :func:`apply_sap`.

    ``remove_sap(apply_sap(m, f))`` has the modules and ``state_dict`` of ``m``: SAP
    wrappers become their activation module again and each :class:`SAPForward` its
    original module. A hand-inserted :class:`StochasticActivationPruning` is replaced by
    ``nn.Identity`` (its expectation; indices in ``nn.Sequential`` are kept). A model
    without SAP is returned as a plain copy.
    """
    out = _copy_model(model)
    for _, m in reversed(list(out.named_modules())):
        if isinstance(m, SAPForward):
            out = _replace_everywhere(out, m, m._restored())
    for _, m in list(out.named_modules()):
        if _is_sap_wrapper(m):
            out = _replace_everywhere(out, m, m[0])  # type: ignore[index]
    for _, m in _sap_modules(out):
        out = _replace_everywhere(out, m, nn.Identity())
    return out
