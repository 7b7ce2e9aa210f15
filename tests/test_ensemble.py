"""Tests of gametheory_defense.ensemble.MixedStrategyModel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from gametheory_defense.ensemble import MANIFEST, MixedStrategyModel
from gametheory_defense.errors import CheckpointError
from gametheory_defense.models import build_model
from gametheory_defense.sap import apply_sap
from gametheory_defense.stochastic import deterministic, is_stochastic, use_generator

K = 6  # classes of the constant members


class Constant(nn.Module):
    """Answers every input with the one-hot logits of its class; counts its calls."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        out = torch.zeros(x.shape[0], K)
        out[:, self.k] = 10.0
        return out + 0.0 * x.flatten(1).sum(1, keepdim=True)


def constant_mixture(p: list[float], sample: str = "per-example") -> MixedStrategyModel:
    return MixedStrategyModel([Constant(k) for k in range(len(p))], p, names=[f"c{k}" for k in range(len(p))], sample=sample)


def mlp(seed: int) -> nn.Module:
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(seed)).eval()


# ----------------------------------------------------------------- sampling


def test_per_example_frequencies_match_strategy() -> None:
    p = [0.5, 0.3, 0.2, 0.0]
    mix = constant_mixture(p)
    mix.generator = torch.Generator().manual_seed(0)
    n = 20000
    drawn = mix(torch.zeros(n, 1, 2, 2)).argmax(dim=1)
    counts = np.bincount(drawn.numpy(), minlength=len(p))
    assert counts[3] == 0  # the zero-weight member is never drawn
    stat = chisquare(counts[:3], f_exp=np.array(p[:3]) * n)
    assert stat.pvalue > 1e-4
    # grouping: each drawn member ran exactly once, on exactly its examples
    for k in range(3):
        assert mix.members[k].calls == [counts[k]]
    assert mix.members[3].calls == []


def test_zero_weight_member_never_drawn_even_at_the_sampler_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.multinomial's CPU search maps a uniform draw of exactly 0 to the first category,
    # zero weight or not; simulate that edge: draws must still land in the support.
    mix = constant_mixture([0.0, 0.7, 0.0, 0.3])
    real = torch.multinomial

    def first_category(probs: torch.Tensor, n: int, **kwargs: object) -> torch.Tensor:
        real(probs, n, **kwargs)  # same checks, same generator use
        return torch.zeros(n, dtype=torch.long, device=probs.device)

    monkeypatch.setattr(torch, "multinomial", first_category)
    mix.generator = torch.Generator().manual_seed(0)
    assert set(mix.draw_members(100).tolist()) == {1}
    assert set(mix(torch.zeros(100, 1, 2, 2)).argmax(1).tolist()) == {1}
    assert mix.members[0].calls == [] and mix.members[2].calls == []


def test_per_example_output_row_follows_its_draw() -> None:
    mix = constant_mixture([0.25, 0.25, 0.5])
    g = torch.Generator().manual_seed(3)
    mix.generator = g
    state = g.get_state()
    out = mix(torch.zeros(50, 1, 2, 2))
    g.set_state(state)
    assert torch.equal(out.argmax(1), mix.draw_members(50))


def test_per_batch_draws_one_member_per_call() -> None:
    p = [0.1, 0.0, 0.6, 0.3]
    mix = constant_mixture(p, sample="per-batch")
    calls = 3000
    counts = np.zeros(len(p), dtype=int)
    with use_generator(mix, torch.Generator().manual_seed(1)):
        for _ in range(calls):
            labels = mix(torch.zeros(7, 1, 2, 2)).argmax(1)
            assert len(set(labels.tolist())) == 1
            counts[int(labels[0])] += 1
    assert counts[1] == 0
    assert chisquare(counts[[0, 2, 3]], f_exp=np.array(p)[[0, 2, 3]] * calls).pvalue > 1e-4


