"""Payoff matrices of the defense game and their builder.

Convention (the only one): rows are defenders (the maximizer), columns are attackers,
each entry is the defender's accuracy in [0, 1] under that attack.
"""

from __future__ import annotations

import importlib
from typing import Any

from payoff.matrix import FORMAT, FORMAT_VERSION, PayoffError, PayoffMatrix, load_payoff

_LAZY = {
    "build_payoff_matrix": "payoff.builder",
    "DefenderSpec": "payoff.tasks",
    "PayoffStore": "payoff.store",
    "bootstrap_ci": "payoff.store",
}

__all__ = ["FORMAT", "FORMAT_VERSION", "PayoffError", "PayoffMatrix", "load_payoff", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'payoff' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
