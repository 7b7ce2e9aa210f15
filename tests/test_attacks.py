"""Tests of gametheory_defense.attacks: the contract every registered attack keeps, and behaviour.

Every attack in ``ATTACKS`` must have an entry in ``SMALL_SETTINGS`` (small settings for
the contract tests); an attack registered without one fails ``test_every_attack_has_small_settings``
and every contract test, so no attack enters the registry untested.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gametheory_defense.stochastic import use_generator

from gametheory_defense.attacks import (
    ATTACKS,
    EOTPGD,
    FGSM,
    PGD,
    Attack,
    ProbabilityOutputWarning,
    RandomizedDefenseWarning,
    build_attack,
    ce_loss,
    cw_loss,
    dlr_loss,
    eot_gradient,
    random_start,
    register_attack,
)
from gametheory_defense.errors import AttackError
from gametheory_defense.stochastic import StochasticModule, random_tensor

# Small settings per registered attack (eps and norm are set by the tests). Add an entry
# when you register an attack.
SMALL_SETTINGS: dict[str, dict[str, Any]] = {
    "fgsm": {},
    "pgd": {"steps": 4, "restarts": 2},
    "eot-pgd": {"steps": 3, "eot_samples": 3},
    "mixture-pgd": {"steps": 3, "eot_samples": 3},
    "arc": {"steps": 2, "eot_samples": 2},
    "apgd-ce": {"steps": 5, "eot_samples": 2},
    "apgd-dlr": {"steps": 5, "eot_samples": 2},
    "apgd-t": {"steps": 4, "eot_samples": 2, "targets": 2},
    "square": {"steps": 30, "eot_samples": 2, "restarts": 2},
    "transfer-pgd": {"steps": 4, "restarts": 2},
    "transfer": {"attack": "apgd-t", "settings": {"steps": 4, "targets": 2}},
}
EPS = {"linf": 0.1, "l2": 0.5}
SHAPE = (1, 4, 4)
NUM_CLASSES = 3
TOL = 1e-6


# ----------------------------------------------------------------------------- tiny models


class Noise(StochasticModule):
    """Adds Gaussian noise (std ``std``) drawn from the module's generator."""

    def __init__(self, std: float = 0.5) -> None:
        super().__init__()
        self.std = std

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.stochastic:
            return h
        return h + self.std * random_tensor("randn", h.shape, generator=self.generator, device=h.device, dtype=h.dtype)


class RecordingNoise(StochasticModule):
    """Multiplies by ``1 + 0.5 * noise`` and records every noise tensor it drew."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[torch.Tensor] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        noise = random_tensor("randn", h.shape, generator=self.generator, device=h.device, dtype=h.dtype)
        self.draws.append(noise)
        return h * (1 + 0.5 * noise)


class ModeProbe(nn.Module):
    """Identity that records its ``training`` flag at every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return h


def _init(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[1] if p.dim() > 1 else p.shape[0]
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return model


def tiny_model(kind: str) -> nn.Sequential:
    """A 16-12-3 MLP with mixed train/eval submodules and mixed requires_grad flags."""
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(16, 12), ModeProbe(), nn.ReLU()]
    if kind == "stochastic":
        layers.append(Noise(0.5))
    layers += [ModeProbe(), nn.Linear(12, NUM_CLASSES)]
    model = _init(nn.Sequential(*layers), seed=1)
    model.train()
    model[2].eval()  # first probe in eval, second stays in train
    model[0].eval()
    model[1].bias.requires_grad_(False)
    model[-1].weight.grad = torch.full_like(model[-1].weight, 3.0)
    return model


def tiny_data(n: int = 10, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SHAPE), generator=g)
    x[0].fill_(0.0)  # corners of the box exercise the clipping
    x[1].fill_(1.0)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, y


def make_attack(name: str, norm: str, **extra: Any) -> Attack:
    if name not in SMALL_SETTINGS:
        pytest.fail(f"attack {name!r} is registered but has no entry in SMALL_SETTINGS")
    return build_attack(name, eps=EPS[norm], norm=norm, **{**SMALL_SETTINGS[name], **extra})


