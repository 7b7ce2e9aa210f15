"""gametheory-defense: game-theoretic adversarial defense of neural networks.

Defenders (trained models, Stochastic Activation Pruning, adversarial training) play a
zero-sum game against attackers (FGSM, PGD, EOT-PGD, mixture-aware attacks). The payoff
matrix (``payoff.PayoffMatrix``) holds each defender's accuracy under each attack; the
solvers return the defender's equilibrium mixture with a certificate; the
:class:`MixedStrategyModel` serves that mixture; :func:`evaluate` measures it honestly
with adaptive attacks.

Names are imported lazily so that ``import gametheory_defense`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "solve_zero_sum": "gametheory_defense.solvers",
    "Equilibrium": "gametheory_defense.solvers",
    "SOLVERS": "gametheory_defense.solvers",
    "register_solver": "gametheory_defense.solvers",
    "plot_payoff": "gametheory_defense.plots",
    "plot_convergence": "gametheory_defense.plots",
    "MixedStrategyModel": "gametheory_defense.ensemble",
    "evaluate": "gametheory_defense.evaluation",
    "RobustnessReport": "gametheory_defense.evaluation",
    "ADAPTIVE_SUITE": "gametheory_defense.evaluation",
    "suite": "gametheory_defense.evaluation",
    "SanityCheckWarning": "gametheory_defense.evaluation",
    "double_oracle": "gametheory_defense.double_oracle",
    "DoubleOracleResult": "gametheory_defense.double_oracle",
    "OracleResponse": "gametheory_defense.double_oracle",
    "load_dataset": "gametheory_defense.data",
    "build_model": "gametheory_defense.models",
    "register_model": "gametheory_defense.models",
    "Normalize": "gametheory_defense.models",
    "apply_sap": "gametheory_defense.sap",
    "StochasticActivationPruning": "gametheory_defense.sap",
    "sap_settings": "gametheory_defense.sap",
    "remove_sap": "gametheory_defense.sap",
    "activation_sites": "gametheory_defense.sap",
    "SAPCoverageError": "gametheory_defense.sap",
    "train": "gametheory_defense.training",
    "TrainResult": "gametheory_defense.training",
    "Checkpoint": "gametheory_defense.checkpoint",
    "weights_digest": "gametheory_defense.checkpoint",
    "model_identity": "gametheory_defense.identity",
    "defender_identity": "gametheory_defense.identity",
    "set_identity_tag": "gametheory_defense.identity",
    "save_checkpoint": "gametheory_defense.checkpoint",
    "load_checkpoint": "gametheory_defense.checkpoint",
    "load_model": "gametheory_defense.checkpoint",
    "import_model": "gametheory_defense.checkpoint",
    "GTDError": "gametheory_defense.errors",
    "SolverError": "gametheory_defense.errors",
    "GameTooLargeError": "gametheory_defense.errors",
    "ConfigError": "gametheory_defense.errors",
    "CheckpointError": "gametheory_defense.errors",
    "DataError": "gametheory_defense.errors",
    "AttackError": "gametheory_defense.errors",
    "UntrustedCodeError": "gametheory_defense.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gametheory_defense' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
