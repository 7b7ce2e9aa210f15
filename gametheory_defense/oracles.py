"""Defense oracles that train new defenders: the double-oracle loop becomes PSRO (Lanctot et al., 2017).

:func:`~gametheory_defense.double_oracle.double_oracle` grows a restricted game with an
attack oracle (a new column) and a defense oracle (a new row). :class:`TrainingOracle` is
a defense oracle that answers the attacker's current mixture ``y`` by **training** a new
defender, which makes the loop Policy-Space Response Oracles (Lanctot et al., 2017) on the
defense game, the algorithmic form of mixed strategies against adversarial examples
(Pinot et al., 2020; Meunier et al., 2021). Three oracles are built in
(:data:`DEFENSE_ORACLES`):

``"pgd-at"``
    Adversarial training (Madry et al., 2018) in which **every batch's attack is drawn
    from the attacker's mixture** ``y``: column ``j`` is drawn with probability ``y_j``
    and its attack is crafted against the model being trained (white-box, in ``eval()``
    mode, as :func:`gametheory_defense.training.train` does). With ``warm_start`` the new
    model starts from the current defender that does best against ``y`` (its SAP layers,
    if any, removed) instead of a fresh initialisation.
``"sap"``
    The same training, then Stochastic Activation Pruning (Dhillon et al., 2018) at every
    rate of ``sap_fracs`` on top of the new model; the variant (the plain model
    included) with the highest payoff against ``y`` is the response.
``"boost"``
    In the spirit of Boosted Adversarial Training (Pinot et al., 2020, "Randomization
    matters"): before training, an attack drawn from ``y`` is crafted against the current
    defender **mixture** for every training example; the new model is then trained as
    ``"pgd-at"`` with each example's loss weighted by ``1 + boost_weight * (1 - p_e)``,
    ``p_e`` the mixture's probability of classifying its crafted example correctly, so
    the new defender concentrates on what the mixture gets wrong. (BAT itself trains the
    second model on the first one's adversarial examples only; keeping the white-box
    attack on the new model keeps it a sound defender in the self game, where every
    column attacks each row itself.)

None of them is an exact best response, so the loop's **upper bound is an estimate**, not
a certificate (see :mod:`gametheory_defense.double_oracle`).

Training is **resumable at every epoch**: after each epoch the model, the optimizer state,
the generator state and the history are written atomically to ``workdir/<name>/state``
(``.safetensors`` for tensors + ``.json`` for the rest; nothing is pickled), and a
finished model is a checkpoint (:func:`~gametheory_defense.checkpoint.save_checkpoint`)
whose ``extra.recipe`` records everything it was trained from. A killed run that is
started again resumes the interrupted training from its last finished epoch and gives the
same weights as an uninterrupted run (the tests kill one with SIGKILL).

A new row is evaluated against every current column by a *row evaluator*.
:class:`BuilderRows` uses :func:`payoff.build_payoff_matrix` on the new defender alone
(transfer games: with the source models, whose cells are reused), so the new row's cells
have exactly the store keys any defender's would have and are resumable; columns that no
configured attack reproduces (e.g. attacks crafted against a past mixture) are evaluated
by callables the caller supplies.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gametheory_defense.checkpoint import _atomic_target, _sha256_file
from gametheory_defense.double_oracle import OracleResponse
from gametheory_defense.training import OPTIMIZERS

if TYPE_CHECKING:
    from gametheory_defense.attacks import Attack

__all__ = [
    "DEFENSE_ORACLES",
    "TrainingOracle",
    "BuilderRows",
    "RowEvaluator",
    "OracleCall",
    "training_attack",
    "train_resumable",
]

log = logging.getLogger(__name__)

#: Built-in defense oracles (the values of ``[double_oracle] defense_oracle``).
DEFENSE_ORACLES: tuple[str, ...] = ("pgd-at", "sap", "boost")

_STATE_FORMAT = "gametheory-defense/oracle-training-state"
_STATE_VERSION = 1


# --------------------------------------------------------------------------- row evaluation


class RowEvaluator(Protocol):
    """Evaluates a new defender against every column of the current game."""

    def __call__(self, name: str, model: nn.Module, matrix: Any) -> OracleResponse:
        """The new row ``name``: ``model``'s accuracy against each of ``matrix.attackers``."""
        ...


