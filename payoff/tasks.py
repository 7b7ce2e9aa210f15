"""The payoff builder's unit of work and how one unit runs (shared by every executor).

A *column task* (:class:`ColumnTask`) crafts one attack against one source model and
evaluates some defenders on the result (or measures clean accuracy), writing each
finished cell to a :class:`~payoff.store.PayoffStore`. :func:`execute_task` runs one task
with whatever models the caller supplies; :mod:`payoff.builder` plans tasks and
:mod:`payoff.executors` runs them, both importing this module (neither imports the other
at run time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gametheory_defense.identity import cell_generator, cell_seed, data_digest, defender_identity
from payoff.store import PayoffStore

__all__ = [
    "DefenderSpec",
    "CellJob",
    "ColumnTask",
    "BuildSettings",
    "correctness",
    "execute_task",
    "outcome_stats",
    "defender_identity",
    "data_digest",
    "cell_seed",
    "cell_generator",
]

# defender_identity, data_digest, cell_seed and cell_generator live in
# gametheory_defense.identity; they are re-exported here for the executors.

# --------------------------------------------------------------------------- defenders


@dataclass(frozen=True)
class DefenderSpec:
    """A defender given by its checkpoint, loaded only where it is needed.

    The Ray executor ships specs, not modules, to its workers; each worker loads the
    checkpoint itself (``NAME.safetensors`` + ``NAME.json``, never unpickled).

    Parameters
    ----------
    name : str
        The defender's row name (must equal its key in the ``defenders`` mapping).
    checkpoint : str or pathlib.Path
        ``NAME``, ``NAME.safetensors`` or ``NAME.json`` of a checkpoint.
    sap : dict, None or "keep", default "keep"
        SAP override passed to :func:`~gametheory_defense.checkpoint.load_checkpoint`:
        ``"keep"`` uses the checkpoint's own settings, ``None`` loads the plain base model,
        ``{"frac": ..., "mode": ..., "layers": ...}`` applies those SAP settings (one base
        checkpoint serves several SAP defenders).
    trust_code : bool, default False
        Allow importing the checkpoint's architecture when it is an unregistered
        ``"package.module:Class"`` (see :func:`~gametheory_defense.checkpoint.load_checkpoint`).
    """

    name: str
    checkpoint: str | Path
    sap: Mapping[str, Any] | None | Literal["keep"] = "keep"
    trust_code: bool = False

    def load(self, *, device: str | torch.device = "cpu") -> nn.Module:
        """Load the model (``eval()`` mode) on ``device``."""
        from gametheory_defense.checkpoint import load_checkpoint

        sap = self.sap if (self.sap is None or isinstance(self.sap, str)) else dict(self.sap)
        return load_checkpoint(self.checkpoint, device=device, sap=sap, trust_code=self.trust_code).model


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class CellJob:
    """One cell a task computes: a defender, its store key and identity, and its draws."""

    defender: str
    defender_identity: str
    key: str
    identity: dict[str, Any]
    draws: int


@dataclass(frozen=True)
class ColumnTask:
    """A unit of work: craft one attack against one source, evaluate some defenders on it.

    ``attack is None`` means a clean-accuracy task (no crafting; ``cells`` are the clean
    cells of the listed defenders).
    """

    attack: str | None
    attack_config: str | None
    source: str | None
    source_identity: str | None
    source_draws: int
    cells: tuple[CellJob, ...]

    @property
    def crafts(self) -> int:
        """Adversarial sets this task crafts (0 for clean tasks, else 1)."""
        return 0 if self.attack is None else 1


@dataclass(frozen=True)
class BuildSettings:
    """Settings every task needs (plain data, shipped to workers)."""

    seed: int
    batch_size: int
    device: str


def _batches(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


@torch.no_grad()
def correctness(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, batch_size: int, device: str
) -> np.ndarray:
    """Per-example correctness of one draw of ``model`` (bool array of length n)."""
    from gametheory_defense.stochastic import use_generator

    out = np.empty(x.shape[0], dtype=np.bool_)
    with use_generator(model, generator):
        for sl in _batches(x.shape[0], batch_size):
            xb = x[sl].to(device)
            pred = model(xb).argmax(dim=-1).cpu()
            out[sl] = (pred == y[sl]).numpy()
    return out


def execute_task(
    task: ColumnTask,
    *,
    get_model: Callable[[str], nn.Module],
    attacks: Mapping[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: BuildSettings,
    store: PayoffStore,
    on_cell: Callable[[str], None] | None = None,
) -> list[str]:
    """Run one :class:`ColumnTask` and write its cells to ``store`` (used by every executor).

    Returns
    -------
    list of str
        Keys of the cells written.
    """
    written: list[str] = []
    seed = settings.seed
    if task.attack is None:  # clean accuracy
        for cell in task.cells:
            t0 = time.perf_counter()
            model = get_model(cell.defender)
            outcomes = np.stack(
                [
                    correctness(
                        model, x, y,
                        generator=cell_generator(seed, "clean", cell.defender_identity, r),
                        batch_size=settings.batch_size, device=settings.device,
                    )
                    for r in range(cell.draws)
                ]
            )
            info = {"defender": cell.defender, "attacker": None, "seconds": time.perf_counter() - t0}
            store.put(cell.key, outcomes, identity=cell.identity, info=info)
            written.append(cell.key)
            if on_cell is not None:
                on_cell(cell.key)
        return written

    from gametheory_defense.stochastic import use_generator

    assert task.source is not None and task.attack_config is not None and task.source_identity is not None
    attack = attacks[task.attack]
    source = get_model(task.source)
    t0 = time.perf_counter()
    crafted: list[torch.Tensor] = []
    for r in range(task.source_draws):
        g = cell_generator(seed, "craft", task.source_identity, task.attack_config, r)
        parts = []
        with use_generator(source, g):
            for sl in _batches(x.shape[0], settings.batch_size):
                xb, yb = x[sl].to(settings.device), y[sl].to(settings.device)
                parts.append(attack(source, xb, yb, generator=g).detach().cpu())
        crafted.append(torch.cat(parts))
    craft_seconds = time.perf_counter() - t0
    for cell in task.cells:
        t1 = time.perf_counter()
        model = get_model(cell.defender)
        outcomes = np.stack(
            [
                correctness(
                    model, crafted[r % task.source_draws], y,
                    generator=cell_generator(seed, "eval", cell.defender_identity, task.attack_config, task.source_identity, r),
                    batch_size=settings.batch_size, device=settings.device,
                )
                for r in range(cell.draws)
            ]
        )
        info = {
            "defender": cell.defender,
            "attack": task.attack,
            "source": task.source,
            "craft_seconds": craft_seconds,
            "seconds": time.perf_counter() - t1,
        }
        store.put(cell.key, outcomes, identity=cell.identity, info=info)
        written.append(cell.key)
        if on_cell is not None:
            on_cell(cell.key)
    return written



def outcome_stats(outcomes: np.ndarray) -> tuple[float, float, int]:
    """(mean accuracy, standard error over examples of the draw-averaged correctness, n x draws)."""
    draws, n = outcomes.shape
    per_example = outcomes.mean(axis=0, dtype=np.float64)
    mean = float(per_example.mean())
    se = float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return mean, min(se, 0.5), draws * n
