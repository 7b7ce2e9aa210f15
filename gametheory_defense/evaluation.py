"""Honest robustness evaluation with adaptive attacks (Carlini et al., 2019; Croce & Hein, 2020; Tramer et al., 2020).

:func:`evaluate` measures a model (pure, SAP, or a mixed strategy) under a set of attacks
and reports, with confidence intervals, the clean accuracy, the accuracy under each
attack and the **per-example worst case** over all of them: for each example, the lowest
probability of a correct answer among clean and every attack (for a deterministic model:
correct clean and under every attack), averaged over examples. That worst case is the
number to quote.

For a randomized model every figure is measured over ``repeats`` independent runs of the
attack (the attack's and the model's randomness), and every adversarial example is
classified ``draws`` times (the defense's randomness at inference): the mean accuracy over
all of these, and the stricter fraction of examples classified correctly in *every* one.
``draws > 1`` matters for the worst case: it is a per-example minimum over attacks of
estimated probabilities, and a minimum of one-draw (0/1) estimates is biased low.

Sanity checks in the spirit of AutoAttack's (Croce & Hein, 2020) and of the checklist of
Carlini et al. (2019, "On evaluating adversarial robustness") warn with
:class:`SanityCheckWarning`, and are recorded in the report, when the evaluation looks
unreliable: a randomized model attacked without EOT, outputs that look like
probabilities, zero input gradients, accuracy that does not fall as eps grows
(:func:`check_eps_monotonic`), or a random-noise or transfer attack that beats the
white-box ones (masked gradients).

The attack suites (:data:`ADAPTIVE_SUITE`, :data:`QUICK_SUITE`, :func:`suite`) are
documented in ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gametheory_defense.attacks import (
    PGD,
    Attack,
    ProbabilityOutputWarning,
    RandomizedDefenseWarning,
    Transfer,
    TransferPGD,
    build_attack,
)
from gametheory_defense.attacks.mixture import MixtureAwareMixin, is_mixture, mixture_components
from gametheory_defense.stochastic import deterministic, is_stochastic, random_tensor, use_generator

__all__ = [
    "evaluate",
    "RobustnessReport",
    "AttackResult",
    "SanityCheckWarning",
    "SuiteEntry",
    "ADAPTIVE_SUITE",
    "AUTOATTACK_SUITE",
    "AUTOATTACK_RAND_SUITE",
    "QUICK_SUITE",
    "SUITES",
    "suite",
    "EpsCheck",
    "check_eps_monotonic",
    "wilson_interval",
]

log = logging.getLogger(__name__)

#: Examples the cheap sanity checks (randomness, probabilities, gradients) look at.
_CHECK_EXAMPLES = 256
#: Share of examples with an exactly-zero input gradient above which a warning is given.
ZERO_GRADIENT_SHARE = 0.10
#: Accuracy allowed at the "move anywhere" radius of :func:`check_eps_monotonic`.
LARGE_EPS_MAX_ACCURACY = 0.05


class SanityCheckWarning(UserWarning):
    """An evaluation looks unreliable (masked gradients, missing EOT, probabilities, ...)."""


# ----------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class SuiteEntry:
    """One attack of a suite: a registered attack, its settings and the models it is for.

    Attributes
    ----------
    attack : str
        Registry name (a key of ``ATTACKS``).
    settings : Mapping[str, Any]
        Constructor arguments other than ``eps`` and ``norm``.
    applies_to : {"all", "deterministic", "randomized", "mixture"}
        ``"deterministic"``: only models without randomness; ``"randomized"``: models
        with randomness (SAP, mixtures); ``"mixture"``: mixed strategies only.
    eot_samples : int
        EOT draws used against a randomized model (deterministic models get 1).
    """

    attack: str
    settings: Mapping[str, Any]
    applies_to: str = "all"
    eot_samples: int = 1


#: AutoAttack's standard version (Croce & Hein, 2020) for deterministic models, with its
#: budgets: APGD-CE (100 steps), APGD-T (9 targets x 100 steps), Square (5000 queries,
#: p_init 0.8). FAB-T is left out (see ``docs/evaluation.md``: it broke no image the others
#: left robust in ``benchmarks/autoattack_parity.py``). On a randomized model it runs as
#: is, without EOT (the sanity checks warn): use ``autoattack-rand`` there.
AUTOATTACK_SUITE: dict[str, SuiteEntry] = {
    "apgd-ce": SuiteEntry("apgd-ce", {"steps": 100}),
    "apgd-t": SuiteEntry("apgd-t", {"steps": 100, "targets": 9}),
    "square": SuiteEntry("square", {"steps": 5000, "p_init": 0.8}),
}

#: AutoAttack's ``rand`` version for randomized defenses: APGD-CE and APGD-DLR with 20 EOT
#: samples per gradient (deterministic models get 1).
AUTOATTACK_RAND_SUITE: dict[str, SuiteEntry] = {
    "apgd-ce": SuiteEntry("apgd-ce", {"steps": 100}, eot_samples=20),
    "apgd-dlr": SuiteEntry("apgd-dlr", {"steps": 100}, eot_samples=20),
}

#: The adaptive suite: what ``evaluate(..., attacks="adaptive")`` runs. For a deterministic
#: model it contains ``autoattack`` (same attacks and budgets) plus PGD with the CE and CW
#: losses and APGD-DLR; for a randomized model ``autoattack-rand`` plus EOT-PGD, Square
#: on the expected prediction and PGD, APGD-T and Square transferred from the deterministic
#: base model; for a mixture also MixturePGD, ARC and those transfers from each member's
#: deterministic base.
ADAPTIVE_SUITE: dict[str, SuiteEntry] = {
    "pgd-ce": SuiteEntry("pgd", {"steps": 100, "loss": "ce"}, "deterministic"),
    "pgd-cw": SuiteEntry("pgd", {"steps": 100, "loss": "cw"}, "deterministic"),
    "eot-pgd-ce": SuiteEntry("eot-pgd", {"steps": 100, "loss": "ce"}, "randomized", eot_samples=20),
    "mixture-pgd-ce": SuiteEntry("mixture-pgd", {"steps": 100, "loss": "ce"}, "mixture", eot_samples=20),
    "mixture-pgd-cw": SuiteEntry("mixture-pgd", {"steps": 100, "loss": "cw"}, "mixture", eot_samples=20),
    "arc": SuiteEntry("arc", {"steps": 20}, "mixture", eot_samples=20),
    "apgd-ce": SuiteEntry("apgd-ce", {"steps": 100}, "all", eot_samples=20),
    "apgd-dlr": SuiteEntry("apgd-dlr", {"steps": 100}, "all", eot_samples=20),
    "apgd-t": SuiteEntry("apgd-t", {"steps": 100, "targets": 9}, "deterministic"),
    "square": SuiteEntry("square", {"steps": 5000, "p_init": 0.8}, "deterministic"),
    "square-eot": SuiteEntry("square", {"steps": 1000, "p_init": 0.8}, "randomized", eot_samples=10),
    "transfer-pgd": SuiteEntry("transfer-pgd", {"steps": 100, "loss": "ce"}, "randomized"),
    # AutoAttack's other two attacks, crafted on the deterministic base: a randomized model meets
    # at least what its base meets (Square with 5000 queries on the base sets MNIST PGD-AT's figure)
    "transfer-apgd-t": SuiteEntry("transfer", {"attack": "apgd-t", "settings": {"steps": 100, "targets": 9}}, "randomized"),
    "transfer-square": SuiteEntry("transfer", {"attack": "square", "settings": {"steps": 5000, "p_init": 0.8}}, "randomized"),
}

#: A scaled-down version of :data:`ADAPTIVE_SUITE` for tests and demos (not for claims).
QUICK_SUITE: dict[str, SuiteEntry] = {
    "pgd-ce": SuiteEntry("pgd", {"steps": 20, "loss": "ce"}, "deterministic"),
    "pgd-cw": SuiteEntry("pgd", {"steps": 20, "loss": "cw"}, "deterministic"),
    "eot-pgd-ce": SuiteEntry("eot-pgd", {"steps": 20, "loss": "ce"}, "randomized", eot_samples=5),
    "mixture-pgd-ce": SuiteEntry("mixture-pgd", {"steps": 20, "loss": "ce"}, "mixture", eot_samples=5),
    "arc": SuiteEntry("arc", {"steps": 5}, "mixture", eot_samples=5),
    "apgd-ce": SuiteEntry("apgd-ce", {"steps": 20}, "all", eot_samples=5),
    "apgd-dlr": SuiteEntry("apgd-dlr", {"steps": 20}, "all", eot_samples=5),
    "apgd-t": SuiteEntry("apgd-t", {"steps": 20, "targets": 3}, "deterministic"),
    "square": SuiteEntry("square", {"steps": 300, "p_init": 0.8}, "deterministic"),
    # no Square on randomized models here: 100 queries of 5 draws cost 6x EOT-PGD and broke little
    "transfer-pgd": SuiteEntry("transfer-pgd", {"steps": 20, "loss": "ce"}, "randomized"),
    "transfer-apgd-t": SuiteEntry("transfer", {"attack": "apgd-t", "settings": {"steps": 20, "targets": 3}}, "randomized"),
    "transfer-square": SuiteEntry("transfer", {"attack": "square", "settings": {"steps": 300, "p_init": 0.8}}, "randomized"),
}

#: Suites by name.
SUITES: dict[str, dict[str, SuiteEntry]] = {
    "adaptive": ADAPTIVE_SUITE,
    "autoattack": AUTOATTACK_SUITE,
    "autoattack-rand": AUTOATTACK_RAND_SUITE,
    "quick": QUICK_SUITE,
}


def _model_kind(model: nn.Module | None) -> str:
    if model is None:
        return "deterministic"
    if is_mixture(model):
        support = mixture_components(model)
        if len(support) > 1:
            return "mixture"
        # A mixture with one member in its support is that member: mixture-aware PGD on it
        # is EOT-PGD on the member and ARC has nothing to switch between, so it gets the
        # member's attacks (EOT ones if the member is randomized, as a SAP model is).
        return "randomized" if is_stochastic(support[0].module) else "deterministic"
    return "randomized" if is_stochastic(model) else "deterministic"


def suite(name: str, *, eps: float, norm: str = "linf", model: nn.Module | None = None) -> dict[str, Attack]:
    """The attacks of suite ``name`` that apply to ``model``, built at radius ``eps``.

    Parameters
    ----------
    name : {"adaptive", "autoattack", "autoattack-rand", "quick"}
        Suite (see :data:`ADAPTIVE_SUITE`, :data:`AUTOATTACK_SUITE`,
        :data:`AUTOATTACK_RAND_SUITE`, :data:`QUICK_SUITE` and ``docs/evaluation.md``).
    eps : float
        Radius of the threat model in input units.
    norm : {"linf", "l2"}
        Threat model.
    model : nn.Module, optional
        The model to be attacked: a mixed strategy gets the EOT, mixture-aware and ARC
        attacks, a randomized model (SAP) the EOT ones and transfers from its deterministic
        base, a deterministic model PGD with the CE and CW losses, APGD, APGD-T and Square. A mixture with a single member in its support is
        treated as that member. ``None`` means a deterministic model.

    Returns
    -------
    dict[str, Attack]
        Attacks by suite entry name, in the suite's order.
    """
    entries = SUITES.get(name)
    if entries is None:
        raise ValueError(f"unknown attack suite {name!r}; choose one of {', '.join(SUITES)}")
    kind = _model_kind(model)
    randomized = kind != "deterministic"
    out: dict[str, Attack] = {}
    for key, entry in entries.items():
        wanted = {
            "all": True,
            "deterministic": not randomized,
            "randomized": randomized,
            "mixture": kind == "mixture",
        }[entry.applies_to]
        if not wanted:
            continue
        kwargs = dict(entry.settings)
        kwargs["eot_samples"] = entry.eot_samples if randomized else 1
        if entry.attack in ("transfer-pgd", "transfer") and model is not None and is_mixture(model):
            # one transfer per member of the support, each from its deterministic base
            comps = mixture_components(model)
            for c in comps:
                name_c = key if len(comps) == 1 else f"{key}-{c.name}"
                out[name_c] = build_attack(entry.attack, eps=eps, norm=norm, member=c.index, **kwargs)
            continue
        out[key] = build_attack(entry.attack, eps=eps, norm=norm, **kwargs)
    return out


# ----------------------------------------------------------------------------- statistics


def wilson_interval(p_hat: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson, 1927).

    Parameters
    ----------
    p_hat : float
        Observed proportion in [0, 1].
    n : int
        Number of trials (``0`` gives ``(0, 1)``).
    confidence : float
        Two-sided coverage in (0, 1).

    Returns
    -------
    tuple of float
        ``(low, high)`` within [0, 1].

    Examples
    --------
    >>> lo, hi = wilson_interval(0.5, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.4038, 0.5962)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import norm as normal

    z = float(normal.ppf(0.5 + confidence / 2.0))
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p_hat + z2 / (2 * n)) / denom
    half = z * math.sqrt(max(p_hat * (1 - p_hat) / n + z2 / (4 * n * n), 0.0)) / denom
    lo = 0.0 if p_hat <= 0.0 else max(0.0, centre - half)
    hi = 1.0 if p_hat >= 1.0 else min(1.0, centre + half)
    return lo, hi


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class AttackResult:
    """Accuracy under one attack.

    Attributes
    ----------
    name : str
        The attack's name in the evaluation.
    config : dict
        The attack's :meth:`~gametheory_defense.attacks.Attack.config`.
    accuracy : float
        Mean accuracy over examples and draws.
    ci_low, ci_high : float
        Confidence interval of ``accuracy`` (Wilson; see ``docs/evaluation.md``).
    accuracy_all_draws : float
        Fraction of examples correct in every draw (equals ``accuracy`` when
        ``repeats == draws == 1``).
    n_examples : int
    repeats : int
        Runs of the attack.
    seconds : float
        Wall time of the attack over all draws.
    outcomes : numpy.ndarray, optional
        ``(repeats * draws, n_examples)`` bool, whether each example was classified
        correctly in each (attack run, model draw) pair (not in JSON unless asked for).
    draws : int
        Classifications of every adversarial example (randomized models; else 1).
    """

    name: str
    config: dict[str, Any]
    accuracy: float
    ci_low: float
    ci_high: float
    accuracy_all_draws: float
    n_examples: int
    repeats: int
    seconds: float = 0.0
    outcomes: np.ndarray | None = field(default=None, repr=False, compare=False)
    draws: int = 1

    def to_dict(self, *, include_outcomes: bool = False) -> dict[str, Any]:
        """JSON-able fields (``outcomes`` as 0/1 lists only when asked for)."""
        out = {
            "name": self.name,
            "config": self.config,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "accuracy_all_draws": self.accuracy_all_draws,
            "n_examples": self.n_examples,
            "repeats": self.repeats,
            "draws": self.draws,
            "seconds": self.seconds,
        }
        if include_outcomes and self.outcomes is not None:
            out["outcomes"] = self.outcomes.astype(int).tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackResult:
        """Inverse of :meth:`to_dict`."""
        outcomes = d.get("outcomes")
        return cls(
            name=str(d["name"]),
            config=dict(d["config"]),
            accuracy=float(d["accuracy"]),
            ci_low=float(d["ci_low"]),
            ci_high=float(d["ci_high"]),
            accuracy_all_draws=float(d["accuracy_all_draws"]),
            n_examples=int(d["n_examples"]),
            repeats=int(d["repeats"]),
            seconds=float(d.get("seconds", 0.0)),
            outcomes=None if outcomes is None else np.asarray(outcomes, dtype=bool),
            draws=int(d.get("draws", 1)),
        )


@dataclass(frozen=True)
class RobustnessReport:
    """What :func:`evaluate` measured.

    Attributes
    ----------
    clean_accuracy : float
        Mean clean accuracy over examples and draws.
    clean_ci_low, clean_ci_high : float
        Its confidence interval.
    clean_accuracy_all_draws : float
        Fraction of examples correct in every clean draw.
    attacks : tuple of AttackResult
        One per attack, in the order run.
    worst_case_accuracy : float
        Per-example worst case: for each example the lowest probability of a correct
        answer (estimated over the draws) among clean and every attack, averaged over
        examples; for a deterministic model, the fraction of examples correct clean and
        under every attack. **The number to quote.**
    worst_case_ci_low, worst_case_ci_high : float
        Its confidence interval.
    worst_case_accuracy_all_draws : float
        Fraction of examples correct clean and under every attack in every draw.
    stochastic : bool
        Whether the model is randomized.
    n_examples : int
    repeats : int
        Attack runs per measurement (1 for a deterministic model).
    confidence : float
        Coverage of the intervals.
    threat_model : dict
        ``{"norm": ..., "eps": ...}``.
    warnings : tuple of str
        The sanity-check warnings raised during the evaluation.
    sanity : dict
        Numbers behind the sanity checks (noise/transfer accuracies, eps sweep).
    clean_outcomes, worst_case_outcomes : numpy.ndarray, optional
        ``(repeats * draws, n_examples)`` bool per-example outcomes (not in JSON unless
        asked for).
    draws : int
        Classifications of every (adversarial) example (1 for a deterministic model).
    """

    clean_accuracy: float
    clean_ci_low: float
    clean_ci_high: float
    clean_accuracy_all_draws: float
    attacks: tuple[AttackResult, ...]
    worst_case_accuracy: float
    worst_case_ci_low: float
    worst_case_ci_high: float
    worst_case_accuracy_all_draws: float
    stochastic: bool
    n_examples: int
    repeats: int
    confidence: float
    threat_model: dict[str, Any]
    warnings: tuple[str, ...] = ()
    sanity: dict[str, Any] = field(default_factory=dict)
    clean_outcomes: np.ndarray | None = field(default=None, repr=False, compare=False)
    worst_case_outcomes: np.ndarray | None = field(default=None, repr=False, compare=False)
    draws: int = 1

    def attack(self, name: str) -> AttackResult:
        """The result of the attack called ``name``."""
        for r in self.attacks:
            if r.name == name:
                return r
        raise KeyError(f"no attack {name!r} in this report; it has {', '.join(r.name for r in self.attacks)}")

    def to_dict(self, *, include_outcomes: bool = False) -> dict[str, Any]:
        """JSON-able dict (per-example outcomes only with ``include_outcomes=True``)."""
        out: dict[str, Any] = {
            "format": "gametheory-defense/robustness-report",
            "format_version": 1,
            "clean_accuracy": self.clean_accuracy,
            "clean_ci_low": self.clean_ci_low,
            "clean_ci_high": self.clean_ci_high,
            "clean_accuracy_all_draws": self.clean_accuracy_all_draws,
            "attacks": [a.to_dict(include_outcomes=include_outcomes) for a in self.attacks],
            "worst_case_accuracy": self.worst_case_accuracy,
            "worst_case_ci_low": self.worst_case_ci_low,
            "worst_case_ci_high": self.worst_case_ci_high,
            "worst_case_accuracy_all_draws": self.worst_case_accuracy_all_draws,
            "stochastic": self.stochastic,
            "n_examples": self.n_examples,
            "repeats": self.repeats,
            "draws": self.draws,
            "confidence": self.confidence,
            "threat_model": dict(self.threat_model),
            "warnings": list(self.warnings),
            "sanity": dict(self.sanity),
        }
        if include_outcomes:
            for key in ("clean_outcomes", "worst_case_outcomes"):
                value = getattr(self, key)
                if value is not None:
                    out[key] = value.astype(int).tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustnessReport:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != "gametheory-defense/robustness-report":
            raise ValueError(f"not a robustness report (format {d.get('format')!r})")

        def arr(key: str) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype=bool)

        return cls(
            clean_accuracy=float(d["clean_accuracy"]),
            clean_ci_low=float(d["clean_ci_low"]),
            clean_ci_high=float(d["clean_ci_high"]),
            clean_accuracy_all_draws=float(d["clean_accuracy_all_draws"]),
            attacks=tuple(AttackResult.from_dict(a) for a in d["attacks"]),
            worst_case_accuracy=float(d["worst_case_accuracy"]),
            worst_case_ci_low=float(d["worst_case_ci_low"]),
            worst_case_ci_high=float(d["worst_case_ci_high"]),
            worst_case_accuracy_all_draws=float(d["worst_case_accuracy_all_draws"]),
            stochastic=bool(d["stochastic"]),
            n_examples=int(d["n_examples"]),
            repeats=int(d["repeats"]),
            confidence=float(d["confidence"]),
            threat_model=dict(d["threat_model"]),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            sanity=dict(d.get("sanity", {})),
            clean_outcomes=arr("clean_outcomes"),
            worst_case_outcomes=arr("worst_case_outcomes"),
            draws=int(d.get("draws", 1)),
        )

    def to_json(self, path: str | os.PathLike[str], *, include_outcomes: bool = False) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (parents created); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(include_outcomes=include_outcomes), indent=2, allow_nan=False)
        target.write_text(text + "\n", encoding="utf-8")
        return target

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> RobustnessReport:
        """Read a report written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_markdown(self) -> str:
        """A Markdown table of the results, the threat model and any warnings."""
        pct = 100.0
        lvl = f"{self.confidence * pct:.0f}% CI"
        tm = self.threat_model
        head = (
            f"Threat model: {tm.get('norm')} eps={tm.get('eps'):g}; {self.n_examples} examples"
            + (
                f", {self.repeats} attack run(s) x {self.draws} draw(s) of the model (randomized model)"
                if self.stochastic
                else " (deterministic model)"
            )
        )
        rows = [
            head,
            "",
            f"| evaluation | accuracy (%) | {lvl} | correct in all draws (%) |",
            "| --- | ---: | --- | ---: |",
        ]

        def row(name: str, acc: float, lo: float, hi: float, alld: float) -> str:
            return f"| {name} | {acc * pct:.2f} | [{lo * pct:.2f}, {hi * pct:.2f}] | {alld * pct:.2f} |"

        rows.append(row("clean", self.clean_accuracy, self.clean_ci_low, self.clean_ci_high, self.clean_accuracy_all_draws))
        for a in self.attacks:
            rows.append(row(a.name, a.accuracy, a.ci_low, a.ci_high, a.accuracy_all_draws))
        rows.append(
            row(
                "**worst case (per example)**",
                self.worst_case_accuracy,
                self.worst_case_ci_low,
                self.worst_case_ci_high,
                self.worst_case_accuracy_all_draws,
            )
        )
        if self.warnings:
            rows += ["", "Sanity-check warnings:", ""] + [f"- {w}" for w in self.warnings]
        return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class EpsCheck:
    """Result of :func:`check_eps_monotonic`.

    Attributes
    ----------
    eps : tuple of float
        ``(eps, 2 eps, large)`` radii tried.
    accuracy : tuple of float
        Accuracy of the reference PGD at each.
    warning : str or None
        The problem found, if any.
    """

    eps: tuple[float, ...]
    accuracy: tuple[float, ...]
    warning: str | None


