"""Tests of the mixture-aware attacks (MixturePGD, ARC) and of APGD.

Known answers on two linear classifiers in 2-D (the motivating example of Dbouk &
Shanbhag, 2022), and behaviour on a small mixture of digits MLPs.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from gametheory_defense.attacks import (
    ATTACKS,
    PGD,
    RandomizedDefenseWarning,
    build_attack,
)
from gametheory_defense.attacks.apgd import APGDCE, APGDDLR, apgd_checkpoints, top_targets
from gametheory_defense.attacks.square import Square, pseudo_gaussian_pattern, square_fraction
from gametheory_defense.attacks.transfer import Transfer, TransferPGD
from gametheory_defense.errors import AttackError
from gametheory_defense.stochastic import use_generator
from gametheory_defense.attacks.arc import ARC, arc_step_size, linearize, nearest_boundary
from gametheory_defense.attacks.losses import ce_loss, cw_loss, dlr_targeted_loss
from gametheory_defense.attacks.mixture import (
    MixturePGD,
    expected_accuracy,
    expected_loss_gradient,
    mixture_components,
)
from gametheory_defense.ensemble import MixedStrategyModel
from gametheory_defense.sap import apply_sap

# ----------------------------------------------------------------------------- 2-D toy


def linear_member(w: tuple[float, float], b: float, x0: torch.Tensor) -> nn.Linear:
    """Two logits ``[0, w . (x - x0) - b]``: class 1 (wrong for y = 0) iff ``w . (x - x0) > b``."""
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 0.0], list(w)]))
        m.bias.copy_(torch.tensor([0.0, -float(torch.tensor(w) @ x0) - b]))
    return m


A, B = 0.25, 0.05
X0 = torch.tensor([0.5, 0.5])
# Fooling member i needs w_i . delta > B. Fooling both needs a * delta_2 > B + |delta_1|, so
# the smallest L2 perturbation that fools both is (0, B / A), of norm 0.2 (by hand).
MIN_BOTH = B / A


def toy_mixture() -> MixedStrategyModel:
    return MixedStrategyModel(
        [linear_member((1.0, A), B, X0), linear_member((-1.0, A), B, X0)], [0.6, 0.4], names=["m1", "m2"]
    )


def toy_accuracy(mix: MixedStrategyModel, x_adv: torch.Tensor) -> float:
    return float(expected_accuracy(mixture_components(mix), x_adv, torch.tensor([0])).item())


def test_nearest_boundary_of_a_linear_member_is_computed_by_hand() -> None:
    w = torch.tensor([0.6, -0.8])
    member = linear_member((0.6, -0.8), 0.1, X0)
    x = X0.view(1, 2)
    step_l2 = nearest_boundary(linearize(member, x), norm="l2")
    step_linf = nearest_boundary(linearize(member, x), norm="linf")
    # predicted class 0 with margin b = 0.1; gradient difference grad z0 - grad z1 = -w
    assert step_l2.zeta.item() == pytest.approx(0.1 / 1.0, rel=1e-5)  # ||w||_2 = 1
    assert step_linf.zeta.item() == pytest.approx(0.1 / 1.4, rel=1e-5)  # ||w||_1 = 1.4
    assert torch.allclose(step_l2.direction[0], w, atol=1e-6)
    assert torch.equal(step_linf.direction[0], torch.sign(w))
    assert torch.allclose(step_linf.unit[0], w / 1.4, atol=1e-6)
    assert step_l2.target.item() == 1
    # moving by zeta along the direction lands on the boundary
    for step in (step_l2, step_linf):
        z = member(x + step.zeta.item() * step.direction)
        assert (z[0, 1] - z[0, 0]).item() == pytest.approx(0.0, abs=1e-6)


def test_arc_step_size_rule_known_values() -> None:
    zeta = torch.tensor([0.1, 0.3, float("inf"), 0.05])
    a = torch.tensor([-0.05, 0.0, 0.0, 0.05])
    beta = arc_step_size(zeta, a, eta=0.2, rho=0.01, first=False)
    # eta |zeta - a| / (eta - zeta) + rho where zeta < eta, else eta
    expected = [0.2 * 0.15 / 0.1 + 0.01, 0.2, 0.2, 0.2 * 0.0 / 0.15 + 0.01]
    assert beta.tolist() == pytest.approx(expected, rel=1e-6)
    assert arc_step_size(zeta, a, eta=0.2, rho=0.01, first=True).tolist() == pytest.approx([0.2] * 4)


def test_arc_step_size_is_the_smallest_step_sure_to_cross_a_boundary_at_zeta_from_the_centre() -> None:
    # The rule's derivation: with the boundary at distance zeta from the centre along a unit g,
    # the renormalised eta*(d + beta g)/||d + beta g|| reaches it; a 10% smaller step may not.
    g = torch.Generator().manual_seed(0)
    eta = 1.0
    missed_with_smaller = 0
    for _ in range(500):
        d = torch.randn(3, generator=g)
        d = eta * d / d.norm() * torch.rand(1, generator=g).item()
        u = torch.randn(3, generator=g)
        u = u / u.norm()
        zeta = 0.9 * eta * torch.rand(1, generator=g).item()
        a = float(u @ d)
        beta = arc_step_size(torch.tensor([zeta]), torch.tensor([a]), eta=eta, rho=0.0, first=False).item()
        cand = d + beta * u
        cand = eta * cand / cand.norm()
        assert float(u @ cand) >= zeta - 1e-6
        small = d + 0.9 * beta * u
        small = eta * small / small.norm()
        missed_with_smaller += float(u @ small) < zeta
    assert missed_with_smaller > 0  # the bound is not vacuous


def test_arc_finds_the_minimal_perturbation_that_fools_both_where_expected_loss_pgd_fails() -> None:
    mix = toy_mixture()
    x, y = X0.view(1, 2), torch.tensor([0])
    assert toy_accuracy(mix, x) == 1.0
    eps = 0.21  # just above the hand-computed minimum 0.2
    x_arc = ARC(eps, eps, 5, norm="l2", random_start=False)(mix, x, y)
    delta = (x_arc - x)[0]
    assert toy_accuracy(mix, x_arc) == 0.0  # both members fooled
    assert delta.norm().item() <= eps + 1e-6
    # ... along the known-minimal direction (0, 1)
    assert (delta / delta.norm()) @ torch.tensor([0.0, 1.0]) > 0.999
    # PGD on the expected loss (many steps, random restarts) only fools the likelier member
    gen = torch.Generator().manual_seed(0)
    x_pgd = MixturePGD(eps, steps=100, norm="l2", restarts=5)(mix, x, y, generator=gen)
    assert toy_accuracy(mix, x_pgd) == pytest.approx(0.4)
    # and below the minimum nothing fools both
    x_small = ARC(0.19, 0.19, 5, norm="l2", random_start=False)(mix, x, y)
    assert toy_accuracy(mix, x_small) >= 0.4 - 1e-6


def test_expected_loss_gradient_is_the_probability_weighted_sum() -> None:
    mix = toy_mixture()
    x = torch.tensor([[0.3, 0.7], [0.55, 0.45]])
    y = torch.tensor([0, 1])
    got = expected_loss_gradient(mixture_components(mix), x, y, ce_loss).grad
    want = torch.zeros_like(x)
    for p, m in zip(mix.strategy, mix.members):
        leaf = x.clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(ce_loss(m(leaf), y).sum(), leaf)
        want += float(p) * gi
    assert torch.allclose(got, want, atol=1e-6)


def test_zero_weight_members_are_skipped() -> None:
    class Boom(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("a zero-weight member must not be run")

    mix = toy_mixture()
    mix3 = MixedStrategyModel([*mix.members, Boom()], [0.6, 0.4, 0.0])
    comps = mixture_components(mix3)
    assert [c.index for c in comps] == [0, 1]
    x, y = X0.view(1, 2), torch.tensor([0])
    gen = torch.Generator().manual_seed(0)
    assert toy_accuracy(mix3, MixturePGD(0.1, steps=5, norm="l2")(mix3, x, y, generator=gen)) <= 0.4 + 1e-6
    ARC(0.21, 0.21, 2, norm="l2", random_start=False)(mix3, x, y)


def test_components_are_ordered_by_probability() -> None:
    mix = toy_mixture()
    flipped = MixedStrategyModel(list(mix.members), [0.3, 0.7], names=["a", "b"])
    assert [c.name for c in mixture_components(flipped)] == ["b", "a"]


# ----------------------------------------------------------------------------- digits


def _fit_mlp(x: torch.Tensor, y: torch.Tensor, seed: int, hidden: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(25):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    from gametheory_defense.data import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    xtr, ytr = train.images, train.labels
    # three members trained on different halves / widths, so they differ
    members = [
        _fit_mlp(xtr, ytr, seed=0, hidden=64),
        _fit_mlp(xtr[::2], ytr[::2], seed=1, hidden=48),
        _fit_mlp(xtr[1::2], ytr[1::2], seed=2, hidden=32),
    ]
    strategy = [0.5, 0.3, 0.2]
    return {"members": members, "strategy": strategy, "mix": MixedStrategyModel(members, strategy),
            "x": test.images[:150], "y": test.labels[:150]}


def _per_member_pgd(members, strategy, x, y, eps, steps, seed):  # type: ignore[no-untyped-def]
    """PGD crafted against a member drawn from the mixture for each example."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(torch.tensor(strategy), len(y), replacement=True, generator=g)
    x_adv = x.clone()
    for i, m in enumerate(members):
        sel = idx == i
        if sel.any():
            x_adv[sel] = PGD(eps, steps=steps)(m, x[sel], y[sel], generator=g)
    return x_adv