def test_same_generator_same_draws_and_sap_members_follow_it() -> None:
    base = mlp(0)
    mix = MixedStrategyModel([apply_sap(base, 0.5), mlp(1)], [0.7, 0.3], names=["sap", "plain"])
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    assert is_stochastic(mix)
    with use_generator(mix, torch.Generator().manual_seed(5)):
        a = mix(x)
    with use_generator(mix, torch.Generator().manual_seed(5)):
        b = mix(x)
    with use_generator(mix, torch.Generator().manual_seed(6)):
        c = mix(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # setting the attribute directly also reaches the SAP member for the call
    mix.generator = torch.Generator().manual_seed(5)
    d = mix(x)
    mix.generator = torch.Generator().manual_seed(5)
    assert torch.equal(d, mix(x))
    assert mix.members[0][2][1].generator is None  # restored after the call


# ----------------------------------------------------------------- expected mode


def test_expected_mode_is_log_of_mixture_softmax() -> None:
    torch.manual_seed(0)  # test-local: parameter init of the linear members
    members = [nn.Linear(5, 4) for _ in range(3)]
    p = np.array([0.2, 0.0, 0.8])
    mix = MixedStrategyModel(members, p, sample="expected")
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = mix(x)
    direct = torch.log(sum(float(p[i]) * torch.softmax(members[i](x), dim=1) for i in range(3)))
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(10), atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # member_logits: every member, in order
    ml = mix.member_logits(x)
    assert ml.shape == (3, 10, 4)
    torch.testing.assert_close(ml[1], members[1](x))


def test_deterministic_context_gives_expected_output() -> None:
    members = [Constant(0), Constant(1)]
    mix = MixedStrategyModel(members, [0.25, 0.75])
    x = torch.zeros(4, 1, 2, 2)
    with deterministic(mix):
        out = mix(x)
    probs = out.exp()
    big, small = np.exp(10.0) / (np.exp(10.0) + K - 1), 1.0 / (np.exp(10.0) + K - 1)
    want = np.full(K, small)
    want[0], want[1] = 0.25 * big + 0.75 * small, 0.25 * small + 0.75 * big
    np.testing.assert_allclose(probs.numpy(), np.tile(want, (4, 1)), rtol=1e-5)
    assert mix.stochastic  # restored


def test_predict_batches_and_matches_expected_argmax() -> None:
    mix = constant_mixture([0.0, 1.0, 0.0])
    x = torch.zeros(11, 1, 2, 2)
    assert mix.predict(x, batch_size=4).tolist() == [1] * 11


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("strategy", "match"),
    [
        ([0.5, 0.6], "sum to 1"),
        ([1.2, -0.2], "negative"),
        ([float("nan"), 1.0], "finite"),
        ([1.0], "1 probabilities but there are 2"),
        ([[0.5, 0.5]], "1-D"),
    ],
)
def test_bad_strategy_raises(strategy: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MixedStrategyModel([Constant(0), Constant(1)], strategy)


def test_strategy_is_read_only_float64_and_renormalised() -> None:
    mix = MixedStrategyModel([Constant(0), Constant(1)], torch.tensor([0.25 + 1e-8, 0.75]))
    assert mix.strategy.dtype == np.float64
    assert mix.strategy.sum() == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ValueError):
        mix.strategy[0] = 1.0
    tiny_negative = MixedStrategyModel([Constant(0), Constant(1)], [1.0 + 1e-9, -1e-9])
    assert tiny_negative.strategy.tolist() == [1.0, 0.0]


def test_bad_names_and_mode_raise() -> None:
    with pytest.raises(ValueError, match="unique"):
        MixedStrategyModel([Constant(0), Constant(1)], [0.5, 0.5], names=["a", "a"])
    with pytest.raises(ValueError, match="sample must be"):
        MixedStrategyModel([Constant(0)], [1.0], sample="per-token")
    with pytest.raises(ValueError, match="at least one member"):
        MixedStrategyModel([], [])


# ----------------------------------------------------------------- from_equilibrium


@dataclass(frozen=True)
class FakeEquilibrium:
    defenders: tuple[str, ...]
    defender_strategy: np.ndarray
    value: float
    method: str = "lp"
    status: str = "optimal"
    exploitability: float = 0.0


