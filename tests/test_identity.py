"""Identities cover everything that changes a model's outputs, and collisions are refused."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from gametheory_defense import identity as ident
from gametheory_defense.attacks import FGSM
from gametheory_defense.ensemble import MixedStrategyModel
from gametheory_defense.identity import (
    IdentityCollisionError,
    check_distinct,
    defender_identity,
    mixture_identity,
    model_identity,
    set_identity_tag,
    support_indices,
)
from gametheory_defense.sap import apply_sap
from gametheory_defense.stochastic import use_generator
from payoff import build_payoff_matrix


class BitDepth(nn.Module):
    """Quantise inputs to ``bits`` bits: no parameters, only a plain attribute."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels


class Standardise(nn.Module):
    def __init__(self, mean: float, std: float, *, persistent: bool = True) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean), persistent=persistent)
        self.register_buffer("std", torch.tensor(std), persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _base(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_parameter_free_wrappers_with_different_settings_differ() -> None:
    base = _base()
    ids = {model_identity(nn.Sequential(BitDepth(b), base)) for b in (1, 2, 8)}
    assert len(ids) == 3
    # and the same settings agree, also for a fresh wrapper object
    assert model_identity(nn.Sequential(BitDepth(2), base)) == model_identity(nn.Sequential(BitDepth(2), copy.deepcopy(base)))


def test_three_bit_depth_wrappers_get_three_rows() -> None:
    base = _base()
    x, y = _data()
    defenders = {f"bits{b}": nn.Sequential(BitDepth(b), base).eval() for b in (1, 2, 8)}
    m = build_payoff_matrix(defenders, {"fgsm": FGSM(0.2)}, (x, y), progress=False)
    assert m.metadata["cells_reused"] == 0
    # each row is that model's own accuracy, not a copy of another's
    for i, model in enumerate(defenders.values()):
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        assert m.clean_accuracy[i] == pytest.approx(clean)
    assert len({float(c) for c in m.clean_accuracy}) > 1


@pytest.mark.parametrize("persistent", [True, False])
def test_buffers_count_persistent_or_not(persistent: bool) -> None:
    base = _base()
    with_norm = nn.Sequential(Standardise(0.5, 0.25, persistent=persistent), base)
    other_norm = nn.Sequential(Standardise(0.5, 0.5, persistent=persistent), base)
    assert model_identity(with_norm) != model_identity(other_norm)


def test_model_missing_its_normalisation_buffers_is_another_model() -> None:
    base = _base()
    assert model_identity(nn.Sequential(Standardise(0.5, 0.25), base)) != model_identity(base)
    # and not the same as a parameter-free module in its place
    assert model_identity(nn.Sequential(Standardise(0.5, 0.25), base)) != model_identity(nn.Sequential(nn.Identity(), base))


def test_module_classes_and_extra_repr_count() -> None:
    base = _base()
    relu = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, 3))
    gelu.load_state_dict(base.state_dict())
    relu.load_state_dict(base.state_dict())
    assert model_identity(relu) == model_identity(base)
    assert model_identity(gelu) != model_identity(base)
    leaky = [nn.Sequential(nn.LeakyReLU(s)) for s in (0.01, 0.2)]
    assert model_identity(leaky[0]) != model_identity(leaky[1])


def test_tensor_and_callable_attributes_and_hooks_count() -> None:
    class Scaled(nn.Module):
        def __init__(self, scale: torch.Tensor, act) -> None:
            super().__init__()
            self.scale = scale  # a plain tensor attribute, not a buffer
            self.act = act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(x * self.scale)

    a = Scaled(torch.tensor(2.0), torch.relu)
    assert model_identity(a) != model_identity(Scaled(torch.tensor(3.0), torch.relu))
    assert model_identity(a) != model_identity(Scaled(torch.tensor(2.0), torch.tanh))
    assert model_identity(Scaled(torch.tensor(2.0), functools.partial(torch.clamp, min=0.0))) != model_identity(
        Scaled(torch.tensor(2.0), functools.partial(torch.clamp, min=0.5))
    )
    base = _base()
    before = model_identity(base)
    handle = base.register_forward_hook(lambda m, i, o: o * 2)
    assert model_identity(base) != before
    handle.remove()
    assert model_identity(base) == before


def test_weights_count_and_mode_and_generator_do_not() -> None:
    base = _base()
    before = model_identity(base)
    base.train()
    assert model_identity(base) == before  # the library evaluates in eval() mode
    sap = apply_sap(base, 0.5)
    sid = model_identity(sap)
    with use_generator(sap, torch.Generator().manual_seed(3)):
        assert model_identity(sap) == sid
    assert sid != before and sid != model_identity(apply_sap(base, 1.0))
    with torch.no_grad():
        base[1].weight[0, 0] += 1e-6
    assert model_identity(base) != before


def test_user_tag_separates_what_cannot_be_seen() -> None:
    a, b = _base(), _base()
    assert model_identity(a) == model_identity(b)
    set_identity_tag(b, "custom-forward-v2")
    assert model_identity(a) != model_identity(b)
    assert model_identity(a, tag="x") != model_identity(a)
    set_identity_tag(b, None)
    assert model_identity(a) == model_identity(b)
    with pytest.raises(TypeError, match="string"):
        set_identity_tag(a, 3)  # type: ignore[arg-type]


def test_identity_version_is_part_of_every_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _base()
    before = model_identity(base)
    monkeypatch.setattr(ident, "IDENTITY_VERSION", ident.IDENTITY_VERSION + 1)
    assert model_identity(base) != before


def test_different_objects_that_hash_alike_are_refused() -> None:
    x, y = _data()
    a, b = _base(), _base()  # same seed: same weights, different objects
    with pytest.raises(IdentityCollisionError, match="'a' and 'b'.*set_identity_tag"):
        build_payoff_matrix({"a": a, "b": b}, {"fgsm": FGSM(0.1)}, (x, y), progress=False)
    set_identity_tag(b, "b")
    m = build_payoff_matrix({"a": a, "b": b}, {"fgsm": FGSM(0.1)}, (x, y), progress=False)
    assert m.values.shape == (2, 1)


def test_check_distinct_allows_one_object_under_two_names() -> None:
    a = _base()
    i = model_identity(a)
    with pytest.warns(UserWarning, match="same model object"):
        check_distinct({"a": i, "a2": i}, {"a": a, "a2": a})
    with pytest.raises(IdentityCollisionError):
        check_distinct({"a": i, "a2": i})


def test_mixture_identity_exact_weights_and_zero_members_left_out() -> None:
    m0, m1, m2 = _base(0), _base(1), _base(2)
    ids = [model_identity(m) for m in (m0, m1, m2)]
    mix = MixedStrategyModel([m0, m1, m2], [0.5, 0.5, 0.0])
    assert defender_identity(mix) == mixture_identity(ids[:2], [0.5, 0.5], "per-example")
    assert defender_identity(mix) == defender_identity(MixedStrategyModel([m0, m1], [0.5, 0.5]))
    assert defender_identity(mix) != defender_identity(MixedStrategyModel([m0, m1], [0.5 + 1e-12, 0.5 - 1e-12]))
    assert defender_identity(mix) != defender_identity(MixedStrategyModel([m0, m1], [0.5, 0.5], sample="per-batch"))
    assert defender_identity(mix) != defender_identity(MixedStrategyModel([m0, m2], [0.5, 0.5]))


def test_support_indices_uses_one_cut_off() -> None:
    assert support_indices([0.5, 1e-7, 0.5 - 1e-7, 0.0]) == [0, 2]
    assert support_indices(np.array([1e-6, 2e-6])) == [1]
