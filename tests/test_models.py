"""Tests of gametheory_defense.models: shapes, parameter counts, seeding, activations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gametheory_defense.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MODELS,
    Normalize,
    build_model,
    init_parameters,
    relu_names,
)

CASES = [
    ("mlp", (1, 8, 8)),
    ("mlp", (1, 28, 28)),
    ("small-cnn", (1, 8, 8)),
    ("small-cnn", (1, 28, 28)),
    ("madry-cnn", (1, 8, 8)),
    ("madry-cnn", (1, 28, 28)),
    ("preact-resnet18", (3, 32, 32)),
]
EXPECTED_RELUS = {"mlp": 2, "small-cnn": 3, "madry-cnn": 3, "preact-resnet18": 17}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_lists_the_four_architectures() -> None:
    assert set(MODELS) == {"mlp", "small-cnn", "madry-cnn", "preact-resnet18"}


@pytest.mark.parametrize(("name", "shape"), CASES)
@pytest.mark.parametrize("num_classes", [10, 3])
def test_output_shape_and_architecture_attribute(
    name: str, shape: tuple[int, int, int], num_classes: int
) -> None:
    model = build_model(name, input_shape=shape, num_classes=num_classes, generator=_gen(0))
    model.eval()
    x = torch.rand(2, *shape, generator=_gen(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert model.architecture == {
        "name": name, "input_shape": list(shape), "num_classes": num_classes
    }


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_returns_logits_with_input_gradients(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, input_shape=shape, num_classes=10, generator=_gen(0)).eval()
    x = torch.rand(3, *shape, generator=_gen(2), requires_grad=True)
    out = model(x)
    # logits, not probabilities: rows do not sum to one and values can be negative
    assert not torch.allclose(out.sum(dim=1), torch.ones(3), atol=1e-3)
    assert bool((out < 0).any())
    out[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_madry_cnn_parameter_count() -> None:
    # conv1: 5*5*1*32 + 32 = 832; conv2: 5*5*32*64 + 64 = 51,264;
    # 28 -> pool -> 14 -> pool -> 7, so fc1: 7*7*64*1024 + 1024 = 3,212,288;
    # fc2: 1024*10 + 10 = 10,250; total 3,274,634.
    by_hand = (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (
        1024 * 10 + 10
    )
    assert by_hand == 3_274_634
    model = build_model("madry-cnn", input_shape=(1, 28, 28), num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 3_274_634


def test_small_cnn_and_mlp_parameter_counts() -> None:
    small = build_model("small-cnn", input_shape=(1, 28, 28), num_classes=10)
    # 28 -> 14 -> 7 after two stride-2 3x3 convolutions with padding 1
    expected = (9 * 16 + 16) + (9 * 16 * 32 + 32) + (7 * 7 * 32 * 100 + 100) + (100 * 10 + 10)
    assert sum(p.numel() for p in small.parameters()) == expected
    mlp = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    assert sum(p.numel() for p in mlp.parameters()) == (64 * 256 + 256) + (256 * 256 + 256) + (
        256 * 10 + 10
    )


def test_preact_resnet18_parameter_count_and_normalize() -> None:
    model = build_model("preact-resnet18", input_shape=(3, 32, 32), num_classes=10)
    expected = 3 * 64 * 9  # stem conv, no bias
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):
            expected += 2 * in_planes + in_planes * planes * 9  # bn1, conv1
            expected += 2 * planes + planes * planes * 9  # bn2, conv2
            if s != 1 or in_planes != planes:
                expected += in_planes * planes  # 1x1 projection shortcut
            in_planes = planes
    expected += 2 * 512 + 512 * 10 + 10  # final bn, linear
    assert sum(p.numel() for p in model.parameters()) == expected
    norms = [m for m in model.modules() if isinstance(m, Normalize)]
    assert len(norms) == 1
    assert torch.allclose(norms[0].mean.flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.allclose(norms[0].std.flatten(), torch.tensor(CIFAR10_STD))
    assert "normalize.mean" in model.state_dict()


def test_same_generator_gives_identical_weights_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = build_model("small-cnn", input_shape=(1, 28, 28), num_classes=10, generator=_gen(7))
    b = build_model("small-cnn", input_shape=(1, 28, 28), num_classes=10, generator=_gen(7))
    c = build_model("small-cnn", input_shape=(1, 28, 28), num_classes=10, generator=_gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["0.weight"], sc["0.weight"])


def test_seeded_init_matches_pytorch_default_distribution() -> None:
    # Kaiming-uniform with a = sqrt(5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
    # std = bound / sqrt(3). fc1 of madry-cnn has 3.2 M weights, so the sample std is
    # within 0.2% of it with overwhelming probability.
    model = build_model("madry-cnn", input_shape=(1, 28, 28), num_classes=10, generator=_gen(0))
    fc1 = model[7]
    assert isinstance(fc1, nn.Linear)
    bound = 1 / math.sqrt(3136)
    w = fc1.weight.detach()
    assert float(w.abs().max()) <= bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.002 * bound / math.sqrt(3)
    assert abs(float(w.mean())) < 0.002 * bound
    assert float(fc1.bias.detach().abs().max()) <= bound


def test_init_parameters_resets_batchnorm() -> None:
    model = build_model("preact-resnet18", input_shape=(3, 32, 32), num_classes=10)
    bn = model.bn
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.running_mean.fill_(5.0)
    init_parameters(model, _gen(0))
    assert torch.equal(bn.weight, torch.ones(512))
    assert torch.equal(bn.running_mean, torch.zeros(512))


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_every_activation_is_a_distinct_relu_called_once_in_order(
    name: str, shape: tuple[int, int, int]
) -> None:
    model = build_model(name, input_shape=shape, num_classes=10, generator=_gen(0)).eval()
    names = relu_names(model)
    assert len(names) == EXPECTED_RELUS[name]
    relus = dict(model.named_modules(remove_duplicate=False))
    # no instance registered twice under two names
    instances = [m for m in relus.values() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in instances}) == len(instances) == len(names)
    assert all(not relus[n].inplace for n in names)
    calls: list[str] = []
    handles = [
        relus[n].register_forward_hook(lambda _m, _i, _o, n=n: calls.append(n)) for n in names
    ]
    with torch.no_grad():
        model(torch.rand(2, *shape, generator=_gen(3)))
    for h in handles:
        h.remove()
    assert calls == names  # each called exactly once, in the listed order


def test_relu_names_follow_wrapping() -> None:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    assert relu_names(model) == ["2", "4"]
    model[2] = nn.Sequential(model[2], nn.Identity())  # how SAP wraps an activation
    assert relu_names(model) == ["2.0", "4"]


def test_normalize_layer() -> None:
    layer = Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.tensor([[[[1.0]], [[0.25]]]])
    assert torch.allclose(layer(x), torch.tensor([[[[1.0]], [[0.0]]]]))
    assert set(layer.state_dict()) == {"mean", "std"}
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match="one mean and one std"):
        Normalize([0.0, 0.1], [1.0])


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*madry-cnn.*small-cnn"):
        build_model("resnet50", input_shape=(1, 28, 28), num_classes=10)


@pytest.mark.parametrize(
    ("name", "shape", "classes", "match"),
    [
        ("preact-resnet18", (1, 28, 28), 10, "3-channel"),
        ("madry-cnn", (1, 3, 3), 10, "at least 4x4"),
        ("mlp", (28, 28), 10, "three positive integers"),
        ("mlp", (1, 0, 8), 10, "three positive integers"),
        ("mlp", (1, 8.5, 8), 10, "three positive integers"),
        ("mlp", "1x8x8", 10, "three positive integers"),
        ("mlp", (1, 8, 8), 1, "num_classes"),
        ("mlp", (1, 8, 8), 2.5, "num_classes"),
    ],
)
def test_bad_shapes_and_classes_raise(
    name: str, shape: object, classes: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, input_shape=shape, num_classes=classes)  # type: ignore[arg-type]
