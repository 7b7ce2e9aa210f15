"""Tests of Stochastic Activation Pruning (Dhillon et al., ICLR 2018): statistics and model surgery.

The statistical tests replicate one example many times along the batch dimension, so one
forward pass gives many independent draws; bounds are 5 standard deviations (a false
alarm has probability below 1e-6 per unit) and every generator is seeded.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import copy
import pickle

import torch.nn.functional as F

from gametheory_defense.sap import (
    SAP_ACTIVATIONS,
    SAPCoverageError,
    SAPForward,
    StochasticActivationPruning,
    _draw_hits,
    activation_sites,
    apply_sap,
    relu_layer_names,
    remove_sap,
    sap_settings,
)
from gametheory_defense.stochastic import deterministic, use_generator

DRAWS = 20_000
SIGMAS = 5.0


def _gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _activation(n: int, *, seed: int, zero_frac: float = 0.4) -> torch.Tensor:
    """A ReLU-like activation vector: heavy-tailed magnitudes, some exact zeros."""
    g = _gen(seed)
    h = torch.rand(n, generator=g, dtype=torch.float64) ** 3
    h[torch.rand(n, generator=g, dtype=torch.float64) < zero_frac] = 0.0
    return h


def _q(h: torch.Tensor, r: int) -> torch.Tensor:
    """Reference keep probabilities 1 - (1 - p)^r, in float64, written independently."""
    a = h.double().abs().flatten()
    p = a / a.sum()
    return 1.0 - (1.0 - p) ** r


def _sap(frac: float, mode: str, seed: int = 0) -> StochasticActivationPruning:
    sap = StochasticActivationPruning(frac, mode=mode)
    sap.generator = _gen(seed)
    return sap


def _assert_frequencies(kept: torch.Tensor, q: torch.Tensor) -> None:
    """Per-unit keep frequencies over the rows of ``kept`` agree with ``q`` (5 sigma)."""
    freq = kept.double().mean(dim=0)
    sd = torch.sqrt(q * (1 - q) / kept.shape[0])
    bound = SIGMAS * sd + 1e-12
    worst = ((freq - q).abs() - bound).max().item()
    assert worst <= 0, f"keep frequency off by {worst:.2e} beyond the 5-sigma bound"


# ----------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("frac", [0.0, -0.5, float("nan"), float("inf"), True, "1"])
def test_invalid_frac_raises(frac: object) -> None:
    with pytest.raises(ValueError, match="frac"):
        StochasticActivationPruning(frac)  # type: ignore[arg-type]


def test_invalid_mode_raises() -> None:
    with pytest.raises(ValueError, match="mode"):
        StochasticActivationPruning(1.0, mode="approx")


def test_num_draws_is_ceil_of_frac_times_units() -> None:
    assert StochasticActivationPruning(0.3).num_draws(10) == 3  # 0.3 * 10 is 3.0000000000000004
    assert StochasticActivationPruning(0.31).num_draws(10) == 4
    assert StochasticActivationPruning(1e-6).num_draws(10) == 1
    assert StochasticActivationPruning(2.5).num_draws(10) == 25  # frac > 1: more draws than units


def test_sap_has_no_parameters_or_buffers() -> None:
    sap = StochasticActivationPruning(0.5)
    assert list(sap.parameters()) == [] and list(sap.buffers()) == []
    assert "frac=0.5" in repr(sap) and "exact" in repr(sap)


# ----------------------------------------------------------------------------------------
# The sampling law
# ----------------------------------------------------------------------------------------

# (n, frac): n = 40 uses the plain inverse-CDF sampler, n = 300 (r >= 256) the
# Poissonised one on the CPU; frac = 2.0 draws more times than there are units.
LAWS = [(40, 1.0), (40, 0.25), (40, 2.0), (300, 1.0)]


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize(("n", "frac"), LAWS)
def test_keep_frequencies_match_q(mode: str, n: int, frac: float) -> None:
    h = _activation(n, seed=n).float()
    sap = _sap(frac, mode, seed=1)
    r = sap.num_draws(n)
    out = sap(h.expand(DRAWS, n))
    kept = out != 0
    q = _q(h, r)
    _assert_frequencies(kept, q)
    torch.testing.assert_close(sap.keep_probability(h[None])[0].double(), q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize(("n", "frac"), [(40, 1.0), (300, 1.0)])
def test_sample_mean_converges_to_input(mode: str, n: int, frac: float) -> None:
    h = _activation(n, seed=7).float()
    sap = _sap(frac, mode, seed=2)
    q = _q(h, sap.num_draws(n))
    out = sap(h.expand(DRAWS, n)).double()
    # Var(out_j) = h_j^2 (1/q_j - 1) exactly, for either mode.
    hd = h.double()
    sd = torch.sqrt(torch.where(q > 0, hd**2 * (1 / q - 1), torch.zeros_like(q)) / DRAWS)
    err = (out.mean(dim=0) - hd).abs()
    assert (err <= SIGMAS * sd + 1e-6).all(), f"max error {err.max():.3e}"
    # The scale is exactly 1/q on kept units.
    kept = out != 0
    ratio = out / hd
    torch.testing.assert_close(ratio[kept], (1 / q).expand_as(ratio)[kept], rtol=1e-5, atol=0)


def _exact_count_variance(h: torch.Tensor, r: int) -> float:
    """Var(number of distinct units hit by r draws): sum of pairwise covariances."""
    a = h.double().abs()
    p = a / a.sum()
    q = 1 - (1 - p) ** r
    none_ij = (1 - p[:, None] - p[None, :]).clamp(min=0) ** r  # P(neither i nor j hit)
    cov = none_ij - (1 - p[:, None]) ** r * (1 - p[None, :]) ** r
    cov.fill_diagonal_(0.0)
    return float((q * (1 - q)).sum() + cov.sum())


@pytest.mark.parametrize("n", [40, 300])
def test_joint_law_exact_versus_fast(n: int) -> None:
    """Same marginals, different joint law: the variance of the number of kept units."""
    h = _activation(n, seed=11).float()
    r = n
    q = _q(h, r)
    var_exact = _exact_count_variance(h, r)
    var_fast = float((q * (1 - q)).sum())  # independent keeps
    assert var_exact < 0.85 * var_fast  # the two laws are distinguishable here
    for mode, expected in (("exact", var_exact), ("fast", var_fast)):
        counts = (_sap(1.0, mode, seed=3)(h.expand(DRAWS, n)) != 0).sum(dim=1).double()
        mean_sd = math.sqrt(expected / DRAWS)
        assert abs(counts.mean().item() - q.sum().item()) <= SIGMAS * mean_sd
        # The sample variance of a sum of many indicators has relative s.e. ~ sqrt(2/N) = 1%.
        assert counts.var().item() == pytest.approx(expected, rel=0.07), mode


@pytest.mark.parametrize("method", ["direct", "poisson"])
@pytest.mark.parametrize("deficit_sigmas", [3.0, 0.0])
def test_exact_samplers_have_the_same_law(method: str, deficit_sigmas: float) -> None:
    """Both exact samplers (and the Poisson one's redraw path) give the multinomial support."""
    n = r = 300
    h = _activation(n, seed=5)
    p = (h / h.sum()).float().expand(DRAWS, n).contiguous()
    hits = _draw_hits(p, r, generator=_gen(9), method=method, deficit_sigmas=deficit_sigmas)
    _assert_frequencies(hits, _q(h, r))
    counts = hits.sum(dim=1).double()
    assert counts.var().item() == pytest.approx(_exact_count_variance(h, r), rel=0.07)
    assert not hits[:, h == 0].any()


def test_unknown_sampler_raises() -> None:
    with pytest.raises(ValueError, match="sampler"):
        _draw_hits(torch.full((1, 4), 0.25), 4, generator=None, method="alias")


@pytest.mark.parametrize(("n", "frac"), [(40, 0.5), (300, 1.0), (300, 0.1)])
def test_exact_keeps_at_most_r_units_and_never_a_zero_unit(n: int, frac: float) -> None:
    h = _activation(n, seed=13, zero_frac=0.2).float()
    batch = torch.stack([h, h.flip(0), h * 1e3]).repeat(1000, 1)
    sap = _sap(frac, "exact", seed=4)
    r = sap.num_draws(n)
    kept = sap(batch) != 0
    assert kept.sum(dim=1).max().item() <= r
    assert not kept[batch == 0].any()
    # fast mode can keep more than r units (independent keeps) but never a zero unit
    kept_fast = _sap(frac, "fast", seed=4)(batch) != 0
    assert not kept_fast[batch == 0].any()


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_conv_activations_4d(mode: str) -> None:
    g = _gen(21)
    h = torch.relu(torch.randn(1, 2, 3, 3, generator=g))
    sap = _sap(0.5, mode, seed=5)
    r = sap.num_draws(18)
    out = sap(h.expand(DRAWS, 2, 3, 3))
    assert out.shape == (DRAWS, 2, 3, 3)
    kept = (out != 0).reshape(DRAWS, 18)
    _assert_frequencies(kept, _q(h, r))
    if mode == "exact":
        assert kept.sum(dim=1).max().item() <= r


# ----------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_all_zero_layer_passes_through(mode: str) -> None:
    h = torch.zeros(5, 3, 4, 4, requires_grad=True)
    out = _sap(1.0, mode)(h)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_extreme_values_stay_finite(mode: str, dtype: torch.dtype) -> None:
    g = _gen(31)
    n = 400  # r >= 256: the Poisson sampler in exact mode
    mags = torch.where(torch.rand(64, n, generator=g) < 0.5, 1e-30, 1e30).to(dtype)
    mags[torch.rand(64, n, generator=g) < 0.3] = 0.0
    mags[0] = 0.0
    mags[0, 7] = 1e-30  # a single nonzero unit
    mags[1] = 1e-30  # all tiny
    mags[2] = 1e34 if dtype == torch.float32 else 1e300  # |out| <= sum |h| stays representable
    h = (mags * torch.rand(64, n, generator=g, dtype=dtype)).requires_grad_(True)
    out = _sap(1.0, mode, seed=6)(h)
    assert torch.isfinite(out).all()
    (out * torch.linspace(-1, 1, n, dtype=dtype)).sum().backward()
    assert torch.isfinite(h.grad).all()
    # a lone nonzero unit has p = 1, q = 1: kept with scale exactly 1
    assert out[0, 7].item() == h[0, 7].item()
    assert (out[0, torch.arange(n) != 7] == 0).all()


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_single_nonzero_unit_and_tiny_probabilities(mode: str) -> None:
    h = torch.zeros(2000, 50)
    h[:, 3] = 1.0
    h[:, 4] = 1e-7  # p ~ 1e-7: q ~ 5e-6, scale ~ 2e5; must not overflow
    out = _sap(1.0, mode, seed=7)(h)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 3], torch.ones(2000))  # q = 1 - (1 - p)^r is 1 to float precision


