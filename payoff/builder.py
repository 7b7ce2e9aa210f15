"""Build the payoff matrix of the defense game from models and attacks.

Two games are supported:

``formulation="self"`` (the game of the source paper)
    Cell ``(i, j)`` is defender ``i``'s accuracy on examples crafted by attack ``j``
    against defender ``i`` itself (white-box).
``formulation="transfer"`` (moving-target defense, Sengupta et al., 2018)
    Attacker pure strategies are pairs ``(attack j, source model k)``, named
    ``"<attack>@<source>"``; cell ``(i, (j, k))`` is defender ``i``'s accuracy on the
    examples attack ``j`` crafted against source ``k``. Each ``(j, k)`` is crafted **once**
    and every defender is evaluated on it: ``|attacks| x |sources|`` crafts instead of
    ``|attacks| x |sources| x |defenders|``.

Both are the same computation: a *column task* crafts attack ``j`` against a source and
evaluates some defenders on the result; the self game is the diagonal ``source = defender``
of the transfer game, and its cells share the transfer game's store keys.

Randomness. Every random number is drawn from a ``torch.Generator`` seeded from the run
seed and the identities involved (SHA-256 of ``"seed|craft|source|attack|repeat"`` for
crafting, ``"seed|eval|defender|attack|source|repeat"`` for evaluating,
``"seed|clean|defender|repeat"`` for clean accuracy), never from the order of the work,
so the matrix does not depend on the order of the defenders or on the executor.

Stochastic models (any :func:`~gametheory_defense.stochastic.is_stochastic` model, e.g.
SAP) are evaluated over ``repeats`` independent draws: a cell with a stochastic defender
or a stochastic source has ``repeats`` draws, each crafting against a fresh draw of a
stochastic source (once per repeat) and evaluating with a fresh draw of the defender;
a cell between deterministic models has one draw.

Standard error (the estimator). With per-example outcomes ``o[r, e]`` (draw ``r``,
example ``e``), the entry is ``A = mean(o)``; with ``c_e = mean_r o[r, e]`` the per-example
mean correctness, ``stderr = std(c, ddof=1) / sqrt(n)``. Examples are the independent unit
(draws of one example share it), so this is the standard error of the mean over examples
of the draw-averaged correctness; with one draw it is the usual binomial-type
``sqrt(A (1 - A) n / (n - 1)) / sqrt(n)``. ``n_samples = n x draws``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gametheory_defense.cache_keys import payoff_cell_identity
from payoff.executors import EXECUTORS, run_tasks
from payoff.matrix import PayoffMatrix
from gametheory_defense.identity import (
    canonical_json,
    cell_generator,
    cell_seed,
    check_distinct,
    data_digest,
    defender_identity,
)
from payoff.store import MemoryStore, PayoffStore, cell_key
from payoff.tasks import BuildSettings, CellJob, ColumnTask, DefenderSpec, correctness, outcome_stats

__all__ = [
    "DefenderSpec",
    "build_payoff_matrix",
    "FORMULATIONS",
    "cell_seed",
    "cell_generator",
    "correctness",
    "outcome_stats",
    "data_digest",
    "defender_identity",
]

log = logging.getLogger(__name__)

#: The games :func:`build_payoff_matrix` can build.
FORMULATIONS: tuple[str, ...] = ("self", "transfer")



# --------------------------------------------------------------------------- helpers


def _versions() -> dict[str, str]:
    from gametheory_defense import __version__

    return {
        "gametheory-defense": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
    }


@contextmanager
def _eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Put ``models`` in ``eval()`` mode for the block and restore every submodule's mode."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for modes in saved:
            for m, training in modes:
                m.training = training


def _check_mapping(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be a mapping name -> object, got {type(obj).__name__}")
    if not obj:
        raise ValueError(f"{what} is empty; the game needs at least one")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not k.strip() or k != k.strip():
            raise ValueError(f"{what} names must be non-empty strings without surrounding spaces, got {k!r}")
        out[k] = v
    return out


# --------------------------------------------------------------------------- builder


def build_payoff_matrix(
    defenders: Mapping[str, nn.Module | DefenderSpec],
    attackers: Mapping[str, Any],
    data: Any,
    *,
    formulation: Literal["self", "transfer"] | str = "self",
    sources: Sequence[str] | None = None,
    repeats: int = 1,
    seed: int = 0,
    store: PayoffStore | str | os.PathLike[str] | None = None,
    executor: str = "serial",
    ray_options: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> PayoffMatrix:
    """Payoff matrix of the adversarial-defense game (Pal & Vidal, 2020; transfer game: Sengupta et al., 2018).

    Parameters
    ----------
    defenders : Mapping[str, nn.Module or DefenderSpec]
        Row players by name, in row order. Modules are put in ``eval()`` mode for the
        build (their modes are restored after; a module left in training mode gets a
        warning) and moved to ``device``. Specs are loaded lazily from their checkpoints.
    attackers : Mapping[str, Attack]
        Attacks by name (objects with ``__call__(model, x, y, *, generator)`` and a JSON-able
        ``config()``, which is what identifies them in the store).
    data : Any
        The evaluation set, anything :func:`gametheory_defense.data.as_tensors` accepts.
    formulation : {"self", "transfer"}, default "self"
        The game (see the module docstring).
    sources : sequence of str, optional
        Transfer game only: defender names used as source models (default: all defenders).
    repeats : int, default 1
        Independent draws of stochastic models per cell (deterministic cells use one).
    seed : int, default 0
        Run seed; every cell's generators are derived from it and the cell's identity.
    store : PayoffStore, str, path or None
        Resumable store: finished cells are reused, missing or corrupt ones computed and
        written atomically. ``None`` keeps cells in memory (a temporary directory with Ray).
    executor : {"serial", "ray"}, default "serial"
        How tasks run (see :mod:`payoff.executors`).
    ray_options : dict, optional
        Ray executor options: ``address``, ``num_cpus`` (of a local cluster, default 2),
        ``num_gpus`` and ``cpus_per_task`` per task, ``shutdown``.
    batch_size : int, default 256
        Examples per forward pass and per attack call. Part of the cell identity: with
        stochastic models or random starts the random stream depends on it.
    device : str, default "cpu"
        Device the models run on.
    progress : bool, default True
        Show a tqdm progress bar counting cells.

    Returns
    -------
    PayoffMatrix
        Rows ``defenders`` (mapping order), columns ``attackers`` (self) or
        ``"<attack>@<source>"`` for each attack then each source (transfer); ``stderr``,
        ``n_samples``, ``clean_accuracy`` and ``metadata`` (formulation, seed, repeats, data
        size and digest, attack configs, defender identities, ``crafts`` performed,
        ``cells_computed``, ``cells_reused``, ``run_id``, library versions).

    Raises
    ------
    ValueError
        Bad arguments (unknown formulation, executor or source name, non-positive repeats
        or batch size, a spec whose name differs from its key, ...).
    ImportError
        ``executor="ray"`` without Ray installed ("install the ray extra").
    """
    from gametheory_defense.data import as_tensors
    from gametheory_defense.stochastic import is_stochastic

    defs = _check_mapping(defenders, "defenders")
    atks = _check_mapping(attackers, "attackers")
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {list(FORMULATIONS)}, got {formulation!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if ray_options is not None and executor != "ray":
        warnings.warn("ray_options are ignored unless executor='ray'", stacklevel=2)
    if formulation == "self":
        if sources is not None:
            raise ValueError("sources only applies to formulation='transfer'; the self game attacks each defender itself")
        source_names: list[str] = []
    else:
        source_names = list(defs) if sources is None else [str(s) for s in sources]
        unknown = [s for s in source_names if s not in defs]
        if unknown:
            raise ValueError(f"unknown source model(s) {unknown}; sources must be defender names: {list(defs)}")
        if len(set(source_names)) != len(source_names) or not source_names:
            raise ValueError(f"sources must be a non-empty list of distinct defender names, got {source_names}")
    for name, d in defs.items():
        if isinstance(d, DefenderSpec):
            if d.name != name:
                raise ValueError(f"DefenderSpec named {d.name!r} is given under the key {name!r}; make them equal")
        elif not isinstance(d, nn.Module):
            raise ValueError(f"defender {name!r} is a {type(d).__name__}; give an nn.Module or a DefenderSpec")
    attack_cfg: dict[str, str] = {}
    for name, a in atks.items():
        if not callable(a) or not callable(getattr(a, "config", None)):
            raise ValueError(f"attacker {name!r} must be an Attack (callable with a config() method)")
        try:
            attack_cfg[name] = canonical_json(a.config())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"attacker {name!r}: config() is not JSON-serialisable ({exc})") from None

    x, y = as_tensors(data)
    x, y = x.detach().cpu(), y.detach().cpu()  # batches are moved to `device` as they are used
    n = int(x.shape[0])
    digest = data_digest(x, y)
    settings = BuildSettings(seed=seed, batch_size=batch_size, device=str(device))

    # ----- models, identities, stochasticity (main process)
    models: dict[str, nn.Module] = {}
    for name, d in defs.items():
        if isinstance(d, DefenderSpec):
            models[name] = d.load(device=device)
        else:
            if d.training:
                warnings.warn(
                    f"defender {name!r} is in training mode; the payoff matrix evaluates it in eval() mode "
                    "(its modes are restored afterwards)",
                    stacklevel=2,
                )
            models[name] = d.to(device)
    from gametheory_defense.models import check_classifier

    for name, m in models.items():  # wrong shapes, tuple outputs, float64 weights: one line, before any work
        k = check_classifier(m, x[:2], name=f"defender {name!r}")
        if n and int(y.max()) >= k:
            raise ValueError(f"defender {name!r} has {k} logits but the labels go up to {int(y.max())}")
    ident = {name: defender_identity(m) for name, m in models.items()}
    stoch = {name: is_stochastic(m) for name, m in models.items()}
    check_distinct(ident, defs)  # two different models must never share one set of results

    def draws_of(*names: str) -> int:
        return repeats if any(stoch[k] for k in names) else 1

    def adv_identity(defender: str, attack: str, source: str) -> dict[str, Any]:
        return payoff_cell_identity(
            "adversarial",
            data=digest,
            seed=seed,
            batch_size=batch_size,
            defender=ident[defender],
            attack=json.loads(attack_cfg[attack]),
            source=ident[source],
            draws=draws_of(defender, source),
            source_draws=draws_of(source),
        )

    # ----- plan: columns, cells, tasks
    if formulation == "self":
        columns = [(a, None) for a in atks]
        col_names = list(atks)
        pairs = [(a, d) for a in atks for d in defs]  # (attack, source) crafts; source == defender
    else:
        columns = [(a, s) for a in atks for s in source_names]
        col_names = [f"{a}@{s}" for a, s in columns]
        pairs = [(a, s) for a in atks for s in source_names]
    if len(set(col_names)) != len(col_names):
        raise ValueError(f"column names collide: {col_names}")

    cell_keys: dict[str, dict[str, str]] = {d: {} for d in defs}
    jobs: dict[tuple[str, str], list[CellJob]] = {p: [] for p in pairs}  # (attack, source) -> cells
    for d in defs:
        for (a, s), col in zip(columns, col_names):
            src = d if s is None else s
            identity = adv_identity(d, a, src)
            key = cell_key(identity)
            cell_keys[d][col] = key
            jobs[(a, src)].append(CellJob(d, ident[d], key, identity, identity["draws"]))
    clean_jobs: list[CellJob] = []
    clean_keys: dict[str, str] = {}
    for d in defs:
        identity = payoff_cell_identity(
            "clean", data=digest, seed=seed, batch_size=batch_size, defender=ident[d], draws=draws_of(d)
        )
        key = cell_key(identity)
        clean_keys[d] = key
        clean_jobs.append(CellJob(d, ident[d], key, identity, identity["draws"]))

    # ----- store and what is already there
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    if store is None:
        if executor == "ray":
            tmpdir = tempfile.TemporaryDirectory(prefix="payoff-store-")
            pstore: PayoffStore = PayoffStore(tmpdir.name)
        else:
            pstore = MemoryStore()
    elif isinstance(store, PayoffStore):
        pstore = store
    else:
        pstore = PayoffStore(store)

    records: dict[str, np.ndarray] = {}

    def lookup(job: CellJob) -> bool:
        if job.key in records:
            return True
        rec = pstore.get(job.key, expected_shape=(job.draws, n))
        if rec is not None:
            records[job.key] = rec.outcomes
            return True
        return False

    tasks: list[ColumnTask] = []
    seen_keys: set[str] = set()
    missing_clean_list = []
    for j in clean_jobs:
        if j.key in seen_keys:  # the same model twice: one computation
            continue
        seen_keys.add(j.key)
        if not lookup(j):
            missing_clean_list.append(j)
    missing_clean = tuple(missing_clean_list)
    if missing_clean:
        tasks.append(ColumnTask(None, None, None, None, 0, missing_clean))
    for (a, s), cells in jobs.items():
        todo = []
        for j in cells:
            if j.key in seen_keys:  # the same model twice: one computation
                continue
            seen_keys.add(j.key)
            if not lookup(j):
                todo.append(j)
        if todo:
            tasks.append(ColumnTask(a, attack_cfg[a], s, ident[s], draws_of(s), tuple(todo)))
    all_keys = set(clean_keys.values()) | {k for row in cell_keys.values() for k in row.values()}
    n_missing = sum(len(t.cells) for t in tasks)
    reused = len(all_keys) - n_missing
    crafts = sum(t.crafts for t in tasks)
    log.info(
        "payoff build (%s): %d defenders x %d columns, %d cells to compute, %d reused, %d crafts",
        formulation, len(defs), len(col_names), n_missing, reused, crafts,
    )

    # ----- execute
    t0 = time.perf_counter()
    try:
        with _eval_mode(list(models.values())), ExitStack() as stack:
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = stack.enter_context(
                    tqdm(total=len(all_keys), initial=reused, desc=f"payoff ({formulation})", unit="cell")
                )
            run_tasks(
                tasks,
                executor=executor,
                ray_options=ray_options,
                models=models,
                specs={k: v for k, v in defs.items() if isinstance(v, DefenderSpec)},
                attacks=atks,
                x=x,
                y=y,
                settings=settings,
                store=pstore,
                on_cells=(lambda k: bar.update(k)) if bar is not None else None,
            )
        elapsed = time.perf_counter() - t0

        # ----- assemble
        def outcome(key: str, draws: int) -> np.ndarray:
            if key not in records:
                rec = pstore.get(key, expected_shape=(draws, n))
                if rec is None:
                    raise RuntimeError(f"payoff cell {key} is missing from {pstore!r} after it was computed")
                records[key] = rec.outcomes
            return records[key]

        shape = (len(defs), len(col_names))
        values = np.empty(shape)
        stderr = np.empty(shape)
        n_samples = np.empty(shape, dtype=np.int64)
        clean = np.empty(len(defs))
        for i, d in enumerate(defs):
            clean[i] = outcome_stats(outcome(clean_keys[d], draws_of(d)))[0]
            for j, ((a, s), col) in enumerate(zip(columns, col_names)):
                src = d if s is None else s
                values[i, j], stderr[i, j], n_samples[i, j] = outcome_stats(outcome(cell_keys[d][col], draws_of(d, src)))

        run_id = hashlib.sha256(
            canonical_json({"rows": list(defs), "cols": col_names, "cells": cell_keys, "clean": clean_keys}).encode()
        ).hexdigest()[:16]
        pstore.write_run(
            run_id,
            {"formulation": formulation, "defenders": list(defs), "attackers": col_names, "cells": cell_keys, "clean": clean_keys},
        )
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()

    metadata: dict[str, Any] = {
        "formulation": formulation,
        "seed": seed,
        "repeats": repeats,
        "batch_size": batch_size,
        "data": {"n": n, "input_shape": list(x.shape[1:]), "sha256": digest},
        "attacks": {name: json.loads(c) for name, c in attack_cfg.items()},
        "defender_identities": ident,
        "stochastic_defenders": [d for d in defs if stoch[d]],
        "crafts": crafts,
        "crafts_needed": len(pairs),
        "cells_computed": n_missing,
        "cells_reused": reused,
        "executor": executor,
        "seconds": round(elapsed, 3),
        "run_id": run_id,
        "store": None if (store is None) else str(pstore.root),
        "stderr_estimator": "std over examples of the per-example mean correctness over draws, / sqrt(n)",
        "versions": _versions(),
    }
    if formulation == "transfer":
        metadata["sources"] = source_names
        metadata["columns"] = {col: {"attack": a, "source": s} for (a, s), col in zip(columns, col_names)}
    return PayoffMatrix(
        values,
        defenders=list(defs),
        attackers=col_names,
        stderr=stderr,
        n_samples=n_samples,
        clean_accuracy=clean,
        metadata=metadata,
    )