def test_mixture_attacks_beat_per_member_pgd_on_a_digits_mixture(digits) -> None:  # type: ignore[no-untyped-def]
    mix, x, y = digits["mix"], digits["x"], digits["y"]
    comps = mixture_components(mix)
    eps, steps = 0.1, 20
    clean = expected_accuracy(comps, x, y).mean().item()
    assert clean > 0.9
    acc = {"per-member": [], "per-member-avg": [], "mixture-pgd": [], "arc": []}
    for seed in range(3):
        gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
        ev = lambda xa: expected_accuracy(comps, xa, y).mean().item()  # noqa: E731
        acc["per-member"].append(ev(_per_member_pgd(digits["members"], digits["strategy"], x, y, eps, steps, seed)))
        acc["per-member-avg"].append(
            sum(p * ev(PGD(eps, steps=steps)(m, x, y, generator=gen())) for p, m in zip(digits["strategy"], digits["members"]))
        )
        acc["mixture-pgd"].append(ev(MixturePGD(eps, steps=steps)(mix, x, y, generator=gen())))
        acc["arc"].append(ev(ARC(eps, steps=steps)(mix, x, y, generator=gen())))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    assert mean["mixture-pgd"] < clean - 0.3  # the attack really works
    for k in ("mixture-pgd", "arc"):
        assert mean[k] <= min(mean["per-member"], mean["per-member-avg"]) + 1e-9, mean