def test_half_precision_input_returns_half() -> None:
    h = torch.relu(torch.randn(8, 30, generator=_gen(8))).half()
    out = _sap(1.0, "exact")(h)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_gradient_is_mask_times_scale() -> None:
    """The BPDA-free gradient: mask and scale are constants, so d out / d h = mask * scale."""
    h = (torch.rand(6, 20, generator=_gen(9)) + 0.1).requires_grad_(True)
    out = _sap(0.5, "exact", seed=8)(h)
    weights = torch.randn(6, 20, generator=_gen(10))
    (out * weights).sum().backward()
    factor = (out / h).detach()
    torch.testing.assert_close(h.grad, weights * factor)
    assert (h.grad[out == 0] == 0).all()


# ----------------------------------------------------------------------------------------
# Randomness: eval mode, determinism switch, generators
# ----------------------------------------------------------------------------------------


def test_stochastic_in_eval_mode_and_identity_when_deterministic() -> None:
    h = torch.relu(torch.randn(4, 64, generator=_gen(12)))
    sap = _sap(1.0, "exact", seed=9).eval()
    assert not torch.equal(sap(h), sap(h))
    sap.stochastic = False
    assert torch.equal(sap(h), h)
    sap.stochastic = True
    model = nn.Sequential(nn.ReLU(), sap)
    with deterministic(model):
        assert torch.equal(model(h), h)
    assert sap.stochastic


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_generator_seeds(mode: str) -> None:
    h = torch.relu(torch.randn(16, 300, generator=_gen(13)))
    a = _sap(1.0, mode, seed=42)(h)
    b = _sap(1.0, mode, seed=42)(h)
    c = _sap(1.0, mode, seed=43)(h)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    unseeded = StochasticActivationPruning(1.0, mode=mode)  # torch's default generator
    assert torch.isfinite(unseeded(h)).all()