def run(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomizedDefenseWarning)
        return attack(model, x, y, generator=torch.Generator().manual_seed(seed))


def _pairs() -> list[tuple[str, str]]:
    return [(name, norm) for name in sorted(ATTACKS) for norm in ATTACKS[name].norm_choices]


CASES = [pytest.param(n, m, k, id=f"{n}-{m}-{k}") for n, m in _pairs() for k in ("deterministic", "stochastic")]


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_has_small_settings(name: str) -> None:
    assert name in SMALL_SETTINGS, f"add small test settings for {name!r} to SMALL_SETTINGS"


def test_registry_holds_the_promised_names() -> None:
    assert {"fgsm", "pgd", "eot-pgd"} <= set(ATTACKS)
    assert ATTACKS["pgd"] is PGD and ATTACKS["eot-pgd"] is EOTPGD and ATTACKS["fgsm"] is FGSM
    assert all(cls.name == name for name, cls in ATTACKS.items())


@pytest.mark.parametrize(("name", "norm", "kind"), CASES)
def test_contract(name: str, norm: str, kind: str) -> None:
    model = tiny_model(kind)
    x, y = tiny_data()
    x0, y0 = x.clone(), y.clone()
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    assert grads.count(None) == len(grads) - 1  # one grad set, the others None

    x_adv = run(make_attack(name, norm), model, x, y)

    # eps-ball and box
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    delta = (x_adv - x).flatten(1)
    dist = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert dist.max().item() <= EPS[norm] + TOL
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert dist.max().item() > 0.5 * EPS[norm]  # it did move
    # output detached, inputs untouched
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert torch.equal(x, x0) and torch.equal(y, y0) and not x.requires_grad
    # modes: never changed, not even during the attack
    assert [m.training for m in model.modules()] == modes
    assert model[2].seen and set(model[2].seen) == {False}
    assert model[-2].seen and set(model[-2].seen) == {True}
    # requires_grad restored exactly; no gradient reached the parameters
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)


