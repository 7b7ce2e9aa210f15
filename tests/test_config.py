"""The TOML run configuration: every bad key or value is named in a one-line error."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gametheory_defense.config import defender_names, load_config, parse_config
from gametheory_defense.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.toml"


def raw_digits() -> dict:
    return tomllib.loads(DIGITS.read_text())


def test_example_configs_load():
    cfg = load_config(DIGITS)
    assert cfg.data.dataset == "digits"
    assert [m.name for m in cfg.models] == ["standard", "pgd-at"]
    assert defender_names(cfg) == [
        "standard", "standard+sap0.5", "standard+sap1", "standard+sap2",
        "pgd-at", "pgd-at+sap0.5", "pgd-at+sap1", "pgd-at+sap2",
    ]
    assert cfg.attackers[1].params == {"eps": 0.05, "steps": 10}
    for path in sorted((ROOT / "examples").glob("*.toml")):
        load_config(path)


def test_packaged_demo_config_is_the_example():
    from gametheory_defense.cli.demo import demo_config_path

    assert demo_config_path().read_text() == DIGITS.read_text()


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r.update(bogus={}), "unknown section 'bogus'"),
        (lambda r: r["data"].update(eval_sise=3), "data: unknown key 'eval_sise'"),
        (lambda r: r["data"].update(dataset="imagenet"), "data.dataset"),
        (lambda r: r["data"].update(eval_size=0), "data.eval_size"),
        (lambda r: r["models"][0].update(epochs="ten"), "models[0].epochs"),
        (lambda r: r["models"][1].update(method="trades"), "models.method"),
        (lambda r: r["models"][0].update(architecture="vgg"), "models[0].architecture"),
        (lambda r: r["models"][0].update(lr=-1.0), "models[0].lr"),
        (lambda r: r["models"][1].update(name="standard"), "duplicate name 'standard'"),
        (lambda r: r["models"][0].update(name="mixture"), "reserved"),
        (lambda r: r["defenders"].update(sap_fracs=[0.5, -1.0]), "defenders.sap_fracs[1]"),
        (lambda r: r["defenders"].update(sap_mode="slow"), "defenders.sap_mode"),
        (lambda r: r["defenders"].update(sap_activations="tanh"), "defenders.sap_activations: unknown activation 'tanh'"),
        (lambda r: r["defenders"].update(sap_activations=["gelu", "swish"]), "defenders.sap_activations: unknown"),
        (lambda r: r["defenders"].update(sap_activations=[]), "defenders.sap_activations"),
        (lambda r: r["defenders"].update(sap_activations=3), "defenders.sap_activations"),
        (lambda r: r["attackers"][0].update(attack="deepfool"), "attackers[0].attack"),
        (lambda r: r["attackers"][1].update(steps=0), "attackers[1]"),
        (lambda r: r["attackers"][1].update(stpes=3), "attackers[1]"),
        (lambda r: r["game"].update(formulation="cooperative"), "game.formulation"),
        (lambda r: r["game"].update(solver="magic"), "game.solver"),
        (lambda r: r["game"].update(select="best"), "game.select"),
        (lambda r: r["game"].update(repeats=0), "game.repeats"),
        (lambda r: r["evaluation"].update(suite="weak"), "evaluation.suite"),
        (lambda r: r["evaluation"].update(eps=float("nan")), "evaluation.eps"),
        (lambda r: r["evaluation"].update(models=["pgd-at", "nobody"]), "evaluation.models"),
        (lambda r: r["evaluation"].update(draws=0), "evaluation.draws"),
        (lambda r: r["evaluation"].update(draws=2.5), "evaluation.draws"),
        (lambda r: r["game"].update(sources=["pgd-at"]), "game.sources: only applies"),
        (lambda r: r["game"].update(formulation="transfer", sources=["nobody"]), "game.sources: 'nobody'"),
        (lambda r: r["game"].update(formulation="transfer", sources=[]), "game.sources"),
        (lambda r: r["game"].update(formulation="transfer", sources=["pgd-at", "pgd-at"]), "game.sources"),
        (lambda r: r["double_oracle"].update(max_iterations=0), "double_oracle.max_iterations"),
        (lambda r: r["double_oracle"].update(attack="nope"), "double_oracle.attack"),
        (lambda r: r["double_oracle"].update(enabled=False, steps=0), "double_oracle (mixture-pgd)"),
        (lambda r: r["double_oracle"].pop("eps"), "needs argument 'eps'"),
        (lambda r: r["double_oracle"].update(defense_oracle="trades"), "double_oracle.defense_oracle"),
        (lambda r: r["double_oracle"].update(time_limit=-1), "double_oracle.time_limit"),
        (lambda r: r["double_oracle"]["defense"].update(epochs=0), "double_oracle.defense.epochs"),
        (lambda r: r["double_oracle"]["defense"].update(epoch=3), "double_oracle.defense: unknown key 'epoch'"),
        (lambda r: r["double_oracle"]["defense"].update(architecture="vgg"), "double_oracle.defense.architecture"),
        (lambda r: r["double_oracle"]["defense"].update(optimizer="lbfgs"), "double_oracle.defense.optimizer"),
        (lambda r: r["double_oracle"]["defense"].update(sap_fracs=[0.5, 0.0]), "double_oracle.defense.sap_fracs[1]"),
        (lambda r: r["double_oracle"].update(defense=3), "double_oracle.defense: expected a table"),
        (lambda r: r.pop("attackers"), "attackers"),
        (lambda r: r.pop("models"), "models"),
    ],
)
def test_bad_config_names_the_key(mutate, needle):
    raw = raw_digits()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_double_oracle_section_is_optional():
    raw = raw_digits()
    raw.pop("double_oracle")
    cfg = parse_config(raw)
    assert cfg.double_oracle.enabled is False and cfg.double_oracle.params == {}
    raw["double_oracle"] = {"enabled": False}  # switched off with no attack settings: nothing to check
    assert parse_config(raw).double_oracle.enabled is False


def test_defense_oracle_settings_parse():
    cfg = parse_config(raw_digits())
    do = cfg.double_oracle
    assert do.defense_oracle == "pgd-at" and do.time_limit is None
    assert do.defense.epochs == 10 and do.defense.warm_start is True and do.defense.attack_steps == 7
    assert "defense" not in do.params and "defense_oracle" not in do.params  # not attack arguments
    assert cfg.to_dict()["double_oracle"]["defense"]["epochs"] == 10
    raw = raw_digits()
    raw["double_oracle"].pop("defense_oracle")
    raw["double_oracle"].pop("defense")
    plain = parse_config(raw).double_oracle
    assert plain.defense_oracle is None and plain.defense.epochs == 1


def test_transfer_sources_and_draws_parse():
    raw = raw_digits()
    raw["game"].update(formulation="transfer", sources=["standard", "pgd-at"])
    raw["evaluation"].update(draws=20)
    cfg = parse_config(raw)
    assert cfg.game.sources == ("standard", "pgd-at") and cfg.evaluation.draws == 20


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nx=1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_evaluation_threat_model_defaults_to_the_games():
    raw = raw_digits()
    raw["evaluation"].pop("eps", None)
    raw["evaluation"].pop("norm", None)
    for a in raw["attackers"]:
        a["eps"] = 0.07
    cfg = parse_config(raw)
    assert cfg.evaluation.eps == 0.07 and cfg.evaluation.norm == "linf"
    raw["attackers"][0]["eps"] = 0.05  # two eps in the game: the evaluation must say which
    with pytest.raises(ConfigError, match=r"evaluation.eps: the attackers use several values \(0.05, 0.07\)"):
        parse_config(raw)
    raw["evaluation"]["eps"] = 0.05
    assert parse_config(raw).evaluation.eps == 0.05


# ----------------------------------------------------------------- issue 14: names and ranges


@pytest.mark.parametrize(
    ("first", "second"),
    [("std", "std.json"), ("std", "STD"), ("std", "std.safetensors"), ("caf\u00e9", "cafe\u0301")],
)
def test_model_names_mapping_to_one_file_are_refused(first, second):
    raw = raw_digits()
    raw["models"] = [dict(raw["models"][0], name=first), dict(raw["models"][0], name=second)]
    with pytest.raises(ConfigError, match="map to the same file") as info:
        parse_config(raw)
    assert first in str(info.value) and "\n" not in str(info.value)


def test_defender_name_colliding_with_a_reserved_file_is_refused():
    raw = raw_digits()
    raw["models"][0]["name"] = "Mixture"
    with pytest.raises(ConfigError, match="reserved name 'mixture'"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r["attackers"][0].update(eps=1e300), "attackers[0].eps"),
        (lambda r: r["attackers"][0].update(eps=1.5), "attackers[0].eps"),
        (lambda r: r["evaluation"].update(eps=1e300), "evaluation.eps"),
        (lambda r: r["defenders"].update(sap_fracs=[1e300]), "defenders.sap_fracs[0]"),
        (lambda r: r["models"][0].update(epochs=10**12), "models[0].epochs"),
        (lambda r: r["models"][1].update(eps=2.0), "models[1].eps"),
        (lambda r: r["game"].update(repeats=10**12), "game.repeats"),
        (lambda r: r["evaluation"].update(draws=10**12), "evaluation.draws"),
        (lambda r: r["evaluation"].update(repeats=10**12), "evaluation.repeats"),
        (lambda r: r["attackers"][1].update(steps=10**12), "attackers[1].steps"),
        (lambda r: r["double_oracle"].update(max_iterations=10**12), "double_oracle.max_iterations"),
    ],
)
def test_extreme_values_are_refused_at_config_time(edit, key):
    raw = raw_digits()
    raw.setdefault("double_oracle", {})
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_l2_eps_is_bounded_by_the_input_diagonal():
    raw = raw_digits()
    raw["evaluation"].update(norm="l2", eps=7.9)  # digits: 64 pixels, diagonal 8
    parse_config(raw)
    raw["evaluation"]["eps"] = 8.1
    with pytest.raises(ConfigError, match=r"evaluation.eps: .*\[0, 8\]"):
        parse_config(raw)


def test_sap_activations_parse_with_relu_as_the_default():
    from gametheory_defense.sap import SAP_ACTIVATIONS

    raw = raw_digits()
    assert parse_config(raw).defenders.sap_activations == "relu"
    raw["defenders"]["sap_activations"] = "gelu"
    assert parse_config(raw).defenders.sap_activations == "gelu"
    raw["defenders"]["sap_activations"] = list(SAP_ACTIVATIONS)
    cfg = parse_config(raw)
    assert cfg.defenders.sap_activations == SAP_ACTIVATIONS
    assert cfg.to_dict()["defenders"]["sap_activations"] == list(SAP_ACTIVATIONS)