def test_from_equilibrium_drops_zero_weight_and_renormalises() -> None:
    eq = FakeEquilibrium(("a", "b", "c"), np.array([0.6, 1e-12, 0.4 - 1e-12]), 0.42)
    models = {"a": Constant(0), "c": Constant(2)}  # "b" is outside the support: not needed
    mix = MixedStrategyModel.from_equilibrium(eq, models, sample="per-batch")
    assert mix.names == ("a", "c")
    np.testing.assert_allclose(mix.strategy, [0.6, 0.4], atol=1e-11)
    assert mix.members[0] is models["a"] and mix.members[1] is models["c"]
    assert mix.value == 0.42 and mix.sample == "per-batch"
    assert mix.metadata["dropped"] == ["b"]
    with pytest.raises(ValueError, match=r"no model given for equilibrium defender\(s\) \['c'\]"):
        MixedStrategyModel.from_equilibrium(eq, {"a": Constant(0)})
    with pytest.warns(UserWarning, match="not rows of the equilibrium"):
        MixedStrategyModel.from_equilibrium(eq, {**models, "zzz": Constant(1)})


def test_from_equilibrium_drops_solver_round_off() -> None:
    # HiGHS leaves ~1e-7 on rows outside the support; such a member is dropped by default
    eq = FakeEquilibrium(("pure", "noise"), np.array([1.0 - 1.5e-7, 1.5e-7]), 0.8)
    mix = MixedStrategyModel.from_equilibrium(eq, {"pure": Constant(0), "noise": Constant(1)})
    assert mix.names == ("pure",) and mix.strategy.tolist() == [1.0]
    kept = MixedStrategyModel.from_equilibrium(eq, {"pure": Constant(0), "noise": Constant(1)}, atol=1e-9)
    assert kept.names == ("pure", "noise")


def test_from_equilibrium_with_real_solver() -> None:
    solvers = pytest.importorskip("gametheory_defense.solvers")
    from payoff import PayoffMatrix

    # defender "weak" is dominated by "robust"; matching-pennies between robust and other
    game = PayoffMatrix(
        [[0.9, 0.1], [0.1, 0.9], [0.05, 0.05]], defenders=["robust", "other", "weak"], attackers=["x", "y"]
    )
    eq = solvers.solve_zero_sum(game)
    mix = MixedStrategyModel.from_equilibrium(eq, {"robust": Constant(0), "other": Constant(1)})
    assert mix.names == ("robust", "other")
    np.testing.assert_allclose(mix.strategy, [0.5, 0.5], atol=1e-6)
    assert mix.value == pytest.approx(0.5, abs=1e-6)


# ----------------------------------------------------------------- save / load


@pytest.fixture()
def sap_ensemble() -> MixedStrategyModel:
    base = mlp(0)
    members = [base, apply_sap(base, 0.5), apply_sap(mlp(1), 1.0, mode="fast", layers=[-1])]
    return MixedStrategyModel(
        members, [0.2, 0.5, 0.3], names=["base", "base+sap", "other/sap"], value=0.61, metadata={"payoff": "g.json"}
    )


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, sap_ensemble: MixedStrategyModel) -> None:
    out = sap_ensemble.save(tmp_path / "ens")
    files = sorted(p.name for p in (out / "members").iterdir())
    # base and base+sap share one weights file; the third member has its own
    assert sum(f.endswith(".safetensors") for f in files) == 2
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "gametheory-defense/ensemble" and manifest["format_version"] == 1
    assert manifest["names"] == ["base", "base+sap", "other/sap"]
    assert manifest["members"][1]["sap"]["frac"] == 0.5 and manifest["members"][0]["sap"] is None
    assert manifest["members"][0]["weights"] == manifest["members"][1]["weights"]

    loaded = MixedStrategyModel.load(out)
    assert loaded.names == sap_ensemble.names and loaded.value == 0.61
    np.testing.assert_array_equal(loaded.strategy, sap_ensemble.strategy)
    assert loaded.metadata == {"payoff": "g.json"}
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for mode in ("per-example", "per-batch", "expected"):
        sap_ensemble.sample = loaded.sample = mode
        with use_generator(sap_ensemble, torch.Generator().manual_seed(11)):
            a = sap_ensemble(x)
        with use_generator(loaded, torch.Generator().manual_seed(11)):
            b = loaded(x)
        assert torch.equal(a, b), mode
    with use_generator(loaded, torch.Generator().manual_seed(11)):
        c = loaded.member_logits(x)
    with use_generator(loaded, torch.Generator().manual_seed(12)):
        d = loaded.member_logits(x)
    assert torch.equal(c[0], d[0]) and not torch.equal(c[1], d[1])  # SAP members stay stochastic