@pytest.mark.parametrize(("name", "norm", "kind"), CASES)
def test_same_generator_same_result(name: str, norm: str, kind: str) -> None:
    model = tiny_model(kind)
    x, y = tiny_data()
    attack = make_attack(name, norm)
    a = run(attack, model, x, y, seed=5)
    b = run(attack, model, x, y, seed=5)
    assert torch.equal(a, b)
    if kind == "stochastic":
        assert not torch.equal(a, run(attack, model, x, y, seed=6))
        assert model[4].generator is None  # the module's own generator is restored


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_config_is_json_and_rebuilds_an_equal_attack(name: str) -> None:
    attack = make_attack(name, "linf")
    cfg = attack.config()
    assert cfg["name"] == name
    assert json.loads(json.dumps(cfg)) == cfg
    rebuilt = build_attack(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
    assert type(rebuilt) is type(attack) and rebuilt.config() == cfg
    assert repr(rebuilt) == repr(attack) and repr(attack).startswith(type(attack).__name__ + "(")
    for key in ("eps", "step_size", "steps", "norm", "loss", "random_start", "restarts", "eot_samples"):
        assert hasattr(attack, key)
    assert "max_batch" not in cfg
    assert make_attack(name, "l2").config() != cfg


class FailsOnFourthCall(nn.Module):
    """Identity that raises on its fourth forward pass (mid-attack)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("boom")
        return h


def test_state_restored_when_the_model_raises() -> None:
    model = tiny_model("deterministic")
    model.append(FailsOnFourthCall())
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    x, y = tiny_data()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(0.1, steps=5)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes


def _bn_model() -> nn.Sequential:
    """A small conv net with BatchNorm, left in train() mode with non-trivial running stats."""
    torch.manual_seed(0)  # tests only: a fixed initialisation
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8),
        nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, NUM_CLASSES),
    )
    with torch.no_grad():
        model(torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(3)))  # stats away from 0/1
    return model.train()


def _buffers(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(name, b, b.clone()) for name, b in model.named_buffers()]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_batchnorm_buffers_unchanged_by_an_attack_in_train_mode(name: str) -> None:
    model = _bn_model()
    before = _buffers(model)
    assert {n.rsplit(".", 1)[1] for n, _, _ in before} == {"running_mean", "running_var", "num_batches_tracked"}
    x, y = tiny_data()
    x_adv = run(make_attack(name, "linf"), model, x, y, seed=1)
    assert not torch.equal(x_adv, x)  # the attack ran forward passes in train() mode
    assert all(m.training for m in model.modules())
    after = dict(model.named_buffers())
    for key, tensor, values in before:
        assert after[key] is tensor, key  # the same tensor object
        assert torch.equal(tensor, values), key  # with its old values
    # Without the restore, the same forward passes do move the statistics:
    with torch.no_grad():
        model(x)
    assert not torch.equal(model[1].running_mean, before[0][2])


def test_buffers_restored_when_the_model_raises() -> None:
    model = _bn_model()
    model.append(FailsOnFourthCall())
    before = _buffers(model)
    x, y = tiny_data()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(0.1, steps=5)(model, x, y, generator=torch.Generator().manual_seed(0))
    for key, tensor, values in before:
        assert torch.equal(dict(model.named_buffers())[key], values), key


def test_generator_feeds_the_attack_not_the_runtime_checks() -> None:
    noise = RecordingNoise()
    model = _init(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), noise, nn.Linear(12, 3)), seed=4)
    x, y = tiny_data()
    with pytest.warns(RandomizedDefenseWarning):
        PGD(0.1, steps=1)(model, x, y, generator=torch.Generator().manual_seed(7))
    assert len(noise.draws) == 3  # two check passes on 8 examples, then one attack pass on 10
    assert [d.shape[0] for d in noise.draws] == [8, 8, 10]
    g = torch.Generator().manual_seed(7)
    torch.rand((10, *SHAPE), generator=g)  # the random start comes first
    assert torch.equal(noise.draws[-1], torch.randn((10, 12), generator=g))
    assert noise.generator is None


def test_worst_case_rule_is_fooled_first_then_highest_loss() -> None:
    best = torch.zeros(4, 2)
    best_fooled = torch.tensor([True, False, False, True])
    best_loss = torch.tensor([0.5, 3.0, 1.0, 2.0])
    cand = torch.ones(4, 2)
    fooled = torch.tensor([False, True, False, True])
    loss = torch.tensor([9.0, 0.1, 2.0, 1.0])
    Attack._keep_worst(best, best_fooled, best_loss, cand, fooled, loss)
    # 0: fooled beats a higher loss; 1: fooling candidate wins; 2: higher loss wins; 3: lower loss loses
    assert torch.equal(best[:, 0], torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert torch.equal(best_fooled, torch.tensor([True, True, False, True]))
    assert torch.equal(best_loss, torch.tensor([0.5, 0.1, 2.0, 2.0]))


def test_eps_zero_returns_the_input() -> None:
    model = tiny_model("deterministic")
    x, y = tiny_data()
    out = PGD(0.0)(model, x, y)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert PGD(0.0).step_size == 0.0


# ----------------------------------------------------------------------------- losses and helpers


def test_cw_loss_by_hand() -> None:
    z = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [0.0, -70.0, 60.0]])
    y = torch.tensor([0, 1, 1])
    # max_{j != y} z_j - z_y: 3 - 1 = 2; max(1, 2) - 3 = -1; 60 - (-70) = 130 -> clamped to 50
    assert torch.equal(cw_loss(z, y), torch.tensor([2.0, -1.0, 50.0]))
    assert torch.equal(cw_loss(z, y, kappa=1.0), torch.tensor([1.0, -1.0, 1.0]))
    z.requires_grad_(True)
    (g,) = torch.autograd.grad(cw_loss(z[:2], y[:2]).sum(), z)
    assert torch.equal(g, torch.tensor([[-1.0, 1.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, 0.0]]))


def test_dlr_and_ce_loss_by_hand() -> None:
    z = torch.tensor([[4.0, 3.0, 2.0, 0.0]])
    # -(z_y - max other) / (z1 - z3) = -(4 - 3) / (4 - 2) = -0.5 for y=0; -(2 - 4) / 2 = 1 for y=2
    assert torch.allclose(dlr_loss(z, torch.tensor([0])), torch.tensor([-0.5]))
    assert torch.allclose(dlr_loss(z, torch.tensor([2])), torch.tensor([1.0]))
    with pytest.raises(AttackError, match="3 classes"):
        dlr_loss(torch.zeros(1, 2), torch.tensor([0]))
    expected = -(4.0 - math.log(sum(math.exp(v) for v in (4.0, 3.0, 2.0, 0.0))))
    assert ce_loss(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_pgd_with_cw_loss_flips_the_margin() -> None:
    model = _init(nn.Sequential(nn.Flatten(), nn.Linear(16, NUM_CLASSES)), seed=3)
    x = torch.full((6, *SHAPE), 0.5)
    y = model(x).argmax(1).detach()
    x_adv = PGD(0.5, steps=20, loss="cw")(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (cw_loss(model(x_adv), y) > 0).all()  # linear model, large eps: every example fooled


@pytest.mark.parametrize("loss_fn", [ce_loss, cw_loss], ids=["ce", "cw"])
def test_eot_gradient_is_the_mean_of_per_draw_gradients(loss_fn: Any) -> None:
    noise = RecordingNoise()
    model = _init(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), noise, nn.Tanh(), nn.Linear(12, 3)), seed=4)
    x, y = tiny_data(n=5)
    s = 7
    res = eot_gradient(model, x, y, loss_fn, eot_samples=s)
    assert len(noise.draws) == 1  # one stacked forward pass
    draws = noise.draws[0].view(s, 5, 12)
    expected = torch.zeros_like(x)
    expected_loss = torch.zeros(5)
    for k in range(s):
        for i in range(5):
            xi = x[i : i + 1].clone().requires_grad_(True)
            h = model[1](xi.flatten(1)) * (1 + 0.5 * draws[k, i])
            loss = loss_fn(model[4](torch.tanh(h)), y[i : i + 1])
            (g,) = torch.autograd.grad(loss.sum(), xi)
            expected[i] += g[0] / s
            expected_loss[i] += loss.item() / s
    assert torch.allclose(res.grad, expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(res.loss, expected_loss, atol=1e-6, rtol=1e-5)
    assert res.logits.shape == (5, 3) and not res.grad.requires_grad


def test_eot_gradient_chunked_equals_stacked() -> None:
    # draws: chunks of whole batch copies consume the noise in the same order
    noise = RecordingNoise()
    model = _init(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), noise, nn.Tanh(), nn.Linear(12, 3)), seed=4)
    x, y = tiny_data(n=5)
    full = eot_gradient(model, x, y, ce_loss, eot_samples=6)
    stacked_noise = noise.draws[0]
    noise.draws.clear()
    g = torch.Generator().manual_seed(0)

    class Replay(StochasticModule):  # replays the recorded noise, in order
        def __init__(self) -> None:
            super().__init__()
            self.pos = 0

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            out = h * (1 + 0.5 * stacked_noise[self.pos : self.pos + h.shape[0]])
            self.pos += h.shape[0]
            return out

    replay = Replay()
    model[2] = replay
    chunked = eot_gradient(model, x, y, ce_loss, eot_samples=6, max_batch=12)  # 2 copies per pass
    assert replay.pos == 30
    assert torch.allclose(chunked.grad, full.grad, atol=1e-6)
    assert torch.allclose(chunked.loss, full.loss, atol=1e-6)
    assert torch.allclose(chunked.logits, full.logits, atol=1e-6)
    del g
    # batch larger than max_batch: slices of the batch, deterministic model
    det = tiny_model("deterministic")
    a = eot_gradient(det, x, y, ce_loss, eot_samples=3)
    b = eot_gradient(det, x, y, ce_loss, eot_samples=3, max_batch=2)
    assert torch.allclose(a.grad, b.grad, atol=1e-7) and torch.allclose(a.loss, b.loss, atol=1e-7)


def test_max_batch_does_not_change_a_deterministic_attack() -> None:
    model = tiny_model("deterministic")
    x, y = tiny_data()
    a = run(PGD(0.1, steps=5, eot_samples=2), model, x, y)
    b = run(PGD(0.1, steps=5, eot_samples=2, max_batch=3), model, x, y)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_law(norm: str) -> None:
    n, d, eps = 4000, 16, 0.2
    x = torch.full((n, 1, 4, 4), 0.5)  # far from the box edges: no clipping
    delta = (random_start(x, eps=eps, norm=norm, generator=torch.Generator().manual_seed(0)) - x).flatten(1)
    bound = 4 * math.sqrt(0.25 / n)  # 4 standard deviations of a proportion
    if norm == "linf":
        assert delta.abs().max().item() <= eps + TOL
        # each coordinate uniform on [-eps, eps]: a quarter of the mass within eps/4 of each end
        assert abs((delta > eps / 2).float().mean().item() - 0.25) < bound / 2
        assert abs(delta.mean().item()) < 4 * eps / math.sqrt(3 * n * d)
    else:
        r = delta.norm(dim=1)
        assert r.max().item() <= eps + TOL
        # uniform radius (not uniform in the ball, whose median radius eps * 0.5^(1/d) is near eps)
        assert abs((r <= eps * 0.5).float().mean().item() - 0.5) < bound
        assert abs((r <= eps * 0.25).float().mean().item() - 0.25) < bound
        # direction uniform: mean of the unit directions near 0
        assert (delta / r[:, None]).mean(0).abs().max().item() < 4 / math.sqrt(n)


# ----------------------------------------------------------------------------- warnings


def _warnings_of(attack: Attack, model: nn.Module) -> list[type[Warning]]:
    x, y = tiny_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attack(model, x, y, generator=torch.Generator().manual_seed(0))
    return [w.category for w in caught]


def test_randomized_defense_warning() -> None:
    assert RandomizedDefenseWarning in _warnings_of(PGD(0.1, steps=2), tiny_model("stochastic"))
    assert RandomizedDefenseWarning in _warnings_of(FGSM(0.1), tiny_model("stochastic"))
    assert _warnings_of(PGD(0.1, steps=2, eot_samples=4), tiny_model("stochastic")) == []
    assert _warnings_of(PGD(0.1, steps=2), tiny_model("deterministic")) == []
    dropout = tiny_model("deterministic")
    dropout.insert(4, nn.Dropout(0.5))  # a user's dropout left in training mode is randomness too
    assert RandomizedDefenseWarning in _warnings_of(PGD(0.1, steps=2), dropout)


def test_probability_output_warning() -> None:
    probs = tiny_model("deterministic")
    probs.append(nn.Softmax(dim=1))
    assert _warnings_of(PGD(0.1, steps=2), probs) == [ProbabilityOutputWarning]
    assert ProbabilityOutputWarning not in _warnings_of(PGD(0.1, steps=2), tiny_model("deterministic"))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": float("nan")}, "eps must be a finite number"),
        ({"eps": 0.1, "steps": 0}, "steps must be >= 1"),
        ({"eps": 0.1, "steps": 2.5}, "steps must be an integer"),
        ({"eps": 0.1, "step_size": 0.0}, "step_size must be > 0"),
        ({"eps": 0.1, "eot_samples": 0}, "eot_samples must be >= 1"),
        ({"eps": 0.1, "restarts": 0}, "restarts must be >= 1"),
        ({"eps": 0.1, "norm": "l1"}, "norm must be one of 'linf', 'l2'"),
        ({"eps": 0.1, "loss": "hinge"}, "loss must be one of 'ce', 'cw'"),
        ({"eps": 0.1, "random_start": 1}, "random_start must be True or False"),
        ({"eps": 0.1, "max_batch": 0}, "max_batch must be >= 1"),
        ({"eps": 0.1, "kappa": -1.0}, "kappa must be >= 0"),
    ],
)
def test_bad_settings_raise_attack_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AttackError, match=match):
        build_attack("pgd", **kwargs)


def test_build_attack_errors_name_the_problem() -> None:
    with pytest.raises(AttackError, match=r"unknown attack 'nope'; choose one of .*fgsm.*pgd"):
        build_attack("nope", eps=0.1)
    with pytest.raises(AttackError, match=r"unknown argument 'alpha' for attack 'pgd'; valid arguments: eps"):
        build_attack("pgd", eps=0.1, alpha=0.01)
    with pytest.raises(AttackError, match="unknown argument 'steps' for attack 'fgsm'"):
        build_attack("fgsm", eps=0.1, steps=3)
    with pytest.raises(AttackError, match="attack 'pgd' needs argument 'eps'"):
        build_attack("pgd")
    with pytest.raises(AttackError, match="already registered"):

        @register_attack("pgd")
        class Other(PGD):
            pass

    with pytest.raises(AttackError, match="register a subclass per name"):
        register_attack("pgd-again")(PGD)
    assert "pgd-again" not in ATTACKS and PGD.name == "pgd"


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.full((2, *SHAPE), 1.5), torch.tensor([0, 1]), r"x must lie in \[0, 1\]"),
        (torch.full((2, *SHAPE), float("nan")), torch.tensor([0, 1]), r"x must lie in \[0, 1\]"),
        (torch.zeros(2, *SHAPE, dtype=torch.int64), torch.tensor([0, 1]), "floating tensor"),
        (torch.zeros(2, *SHAPE), torch.tensor([0.0, 1.0]), "integer class labels"),
        (torch.zeros(2, *SHAPE), torch.tensor([0, 1, 2]), "1-D tensor of 2 labels"),
        (torch.zeros(2, *SHAPE), torch.tensor([0, 3]), r"labels must lie in \[0, 2\]"),
    ],
)
def test_bad_inputs_raise_attack_error(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    with pytest.raises(AttackError, match=match):
        PGD(0.1, steps=2)(tiny_model("deterministic"), x, y)


# ----------------------------------------------------------------------------- behaviour on digits


@pytest.fixture(scope="module")
def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:1700]
    model = _init(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    model.eval()
    return model, x[test], y[test]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_drives_accuracy_to_zero_and_beats_fgsm(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits_mlp
    g = torch.Generator().manual_seed(0)
    assert _accuracy(model, x, y) > 0.93
    assert _accuracy(model, PGD(0.3, steps=20)(model, x, y, generator=g), y) <= 0.01
    for norm, eps in (("linf", 0.1), ("l2", 0.8)):
        acc_fgsm = _accuracy(model, FGSM(eps, norm=norm)(model, x, y), y)
        acc_pgd = _accuracy(model, PGD(eps, steps=20, norm=norm)(model, x, y, generator=g), y)
        assert acc_pgd < acc_fgsm < _accuracy(model, x, y) - 0.3
        # not just as strong: at least 3% more examples fooled (the MLP is nearly linear,
        # so FGSM is already close to the optimum)
        assert acc_pgd <= acc_fgsm - 0.03


def test_restarts_keep_the_worst_case_per_example(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits_mlp
    one = PGD(0.04, steps=5)(model, x, y, generator=torch.Generator().manual_seed(3))
    many = PGD(0.04, steps=5, restarts=4)(model, x, y, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z1, zm = model(one), model(many)
    f1, fm = z1.argmax(1) != y, zm.argmax(1) != y
    l1, lm = ce_loss(z1, y), ce_loss(zm, y)
    assert 0.1 < f1.float().mean().item() < 0.9  # a regime where restarts can matter
    assert not (f1 & ~fm).any()  # fooled by the first restart -> still fooled
    same = f1 == fm
    assert (lm[same] >= l1[same] - 1e-6).all()  # otherwise the loss never drops
    assert (fm & ~f1).any() or (lm > l1 + 1e-4).any()  # and the extra restarts did something


def test_eot_pgd_with_one_sample_is_pgd(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits_mlp
    assert issubclass(EOTPGD, PGD) and EOTPGD(0.1).eot_samples == 20
    for norm in ("linf", "l2"):
        a = EOTPGD(0.1, steps=5, eot_samples=1, norm=norm)(model, x, y, generator=torch.Generator().manual_seed(9))
        b = PGD(0.1, steps=5, norm=norm)(model, x, y, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a, b)


def test_eot_beats_plain_pgd_on_a_noisy_model(digits_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    base, x, y = digits_mlp
    noisy = nn.Sequential(base[0], base[1], base[2], Noise(3.0), base[3])
    g = torch.Generator().manual_seed(0)

    def expected_accuracy(x_adv: torch.Tensor) -> float:  # averaged over 64 seeded draws
        with torch.no_grad(), use_generator(noisy, torch.Generator().manual_seed(1)):
            probs = torch.stack([F.softmax(noisy(x_adv), 1) for _ in range(64)]).mean(0)
        return (probs.argmax(1) == y).float().mean().item()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomizedDefenseWarning)
        plain = PGD(0.05, steps=10)(noisy, x, y, generator=g)
    eot = EOTPGD(0.05, steps=10, eot_samples=16)(noisy, x, y, generator=g)
    assert expected_accuracy(eot) < expected_accuracy(plain)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_cuda_with_a_cpu_generator_matches_the_contract(name: str) -> None:
    model = tiny_model("stochastic").cuda()
    x, y = tiny_data()
    attack = make_attack(name, "linf")
    a = run(attack, model, x.cuda(), y.cuda())
    assert a.device.type == "cuda"
    assert (a.cpu() - x).abs().max().item() <= EPS["linf"] + TOL
    assert torch.equal(a, run(attack, model, x.cuda(), y.cuda()))
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]


def test_pgd_random_start_default_follows_the_measurement() -> None:
    # L-inf: random start; L2: from x for one run (measured stronger), random with restarts
    assert PGD(0.1).random_start is True and PGD(0.1, restarts=3).random_start is True
    assert PGD(1.0, norm="l2").random_start is False and EOTPGD(1.0, norm="l2").random_start is False
    assert PGD(1.0, norm="l2", restarts=2).random_start is True
    assert PGD(1.0, norm="l2", random_start=True).random_start is True
    assert build_attack("transfer-pgd", eps=1.0, norm="l2").random_start is False
    cfg = PGD(1.0, norm="l2").config()
    assert build_attack("pgd", **{k: v for k, v in cfg.items() if k != "name"}).config() == cfg


def test_eot_on_the_cpu_stacks_whole_copies_up_to_the_measured_row_cap() -> None:
    from gametheory_defense.attacks.base import CPU_EOT_ROWS

    assert CPU_EOT_ROWS == 512
    noise = RecordingNoise()
    model = _init(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), noise, nn.Linear(12, 3)), seed=4)
    for n, draws, rows in ((100, 20, [500] * 4), (300, 4, [300] * 4), (10, 8, [80])):
        noise.draws.clear()
        x, y = torch.rand(n, *SHAPE), torch.randint(0, 3, (n,))
        eot_gradient(model, x, y, ce_loss, eot_samples=draws)
        assert [d.shape[0] for d in noise.draws] == rows
    noise.draws.clear()
    eot_gradient(model, x, y, ce_loss, eot_samples=8, max_batch=20)  # an explicit cap wins
    assert [d.shape[0] for d in noise.draws] == [20] * 4
