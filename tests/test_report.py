"""Tests of gametheory_defense.report's threat-model statements (issue 13)."""

from __future__ import annotations

import tomllib

from gametheory_defense.cli.demo import demo_config_path
from gametheory_defense.config import parse_config
from gametheory_defense.report import _attacker_eps, _attacker_threats


def test_report_names_every_attacker_threat_model() -> None:
    raw = tomllib.loads(demo_config_path().read_text())
    cfg = parse_config(raw)
    assert _attacker_threats(cfg) == "linf eps 0.05, 0.1"
    assert _attacker_eps(cfg) == {0.05, 0.1}
    raw["attackers"][0].update(norm="l2", eps=1.0)
    assert _attacker_threats(parse_config(raw)) == "l2 eps 1; linf eps 0.05, 0.1"