# ----------------------------------------------------------------------------------------
# apply_sap / sap_settings / remove_sap
# ----------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _net() -> nn.Module:
    torch.manual_seed(0)  # tests only: a fixed initialisation
    net = _Net()
    net.architecture = {"name": "test-net", "input_shape": [1, 6, 6], "num_classes": 3}  # type: ignore[assignment]
    return net


RELUS = ["features.1", "features.3", "head.2"]


def test_apply_sap_keeps_state_dict_and_leaves_original_untouched() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sap_net = apply_sap(net, 0.5)
    assert list(sap_net.state_dict()) == list(before)
    for k, v in sap_net.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(isinstance(m, StochasticActivationPruning) for m in net.modules())
    assert relu_layer_names(net) == RELUS
    assert sap_net.architecture == net.architecture  # type: ignore[attr-defined]
    sap_net.load_state_dict(net.state_dict())  # base weights load into the SAP model
    x = torch.rand(3, 1, 6, 6, generator=_gen(14))
    with deterministic(sap_net):
        torch.testing.assert_close(sap_net(x), net(x))  # SAP's expectation is the identity
    with use_generator(sap_net, _gen(15)):
        y1 = sap_net(x)
    with use_generator(sap_net, _gen(15)):
        y2 = sap_net(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, net(x))