@pytest.mark.parametrize("name", ["mixture-pgd", "arc", "apgd-ce", "apgd-dlr", "pgd"])
def test_every_attack_reaches_zero_at_a_radius_covering_the_box(digits, name: str) -> None:  # type: ignore[no-untyped-def]
    mix, x, y = digits["mix"], digits["x"][:60], digits["y"][:60]
    attack = build_attack(name, eps=1.0, steps=10, **({"eot_samples": 10} if name in ("pgd", "apgd-ce", "apgd-dlr") else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomizedDefenseWarning)
        x_adv = attack(mix, x, y, generator=torch.Generator().manual_seed(0))
    assert expected_accuracy(mixture_components(mix), x_adv, y).mean().item() <= 0.02


def test_apgd_ce_at_least_as_strong_as_pgd_with_the_same_budget(digits) -> None:  # type: ignore[no-untyped-def]
    model, x, y = digits["members"][0], digits["x"], digits["y"]
    accs = {"apgd": [], "pgd": []}
    for seed in range(3):
        for key, attack in (("apgd", APGDCE(0.1, steps=20)), ("pgd", PGD(0.1, steps=20))):
            x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                accs[key].append((model(x_adv).argmax(1) == y).float().mean().item())
    assert sum(accs["apgd"]) <= sum(accs["pgd"])
    assert sum(accs["apgd"]) / 3 < 0.6  # and it is a real attack


def test_apgd_dlr_fools_where_it_says_so(digits) -> None:  # type: ignore[no-untyped-def]
    model, x, y = digits["members"][1], digits["x"][:80], digits["y"][:80]
    x_adv = APGDDLR(0.15, steps=20)(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y).float().mean().item() < 0.3


def test_apgd_checkpoints_follow_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (increments shrink by .03 down to .06)
    assert apgd_checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    assert apgd_checkpoints(1000) == (0, 220, 410, 570, 700, 800, 870, 930, 990)
    assert apgd_checkpoints(50) == (0, 11, 21, 29, 35, 40, 44, 47, 50)
    assert apgd_checkpoints(1) == (0, 1)


def test_apgd_reaches_the_corner_of_highest_loss_of_a_linear_problem() -> None:
    # logit 1 - logit 0 = sum(x); label 1: the CE loss grows as every coordinate falls,
    # so the worst point of the L-inf ball (radius 0.3 around 0.5) is the corner 0.2. The
    # first step (2 eps) overshoots to the corner, momentum and halving must keep it there.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
        model[1].bias.zero_()
    x, y = torch.full((1, 4), 0.5), torch.tensor([1])
    for norm, corner in (("linf", torch.full((1, 4), 0.2)), ("l2", torch.full((1, 4), 0.5 - 0.15))):
        x_adv = APGDCE(0.3, steps=22, norm=norm, random_start=False)(model, x, y)
        assert torch.allclose(x_adv, corner, atol=1e-5), norm


def test_mixture_pgd_on_a_plain_model_is_pgd(digits) -> None:  # type: ignore[no-untyped-def]
    model, x, y = digits["members"][0], digits["x"][:40], digits["y"][:40]
    a = MixturePGD(0.1, steps=5, eot_samples=1)(model, x, y, generator=torch.Generator().manual_seed(3))
    b = PGD(0.1, steps=5)(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sap_members_need_eot_and_get_it(digits) -> None:  # type: ignore[no-untyped-def]
    members = [apply_sap(m, 0.5) for m in digits["members"][:2]]
    mix = MixedStrategyModel(members, [0.5, 0.5])
    x, y = digits["x"][:30], digits["y"][:30]
    plain = MixedStrategyModel(digits["members"][:2], [0.5, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomizedDefenseWarning)
        # deterministic members: the mixture's draw is handled exactly, no warning
        MixturePGD(0.1, steps=2, eot_samples=1)(plain, x, y, generator=torch.Generator().manual_seed(0))
        ARC(0.1, steps=1, eot_samples=1)(plain, x, y, generator=torch.Generator().manual_seed(0))
        # stochastic members with EOT: no warning
        MixturePGD(0.1, steps=2, eot_samples=4)(mix, x, y, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RandomizedDefenseWarning):
        MixturePGD(0.1, steps=2, eot_samples=1)(mix, x, y, generator=torch.Generator().manual_seed(0))
    comps = mixture_components(mix, eot_samples=4)
    assert [c.draws for c in comps] == [4, 4]
    assert [c.draws for c in mixture_components(plain, eot_samples=4)] == [1, 1]


def test_registry_and_configs() -> None:
    assert {"mixture-pgd", "arc", "apgd-ce", "apgd-dlr"} <= set(ATTACKS)
    arc = build_attack("arc", eps=0.1)
    assert arc.config()["rho"] == 0.05 and arc.step_size == 0.1
    apgd = build_attack("apgd-ce", eps=0.1)
    assert apgd.step_size == pytest.approx(0.2) and apgd.config()["alpha"] == 0.75 and apgd.steps == 100
    assert math.isclose(build_attack("mixture-pgd", eps=0.1, steps=10).step_size, 0.025)


# ----------------------------------------------------------------------------- APGD-T, Square, transfer (issue 13)


def _acc(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def test_targeted_dlr_loss_by_hand() -> None:
    z = torch.tensor([[4.0, 3.0, 2.0, 0.0, -1.0]])
    # y=0, t=3: -(4 - 0) / (4 - (2 + 0) / 2) = -4 / 3; y=1, t=0: -(3 - 4) / 3 = 1 / 3
    assert torch.allclose(dlr_targeted_loss(z, torch.tensor([[0, 3]])), torch.tensor([-4.0 / 3.0]))
    assert torch.allclose(dlr_targeted_loss(z, torch.tensor([[1, 0]])), torch.tensor([1.0 / 3.0]))
    # 3 classes: the scale is z_(1) - z_(3)
    assert torch.allclose(dlr_targeted_loss(z[:, :3], torch.tensor([[2, 0]])), torch.tensor([1.0]))
    # invariant to shifting and scaling the logits
    assert torch.allclose(dlr_targeted_loss(3 * z + 7, torch.tensor([[0, 3]])), torch.tensor([-4.0 / 3.0]))


def test_apgd_t_targets_are_the_top_k_other_classes() -> None:
    z = torch.tensor([[0.0, 5.0, 3.0, 4.0, 1.0]])
    assert top_targets(z, torch.tensor([1]), 3).tolist() == [[3, 2, 4]]
    assert top_targets(z, torch.tensor([3]), 9).tolist() == [[1, 2, 4, 0]]  # capped at K - 1


def test_apgd_t_at_least_as_strong_as_apgd_ce_and_dlr(digits) -> None:  # type: ignore[no-untyped-def]
    model, x, y = digits["members"][0], digits["x"], digits["y"]
    accs: dict[str, list[float]] = {"apgd-t": [], "apgd-ce": [], "apgd-dlr": []}
    for seed in range(2):
        for name in accs:
            extra = {"targets": 3} if name == "apgd-t" else {}
            attack = build_attack(name, eps=0.08, steps=20, **extra)
            accs[name].append(_acc(model, attack(model, x, y, generator=torch.Generator().manual_seed(seed)), y))
    assert sum(accs["apgd-t"]) <= min(sum(accs["apgd-ce"]), sum(accs["apgd-dlr"])) + 1e-9, accs
    assert sum(accs["apgd-t"]) / 2 < _acc(model, x, y) - 0.3, accs  # and it is a real attack


def test_square_schedule_and_pattern() -> None:
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4 and square_fraction(0.8, 51, 10000) == 0.2
    assert square_fraction(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 500, 1000) == square_fraction(0.8, 5000, 10000)  # rescaled to 10000 queries
    pat = pseudo_gaussian_pattern(5)
    assert pat.norm().item() == pytest.approx(1.0)
    assert (pat[:, :2] > 0).all() and (pat[:, 2:] < 0).all()  # eta left, -eta right
    assert torch.equal(pseudo_gaussian_pattern(5, transpose=True), pat.t())
    assert pat[2, 0] > pat[0, 0]  # peaks on the middle row


class _Quantize(nn.Module):
    """Rounds the input to 1/2 steps: the input gradient is exactly zero (masked gradients)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.round(h * 2) / 2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_breaks_a_model_whose_gradients_are_masked(digits, norm: str) -> None:  # type: ignore[no-untyped-def]
    base, x, y = digits["members"][0], digits["x"][:100], digits["y"][:100]
    model = nn.Sequential(_Quantize(), base)
    eps = 0.15 if norm == "linf" else 1.5
    clean = _acc(model, x, y)
    pgd = _acc(model, PGD(eps, steps=20, norm=norm)(model, x, y, generator=torch.Generator().manual_seed(0)), y)
    x_sq = Square(eps, steps=300, norm=norm)(model, x, y, generator=torch.Generator().manual_seed(0))
    delta = (x_sq - x).flatten(1)
    dist = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert dist.max().item() <= eps + 1e-5 and x_sq.min() >= 0 and x_sq.max() <= 1
    assert pgd > clean - 0.25  # the gradient attack is (mostly) fooled by the masking
    assert _acc(model, x_sq, y) < pgd - 0.3  # random search is not


def test_square_on_a_randomized_model_compares_expected_predictions(digits) -> None:  # type: ignore[no-untyped-def]
    base, x, y = digits["members"][0], digits["x"][:60], digits["y"][:60]
    noisy = apply_sap(base, 0.3)
    attack = Square(0.1, steps=20, eot_samples=6)
    g = torch.Generator().manual_seed(0)
    with use_generator(noisy, g):
        loss, margin = attack._query(noisy, x, y)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), use_generator(noisy, g):
        probs = torch.stack([noisy(x).softmax(1) for _ in range(6)]).mean(0)
    assert torch.allclose(margin, cw_loss(probs.log(), y, kappa=float("inf")), atol=1e-5)
    assert torch.allclose(loss, cw_loss(probs.log(), y), atol=1e-5)


def test_transfer_pgd_is_pgd_on_the_deterministic_base(digits) -> None:  # type: ignore[no-untyped-def]
    base, x, y = digits["members"][1], digits["x"][:40], digits["y"][:40]
    sap = apply_sap(base, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomizedDefenseWarning)  # a transfer ignores randomness on purpose
        a = TransferPGD(0.1, steps=5)(sap, x, y, generator=torch.Generator().manual_seed(2))
    b = PGD(0.1, step_size=0.05, steps=5)(base, x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    mix = MixedStrategyModel([digits["members"][0], sap], [0.5, 0.5])
    c = TransferPGD(0.1, steps=5, member=1)(mix, x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, b)
    with pytest.raises(AttackError, match="has 2 members"):
        TransferPGD(0.1, steps=5, member=2)(mix, x, y)


@pytest.mark.parametrize("inner, settings", [("square", {"steps": 40}), ("apgd-t", {"steps": 5, "targets": 2})])
def test_transfer_runs_any_attack_on_the_deterministic_base(digits, inner, settings) -> None:  # type: ignore[no-untyped-def]
    base, x, y = digits["members"][1], digits["x"][:40], digits["y"][:40]
    sap = apply_sap(base, 0.5)
    direct = build_attack(inner, eps=0.1, **settings)(base, x, y, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomizedDefenseWarning)  # a transfer ignores randomness on purpose
        t = Transfer(0.1, attack=inner, settings=settings)
        a = t(sap, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, direct)  # the same examples as the attack on the base: SAP's randomness plays no part
    mix = MixedStrategyModel([digits["members"][0], sap], [0.5, 0.5])
    b = Transfer(0.1, attack=inner, settings=settings, member=1)(mix, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b, direct)
    with torch.no_grad():
        assert (base(a).argmax(1) == y).float().mean() < (base(x).argmax(1) == y).float().mean() - 0.2
    assert build_attack(t.name, **{k: v for k, v in t.config().items() if k != "name"}).config() == t.config()


@pytest.mark.parametrize("kwargs, match", [
    ({"attack": "arc"}, "cannot wrap"),
    ({"attack": "transfer-pgd"}, "cannot wrap"),
    ({"attack": "square", "settings": {"eot_samples": 5}}, "eot_samples must be 1"),
    ({"attack": "square", "settings": {"norm": "l2"}}, "must not set 'norm'"),
    ({"attack": "square", "settings": {"queries": 5}}, "unknown argument 'queries'"),
    ({"attack": "square", "member": -1}, "member"),
    ({"attack": "square", "eot_samples": 4}, "eot_samples must be 1"),
])
def test_transfer_rejects_bad_settings(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AttackError, match=match):
        build_attack("transfer", eps=0.1, **kwargs)
