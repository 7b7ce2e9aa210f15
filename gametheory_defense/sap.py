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
from collections.abc import Sequence

import torch
from torch import nn

from gametheory_defense.stochastic import StochasticModule, random_tensor

__all__ = [
    "StochasticActivationPruning",
    "SAP_MODES",
    "apply_sap",
    "remove_sap",
    "sap_settings",
    "relu_layer_names",
]

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
    """``torch.poisson`` drawn on the generator's device (like ``random_tensor``)."""
    if generator is None or generator.device.type == rates.device.type:
        return torch.poisson(rates, generator=generator)
    return torch.poisson(rates.to(generator.device), generator=generator).to(rates.device)


# ----------------------------------------------------------------------------------------
# Putting SAP into a trained model
# ----------------------------------------------------------------------------------------


def relu_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.ReLU`` modules of ``model``, in registration order.

    For models whose layers are registered in the order they run (every model of
    :func:`gametheory_defense.models.build_model`, and any ``nn.Sequential``), this is the
    forward order used by the integer ``layers`` of :func:`apply_sap`.
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


def _is_sap_wrapper(m: nn.Module) -> bool:
    return (
        type(m) is nn.Sequential
        and len(m) == 2
        and isinstance(m[0], nn.ReLU)
        and isinstance(m[1], StochasticActivationPruning)
    )


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


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _select_layers(available: list[str], layers: Sequence[str | int] | None) -> list[str]:
    if layers is None:
        return list(available)
    if isinstance(layers, (str, int)):
        raise ValueError(
            f"layers must be a list of ReLU names or indices (e.g. [{layers!r}]), got {layers!r}"
        )
    chosen: list[str] = []
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(f"layers entries must be ReLU names or integer indices, got {item!r}")
        if isinstance(item, int):
            if not -len(available) <= item < len(available):
                raise ValueError(
                    f"ReLU index {item} out of range: the model has {len(available)} ReLUs "
                    f"(indices 0..{len(available) - 1}): {available}"
                )
            name = available[item]
        else:
            if item not in available:
                raise ValueError(f"no nn.ReLU named {item!r} in the model; available ReLUs: {available}")
            name = item
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError("layers is empty; pass layers=None to put SAP after every ReLU")
    return [name for name in available if name in chosen]  # forward order


def apply_sap(
    model: nn.Module,
    frac: float,
    *,
    mode: str = "exact",
    layers: Sequence[str | int] | None = None,
) -> nn.Module:
    """Add Stochastic Activation Pruning (Dhillon et al., ICLR 2018) to a trained model.

    Returns a deep copy of ``model`` in which each chosen ``nn.ReLU`` is replaced by
    ``nn.Sequential(relu, StochasticActivationPruning(frac, mode=mode))``. SAP has no
    parameters or buffers, so the copy's ``state_dict`` keys equal the original's and base
    weights load into it unchanged. The original model is not modified; attributes such
    as ``architecture`` are copied, and generators already attached to stochastic
    submodules are shared with the copy, not cloned.

    Parameters
    ----------
    model : nn.Module
        A trained model whose activations are ``nn.ReLU`` modules (functional
        ``F.relu`` calls cannot be found).
    frac : float
        Draws per layer as a fraction of its units (see :class:`StochasticActivationPruning`).
    mode : {"exact", "fast"}, default "exact"
        Sampling mode.
    layers : sequence of str or int, optional
        ReLUs to follow with SAP: qualified module names, or indices into
        :func:`relu_layer_names` (negative indices count from the end). ``None``: all.

    Returns
    -------
    nn.Module
        The SAP model (same train/eval mode as ``model``).

    Raises
    ------
    ValueError
        Bad ``frac`` or ``mode``; the model has no ``nn.ReLU``; an unknown layer name or
        index (the message lists the available ones); the model already contains SAP
        (call :func:`remove_sap` first).
    """
    template = StochasticActivationPruning(frac, mode=mode)  # validates frac and mode
    if any(isinstance(m, StochasticActivationPruning) for m in model.modules()):
        raise ValueError("model already contains SAP layers; call remove_sap(model) first to change them")
    available = relu_layer_names(model)
    if not available:
        raise ValueError(
            "model has no nn.ReLU module to put SAP after; build activations as nn.ReLU "
            "modules (not F.relu), e.g. with gametheory_defense.models.build_model"
        )
    chosen = _select_layers(available, layers)
    out = _copy_model(model)
    for name in chosen:
        relu = out.get_submodule(name) if name else out
        sap = StochasticActivationPruning(template.frac, mode=template.mode)
        sap.train(relu.training)
        wrapper = nn.Sequential(relu, sap)
        wrapper.train(relu.training)
        if not name:  # the model itself is a ReLU
            return wrapper
        _replace(out, name, wrapper)
    return out


def _sap_wrappers(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    wrappers = [(name, m) for name, m in model.named_modules() if _is_sap_wrapper(m)]
    inside = {id(m[1]) for _, m in wrappers}
    stray = [
        name
        for name, m in model.named_modules()
        if isinstance(m, StochasticActivationPruning) and id(m) not in inside
    ]
    if stray:
        raise ValueError(
            f"SAP modules {stray} are not in the nn.Sequential(ReLU, SAP) layout that "
            "apply_sap creates; rebuild the model with apply_sap"
        )
    return wrappers


def sap_settings(model: nn.Module) -> dict[str, object] | None:
    """The SAP settings of a model made by :func:`apply_sap`, for saving it.

    Parameters
    ----------
    model : nn.Module
        Any model.

    Returns
    -------
    dict or None
        ``{"frac": float, "mode": str, "layers": [names]}`` where ``layers`` are the
        names of the wrapped ReLUs in the base model (pass them back to
        :func:`apply_sap`), or ``None`` when the model has no SAP.

    Raises
    ------
    ValueError
        The SAP layers disagree in ``frac`` or ``mode``, or a SAP module is not in the
        layout :func:`apply_sap` creates.
    """
    wrappers = _sap_wrappers(model)
    if not wrappers:
        return None
    configs = {(m[1].frac, m[1].mode) for _, m in wrappers}
    if len(configs) > 1:
        detail = ", ".join(f"{name}: frac={m[1].frac}, mode={m[1].mode}" for name, m in wrappers)
        raise ValueError(f"SAP layers disagree in frac/mode ({detail}); one setting per model is supported")
    (frac, mode), = configs
    return {"frac": frac, "mode": mode, "layers": [name for name, _ in wrappers]}


def remove_sap(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every SAP wrapper replaced by its ReLU.

    The inverse of :func:`apply_sap`: ``remove_sap(apply_sap(m, f))`` has the modules and
    ``state_dict`` of ``m``. A model without SAP is returned as a plain copy.
    """
    wrappers = _sap_wrappers(model)
    out = _copy_model(model)
    for name, _ in wrappers:
        if not name:
            return out[0]
        _replace(out, name, out.get_submodule(name)[0])
    return out