@pytest.mark.parametrize(
    ("layers", "chosen"),
    [(None, RELUS), (["head.2"], ["head.2"]), ([0, -1], ["features.1", "head.2"]), ([2, "features.1", 0], ["features.1", "head.2"])],
)
def test_layer_selection(layers: list | None, chosen: list[str]) -> None:
    sap_net = apply_sap(_net(), 0.25, mode="fast", layers=layers)
    assert sap_settings(sap_net) == {"frac": 0.25, "mode": "fast", "layers": chosen}
    for name in RELUS:
        module = sap_net.get_submodule(name)
        assert isinstance(module, nn.Sequential) == (name in chosen)
        if name in chosen:
            assert isinstance(module[0], nn.ReLU) and isinstance(module[1], StochasticActivationPruning)


@pytest.mark.parametrize(
    ("layers", "match"),
    [(["features.0"], "available"), (["nope"], "features.1"), ([3], "out of range"), ([-4], "out of range"),
     ([], "empty"), ("features.1", "list"), ([1.0], "names or integer"), ([True], "names or integer")],
)
def test_bad_layer_selection_raises(layers: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_sap(_net(), 1.0, layers=layers)  # type: ignore[arg-type]


def test_apply_sap_errors() -> None:
    with pytest.raises(ValueError, match="nn.ReLU"):
        apply_sap(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), 1.0)
    with pytest.raises(ValueError, match="already contains SAP"):
        apply_sap(apply_sap(_net(), 1.0), 0.5)
    with pytest.raises(ValueError, match="frac"):
        apply_sap(_net(), 0.0)
    with pytest.raises(ValueError, match="mode"):
        apply_sap(_net(), 1.0, mode="slow")


def test_sap_settings_and_remove_sap_round_trip() -> None:
    net = _net()
    assert sap_settings(net) is None
    sap_net = apply_sap(net, 0.75, layers=["features.3"])
    settings = sap_settings(sap_net)
    assert settings == {"frac": 0.75, "mode": "exact", "layers": ["features.3"]}
    rebuilt = apply_sap(net, settings["frac"], mode=settings["mode"], layers=settings["layers"])  # type: ignore[arg-type]
    assert sap_settings(rebuilt) == settings
    plain = remove_sap(sap_net)
    assert sap_settings(plain) is None and sap_settings(sap_net) == settings  # copy, not in place
    assert [type(m) for m in plain.modules()] == [type(m) for m in net.modules()]
    assert list(plain.state_dict()) == list(net.state_dict())


