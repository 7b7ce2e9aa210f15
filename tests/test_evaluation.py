"""Tests of gametheory_defense.evaluation and of ``gtdefense evaluate``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gametheory_defense.attacks import PGD, APGDCE, ARC, EOTPGD, MixturePGD
from gametheory_defense.ensemble import MixedStrategyModel
from gametheory_defense.evaluation import (
    RobustnessReport,
    SanityCheckWarning,
    check_eps_monotonic,
    evaluate,
    suite,
    wilson_interval,
)
from gametheory_defense.sap import apply_sap
from gametheory_defense.stochastic import StochasticModule, random_tensor

EPS = 0.1


def _fit_mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    from gametheory_defense.models import build_model

    g = torch.Generator().manual_seed(seed)
    m = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=g)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(12):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
    return m.eval()


class Quantized(nn.Module):
    """Rounds its input to 4 levels before the model: a straight round, so every input gradient is 0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    from gametheory_defense.data import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    mlp = _fit_mlp(train.images, train.labels, seed=0)
    mlp2 = _fit_mlp(train.images[::2], train.labels[::2], seed=1)
    return {"mlp": mlp, "mlp2": mlp2, "data": (test.images[:60], test.labels[:60])}


def _attacks(**kw: object) -> dict[str, object]:
    return {"pgd": PGD(EPS, steps=10, **kw), "apgd-ce": APGDCE(EPS, steps=10, **kw)}