ColumnOutcomes = Callable[[str, nn.Module], np.ndarray]
"""``(row name, model) -> outcomes`` (bool, draws x examples) of one column that the builder cannot reproduce."""


class BuilderRows:
    """Rows for new defenders computed with the payoff builder's store (Pal & Vidal, 2020).

    Columns the configured attacks produce are computed by
    :func:`payoff.build_payoff_matrix` on the new defender (and, for a transfer game, the
    source models, whose cells are already in the store), so the new cells get exactly the
    keys of any defender's cells: a killed evaluation resumes, and a defender evaluated
    twice is computed once. Every other column needs an entry in ``extra``.

    Parameters
    ----------
    attackers : Mapping[str, Attack]
        The configured attacks (self game: the column names; transfer game: the ``<attack>``
        part of ``<attack>@<source>`` column names).
    data : ArrayDataset or (x, y)
        The evaluation set of the game.
    store : PayoffStore, path or None
        The builder's store (``None``: in memory, nothing resumable).
    formulation : {"self", "transfer"}
    sources : Mapping[str, nn.Module], optional
        Transfer game: the source models by name.
    extra : Mapping[str, callable], optional
        ``column name -> (row name, model) -> outcomes`` (bool array, draws x examples) for
        columns no configured attack reproduces.
    repeats, seed, batch_size, device
        As for :func:`payoff.build_payoff_matrix` (they must equal the game's, or the keys differ).
    """

    def __init__(
        self,
        attackers: Mapping[str, Attack],
        data: Any,
        *,
        store: Any = None,
        formulation: str = "self",
        sources: Mapping[str, nn.Module] | None = None,
        extra: Mapping[str, ColumnOutcomes] | None = None,
        repeats: int = 1,
        seed: int = 0,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        if formulation not in ("self", "transfer"):
            raise ValueError(f"formulation must be 'self' or 'transfer', got {formulation!r}")
        if formulation == "transfer" and not sources:
            raise ValueError("a transfer game's rows need the source models: pass sources={name: model}")
        self.attackers = dict(attackers)
        self.data = data
        self.store = store
        self.formulation = formulation
        self.sources = dict(sources or {})
        self.extra: Mapping[str, ColumnOutcomes] = extra if extra is not None else {}  # read at each call
        self.repeats = repeats
        self.seed = seed
        self.batch_size = batch_size
        self.device = str(device)

    def _builder_column(self, column: str) -> str | None:
        """The configured attack behind ``column``, or None when the builder cannot make it."""
        if self.formulation == "self":
            return column if column in self.attackers else None
        attack, sep, source = column.rpartition("@")
        if sep and attack in self.attackers and source in self.sources:
            return attack
        return None

    def __call__(self, name: str, model: nn.Module, matrix: Any) -> OracleResponse:
        """The row of ``model`` (named ``name``) against every column of ``matrix``."""
        from payoff.builder import build_payoff_matrix, outcome_stats

        columns = list(matrix.attackers)
        built = {c: self._builder_column(c) for c in columns}
        missing = [c for c in columns if built[c] is None and c not in self.extra]
        if missing:
            raise ValueError(
                f"no way to evaluate a new defender against column(s) {missing}: they are not configured "
                "attacks; pass BuilderRows(extra={column: callable})"
            )
        attacks = {a: self.attackers[a] for a in dict.fromkeys(a for a in built.values() if a is not None)}
        defenders: dict[str, nn.Module] = {name: model}
        kwargs: dict[str, Any] = {}
        if self.formulation == "transfer":
            used = list(dict.fromkeys(c.rpartition("@")[2] for c in columns if built[c] is not None))
            defenders.update({s: self.sources[s] for s in used if s != name})
            kwargs["sources"] = used
        formulation = self.formulation
        if not attacks:  # only extra columns: the builder still gives the clean accuracy
            attacks, defenders, kwargs, formulation = {"_clean": _NoAttack()}, {name: model}, {}, "self"
        built_row = build_payoff_matrix(
            defenders, attacks, self.data, formulation=formulation,
            repeats=self.repeats, seed=self.seed, store=self.store, batch_size=self.batch_size,
            device=self.device, progress=False, **kwargs,
        )
        i = list(built_row.defenders).index(name)
        payoffs = np.empty(len(columns))
        stderr = np.empty(len(columns))
        n_samples = np.empty(len(columns), dtype=np.int64)
        for j, c in enumerate(columns):
            if built[c] is not None:
                k = list(built_row.attackers).index(c)
                payoffs[j], stderr[j], n_samples[j] = built_row.values[i, k], built_row.stderr[i, k], built_row.n_samples[i, k]
            else:
                payoffs[j], stderr[j], n_samples[j] = outcome_stats(np.asarray(self.extra[c](name, model)))
        return OracleResponse(
            name=name,
            payoffs=payoffs,
            stderr=stderr if matrix.stderr is not None else None,
            n_samples=n_samples if matrix.n_samples is not None else None,
            clean_accuracy=float(built_row.clean_accuracy[i]) if built_row.clean_accuracy is not None else None,
        )


class _NoAttack:
    """The identity "attack" (clean examples); used only to get a clean-accuracy cell."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: Any = None) -> torch.Tensor:
        return x

    def config(self) -> dict[str, Any]:
        return {"name": "none"}


# --------------------------------------------------------------------------- training attacks


def training_attack(attack: Attack, *, max_steps: int | None = None) -> Attack:
    """The version of ``attack`` used inside adversarial training (Madry et al., 2018).

    One restart and no EOT (the model being trained is deterministic); with ``max_steps``
    an attack with more steps is shortened to ``max_steps`` steps of size
    ``max(step_size, 2.5 * eps / max_steps)`` so that it can still cross the ball.

    Parameters
    ----------
    attack : Attack
        A registered attack (rebuilt from its ``config()``).
    max_steps : int, optional
        Cap on the number of steps.

    Returns
    -------
    Attack
    """
    from gametheory_defense.attacks import build_attack

    cfg = dict(attack.config())
    name = cfg.pop("name")
    if "restarts" in cfg:
        cfg["restarts"] = 1
    if "eot_samples" in cfg:
        cfg["eot_samples"] = 1
    if max_steps is not None and "steps" in cfg and cfg["steps"] > max_steps:
        cfg["steps"] = max_steps
        if "step_size" in cfg and cfg.get("eps"):
            cfg["step_size"] = max(float(cfg["step_size"]), 2.5 * float(cfg["eps"]) / max_steps)
    try:
        return build_attack(name, **cfg)
    except (TypeError, ValueError):  # an attack whose settings do not round-trip this way: use it as is
        return attack


# --------------------------------------------------------------------------- resumable training


@dataclass(frozen=True)
class OracleCall:
    """What one call of a :class:`TrainingOracle` did (kept in ``TrainingOracle.calls``).

    Attributes
    ----------
    name : str
        The name of the row returned.
    method : str
        The oracle (``"pgd-at"``, ``"sap"``, ``"boost"``).
    strategy : dict
        The attacker mixture it answered (column -> probability, support only).
    warm_start : str or None
        The current defender it started from.
    epochs : list of dict
        Per-epoch loss, accuracy and seconds of the training.
    resumed_from_epoch : int
        0 for a fresh training, ``k`` when resumed after epoch ``k``, ``-1`` when a finished
        checkpoint was reused.
    candidates : dict
        Payoff against ``y`` of every candidate considered (``"sap"``: each SAP variant).
    seconds : float
        Wall time of the call (training and evaluation).
    """

    name: str
    method: str
    strategy: dict[str, float]
    warm_start: str | None
    epochs: list[dict[str, float]]
    resumed_from_epoch: int
    candidates: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _save_state(
    directory: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, epoch: int,
    history: list[dict[str, float]], recipe: Mapping[str, Any],
) -> None:
    """Write ``state.safetensors`` (weights, optimizer tensors, generator) then ``state.json``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    tensors["generator"] = gen.get_state().clone()
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    weights = directory / "state.safetensors"
    with _atomic_target(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _STATE_FORMAT})
    meta = {
        "format": _STATE_FORMAT,
        "format_version": _STATE_VERSION,
        "epoch": epoch,
        "history": history,
        "recipe": recipe,
        "param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "tensors_sha256": _sha256_file(weights),
    }
    with _atomic_target(directory / "state.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _load_state(
    directory: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, recipe: Mapping[str, Any]
) -> tuple[int, list[dict[str, float]]] | None:
    """Restore a state written by :func:`_save_state` for the same recipe; None if absent or unusable."""
    from safetensors.torch import load_file

    meta_path, weights = directory / "state.json", directory / "state.safetensors"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != _STATE_FORMAT or meta.get("recipe") != json.loads(json.dumps(recipe)):
        log.warning("ignoring training state %s: written for other settings", meta_path)
        return None
    try:
        if _sha256_file(weights) != meta["tensors_sha256"]:
            raise ValueError("checksum mismatch")
        tensors = load_file(str(weights))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v
        for idx, sc in meta.get("optimizer_scalars", {}).items():
            state.setdefault(int(idx), {}).update(sc)
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        gen.set_state(tensors["generator"])
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        log.warning("ignoring training state %s: %s", directory, exc)
        return None
    return int(meta["epoch"]), list(meta["history"])