def test_sap_settings_rejects_mixed_or_foreign_layouts() -> None:
    sap_net = apply_sap(_net(), 0.5)
    sap_net.get_submodule("head.2")[1].frac = 0.9
    with pytest.raises(ValueError, match="disagree"):
        sap_settings(sap_net)
    stray = nn.Sequential(nn.Linear(2, 2), StochasticActivationPruning(0.5))
    with pytest.raises(ValueError, match="layout"):
        sap_settings(stray)


def test_apply_sap_shares_existing_generators() -> None:
    sap_net = apply_sap(_net(), 0.5, layers=[0])
    gen = _gen(16)
    sap_net.get_submodule("features.1")[1].generator = gen
    copy_net = remove_sap(sap_net)
    again = apply_sap(copy_net, 0.5)
    assert again.get_submodule("features.1")[1].generator is None  # fresh SAP layers
    stripped = remove_sap(sap_net)
    assert isinstance(stripped.get_submodule("features.1"), nn.ReLU)


def test_apply_sap_to_registered_models() -> None:
    models = pytest.importorskip("gametheory_defense.models")
    net = models.build_model("small-cnn", input_shape=(1, 28, 28), num_classes=10, generator=_gen(17))
    assert relu_layer_names(net) == models.relu_names(net)
    sap_net = apply_sap(net, 1.0, mode="exact")
    assert list(sap_net.state_dict()) == list(net.state_dict())
    assert sap_net.architecture == net.architecture
    x = torch.rand(4, 1, 28, 28, generator=_gen(18))
    with use_generator(sap_net, _gen(19)):
        logits = sap_net(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------
# Every call site: functional activations, reused modules, other activations
# ----------------------------------------------------------------------------------------


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model


class _Branches(nn.Module):
    """Three parallel branches, each one activation call then linear maps only.

    SAP's unbiasedness then makes the expected logits equal the base logits exactly,
    so a Monte-Carlo mean checks that every site is pruned with the right law.
    """

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        self.act = act
        self.a, self.b, self.c = nn.Linear(6, 10), nn.Linear(6, 10), nn.Linear(6, 10)
        self.out = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "relu":  # three spellings of the same call
            h = F.relu(self.a(x)) + torch.relu(self.b(x)) + self.c(x).relu()
        else:
            h = F.gelu(self.a(x)) + F.silu(self.b(x)) + F.elu(self.c(x)) + F.leaky_relu(self.c(x), 0.2)
        return self.out(h)


class _Block(nn.Module):
    """A torchvision-style block: one nn.ReLU called twice, one declared and never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.spare = nn.ReLU()  # declared, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.fc1(x))
        return self.relu(self.fc2(out) + x)


class _ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.relu = nn.ReLU()  # called once: the legacy wrapper layout
        self.blocks = nn.Sequential(_Block(), _Block())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.relu(self.stem(x))))


BLOCK_SITES = ["relu", "blocks.0.relu#0", "blocks.0.relu#1", "blocks.1.relu#0", "blocks.1.relu#1"]


def _count_calls(model: nn.Module) -> dict[str, int]:
    counts = {name: 0 for name, m in model.named_modules() if isinstance(m, StochasticActivationPruning)}
    for name, m in model.named_modules():
        if isinstance(m, StochasticActivationPruning):
            m.register_forward_hook(lambda mod, inp, out, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


def _assert_unbiased(sap_model: nn.Module, base: nn.Module, x: torch.Tensor, draws: int = 4000) -> None:
    """Mean of ``draws`` stochastic passes equals the base output (5 sigma), and passes vary."""
    batch = x.expand(draws, *x.shape[1:])
    with torch.no_grad(), use_generator(sap_model, _gen(30)):
        out = sap_model(batch).double()
    expected = base(x).double()[0]
    sd = out.std(dim=0) / math.sqrt(draws)
    assert (sd > 0).all(), "SAP did not prune: the outputs do not vary"
    assert ((out.mean(dim=0) - expected).abs() <= SIGMAS * sd + 1e-9).all()


def test_functional_relu_trunk_gets_sap_at_every_call() -> None:
    base = _seeded(_Branches("relu"))
    sites = activation_sites(base)
    assert sites == [":relu#0", ":relu#1", ":relu#2"]
    sap_model = apply_sap(base, 0.5)
    assert isinstance(sap_model, SAPForward)
    assert list(sap_model.state_dict()) == list(base.state_dict())
    assert sap_settings(sap_model) == {"frac": 0.5, "mode": "exact", "layers": sites}
    counts = _count_calls(sap_model)
    x = torch.rand(1, 6, generator=_gen(31))
    sap_model(x)
    assert sorted(counts.values()) == [1, 1, 1]
    with deterministic(sap_model):
        torch.testing.assert_close(sap_model(x), base(x))
    _assert_unbiased(sap_model, base, x)
    # Each site alone, and the round trip back to the base model.
    for i, site in enumerate(sites):
        one = apply_sap(base, 0.5, layers=[i])
        assert sap_settings(one)["layers"] == [site]
    plain = remove_sap(sap_model)
    assert type(plain) is _Branches and sap_settings(plain) is None
    assert torch.equal(plain(x), base(x))


def test_reused_relu_module_gets_one_sap_per_call_site() -> None:
    base = _seeded(_ResNetLike())
    assert relu_layer_names(base) == BLOCK_SITES  # "spare" is declared but never called: not a site
    sap_model = apply_sap(base, 1.0)
    assert isinstance(sap_model.relu, nn.Sequential)  # called once: the usual wrapper
    assert all(isinstance(b, SAPForward) for b in sap_model.blocks)
    counts = _count_calls(sap_model)
    assert len(counts) == len(BLOCK_SITES)  # one SAP module per call site
    x = torch.rand(3, 6, generator=_gen(32))
    sap_model(x)
    assert set(counts.values()) == {1}  # each runs once per forward pass, none twice
    assert sap_settings(sap_model)["layers"] == BLOCK_SITES
    assert list(sap_model.state_dict()) == list(base.state_dict())
    with deterministic(sap_model):
        torch.testing.assert_close(sap_model(x), base(x))
    # A reused module's name selects all its calls; "#k" one call.
    assert sap_settings(apply_sap(base, 1.0, layers=["blocks.1.relu"]))["layers"] == BLOCK_SITES[3:]
    assert sap_settings(apply_sap(base, 1.0, layers=["blocks.0.relu#1"]))["layers"] == ["blocks.0.relu#1"]
    with pytest.raises(ValueError, match="declared but never called"):
        apply_sap(base, 1.0, layers=["blocks.0.spare"])
    plain = remove_sap(sap_model)
    assert [type(m) for m in plain.modules()] == [type(m) for m in base.modules()]
    assert torch.equal(plain(x), base(x))


def test_sap_on_the_second_call_is_applied_to_that_call_only() -> None:
    """SAP after call #1 only: the first call's output reaches fc2 unpruned."""
    block = _seeded(_Block())
    sap_block = apply_sap(block, 0.5, layers=["relu#1"])
    seen: list[torch.Tensor] = []
    sap_block.fc2.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.rand(4, 8, generator=_gen(33))
    with use_generator(sap_block, _gen(34)):
        y = sap_block(x)
    torch.testing.assert_close(seen[0], torch.relu(block.fc1(x)))
    full = block.relu(block.fc2(seen[0]) + x)
    assert not torch.equal(y, full) and ((y == 0) | (full != 0)).all()  # pruned: zeros where kept ones were not


def test_copies_and_pickles_keep_the_sap_forward() -> None:
    base = _seeded(_ResNetLike())
    sap_model = apply_sap(base, 0.5)
    sap_model.architecture = {"name": "resnet-like"}  # type: ignore[assignment]
    x = torch.rand(64, 6, generator=_gen(35))
    for other in (copy.deepcopy(sap_model), pickle.loads(pickle.dumps(sap_model))):
        with use_generator(sap_model, _gen(36)):
            a = sap_model(x)
        with use_generator(other, _gen(36)):
            b = other(x)
        assert torch.equal(a, b) and not torch.equal(a, base(x))
        assert len(_count_calls(other)) == len(BLOCK_SITES)
    double = apply_sap(base, 0.5).double()
    assert double(x.double()).dtype == torch.float64
    assert remove_sap(double).blocks[0].fc1.weight.dtype == torch.float64


def test_identity_tells_call_sites_apart() -> None:
    identity = pytest.importorskip("gametheory_defense.identity")
    block = _seeded(_Block())
    ids = {identity.model_identity(apply_sap(block, 0.5, layers=[site])) for site in ("relu#0", "relu#1")}
    ids.add(identity.model_identity(apply_sap(block, 0.5)))
    ids.add(identity.model_identity(block))
    assert len(ids) == 4
    assert identity.model_identity(apply_sap(block, 0.5)) == identity.model_identity(apply_sap(block, 0.5))


class _InPlace(nn.Module):
    """``F.relu_`` mutates ``h``, and ``h`` (not the call's result) is read afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(6, 10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        F.relu_(h)
        return self.out(h)


def test_in_place_activation_read_afterwards_is_pruned() -> None:
    base = _seeded(_InPlace())
    assert activation_sites(base) == [":relu#0"]
    x = torch.rand(1, 6, generator=_gen(37))
    _assert_unbiased(apply_sap(base, 0.5), base, x)


@pytest.mark.parametrize("fracs", [0.5])
def test_other_activations(fracs: float) -> None:
    base = _seeded(_Branches("mixed"))
    with pytest.raises(ValueError, match="nn.ReLU"):
        apply_sap(base, fracs)  # ReLU is the default and there is none
    sites = activation_sites(base, SAP_ACTIVATIONS)
    assert sites == [":gelu#0", ":silu#0", ":elu#0", ":leaky_relu#0"]
    assert activation_sites(base, "gelu") == [":gelu#0"]
    sap_model = apply_sap(base, fracs, activations=["gelu", "silu", "elu", "leaky_relu"])
    settings = sap_settings(sap_model)
    assert settings == {"frac": fracs, "mode": "exact", "layers": sites, "activations": ["gelu", "silu", "leaky_relu", "elu"]}
    x = torch.rand(1, 6, generator=_gen(38))
    _assert_unbiased(sap_model, base, x)  # signed activations: still unbiased
    rebuilt = apply_sap(remove_sap(sap_model), **settings)  # type: ignore[arg-type]
    assert sap_settings(rebuilt) == settings
    with pytest.raises(ValueError, match="add 'gelu' to activations"):
        apply_sap(base, fracs, layers=[":gelu#0"])
    with pytest.raises(ValueError, match="activations"):
        apply_sap(base, fracs, activations="tanh")


@pytest.mark.parametrize(("module", "kind"), [(nn.GELU(), "gelu"), (nn.SiLU(), "silu"), (nn.LeakyReLU(0.1), "leaky_relu"), (nn.ELU(), "elu")])
def test_activation_modules_of_other_kinds(module: nn.Module, kind: str) -> None:
    base = _seeded(nn.Sequential(nn.Linear(6, 12), module, nn.Linear(12, 3)))
    sap_model = apply_sap(base, 0.5, activations=kind)
    assert isinstance(sap_model[1], nn.Sequential) and isinstance(sap_model[1][1], StochasticActivationPruning)
    assert sap_settings(sap_model) == {"frac": 0.5, "mode": "exact", "layers": ["1"], "activations": kind}
    _assert_unbiased(sap_model, base, torch.rand(1, 6, generator=_gen(39)))


class _HandSAP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.sap = StochasticActivationPruning(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.sap(F.relu(self.fc1(x))))


def test_sap_settings_of_hand_inserted_sap() -> None:
    seq = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), StochasticActivationPruning(0.5, mode="fast"), nn.Linear(8, 3))
    assert sap_settings(seq) == {"frac": 0.5, "mode": "fast", "layers": ["1"]}
    plain = remove_sap(seq)
    assert isinstance(plain[2], nn.Identity) and list(plain.state_dict()) == list(seq.state_dict())
    rebuilt = apply_sap(plain, **sap_settings(seq))  # type: ignore[arg-type]
    assert sap_settings(rebuilt) == sap_settings(seq)

    custom = _seeded(_HandSAP())
    assert sap_settings(custom) == {"frac": 0.5, "mode": "exact", "layers": [":relu#0"]}
    rebuilt = apply_sap(remove_sap(custom), **sap_settings(custom))  # type: ignore[arg-type]
    assert sap_settings(rebuilt) == sap_settings(custom)
    with pytest.raises(ValueError, match="already contains SAP"):
        apply_sap(custom, 0.5)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        if h.sum() > 0:  # data-dependent control flow: not traceable
            h = F.relu(h - 0.1)
        return self.out(h)


def test_untraceable_model_raises_naming_the_module() -> None:
    model = nn.Sequential(nn.Linear(6, 6), _DataDependent())
    with pytest.raises(SAPCoverageError, match=r"cannot trace the forward of '1' \(_DataDependent; TraceError"):
        apply_sap(model, 0.5)
    with pytest.raises(SAPCoverageError, match="_DataDependent"):
        activation_sites(model)
    # Naming the module explicitly still works: the module is wrapped, so all its calls are covered.
    sap_model = apply_sap(model, 0.5, layers=["1.act"])
    assert isinstance(sap_model[1].act, nn.Sequential)
    assert sap_settings(sap_model) == {"frac": 0.5, "mode": "exact", "layers": ["1.act"]}
    # A module without activations that cannot be traced does not block SAP elsewhere.

    class Clip(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.clamp(0, 1) if x.min() < 0 else x

    ok = apply_sap(nn.Sequential(Clip(), nn.Linear(6, 4), nn.ReLU()), 0.5)
    assert sap_settings(ok)["layers"] == ["2"]


@pytest.mark.parametrize("name", ["mlp", "small-cnn", "madry-cnn", "preact-resnet18"])
def test_built_in_models_keep_the_wrapper_layout(name: str) -> None:
    models = pytest.importorskip("gametheory_defense.models")
    shape = (3, 32, 32) if name == "preact-resnet18" else (1, 28, 28)
    net = models.build_model(name, input_shape=shape, num_classes=10, generator=_gen(40))
    assert relu_layer_names(net) == models.relu_names(net)
    sap_net = apply_sap(net, 1.0)
    assert not any(isinstance(m, SAPForward) for m in sap_net.modules())
    assert sap_settings(sap_net) == {"frac": 1.0, "mode": "exact", "layers": models.relu_names(net)}


# ----------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_cuda_with_cpu_generator(mode: str) -> None:
    n = 300
    h = _activation(n, seed=20).float()
    sap = _sap(1.0, mode, seed=21)  # a CPU generator feeding CUDA tensors
    out = sap(h.cuda().expand(DRAWS, n))
    assert out.device.type == "cuda"
    kept = (out != 0).cpu()
    _assert_frequencies(kept, _q(h, n))
    if mode == "exact":
        assert kept.sum(dim=1).max().item() <= n
    again = _sap(1.0, mode, seed=21)(h.cuda().expand(DRAWS, n))
    assert torch.equal(out, again)


def test_poisson_sampler_with_heavy_units() -> None:
    """Rates above the inverse-CDF range go through torch.poisson; the law is unchanged."""
    n = r = 300
    h = _activation(n, seed=6)
    h[:3] = 40.0  # three units with Poisson rates around 50
    p = (h / h.sum()).float().expand(DRAWS, n).contiguous()
    hits = _draw_hits(p, r, generator=_gen(22), method="poisson")
    _assert_frequencies(hits, _q(h, r))
    assert hits.sum(dim=1).double().var().item() == pytest.approx(_exact_count_variance(h, r), rel=0.07)