def _large_eps(norm: str, x: torch.Tensor) -> float:
    """A radius that reaches every point of the box [0, 1]^d from any x."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


def _predict_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
        )


def check_eps_monotonic(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    eot_samples: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> EpsCheck:
    """Accuracy must fall as eps grows, to ~0 at a radius covering the box (Carlini et al., 2019, Sec. 5).

    Runs the reference PGD (random start, ``steps`` steps; EOT with ``eot_samples`` draws,
    default 10 for a randomized model) at ``eps``, ``2 eps`` and a radius from which every
    input can reach every point of [0, 1]^d (1 for L-inf, ``sqrt(d)`` for L2). At that
    radius any model can be driven to 0% accuracy, so an accuracy above
    :data:`LARGE_EPS_MAX_ACCURACY` (5%) means the attack, not the model, is failing;
    so does accuracy that does not decrease from ``eps`` to ``2 eps`` (while above 5%)
    or that increases with eps.

    Returns
    -------
    EpsCheck
        The radii, the accuracies and a warning message (``None`` if all is well); the
        caller decides whether to warn.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0 for the eps sweep, got {eps!r}")
    if eot_samples is None:
        eot_samples = 10 if (is_stochastic(model) or is_mixture(model)) else 1
    radii = (float(eps), 2.0 * float(eps), _large_eps(norm, x))
    accs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomizedDefenseWarning)
        warnings.simplefilter("ignore", ProbabilityOutputWarning)
        for r in radii:
            attack = PGD(r, steps=steps, norm=norm, eot_samples=eot_samples)
            correct = []
            for i in range(0, x.shape[0], batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                xa = attack(model, xb, yb, generator=generator)
                with use_generator(model, generator):
                    correct.append(_predict_correct(model, xa, yb, batch_size))
            accs.append(float(torch.cat(correct).float().mean()))
    problem = None
    tol = 1.0 / max(1, x.shape[0])
    if accs[2] > LARGE_EPS_MAX_ACCURACY:
        problem = (
            f"PGD leaves {accs[2]:.1%} accuracy at eps={radii[2]:g}, a radius from which any input can be "
            "moved anywhere in [0, 1]: the attack is failing (masked or obfuscated gradients?)"
        )
    elif accs[1] > accs[0] + tol or accs[2] > accs[1] + tol:
        problem = (
            f"accuracy rises with eps ({accs[0]:.1%} at {radii[0]:g}, {accs[1]:.1%} at {radii[1]:g}, "
            f"{accs[2]:.1%} at {radii[2]:g}): the attack is unreliable"
        )
    elif accs[0] > LARGE_EPS_MAX_ACCURACY and accs[1] >= accs[0]:
        problem = (
            f"accuracy does not fall from eps={radii[0]:g} ({accs[0]:.1%}) to eps={radii[1]:g} ({accs[1]:.1%}): "
            "gradients may be masked"
        )
    return EpsCheck(eps=radii, accuracy=tuple(accs), warning=problem)


def _forward_differs(model: nn.Module, x: torch.Tensor, seed: int) -> bool:
    """Whether two identical forward passes (private generator) give different outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), use_generator(model, g):
        a, b = model(x), model(x)
    scale = 1.0 + a.abs().max().item()
    return bool((a - b).abs().max().item() > 1e-5 * scale)


def _handles_randomness(attack: Attack, model: nn.Module) -> bool:
    """Whether ``attack`` accounts for the model's randomness (EOT, or exact over a mixture)."""
    if getattr(attack, "eot_samples", 1) > 1 or isinstance(attack, (Transfer, TransferPGD)):
        return True  # a transfer ignores the randomness on purpose
    if isinstance(attack, MixtureAwareMixin) and is_mixture(model):
        return not any(is_stochastic(c.module) for c in mixture_components(model))
    return False


def _zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """Share of examples whose CE-loss input gradient is exactly zero (one draw)."""
    g = torch.Generator().manual_seed(seed)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        leaf = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), use_generator(model, g):
            loss = nn.functional.cross_entropy(model(leaf), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    if grad is None:
        return 1.0
    return float((grad.reshape(grad.shape[0], -1).abs().amax(dim=1) == 0).float().mean())


def _noise(x: torch.Tensor, *, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """Random noise at the full radius: a random corner (L-inf) or a random direction of length eps (L2)."""
    if norm == "linf":
        signs = random_tensor("rand", x.shape, generator=generator, device=x.device, dtype=x.dtype).lt_(0.5)
        return (x + eps * (signs.to(x.dtype) * 2 - 1)).clamp_(0.0, 1.0)
    d = random_tensor("randn", x.shape, generator=generator, device=x.device, dtype=x.dtype)
    n = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
    return (x + eps * d / n.view(-1, *([1] * (x.dim() - 1)))).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- evaluate


def _threat_model(attacks: Mapping[str, Attack]) -> dict[str, Any]:
    norms = {a.norm for a in attacks.values()}
    epss = {a.eps for a in attacks.values()}
    if len(norms) != 1 or len(epss) != 1:
        raise ValueError(
            f"all attacks must share one threat model for a worst case to mean anything; got norms "
            f"{sorted(norms)} and eps {sorted(epss)}"
        )
    return {"norm": norms.pop(), "eps": float(epss.pop())}


def _summary(outcomes: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """``(mean, ci_low, ci_high, all_draws)`` of ``(repeats, N)`` bool outcomes.

    The interval is Wilson's on ``N`` examples with the mean accuracy as the proportion:
    per-example averages over draws lie in [0, 1], so their variance is at most that of a
    Bernoulli variable with the same mean, and the interval is conservative for R > 1.
    """
    n = outcomes.shape[1]
    mean = float(outcomes.mean()) if outcomes.size else 0.0
    lo, hi = wilson_interval(mean, n, confidence=confidence)
    all_draws = float(outcomes.all(axis=0).mean()) if n else 0.0
    return mean, lo, hi, all_draws


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Mapping[str, Attack] | str,
    *,
    eps: float | None = None,
    norm: str = "linf",
    repeats: int = 1,
    draws: int = 1,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    seed: int = 0,
    confidence: float = 0.95,
    sanity_checks: bool = True,
    progress: bool = True,
) -> RobustnessReport:
    """Robust accuracy under adaptive attacks, per-example worst case and sanity checks (Carlini et al., 2019; Croce & Hein, 2020).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits: pure, SAP (randomized) or a mixed strategy. It is
        moved to ``device`` (in place) and evaluated in ``eval()`` mode; its modes are
        restored afterwards.
    data : ArrayDataset, tuple (x, y) or Dataset
        Examples (see :func:`gametheory_defense.data.as_tensors`).
    attacks : Mapping[str, Attack] or str
        Attacks by name, all with the same ``eps`` and ``norm``; or a suite name
        (``"adaptive"``, ``"quick"``), built for this model with :func:`suite` (then
        ``eps`` is required).
    eps : float, optional
        Radius for a suite (ignored, but checked, when ``attacks`` is a mapping).
    norm : {"linf", "l2"}
        Threat model for a suite.
    repeats : int
        Independent runs of every attack on a randomized model (attack and model
        randomness); a deterministic model is measured once.
    draws : int
        Classifications of every clean and adversarial example by a randomized model
        (forward passes only, cheap next to the attacks). The per-example worst case takes
        a minimum over attacks of the estimated probability of a correct answer; with
        one draw those estimates are 0/1 and the minimum is biased low (it counts an
        example as broken when any one attack met an unlucky draw). Use 10-20 draws when
        comparing randomized defenses with deterministic ones.
    batch_size : int
        Examples per attack call and forward pass.
    device : str or torch.device
        Where to compute.
    generator : torch.Generator, optional
        Source of all randomness of the evaluation; default ``Generator().manual_seed(seed)``.
    seed : int
        Seed of the default generator and of the sanity checks' private generators.
    confidence : float
        Coverage of the confidence intervals.
    sanity_checks : bool
        Run the checks (see the module docstring); problems are raised as
        :class:`SanityCheckWarning` and recorded in ``report.warnings``.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    RobustnessReport

    Raises
    ------
    ValueError
        Bad arguments, attacks with different threat models, or a suite without ``eps``.
    """
    from tqdm.auto import tqdm

    from gametheory_defense.data import as_tensors

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    device = torch.device(device)
    model.to(device)
    if isinstance(attacks, str):
        if eps is None:
            raise ValueError(f"eps is required to build the {attacks!r} attack suite")
        attacks = suite(attacks, eps=eps, norm=norm, model=model)
    attacks = dict(attacks)
    if not attacks:
        raise ValueError("give at least one attack (or a suite name)")
    for name, a in attacks.items():
        if not isinstance(a, Attack):
            raise ValueError(f"attack {name!r} is a {type(a).__name__}, not an Attack")
    threat = _threat_model(attacks)
    if eps is not None and not math.isclose(float(eps), threat["eps"]):
        raise ValueError(f"eps={eps} disagrees with the attacks' eps={threat['eps']}")
    x_all, y_all = as_tensors(data)
    x_all, y_all = x_all.to(device), y_all.to(device)
    n = x_all.shape[0]
    from gametheory_defense.models import check_classifier

    k = check_classifier(model, x_all[:2])  # wrong shapes, tuple outputs, float64 weights: one line
    if int(y_all.max()) >= k:
        raise ValueError(f"the model has {k} logits but the labels go up to {int(y_all.max())}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    found: list[str] = []

    def warn(msg: str) -> None:
        found.append(msg)
        warnings.warn(msg, SanityCheckWarning, stacklevel=3)

    try:
        xs, ys = x_all[:_CHECK_EXAMPLES], y_all[:_CHECK_EXAMPLES]
        random_forward = _forward_differs(model, xs, seed)
        stochastic = bool(is_stochastic(model) or random_forward)
        reps = repeats if stochastic else 1
        n_draws = draws if stochastic else 1
        if reps < repeats:
            log.info("model is deterministic: measuring once instead of %d times", repeats)
        sanity: dict[str, Any] = {}
        if sanity_checks:
            if random_forward:
                for name, a in attacks.items():
                    if not _handles_randomness(a, model):
                        warn(
                            f"{name}: the model is randomized (two identical forward passes differ) but the "
                            "attack uses no EOT (eot_samples=1); its accuracy overestimates robustness "
                            "(Athalye et al., 2018)"
                        )
            with torch.no_grad(), use_generator(model, torch.Generator().manual_seed(seed)):
                out = model(xs)
            if out.shape[1] > 1 and out.min().item() >= 0 and (out.sum(dim=1) - 1).abs().max().item() < 1e-4:
                warn("the model's outputs look like probabilities (non-negative rows summing to 1); attacks need logits")
            share = _zero_gradient_share(model, xs, ys, seed)
            sanity["zero_gradient_share"] = share
            if share > ZERO_GRADIENT_SHARE:
                warn(
                    f"{share:.0%} of examples have an exactly-zero input gradient of the CE loss (more than "
                    f"{ZERO_GRADIENT_SHARE:.0%}): gradients are masked; gradient attacks will overestimate robustness"
                )

        batches = list(range(0, n, batch_size))
        bar = tqdm(total=(1 + len(attacks)) * reps * len(batches), desc="evaluate", disable=not progress, leave=False)

        def measure(craft: Any) -> np.ndarray:
            # rows: (attack run, model draw) pairs; columns: examples
            rows = []
            for _ in range(reps):
                correct = []
                for i in batches:
                    xb, yb = x_all[i : i + batch_size], y_all[i : i + batch_size]
                    xa = craft(xb, yb)
                    with use_generator(model, gen):
                        correct.append(
                            torch.stack([_predict_correct(model, xa, yb, batch_size) for _ in range(n_draws)])
                        )
                    bar.update(1)
                rows.append(torch.cat(correct, dim=1).cpu().numpy())
            return np.concatenate(rows).astype(bool)

        try:
            clean = measure(lambda xb, yb: xb)
            results = []
            with warnings.catch_warnings():
                if sanity_checks:  # said once above, in the report's terms
                    warnings.simplefilter("ignore", RandomizedDefenseWarning)
                    warnings.simplefilter("ignore", ProbabilityOutputWarning)
                for name, a in attacks.items():
                    t0 = time.perf_counter()
                    outcomes = measure(lambda xb, yb, a=a: a(model, xb, yb, generator=gen))
                    secs = time.perf_counter() - t0
                    mean, lo, hi, alld = _summary(outcomes, confidence)
                    log.info("%s: accuracy %.4f [%.4f, %.4f] (%.1f s)", name, mean, lo, hi, secs)
                    results.append(
                        AttackResult(
                            name, a.config(), mean, lo, hi, alld, n, reps, secs, outcomes=outcomes, draws=n_draws
                        )
                    )
        finally:
            bar.close()

        # Per example, the attacker picks the attack (or none) that minimises the probability
        # of a correct answer, estimated over the draws; the quoted figure averages that
        # minimum over examples. ``worst`` (correct under every measurement of a draw) gives
        # the stricter all-draws figure.
        worst = clean.copy()
        per_example_min = clean.mean(axis=0, dtype=np.float64)
        for r in results:
            assert r.outcomes is not None
            worst &= r.outcomes
            per_example_min = np.minimum(per_example_min, r.outcomes.mean(axis=0, dtype=np.float64))
        c_mean, c_lo, c_hi, c_all = _summary(clean, confidence)
        w_mean = float(per_example_min.mean()) if n else 0.0
        w_lo, w_hi = wilson_interval(w_mean, n, confidence=confidence)
        w_all = float(worst.all(axis=0).mean()) if n else 0.0

        if sanity_checks:
            _late_checks(model, x_all, y_all, results, threat, stochastic, seed, batch_size, sanity, warn)
    finally:
        for m, mode in modes:
            m.training = mode

    return RobustnessReport(
        clean_accuracy=c_mean,
        clean_ci_low=c_lo,
        clean_ci_high=c_hi,
        clean_accuracy_all_draws=c_all,
        attacks=tuple(results),
        worst_case_accuracy=w_mean,
        worst_case_ci_low=w_lo,
        worst_case_ci_high=w_hi,
        worst_case_accuracy_all_draws=w_all,
        stochastic=stochastic,
        n_examples=n,
        repeats=reps,
        confidence=confidence,
        threat_model=threat,
        warnings=tuple(found),
        sanity=sanity,
        clean_outcomes=clean,
        worst_case_outcomes=worst,
        draws=n_draws,
    )


#: Examples used by the late (attack-based) sanity checks.
_LATE_CHECK_EXAMPLES = 128


def _late_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    results: list[AttackResult],
    threat: dict[str, Any],
    stochastic: bool,
    seed: int,
    batch_size: int,
    sanity: dict[str, Any],
    warn: Any,
) -> None:
    """Noise and transfer baselines against the white-box attacks, and the eps sweep."""
    eps, norm = threat["eps"], threat["norm"]
    if eps <= 0:
        return
    xs, ys = x[:_LATE_CHECK_EXAMPLES], y[:_LATE_CHECK_EXAMPLES]
    m = xs.shape[0]
    white = min(float(r.outcomes[:, :m].mean()) for r in results if r.outcomes is not None)
    tol = max(0.02, 1.0 / math.sqrt(m))
    g = torch.Generator().manual_seed(seed + 1)
    with use_generator(model, g):
        noise_acc = float(_predict_correct(model, _noise(xs, eps=eps, norm=norm, generator=g), ys, batch_size).float().mean())
    sanity["noise_accuracy"] = noise_acc
    sanity["white_box_accuracy_on_check_subset"] = white
    if noise_acc < white - tol:
        warn(
            f"random noise at eps={eps:g} leaves {noise_acc:.1%} accuracy, below the best white-box attack's "
            f"{white:.1%}: the gradient attacks are failing (masked gradients)"
        )
    if stochastic:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomizedDefenseWarning)
            surrogate_attack = PGD(eps, steps=20, norm=norm)
            with deterministic(model):
                x_tr = surrogate_attack(model, xs, ys, generator=g)
        with use_generator(model, g):
            tr_acc = float(_predict_correct(model, x_tr, ys, batch_size).float().mean())
        sanity["transfer_accuracy"] = tr_acc
        if tr_acc < white - tol:
            warn(
                f"PGD transferred from the model with its randomness switched off leaves {tr_acc:.1%} accuracy, "
                f"below the best white-box attack's {white:.1%}: the white-box attacks are not adaptive enough"
            )
    check = check_eps_monotonic(model, xs[:64], ys[:64], eps=eps, norm=norm, generator=g, batch_size=batch_size)
    sanity["eps_sweep"] = {"eps": list(check.eps), "accuracy": list(check.accuracy)}
    if check.warning is not None:
        warn(check.warning)
