"""The pipeline's defense oracle: ``[double_oracle] defense_oracle`` turns the loop into PSRO (Lanctot et al., 2017).

:func:`pipeline_defense_oracle` builds a :class:`~gametheory_defense.oracles.TrainingOracle`
from a run configuration: new defenders have the architecture of
``[double_oracle.defense] architecture`` (default: the first model's, with its ``kwargs`` and
``normalize``), train on the
run's training set, and are scored against every column of the current game with the
run's payoff store (``OUT/cells``), so a killed run resumes everywhere: finished cells are
reused, a finished oracle model is reloaded, an interrupted training resumes after its last
epoch (``OUT/double_oracle/defenders/<row>/``).

Columns and the attack each one stands for during training:

- a configured attacker ``a`` (self game) or ``a@source`` (transfer game): attack ``a``;
- a column added by the attack oracle (``do<k>-<attack>``): the attack oracle's attack.

The attack oracle's columns are evaluated on the examples it crafted against the mixture of
its round (kept in ``OUT/double_oracle/adversarial/``), with the same cell identity as the
defenders that were in the game then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from gametheory_defense.oracles import BuilderRows, TrainingOracle

__all__ = ["pipeline_defense_oracle", "oracle_log", "bound_status"]


class _OracleColumns(Mapping[str, Callable[[str, torch.nn.Module], np.ndarray]]):
    """The attack oracle's columns as row evaluators (a live view: columns appear as the loop runs)."""

    def __init__(self, columns: Mapping[str, Any], cell_of: Callable[..., Any], evaluate_cell: Callable[..., Any],
                 store: Any, n: int) -> None:
        self._columns, self._cell_of, self._evaluate, self._store, self._n = columns, cell_of, evaluate_cell, store, n

    def __getitem__(self, column: str) -> Callable[[str, torch.nn.Module], np.ndarray]:
        mixture_id, x_adv = self._columns[column]

        def outcomes(name: str, model: torch.nn.Module) -> np.ndarray:
            key, identity, draws = self._cell_of(model, mixture_id)
            rec = self._store.get(key, expected_shape=(draws, self._n))
            if rec is not None:
                return rec.outcomes
            return self._evaluate(model, name, key, identity, draws, x_adv)

        return outcomes

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def pipeline_defense_oracle(
    config: Any,
    out: Any,
    defenders: dict[str, torch.nn.Module],
    data: tuple[torch.Tensor, torch.Tensor],
    train_set: Any,
    oracle_attack: Any,
    oracle_columns: Mapping[str, Any],
    cell_of: Callable[..., Any],
    evaluate_cell: Callable[..., Any],
    store: Any,
    *,
    device: torch.device,
    progress: bool,
) -> TrainingOracle:
    """The :class:`TrainingOracle` of a run configuration (``[double_oracle]`` and ``[double_oracle.defense]``).

    Parameters
    ----------
    config : RunConfig
    out : RunDirectory
        The run directory.
    defenders : dict
        The game's defenders by row name; trained defenders are added to it.
    data : (x, y)
        The evaluation set of the game.
    train_set : ArrayDataset
        The run's training set.
    oracle_attack : Attack
        The attack oracle's attack.
    oracle_columns : Mapping
        Column name -> (mixture identity, adversarial examples) of every attack-oracle column (live).
    cell_of, evaluate_cell : callable
        The pipeline's double-oracle cell identity and evaluation.
    store : PayoffStore
    device : torch.device
    progress : bool
    """
    from gametheory_defense.attacks import build_attack
    from gametheory_defense.config import defender_names
    from gametheory_defense.errors import ConfigError
    from gametheory_defense.models import build_model
    from gametheory_defense.identity import cell_seed

    if train_set is None:
        raise ConfigError("double_oracle.defense_oracle needs the run's training set")
    do = config.double_oracle
    d = do.defense
    attackers = {a.name: build_attack(a.attack, **a.params) for a in config.attackers}
    x, y = data
    sources = None
    if config.game.formulation == "transfer":
        names = list(config.game.sources or defender_names(config))
        sources = {s: defenders[s] for s in names}
    rows = BuilderRows(
        attackers, (x, y), store=store, formulation=config.game.formulation, sources=sources,
        extra=_OracleColumns(oracle_columns, cell_of, evaluate_cell, store, len(y)),
        repeats=config.game.repeats, seed=config.seed, batch_size=config.game.batch_size, device=device,
    )

    def training_attack_for(column: str) -> Any:
        if column in oracle_columns:
            return oracle_attack
        base = column if column in attackers else column.rpartition("@")[0]
        if base in attackers:
            return attackers[base]
        raise ConfigError(f"double_oracle.defense_oracle: no attack is known for column {column!r}")

    template = config.models[0]
    if d.architecture is None and template.architecture is None:
        raise ConfigError(
            f"double_oracle.defense.architecture: the first model ({template.name}) names no architecture; set one"
        )
    shape, classes = tuple(train_set.input_shape), train_set.num_classes

    def make_model(g: torch.Generator) -> torch.nn.Module:
        if d.architecture is not None:
            return build_model(d.architecture, input_shape=shape, num_classes=classes, generator=g)
        return build_model(template.architecture, input_shape=shape, num_classes=classes, generator=g,
                           kwargs=template.kwargs or None, normalize=template.normalize)

    train = train_set if d.train_size is None else train_set.subset(min(d.train_size, len(train_set)))
    return TrainingOracle(
        make_model, train, rows, training_attack_for,
        method=do.defense_oracle, epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, optimizer=d.optimizer,
        weight_decay=d.weight_decay, attack_steps=d.attack_steps, warm_start=d.warm_start,
        sap_fracs=d.sap_fracs, sap_mode=d.sap_mode, boost_weight=d.boost_weight, members=defenders,
        workdir=out.directory("double_oracle/defenders"), seed=cell_seed(config.seed, "psro"), device=device,
        progress=progress,
    )


def bound_status(*, attack_oracle: bool, defense_oracle: bool) -> dict[str, str]:
    """Whether each double-oracle bound is certified or an estimate (McMahan, Gordon and Blum 2003).

    The lower bound is certified when the columns are the full set (no attack oracle) or
    the attack oracle is an exact best response; the upper bound likewise for rows. The
    pipeline's oracles (a crafted attack, a trained model) are heuristics, never exact.

    Returns
    -------
    dict
        ``{"lower_bound": "certified" | "estimate", "upper_bound": ...}``.
    """
    return {
        "lower_bound": "estimate" if attack_oracle else "certified",
        "upper_bound": "estimate" if defense_oracle else "certified",
    }


def oracle_log(oracle: TrainingOracle, result: Any) -> dict[str, Any]:
    """Every defense-oracle call (settings, attacker mixture, epochs, whether it was added), JSON-able."""
    added = set(result.added_defenders)
    return {
        "settings": oracle.settings(),
        "calls": [{**dataclasses.asdict(c), "added": c.name in added} for c in oracle.calls],
    }