def _evaluate(model: nn.Module, data: object, attacks: object, **kw: object) -> tuple[RobustnessReport, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(model, data, attacks, progress=False, **kw)  # type: ignore[arg-type]
    sanity = [str(w.message) for w in caught if issubclass(w.category, SanityCheckWarning)]
    return report, sanity


def test_plain_mlp_report_is_consistent_and_silent(digits) -> None:  # type: ignore[no-untyped-def]
    report, sanity = _evaluate(digits["mlp"], digits["data"], _attacks())
    assert sanity == [] and report.warnings == ()
    assert not report.stochastic and report.repeats == 1 and report.n_examples == 60
    assert report.clean_accuracy > 0.85
    accs = [a.accuracy for a in report.attacks]
    assert max(accs) < report.clean_accuracy - 0.2  # the attacks really work
    # per-example worst case: <= every attack, and equal to the AND of the outcomes
    assert report.worst_case_accuracy <= min(accs) + 1e-12
    expected = report.clean_outcomes & report.attacks[0].outcomes & report.attacks[1].outcomes
    assert report.worst_case_accuracy == pytest.approx(expected.mean())
    for a in report.attacks:  # deterministic: all-draws equals the mean; the CI brackets it
        assert a.accuracy_all_draws == a.accuracy
        assert a.ci_low <= a.accuracy <= a.ci_high
        assert (a.ci_low, a.ci_high) == pytest.approx(wilson_interval(a.accuracy, 60))
    assert report.sanity["eps_sweep"]["accuracy"][2] <= 0.02
    md = report.to_markdown()
    assert "worst case" in md and "| pgd |" in md


def test_stochastic_all_draws_at_most_mean_and_worst_case_at_most_min(digits) -> None:  # type: ignore[no-untyped-def]
    sap = apply_sap(digits["mlp"], 0.5)
    attacks = {"eot-pgd": EOTPGD(EPS, steps=5, eot_samples=4), "apgd-ce": APGDCE(EPS, steps=5, eot_samples=4)}
    report, sanity = _evaluate(sap, digits["data"], attacks, repeats=3)
    assert report.stochastic and report.repeats == 3
    assert report.clean_accuracy_all_draws <= report.clean_accuracy
    for a in report.attacks:
        assert a.outcomes is not None and a.outcomes.shape == (3, 60)
        assert a.accuracy_all_draws <= a.accuracy
        assert a.accuracy == pytest.approx(a.outcomes.mean())
        assert a.accuracy_all_draws == pytest.approx(a.outcomes.all(axis=0).mean())
    assert report.worst_case_accuracy <= min(a.accuracy for a in report.attacks) + 1e-12
    assert report.worst_case_accuracy_all_draws <= report.worst_case_accuracy
    assert not any("no EOT" in s for s in sanity)


def test_sanity_check_fires_on_a_randomized_model_attacked_without_eot(digits) -> None:  # type: ignore[no-untyped-def]
    sap = apply_sap(digits["mlp"], 0.5)
    report, sanity = _evaluate(sap, digits["data"], {"pgd": PGD(EPS, steps=5)})
    assert any("no EOT" in s for s in sanity)
    assert report.warnings == tuple(sanity)


def test_sanity_checks_fire_on_a_gradient_masking_model(digits) -> None:  # type: ignore[no-untyped-def]
    masked = Quantized(digits["mlp"])
    report, sanity = _evaluate(masked, digits["data"], _attacks())
    text = " ".join(sanity)
    assert "zero input gradient" in text
    assert report.sanity["zero_gradient_share"] == 1.0
    assert len(sanity) >= 2  # the eps sweep (or the noise baseline) also notices
    check = check_eps_monotonic(masked, *digits["data"], eps=EPS, generator=torch.Generator().manual_seed(0))
    assert check.warning is not None and check.accuracy[2] > 0.05


def test_eps_sweep_on_a_plain_model(digits) -> None:  # type: ignore[no-untyped-def]
    check = check_eps_monotonic(digits["mlp"], *digits["data"], eps=EPS, generator=torch.Generator().manual_seed(0))
    assert check.eps == (EPS, 2 * EPS, 1.0)
    assert check.accuracy[0] >= check.accuracy[1] >= check.accuracy[2]
    assert check.accuracy[2] <= 0.02 and check.warning is None


def test_sanity_check_fires_on_probability_outputs(digits) -> None:  # type: ignore[no-untyped-def]
    _, sanity = _evaluate(Softmaxed(digits["mlp"]), digits["data"], {"pgd": PGD(EPS, steps=5)}, sanity_checks=True)
    assert any("probabilities" in s for s in sanity)


def test_mixture_with_the_quick_suite(digits) -> None:  # type: ignore[no-untyped-def]
    mix = MixedStrategyModel([digits["mlp"], digits["mlp2"]], [0.7, 0.3])
    attacks = suite("quick", eps=EPS, model=mix)
    transfers = [f"{t}-member{i}" for t in ("transfer-pgd", "transfer-apgd-t", "transfer-square") for i in (0, 1)]
    assert {"mixture-pgd-ce", "arc", "eot-pgd-ce", "apgd-ce", "apgd-dlr", *transfers} == set(attacks)
    assert [attacks[f"transfer-pgd-member{i}"].member for i in (0, 1)] == [0, 1]
    assert [attacks[f"transfer-square-member{i}"].member for i in (0, 1)] == [0, 1]
    assert isinstance(attacks["arc"], ARC) and isinstance(attacks["mixture-pgd-ce"], MixturePGD)
    x, y = digits["data"]
    report, sanity = _evaluate(mix, (x[:40], y[:40]), attacks, repeats=2)
    assert sanity == []
    assert report.stochastic and report.worst_case_accuracy <= min(a.accuracy for a in report.attacks)
    assert report.worst_case_accuracy < report.clean_accuracy - 0.2


def test_suites_fit_the_model(digits) -> None:  # type: ignore[no-untyped-def]
    det = suite("adaptive", eps=EPS, model=digits["mlp"])
    assert set(det) == {"pgd-ce", "pgd-cw", "apgd-ce", "apgd-dlr", "apgd-t", "square"}
    assert det["pgd-ce"].steps == 100 and det["pgd-cw"].loss == "cw"
    assert all(a.eot_samples == 1 for a in det.values())
    sap = suite("adaptive", eps=EPS, model=apply_sap(digits["mlp"], 0.5))
    assert set(sap) == {"eot-pgd-ce", "apgd-ce", "apgd-dlr", "square-eot", "transfer-pgd", "transfer-apgd-t",
                        "transfer-square"}
    # the randomized model meets AutoAttack's deterministic attacks, with their budgets, through its base
    assert sap["transfer-square"].inner.config() == det["square"].config()
    assert sap["transfer-apgd-t"].inner.config() == det["apgd-t"].config()
    assert all(sap[k].eot_samples == 20 for k in ("eot-pgd-ce", "apgd-ce", "apgd-dlr"))
    assert sap["eot-pgd-ce"].steps == 100 and sap["square-eot"].eot_samples == 10
    assert sap["transfer-pgd"].eot_samples == 1 and sap["transfer-pgd"].member is None
    with pytest.raises(ValueError, match="unknown attack suite"):
        suite("strong", eps=EPS)


def test_autoattack_suites_and_adaptive_contains_autoattack(digits) -> None:  # type: ignore[no-untyped-def]
    aa = suite("autoattack", eps=EPS, model=digits["mlp"])
    assert list(aa) == ["apgd-ce", "apgd-t", "square"]
    assert aa["apgd-ce"].steps == 100 and aa["apgd-t"].targets == 9 and aa["square"].steps == 5000
    assert aa["square"].p_init == 0.8
    adaptive = suite("adaptive", eps=EPS, model=digits["mlp"])
    for key, attack in aa.items():  # the same attacks with the same budgets: worst case <= AutoAttack's
        assert adaptive[key].config() == attack.config()
    rand = suite("autoattack-rand", eps=EPS, model=apply_sap(digits["mlp"], 0.5))
    assert list(rand) == ["apgd-ce", "apgd-dlr"] and all(a.eot_samples == 20 for a in rand.values())
    sap_adaptive = suite("adaptive", eps=EPS, model=apply_sap(digits["mlp"], 0.5))
    for key, attack in rand.items():
        assert sap_adaptive[key].config() == attack.config()
    assert all(a.eot_samples == 1 for a in suite("autoattack-rand", eps=EPS, model=digits["mlp"]).values())


class CoinFlipClassifier(StochasticModule):
    """Correct with probability ``p`` on every input, independently per forward pass."""

    def __init__(self, p: float, num_classes: int = 10) -> None:
        super().__init__()
        self.p, self.num_classes = p, num_classes
        self.labels: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.labels is not None
        n = x.shape[0]
        y = self.labels[:n] if n <= self.labels.shape[0] else self.labels.repeat(n // self.labels.shape[0] + 1)[:n]
        u = random_tensor("rand", (n,), generator=self.generator, device=x.device, dtype=x.dtype)
        pred = torch.where(u < self.p, y, (y + 1) % self.num_classes)
        logits = torch.nn.functional.one_hot(pred, self.num_classes).to(x.dtype) * 10.0
        return logits + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)  # a (zero) input gradient


@pytest.mark.filterwarnings("ignore::gametheory_defense.attacks.RandomizedDefenseWarning")
def test_draws_remove_the_low_bias_of_the_worst_case() -> None:
    # Every attack leaves the coin-flip model at 0.7; with one draw the per-example minimum
    # over clean + 3 attacks is 0.7^4 = 0.24 in expectation; with 200 draws it is close to 0.7.
    n = 400
    x, y = torch.rand(n, 1, 2, 2), torch.arange(n) % 10
    model = CoinFlipClassifier(0.7)
    model.labels = y
    attacks = {f"pgd{i}": PGD(0.1, steps=1) for i in range(3)}
    one = evaluate(model, (x, y), attacks, draws=1, batch_size=n, sanity_checks=False, progress=False, seed=1)
    many = evaluate(model, (x, y), attacks, draws=200, batch_size=n, sanity_checks=False, progress=False, seed=1)
    assert one.draws == 1 and many.draws == 200 and many.repeats == 1
    assert many.attacks[0].outcomes.shape == (200, n) and many.clean_outcomes.shape == (200, n)
    for r in (*one.attacks, *many.attacks):
        assert r.accuracy == pytest.approx(0.7, abs=0.08)
    assert many.attacks[0].accuracy == pytest.approx(0.7, abs=0.01)
    assert one.worst_case_accuracy == pytest.approx(0.7**4, abs=0.07)
    # E[min of 4 means of 200 Bernoulli(0.7)] = 0.7 - 1.03 * sqrt(0.21 / 200) ~ 0.667
    assert many.worst_case_accuracy == pytest.approx(0.667, abs=0.01)
    assert many.worst_case_accuracy_all_draws == 0.0  # nobody survives 800 coin flips
    assert RobustnessReport.from_dict(json.loads(json.dumps(many.to_dict()))).draws == 200
    with pytest.raises(ValueError, match="draws"):
        evaluate(model, (x, y), attacks, draws=0, progress=False)


def test_deterministic_model_is_classified_once_whatever_draws(digits) -> None:  # type: ignore[no-untyped-def]
    report, _ = _evaluate(digits["mlp"], digits["data"], {"pgd": PGD(EPS, steps=3)}, draws=7, sanity_checks=False)
    assert report.draws == 1 and report.attacks[0].outcomes.shape == (1, len(digits["data"][1]))


def test_one_member_mixture_gets_the_members_suite(digits) -> None:  # type: ignore[no-untyped-def]
    sap = apply_sap(digits["mlp"], 0.5)
    mix = MixedStrategyModel([sap, digits["mlp2"]], [1.0, 0.0])
    assert set(suite("adaptive", eps=EPS, model=mix)) == set(suite("adaptive", eps=EPS, model=sap))
    pure = MixedStrategyModel([digits["mlp"], sap], [1.0, 0.0])
    assert set(suite("adaptive", eps=EPS, model=pure)) == {"pgd-ce", "pgd-cw", "apgd-ce", "apgd-dlr", "apgd-t", "square"}
    assert suite("adaptive", eps=EPS, model=mix)["transfer-pgd"].member == 0
    two = MixedStrategyModel([sap, digits["mlp2"]], [0.5, 0.5])
    assert {"mixture-pgd-ce", "mixture-pgd-cw", "arc"} <= set(suite("adaptive", eps=EPS, model=two))


def test_bad_arguments(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="one threat model"):
        evaluate(digits["mlp"], digits["data"], {"a": PGD(0.1), "b": PGD(0.2)}, progress=False)
    with pytest.raises(ValueError, match="eps is required"):
        evaluate(digits["mlp"], digits["data"], "quick", progress=False)
    with pytest.raises(ValueError, match="repeats"):
        evaluate(digits["mlp"], digits["data"], {"a": PGD(0.1)}, repeats=0, progress=False)


def test_report_json_round_trip(digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report, _ = _evaluate(digits["mlp"], digits["data"], {"pgd": PGD(EPS, steps=5)}, sanity_checks=False)
    path = report.to_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert "outcomes" not in data["attacks"][0] and "clean_outcomes" not in data
    again = RobustnessReport.from_json(path)
    assert again == report
    full = RobustnessReport.from_dict(json.loads(json.dumps(report.to_dict(include_outcomes=True))))
    assert np.array_equal(full.worst_case_outcomes, report.worst_case_outcomes)
    assert np.array_equal(full.attacks[0].outcomes, report.attacks[0].outcomes)
    assert report.attack("pgd").config == PGD(EPS, steps=5).config()


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(0.5, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    lo, hi = wilson_interval(0.0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0714, abs=1e-4)
    assert wilson_interval(1.0, 10)[1] == 1.0


# ----------------------------------------------------------------------------- CLI


def test_cli_evaluates_a_checkpoint_and_an_ensemble(digits, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.cli import main

    ck = save_checkpoint(digits["mlp"], tmp_path / "mlp", dataset="digits")
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["evaluate", str(ck), "--attack", "pgd", "--steps", "5", "--eps", "0.1", "--n", "40",
            "--out-json", str(out_json), "--out-md", str(out_md), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = RobustnessReport.from_json(out_json)
    assert report.n_examples == 40 and [a.name for a in report.attacks] == ["pgd"]
    assert out_md.read_text() == printed and "worst case" in printed

    ens = MixedStrategyModel([digits["mlp"], digits["mlp2"]], [0.5, 0.5], metadata={"dataset": "digits"})
    ens.save(tmp_path / "ens")
    assert main(["evaluate", str(tmp_path / "ens"), "--suite", "quick", "--eps", "0.1", "--n", "20",
                 "--repeats", "2", "--no-progress", "--out-json", str(out_json)]) == 0
    report = RobustnessReport.from_json(out_json)
    assert report.stochastic and "arc" in {a.name for a in report.attacks}
    # default Markdown, named after the suite and threat model
    assert (tmp_path / "ens" / "evaluation.quick.linf-0.1.md").read_text().startswith("Threat model:")


def test_cli_writes_json_and_markdown_by_default(digits, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.cli import main

    ck = save_checkpoint(digits["mlp"], tmp_path / "mlp", dataset="digits")
    assert main(["evaluate", str(ck), "--attack", "fgsm", "--eps", "0.1", "--n", "10", "--no-progress",
                 "--no-sanity-checks"]) == 0
    captured = capsys.readouterr()
    report = RobustnessReport.from_json(tmp_path / "mlp.evaluation.fgsm.linf-0.1.json")
    assert report.n_examples == 10 and [a.name for a in report.attacks] == ["fgsm"]
    assert (tmp_path / "mlp.evaluation.fgsm.linf-0.1.md").read_text() == captured.out
    assert "mlp.evaluation.fgsm.linf-0.1.json" in captured.err
    record = json.loads((tmp_path / "mlp.evaluation.fgsm.linf-0.1.json").read_text())["evaluation"]
    assert record["model"] == str(ck) and record["sap"] is None and record["seed"] == 0 and record["eps"] == 0.1
    assert record["suite"] is None and record["attacks"] == ["fgsm"] and record["n"] == 10
    assert record["device"] == "cpu" and record["environment"]["torch"] == torch.__version__


def test_cli_uses_the_recorded_threat_model_keeps_suites_apart_and_warns_on_one_draw(digits, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.cli import main

    ck = save_checkpoint(digits["mlp"], tmp_path / "mlp", dataset="digits", extra={"threat_model": {"norm": "linf", "eps": 0.05}})
    base = ["evaluate", str(ck), "--n", "8", "--no-progress", "--no-sanity-checks"]
    assert main([*base, "--attack", "fgsm"]) == 0
    assert "recorded with the model: eps 0.05" in capsys.readouterr().err
    first = tmp_path / "mlp.evaluation.fgsm.linf-0.05.json"
    assert RobustnessReport.from_json(first).threat_model["eps"] == 0.05
    before = first.read_text()
    assert main([*base, "--attack", "fgsm", "--sap-frac", "0.5"]) == 0  # SAP: another file, and a warning
    err = capsys.readouterr().err
    assert "randomized and --draws is 1" in err
    second = tmp_path / "mlp.evaluation.fgsm.linf-0.05.sap0.5-exact.json"
    assert second.exists() and first.read_text() == before
    assert json.loads(second.read_text())["evaluation"]["sap"]["frac"] == 0.5


def test_cli_bad_path_is_one_line_exit_2(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gametheory_defense.cli import main

    for bad in (tmp_path / "missing.safetensors", tmp_path):
        assert main(["evaluate", str(bad), "--n", "5"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gtdefense evaluate: error:")


def test_cli_model_built_for_other_inputs_is_one_line_exit_2(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.cli import main
    from gametheory_defense.models import build_model

    wide = build_model("mlp", input_shape=(1, 28, 28), num_classes=10)  # an MNIST-sized MLP
    ck = save_checkpoint(wide, tmp_path / "wide", dataset="digits")
    assert main(["evaluate", str(ck), "--attack", "fgsm", "--eps", "0.1", "--n", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not accept digits images of shape (1, 8, 8)" in err[0]
    assert not (tmp_path / "wide.evaluation.json").exists()