def _cuda_devices(dev: torch.device) -> list[int]:
    """The CUDA device indices whose RNG state ``torch.random.fork_rng`` must save for ``dev``."""
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


def train_resumable(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    draw_attack: Callable[[torch.Generator], Attack | None],
    generator: torch.Generator,
    state_dir: str | os.PathLike[str] | None,
    recipe: Mapping[str, Any],
    weights: torch.Tensor | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "oracle",
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Adversarial training (Madry et al., 2018) with a per-batch attack, checkpointed after every epoch.

    Each batch's attack is ``draw_attack(generator)`` (``None``: train on clean examples),
    crafted against the model in ``eval()`` mode; the optimizer step runs in ``train()``
    mode on the crafted examples. After every epoch the state is saved to ``state_dir``
    (see the module docstring); a state found there for the same ``recipe`` is restored
    first, so a killed training resumes after its last finished epoch with the weights an
    uninterrupted one would have.

    Parameters
    ----------
    model : nn.Module
        Trained in place on ``device``; left in ``eval()`` mode.
    data : (x, y)
        Training images in [0, 1] and integer labels (CPU tensors).
    epochs : int
        Passes over ``data``.
    draw_attack : callable
        ``generator -> Attack | None`` for each batch.
    generator : torch.Generator
        The only source of randomness (batch order, attack draws, random starts).
    state_dir : path or None
        Where the per-epoch state lives (None: not resumable).
    recipe : Mapping
        JSON-able description of the training; a saved state is used only for an equal recipe.
    weights : Tensor, optional
        Per-example loss weights (length N); default uniform.
    batch_size, lr, optimizer, weight_decay, device
        Optimisation settings (``optimizer`` is ``"adam"`` or ``"sgd"`` with momentum 0.9).
    progress : bool
        Show a tqdm bar per epoch.
    desc : str
        Progress-bar label.
    on_epoch : callable, optional
        ``on_epoch(epoch, stats)`` after each epoch's state is saved.

    Returns
    -------
    (history, resumed_from)
        Per-epoch ``{"epoch", "loss", "train_accuracy", "seconds"}``, and the epoch the
        training resumed after (0 for a fresh start).
    """
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"batch_size must be >= 1 and lr > 0, got {batch_size!r} and {lr!r}")
    dev = torch.device(device)
    x, y = data
    n = int(x.shape[0])
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights must have one entry per training example ({n}), got shape {tuple(weights.shape)}")
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sdir = Path(state_dir) if state_dir is not None else None
    start, history = 0, []
    if sdir is not None:
        loaded = _load_state(sdir, model, opt, generator, recipe)
        if loaded is not None:
            start, history = loaded
            log.info("%s: resuming training after epoch %d of %d", desc, start, epochs)
    resumed_from = start
    batches = math.ceil(n / batch_size)
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        # modules that draw from torch's global RNG (dropout) get a stream seeded per epoch
        # from ``generator``, so a resumed epoch sees the same numbers as an uninterrupted one
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        loss_sum, correct, seen = 0.0, 0, 0
        # torch.manual_seed also seeds CUDA: fork the training device's RNG too, or the
        # caller's CUDA random state would be overwritten
        with torch.random.fork_rng(devices=_cuda_devices(dev)):
            torch.manual_seed(seed)
            bar = tqdm(range(batches), desc=f"{desc} epoch {epoch}/{epochs}", disable=not progress, leave=False)
            for b in bar:
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx].to(dev), y[idx].to(dev)
                attack = draw_attack(generator)
                if attack is not None:
                    model.eval()
                    xb = attack(model, xb, yb, generator=generator).detach()
                model.train()
                logits = model(xb)
                if weights is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    w = weights[idx].to(dev)
                    loss = (F.cross_entropy(logits, yb, reduction="none") * w).sum() / w.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(dim=1) == yb).sum())
                seen += len(idx)
            bar.close()
        if not math.isfinite(loss_sum):
            raise ValueError(f"{desc}: training diverged in epoch {epoch} (non-finite loss); lower lr (now {lr})")
        stats = {"epoch": epoch, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                 "seconds": time.perf_counter() - t0}
        history.append(stats)
        model.eval()
        if sdir is not None:
            _save_state(sdir, model, opt, generator, epoch, history, recipe)
        log.info("%s epoch %d/%d: loss %.4f acc %.4f (%.1fs)", desc, epoch, epochs, stats["loss"],
                 stats["train_accuracy"], stats["seconds"])
        if on_epoch is not None:
            on_epoch(epoch, stats)
    model.eval()
    return history, resumed_from


# --------------------------------------------------------------------------- the oracle


def _check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class TrainingOracle:
    """A defense oracle that trains a new defender against the attacker's mixture (PSRO; Lanctot et al., 2017).

    Use it as ``double_oracle(matrix, attack_oracle, TrainingOracle(...))``. Each call
    receives the attacker's mixture ``y`` over the current columns and returns a new row
    (see the module docstring for the three methods). Every model it trains is added to
    ``members`` under its row name, so the attack oracle and the final mixture can use it.

    Parameters
    ----------
    make_model : callable
        ``generator -> nn.Module``: a fresh, untrained model (e.g. ``lambda g:
        build_model("mlp", input_shape=..., num_classes=10, generator=g)``). Models must
        be checkpointable (built by :func:`~gametheory_defense.models.build_model`) when
        ``workdir`` is given.
    train_data : ArrayDataset or (x, y)
        Training images in [0, 1] and labels.
    rows : RowEvaluator
        Computes the new defender's row (e.g. :class:`BuilderRows`).
    attacks : Mapping[str, Attack] or callable
        The attack to craft during training for each column name (``column -> Attack``).
        Shortened with :func:`training_attack`.
    method : {"pgd-at", "sap", "boost"}
        The oracle.
    epochs : int
        Training epochs per oracle call.
    batch_size, lr, optimizer, weight_decay
        Optimisation settings.
    attack_steps : int, optional
        Cap on the steps of the training attacks (see :func:`training_attack`).
    warm_start : bool
        Start from the current defender with the highest payoff against ``y`` (needs
        ``members``) instead of ``make_model``.
    sap_fracs, sap_mode
        SAP variants tried by ``method="sap"``.
    boost_weight : float
        Extra weight of the examples the mixture gets wrong (``method="boost"``).
    members : MutableMapping[str, nn.Module], optional
        The current defenders by row name (needed by ``warm_start`` and ``"boost"``); new
        models are added to it.
    workdir : path, optional
        Where training states and finished models are kept (``None``: nothing resumable).
    seed : int
        Seed of every generator (with the call's inputs).
    device : str or torch.device
    time_limit : float, optional
        Seconds from construction after which the oracle answers ``None`` (which stops the
        loop) instead of starting another training.
    prefix : str
        Row names are ``<prefix><k>-<method>``.
    progress : bool
        Progress bars.
    on_epoch : callable, optional
        ``on_epoch(row_name, epoch, stats)`` after every training epoch.
    """

    def __init__(
        self,
        make_model: Callable[[torch.Generator], nn.Module],
        train_data: Any,
        rows: RowEvaluator,
        attacks: Mapping[str, Attack] | Callable[[str], Attack],
        *,
        method: str = "pgd-at",
        epochs: int = 1,
        batch_size: int = 128,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        attack_steps: int | None = None,
        warm_start: bool = False,
        sap_fracs: Sequence[float] = (0.5, 1.0, 2.0),
        sap_mode: str = "exact",
        boost_weight: float = 4.0,
        members: MutableMapping[str, nn.Module] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        time_limit: float | None = None,
        prefix: str = "psro",
        progress: bool = True,
        on_epoch: Callable[[str, int, Mapping[str, float]], None] | None = None,
    ) -> None:
        from gametheory_defense.training import _as_xy

        if method not in DEFENSE_ORACLES:
            raise ValueError(f"unknown defense oracle {method!r}; choose one of {', '.join(DEFENSE_ORACLES)}")
        self.epochs = _check_positive_int(epochs, "epochs")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        if attack_steps is not None:
            _check_positive_int(attack_steps, "attack_steps")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if not (isinstance(boost_weight, (int, float)) and math.isfinite(boost_weight) and boost_weight >= 0):
            raise ValueError(f"boost_weight must be a number >= 0, got {boost_weight!r}")
        if method == "sap" and not sap_fracs:
            raise ValueError("the 'sap' oracle needs at least one rate in sap_fracs")
        if (warm_start or method == "boost") and members is None:
            raise ValueError(
                f"{'warm_start' if warm_start else 'the boost oracle'} needs the current defenders: pass members={{name: model}}"
            )
        if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        self.make_model = make_model
        self.train_x, self.train_y = _as_xy(train_data, "oracle training data")
        self.rows = rows
        self.attacks = attacks
        self.method = method
        self.lr = float(lr)
        self.optimizer = optimizer
        self.weight_decay = float(weight_decay)
        self.attack_steps = attack_steps
        self.warm_start = bool(warm_start)
        self.sap_fracs = tuple(float(f) for f in sap_fracs)
        self.sap_mode = sap_mode
        self.boost_weight = float(boost_weight)
        self.members: MutableMapping[str, nn.Module] = members if members is not None else {}
        self.workdir = Path(workdir) if workdir is not None else None
        self.seed = int(seed)
        self.device = torch.device(device)
        self.time_limit = time_limit
        self.prefix = prefix
        self.progress = progress
        self.on_epoch = on_epoch
        self.calls: list[OracleCall] = []
        self._started = time.monotonic()
        self._data_digest: str | None = None

    # ------------------------------------------------------------------ helpers

    def _attack_for(self, column: str) -> Attack:
        if callable(self.attacks) and not isinstance(self.attacks, Mapping):
            attack = self.attacks(column)
        else:
            if column not in self.attacks:
                raise ValueError(
                    f"the defense oracle has no training attack for column {column!r}; give attacks[{column!r}]"
                )
            attack = self.attacks[column]
        return training_attack(attack, max_steps=self.attack_steps)

    def _digest(self) -> str:
        if self._data_digest is None:
            from gametheory_defense.identity import data_digest

            self._data_digest = data_digest(self.train_x, self.train_y)
        return self._data_digest

    def _identity(self, name: str) -> str:
        from gametheory_defense.identity import defender_identity

        return defender_identity(self.members[name])

    def settings(self) -> dict[str, Any]:
        """JSON-able settings of the oracle (part of every training recipe)."""
        return {
            "method": self.method,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "attack_steps": self.attack_steps,
            "warm_start": self.warm_start,
            "sap_fracs": list(self.sap_fracs) if self.method == "sap" else None,
            "sap_mode": self.sap_mode if self.method == "sap" else None,
            "boost_weight": self.boost_weight if self.method == "boost" else None,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ the call

    def __call__(self, attacker_strategy: np.ndarray, matrix: Any) -> OracleResponse | None:
        """Train a new defender against the attacker mixture ``attacker_strategy`` over ``matrix``'s columns."""
        from gametheory_defense.identity import canonical_json, cell_seed, mixture_identity, support_indices

        if self.time_limit is not None and time.monotonic() - self._started > self.time_limit:
            log.info("defense oracle: wall-time limit of %.0f s reached; no more training", self.time_limit)
            return None
        t_call = time.perf_counter()
        y = np.asarray(attacker_strategy, dtype=np.float64)
        columns = list(matrix.attackers)
        if y.shape != (len(columns),):
            raise ValueError(f"attacker strategy has {y.size} entries for {len(columns)} columns")
        support = support_indices(y)
        probs = torch.tensor(y[support] / y[support].sum(), dtype=torch.float64)
        attacks = [self._attack_for(columns[j]) for j in support]

        k = len(self.calls) + 1
        name = f"{self.prefix}{k}-{self.method}"
        while name in matrix.defenders or name in self.members:
            k += 1
            name = f"{self.prefix}{k}-{self.method}"

        warm = None
        if self.warm_start:
            values = np.asarray(matrix.values, dtype=np.float64) @ y
            order = [i for i in np.argsort(-values, kind="stable") if matrix.defenders[i] in self.members]
            warm = matrix.defenders[order[0]] if order else None
        strategy = {columns[j]: round(float(y[j]), 9) for j in support}
        recipe: dict[str, Any] = {
            "oracle": self.settings(),
            "row": name,
            "strategy": strategy,
            "training_attacks": {columns[j]: a.config() for j, a in zip(support, attacks)},
            "train_data": self._digest(),
            "warm_start": self._identity(warm) if warm is not None else None,
        }
        mixture = None
        if self.method == "boost":
            mixture = self._current_mixture(matrix)
            recipe["boost_mixture"] = mixture_identity(
                [self._identity(n) for n in mixture.names], mixture.strategy, mixture.sample
            )
        gen = torch.Generator().manual_seed(cell_seed(self.seed, "psro-train", canonical_json(recipe)))
        row_dir = self.workdir / name if self.workdir is not None else None

        model, epochs, resumed = self._trained_model(name, recipe, gen, row_dir, probs, attacks, warm, mixture)

        candidates: dict[str, float] = {}
        if self.method == "sap":
            from gametheory_defense.sap import apply_sap

            best: tuple[float, str, nn.Module, OracleResponse] | None = None
            for frac in (None, *self.sap_fracs):
                cand = model if frac is None else apply_sap(model, frac, mode=self.sap_mode)
                cname = name if frac is None else f"{name}+sap{frac:g}"
                resp = self.rows(cname, cand, matrix)
                score = float(np.asarray(resp.payoffs) @ y)
                candidates[cname] = score
                if best is None or score > best[0] + 1e-12:
                    best = (score, cname, cand, resp)
            assert best is not None
            _, name, model, response = best
        else:
            response = self.rows(name, model, matrix)
        self.members[name] = model
        info = {
            "oracle": self.method,
            "strategy": strategy,
            "warm_start": warm,
            "epochs": epochs,
            "resumed_from_epoch": resumed,
            "candidates": candidates,
        }
        self.calls.append(
            OracleCall(name=name, method=self.method, strategy=strategy, warm_start=warm, epochs=epochs,
                       resumed_from_epoch=resumed, candidates=candidates, seconds=time.perf_counter() - t_call)
        )
        log.info("defense oracle %s: %s scores %.4f against the attacker mixture", self.method, name,
                 float(np.asarray(response.payoffs) @ y))
        return OracleResponse(
            name=name, payoffs=response.payoffs, stderr=response.stderr, n_samples=response.n_samples,
            info=info, clean_accuracy=response.clean_accuracy,
        )

    def _current_mixture(self, matrix: Any) -> Any:
        """The defender mixture of the current restricted game (solved by LP)."""
        from gametheory_defense.ensemble import MixedStrategyModel
        from gametheory_defense.identity import support_indices
        from gametheory_defense.solvers import solve_zero_sum

        eq = solve_zero_sum(np.asarray(matrix.values, dtype=np.float64))
        x = np.asarray(eq.defender_strategy)
        keep = support_indices(x)
        names = [matrix.defenders[i] for i in keep]
        missing = [n for n in names if n not in self.members]
        if missing:
            raise ValueError(f"the boost oracle needs the models of defenders {missing}; add them to members")
        return MixedStrategyModel([self.members[n] for n in names], x[keep] / x[keep].sum(), names=names)

    def _trained_model(
        self, name: str, recipe: dict[str, Any], gen: torch.Generator, row_dir: Path | None,
        probs: torch.Tensor, attacks: list[Attack], warm: str | None, mixture: Any,
    ) -> tuple[nn.Module, list[dict[str, float]], int]:
        """Train (or reload, or resume) the call's model."""
        from gametheory_defense.checkpoint import load_checkpoint, read_metadata, save_checkpoint
        from gametheory_defense.errors import CheckpointError

        final = row_dir / "model" if row_dir is not None else None
        if final is not None:
            try:
                meta = read_metadata(final)
                if (meta.get("extra") or {}).get("recipe") == json.loads(json.dumps(recipe)):
                    model = load_checkpoint(final, device=self.device, sap=None).model
                    log.info("defense oracle: reusing trained %s", name)
                    return model, list((meta.get("extra") or {}).get("epochs", [])), -1
            except CheckpointError:
                pass
        init_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen).item()))
        if warm is not None:
            from gametheory_defense.sap import remove_sap

            model = remove_sap(copy.deepcopy(self.members[warm]))
        else:
            model = self.make_model(init_gen)
        weights = self._boost_weights(mixture, probs, attacks, gen, row_dir, recipe) if mixture is not None else None

        def draw(g: torch.Generator) -> Attack:
            return attacks[int(torch.multinomial(probs, 1, generator=g).item())]

        on_epoch = None
        if self.on_epoch is not None:
            cb = self.on_epoch

            def on_epoch(epoch: int, stats: Mapping[str, float]) -> None:
                cb(name, epoch, stats)

        history, resumed = train_resumable(
            model, (self.train_x, self.train_y), epochs=self.epochs, draw_attack=draw, generator=gen,
            state_dir=row_dir / "state" if row_dir is not None else None, recipe=recipe, weights=weights,
            batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay,
            device=self.device, progress=self.progress, desc=name, on_epoch=on_epoch,
        )
        if final is not None:
            save_checkpoint(model.cpu(), final, training={"oracle": self.settings()},
                            extra={"recipe": recipe, "epochs": history})
            model.to(self.device)
        return model, history, resumed

    def _boost_weights(
        self, mixture: Any, probs: torch.Tensor, attacks: list[Attack], gen: torch.Generator,
        row_dir: Path | None, recipe: Mapping[str, Any],
    ) -> torch.Tensor:
        """Per-example weights ``1 + boost_weight * (1 - p_e)`` from attacks crafted against the mixture."""
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        from gametheory_defense.attacks.mixture import expected_accuracy, mixture_components
        from gametheory_defense.stochastic import use_generator
        from gametheory_defense.identity import canonical_json

        path = row_dir / "boost_weights.safetensors" if row_dir is not None else None
        tag = canonical_json(recipe)
        if path is not None and path.exists():
            try:
                t = load_file(str(path))
                if bytes(t["recipe"].numpy()).decode() == tag:
                    return t["weights"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("recomputing boost weights (%s)", exc)
        # a generator of its own: the weights do not consume the training stream, so a
        # resumed training sees the same numbers whether or not they were recomputed
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen).item()))
        mixture = mixture.to(self.device).eval()
        components = mixture_components(mixture)
        n = self.train_x.shape[0]
        p_correct = torch.empty(n, dtype=torch.float64)
        with use_generator(mixture, g):
            for s in tqdm(range(0, n, self.batch_size), desc="boost: attack the mixture", disable=not self.progress,
                          leave=False):
                xb = self.train_x[s : s + self.batch_size].to(self.device)
                yb = self.train_y[s : s + self.batch_size].to(self.device)
                attack = attacks[int(torch.multinomial(probs, 1, generator=g).item())]
                x_adv = attack(mixture, xb, yb, generator=g).detach()
                with torch.no_grad():
                    p_correct[s : s + len(yb)] = expected_accuracy(components, x_adv, yb).double().cpu()
        weights = (1.0 + self.boost_weight * (1.0 - p_correct)).float()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            blob = {"weights": weights, "recipe": torch.frombuffer(bytearray(tag.encode()), dtype=torch.uint8)}
            with _atomic_target(path) as tmp:
                save_file(blob, str(tmp))
        return weights
