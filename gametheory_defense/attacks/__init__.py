"""Adversarial attacks behind one interface (see :class:`Attack`) and a registry.

``ATTACKS`` maps registry names to classes; :func:`build_attack` builds one by name with
validated keyword settings. Every attack is called as ``attack(model, x, y, *,
generator=None) -> x_adv`` and shares the argument names ``eps``, ``step_size``,
``steps``, ``norm``, ``loss``, ``random_start``, ``restarts`` and ``eot_samples``.
Importing a module that defines an attack registers it; each attack module is imported
below (one line per module).
"""

from __future__ import annotations

from gametheory_defense.attacks.base import (
    ATTACKS,
    NORMS,
    Attack,
    EOTGradient,
    ProbabilityOutputWarning,
    RandomizedDefenseWarning,
    build_attack,
    eot_gradient,
    expected_output,
    gradient_step,
    linf_bounds,
    preserve_model_state,
    project,
    random_start,
    register_attack,
)
from gametheory_defense.attacks.losses import (
    DEFAULT_KAPPA,
    LOSSES,
    ce_loss,
    cw_loss,
    dlr_loss,
    dlr_targeted_loss,
    get_loss,
)

# attack modules (each registers its classes on import)
from gametheory_defense.attacks.fgsm import FGSM
from gametheory_defense.attacks.pgd import EOTPGD, PGD
from gametheory_defense.attacks.mixture import MixturePGD
from gametheory_defense.attacks.arc import ARC
from gametheory_defense.attacks.apgd import APGD, APGDCE, APGDDLR, APGDT
from gametheory_defense.attacks.square import Square
from gametheory_defense.attacks.transfer import Transfer, TransferPGD

__all__ = [
    "Attack",
    "ATTACKS",
    "register_attack",
    "build_attack",
    "FGSM",
    "PGD",
    "EOTPGD",
    "MixturePGD",
    "ARC",
    "APGD",
    "APGDCE",
    "APGDDLR",
    "APGDT",
    "Square",
    "Transfer",
    "TransferPGD",
    "RandomizedDefenseWarning",
    "ProbabilityOutputWarning",
    "EOTGradient",
    "eot_gradient",
    "expected_output",
    "preserve_model_state",
    "random_start",
    "gradient_step",
    "project",
    "linf_bounds",
    "NORMS",
    "LOSSES",
    "DEFAULT_KAPPA",
    "ce_loss",
    "cw_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "get_loss",
]