def test_save_refuses_to_clobber(tmp_path: Path, sap_ensemble: MixedStrategyModel) -> None:
    target = tmp_path / "ens"
    sap_ensemble.save(target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sap_ensemble.save(target)
    small = MixedStrategyModel([mlp(3)], [1.0], names=["only"])
    small.save(target, overwrite=True)
    assert MixedStrategyModel.load(target).names == ("only",)
    assert [p.name for p in tmp_path.iterdir()] == ["ens"]  # no temp dirs left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an ensemble directory"):
        small.save(other, overwrite=True)


def _edit_manifest(root: Path, fn, *, resign: bool = True) -> None:
    """Edit the manifest; ``resign`` also updates its digest, so only the deeper checks can object."""
    from gametheory_defense.ensemble import MANIFEST_DIGEST, manifest_digest

    m = json.loads((root / MANIFEST).read_text())
    fn(m)
    if resign:
        m[MANIFEST_DIGEST] = manifest_digest(m)
    (root / MANIFEST).write_text(json.dumps(m))


def _set_member_frac(m: dict, frac: float) -> None:
    member = next(e for e in m["members"] if e["sap"] is not None)
    member["sap"] = {**member["sap"], "frac": frac}


def _first_weights(root: Path) -> Path:
    return root / json.loads((root / MANIFEST).read_text())["members"][0]["weights"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "missing manifest": (lambda r: (r / MANIFEST).unlink(), MANIFEST),
    "bad json": (lambda r: (r / MANIFEST).write_text("{not json"), MANIFEST),
    "strategy length": (lambda r: _edit_manifest(r, lambda m: m.update(strategy=[0.5, 0.5])), MANIFEST),
    "not summing to one": (lambda r: _edit_manifest(r, lambda m: m.update(strategy=[0.2, 0.5, 0.2])), MANIFEST),
    "unknown format": (lambda r: _edit_manifest(r, lambda m: m.update(format="other")), MANIFEST),
    "missing member file": (lambda r: _first_weights(r).unlink(), ".safetensors"),
    "sha mismatch": (lambda r: _flip_byte(_first_weights(r)), ".safetensors"),
    "path escape": (lambda r: _edit_manifest(r, lambda m: m["members"][0].update(weights="../x.safetensors")), MANIFEST),
    # issue 14: a hand edit that still parses (member SAP frac, strategy) is refused by the digest
    "edited member SAP frac": (lambda r: _edit_manifest(r, lambda m: _set_member_frac(m, 0.01), resign=False), MANIFEST),
    "edited strategy": (
        lambda r: _edit_manifest(r, lambda m: m.update(strategy=list(reversed(m["strategy"]))), resign=False),
        MANIFEST,
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_directory_raises_checkpoint_error(tmp_path: Path, sap_ensemble: MixedStrategyModel, case: str) -> None:
    root = sap_ensemble.save(tmp_path / "ens")
    corrupt, names_file = CORRUPTIONS[case]
    corrupt(root)
    with pytest.raises(CheckpointError) as info:
        MixedStrategyModel.load(root)
    message = str(info.value)
    assert "\n" not in message
    assert names_file in message


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        MixedStrategyModel.load(tmp_path / "nope")
