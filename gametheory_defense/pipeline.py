"""The one-command pipeline behind ``gtdefense run`` and ``gtdefense demo``.

Steps, each resumable (finished work is written to ``out`` atomically and reused with
``resume=True``):

1. train the base models (``models/NAME.safetensors`` + ``.json``);
2. build the payoff matrix of defenders (base models x SAP rates) against the configured
   attackers (``cells/``: one file per finished cell) and save ``payoff.json``/``.csv``;
3. solve the game (``equilibrium.json``), plot it (``payoff.png``) and save the
   equilibrium mixture (``ensemble/``);
4. optionally run the double-oracle loop: the attack oracle crafts an adaptive attack
   against the current mixture and adds it as a column (``double_oracle.json``,
   ``double_oracle.png``);
5. evaluate the mixture and every pure defender with the adaptive suite on the same
   examples (``robustness.json``);
6. write ``report.md``: the paper's protocol and the adaptive one side by side.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gametheory_defense import cache_keys
from gametheory_defense.config import RunConfig, defender_names
from gametheory_defense.errors import CheckpointError, ConfigError
from gametheory_defense.identity import SUPPORT_TOL, cell_seed, data_digest, defender_identity
from gametheory_defense.provenance import environment, reproduce_command  # re-exported for callers
from gametheory_defense.rundir import LOCK_NAME, RunDirectory

#: ``format`` of a cached evaluation (``OUT/robustness/NAME.json``).
EVALUATION_FORMAT = "gametheory-defense/evaluation-cache"

__all__ = [
    "RunResult",
    "run_pipeline",
    "resolve_device",
    "defender_specs",
    "load_defenders",
    "environment",
    "reproduce_command",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` produced (paths are inside ``out``)."""

    out: Path
    matrix: Any
    equilibrium: Any
    robustness: Mapping[str, Any] | None
    double_oracle: Any | None
    seconds: Mapping[str, float]


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else must be a valid torch device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: invalid device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- training


def _check_architectures(config: RunConfig, *, trust_code: bool) -> None:
    """Fail before any work when a model's code may not be imported (no --trust-code, not registered)."""
    from gametheory_defense.checkpoint import PLAIN_SUFFIXES, checkpoint_paths, read_metadata
    from gametheory_defense.errors import UntrustedCodeError
    from gametheory_defense.models import MODELS, resolve_architecture

    for m in config.models:
        name = m.architecture
        if name is None and m.checkpoint is not None:
            ckpt = Path(m.checkpoint)
            if ckpt.suffix.lower() in PLAIN_SUFFIXES or not checkpoint_paths(ckpt)[1].is_file():
                raise ConfigError(
                    f"models.{m.name}.checkpoint: {ckpt} is not a checkpoint with a sidecar (NAME.safetensors + "
                    "NAME.json); give the architecture of this plain weights file"
                )
            name = read_metadata(ckpt)["architecture"]["name"]
        elif m.checkpoint is not None and Path(m.checkpoint).suffix.lower() not in PLAIN_SUFFIXES and checkpoint_paths(m.checkpoint)[1].is_file():
            raise ConfigError(
                f"models.{m.name}: checkpoint {m.checkpoint} records its own architecture; remove architecture, "
                "kwargs and normalize (or point at a plain .pt/.pth/.safetensors file)"
            )
        if name in MODELS:
            continue
        try:
            resolve_architecture(name, trust_code=trust_code)
        except UntrustedCodeError as exc:
            raise UntrustedCodeError(f"models.{m.name}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"models.{m.name}.architecture: {exc}") from None


def _pretrained(
    m: Any, path: Path, train_set: Any, dataset: str, *, resume: bool, trust_code: bool, eval_set: Any = None
) -> Path:
    """Copy the pretrained weights ``m.checkpoint`` into the run's checkpoint ``path`` (no training).

    A checkpoint with its sidecar is loaded as it is (its SAP settings dropped: the
    ``[defenders]`` section applies SAP); a plain state dict is loaded into
    ``m.architecture`` (``kwargs``, ``normalize``) for the data set's input shape and
    number of classes. Reused with ``resume`` while the source file is unchanged.
    """
    from gametheory_defense.checkpoint import (
        PLAIN_SUFFIXES,
        _sha256_file,
        checkpoint_paths,
        load_checkpoint,
        load_model,
        save_checkpoint,
    )

    src = Path(m.checkpoint)
    plain = src.suffix.lower() in PLAIN_SUFFIXES or not checkpoint_paths(src)[1].is_file()
    source_file = src if plain else checkpoint_paths(src)[0]
    if not source_file.is_file():
        raise ConfigError(f"models.{m.name}.checkpoint: {source_file} not found")
    recipe = {
        "pretrained": str(src),
        "sha256": _sha256_file(source_file),
        "architecture": m.architecture,
        "kwargs": dict(m.kwargs),
        "normalize": None if m.normalize is None else dict(m.normalize),
    }
    sidecar = _read_json(checkpoint_paths(path)[1])
    if resume and sidecar is not None and (sidecar.get("extra") or {}).get("recipe") == recipe:
        try:
            load_checkpoint(path, trust_code=trust_code)  # verifies the weights
            log.info("reusing pretrained model %s", m.name)
            return path
        except CheckpointError as exc:
            log.warning("re-importing %s: %s", m.name, exc)
    shape, classes = tuple(train_set.input_shape), int(train_set.num_classes)
    if plain:
        model = load_model(
            src,
            architecture=m.architecture,
            input_shape=shape,
            num_classes=classes,
            kwargs=m.kwargs,
            normalize=m.normalize,
            trust_code=trust_code,
        )
        meta: dict[str, Any] = {}
    else:
        ckpt = load_checkpoint(src, sap=None, trust_code=trust_code)
        model, meta = ckpt.model, ckpt.metadata
        arch = meta["architecture"]
        if list(arch["input_shape"]) != list(shape) or int(arch["num_classes"]) != classes:
            raise ConfigError(
                f"models.{m.name}.checkpoint: {src} takes inputs {arch['input_shape']} with {arch['num_classes']} "
                f"classes, but {dataset} has {list(shape)} with {classes}"
            )
    if eval_set is not None:
        _warn_if_chance(m.name, model, eval_set, dataset)
    log.info("using pretrained %s from %s (no training)", m.name, src)
    save_checkpoint(
        model,
        path,
        training=meta.get("training"),
        dataset=dataset,
        metrics=meta.get("metrics"),
        extra={"recipe": recipe},
    )
    return path


def _warn_if_chance(name: str, model: torch.nn.Module, eval_set: Any, dataset: str) -> None:
    """Warn when pretrained weights classify at chance level: a preprocessing mismatch, most likely."""
    x, y = eval_set.images[:256], eval_set.labels[:256]
    with torch.no_grad():
        acc = float((model.eval()(x).argmax(1) == y).float().mean())
    classes = int(eval_set.num_classes)
    if acc < 1.5 / classes:
        warnings.warn(
            f"pretrained model {name!r} has clean accuracy {100 * acc:.1f}% on {dataset} ({classes} classes): near "
            "chance. Does it expect normalised inputs (normalize = {mean, std}, gametheory_defense.models.Normalize), "
            "another input scaling, or another class order?",
            stacklevel=3,
        )


def _train_models(
    config: RunConfig,
    out: Path | RunDirectory,
    train_set: Any,
    eval_set: Any,
    *,
    device: torch.device,
    resume: bool,
    progress: bool,
    trust_code: bool = False,
) -> dict[str, Path]:
    from gametheory_defense.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
    from gametheory_defense.models import build_model
    from gametheory_defense.training import train

    rd = out if isinstance(out, RunDirectory) else RunDirectory(out)
    models_dir = rd.directory("models")
    train_digest = data_digest(train_set.images, train_set.labels)
    paths: dict[str, Path] = {}
    for m in config.models:
        path = models_dir / m.name
        if m.checkpoint is not None:
            paths[m.name] = _pretrained(
                m, path, train_set, config.data.dataset, resume=resume, trust_code=trust_code, eval_set=eval_set
            )
            continue
        seed = m.seed if m.seed is not None else cell_seed(config.seed, "model", m.name)
        recipe = cache_keys.model_recipe(
            architecture=m.architecture,
            dataset=config.data.dataset,
            train_size=config.data.train_size,
            train_data=train_digest,
            seed=seed,
            training=m.training_kwargs(),
            kwargs=m.kwargs,
            normalize=m.normalize,
        )
        sidecar_path = checkpoint_paths(path)[1]  # NAME.json; names may contain dots ("pgd-at-0.3")
        sidecar = _read_json(sidecar_path)
        if resume and sidecar is not None:
            stored = (sidecar.get("extra") or {}).get("recipe")
            if stored == recipe:
                try:
                    load_checkpoint(path, trust_code=trust_code)  # verifies the sidecar's digest and the weights
                    log.info("reusing trained model %s", m.name)
                    paths[m.name] = path
                    continue
                except CheckpointError as exc:
                    log.warning("retraining %s: %s", m.name, exc)
            else:
                changed = ", ".join(cache_keys.identity_changes(stored, recipe))
                log.warning("%s: trained with another recipe (%s differ); retraining %s", sidecar_path, changed, m.name)
        gen = torch.Generator().manual_seed(seed)
        model = build_model(
            m.architecture,
            input_shape=tuple(train_set.input_shape),
            num_classes=train_set.num_classes,
            generator=gen,
            kwargs=m.kwargs or None,
            normalize=m.normalize,
            trust_code=trust_code,
        )
        log.info("training %s (%s, %s)", m.name, m.architecture, m.method)
        result = train(
            model,
            train_set,
            **m.training_kwargs(),
            device=device,
            generator=gen,
            eval_data=eval_set,
            progress=progress,
        )
        model.cpu()
        metrics = result.history[-1] if result.history else {}
        if dataclasses.is_dataclass(metrics):
            metrics = dataclasses.asdict(metrics)
        save_checkpoint(
            model,
            path,
            training=result.config(),
            dataset=config.data.dataset,
            metrics=dict(metrics),
            extra={"recipe": recipe},
        )
        paths[m.name] = path
    return paths


def defender_specs(config: RunConfig, model_paths: Mapping[str, Path], *, trust_code: bool = False) -> dict[str, Any]:
    """The game's defenders (rows) of ``config``: each base model and SAP at every configured rate.

    SAP defenders follow the activations of ``[defenders] sap_activations`` (ReLU by default).

    Parameters
    ----------
    config : RunConfig
    model_paths : Mapping[str, Path]
        Checkpoint of every base model by name (``OUT/models/NAME`` in a pipeline run).
    trust_code : bool, default False
        Passed to every spec: the checkpoints may name ``"package.module:Class"`` code.

    Returns
    -------
    dict[str, DefenderSpec]
        In the game's row order (:func:`~gametheory_defense.config.defender_names`).
    """
    from payoff.builder import DefenderSpec

    missing = [m.name for m in config.models if m.name not in model_paths]
    if missing:
        raise ConfigError(f"no checkpoint given for the model(s) {', '.join(missing)}")

    specs: dict[str, Any] = {}
    sap_models = config.defenders.sap_models
    acts = config.defenders.sap_activations
    for m in config.models:
        if config.defenders.include_base:
            specs[m.name] = DefenderSpec(m.name, model_paths[m.name], None, trust_code=trust_code)
        if sap_models is None or m.name in sap_models:
            for frac in config.defenders.sap_fracs:
                name = f"{m.name}+sap{frac:g}"
                sap = {"frac": float(frac), "mode": config.defenders.sap_mode, "layers": None}
                if acts != "relu":  # the default is left out, as sap_settings leaves it out
                    sap["activations"] = acts if isinstance(acts, str) else list(acts)
                specs[name] = DefenderSpec(name, model_paths[m.name], sap, trust_code=trust_code)
    assert list(specs) == defender_names(config)
    return specs


def _check_sap_sites(config: RunConfig, model_paths: Mapping[str, Path], *, trust_code: bool) -> None:
    """Refuse, naming the config key, base models without a call site of ``sap_activations``."""
    from gametheory_defense.checkpoint import load_checkpoint
    from gametheory_defense.sap import activation_sites

    if not config.defenders.sap_fracs:
        return
    acts = config.defenders.sap_activations
    for m in config.models:
        if config.defenders.sap_models is None or m.name in config.defenders.sap_models:
            model = load_checkpoint(model_paths[m.name], sap=None, trust_code=trust_code).model
            if not activation_sites(model, acts):
                raise ConfigError(
                    f"defenders.sap_activations: model {m.name!r} has no {acts} call site to put SAP after; "
                    "name the activations it uses (or leave it out of defenders.sap_models)"
                )


def load_defenders(specs: Mapping[str, Any], device: str | torch.device) -> dict[str, torch.nn.Module]:
    """Load every ``DefenderSpec`` of ``specs`` (SAP applied as the spec says) onto ``device``."""
    from gametheory_defense.checkpoint import load_checkpoint

    return {
        name: load_checkpoint(s.checkpoint, device=device, sap=s.sap, trust_code=getattr(s, "trust_code", False)).model
        for name, s in specs.items()
    }


# --------------------------------------------------------------------------- double oracle


def _run_double_oracle(
    config: RunConfig,
    out: RunDirectory,
    matrix: Any,
    defenders: dict[str, torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    progress: bool,
    train_set: Any = None,
) -> Any:
    """The double-oracle loop; with ``[double_oracle] defense_oracle`` it is PSRO.

    ``defenders`` gains every defender the defense oracle trains (by row name).
    """
    import time as _time

    from gametheory_defense.attacks import build_attack
    from gametheory_defense.double_oracle import OracleResponse, double_oracle
    from gametheory_defense.ensemble import MixedStrategyModel
    from gametheory_defense.stochastic import is_stochastic, use_generator
    from gametheory_defense.identity import canonical_json, cell_generator, mixture_identity, support_indices
    from payoff.builder import correctness, outcome_stats
    from payoff.store import PayoffStore

    do = config.double_oracle
    attack = build_attack(do.attack, **do.params)
    store = PayoffStore(out.directory("cells"))
    batch = config.game.batch_size
    digest = data_digest(x, y)
    identities: dict[str, str] = {}
    calls = {"n": 0}
    adv_rel = "double_oracle/adversarial"
    columns: dict[str, tuple[str, torch.Tensor | None]] = {}  # oracle column -> (mixture identity, examples)

    def identity_of(name: str) -> str:
        if name not in identities:
            identities[name] = defender_identity(defenders[name])
        return identities[name]

    def cell_of(model: torch.nn.Module, mixture_id: str) -> tuple[str, dict[str, Any], int]:
        draws = config.game.repeats if is_stochastic(model) else 1
        identity = cache_keys.double_oracle_cell_identity(
            defender=defender_identity(model),
            mixture=mixture_id,
            attack=attack.config(),
            data=digest,
            seed=config.seed,
            draws=draws,
            batch_size=batch,
        )
        return cache_keys.key_of(identity), identity, draws

    def evaluate_cell(model: torch.nn.Module, name: str, key: str, identity: dict[str, Any], draws: int,
                      x_adv: torch.Tensor) -> np.ndarray:
        outcomes = np.stack(
            [
                correctness(
                    model, x_adv, y.cpu(),
                    generator=cell_generator(config.seed, "double-oracle-eval", key, r),
                    batch_size=batch, device=str(device),
                )
                for r in range(draws)
            ]
        )
        store.put(key, outcomes, identity=identity, info={"defender": name, "attack": do.attack})
        return outcomes

    def crafted(mixture_id: str, members: list[str], weights: np.ndarray) -> torch.Tensor:
        """The oracle's adversarial examples against a mixture (kept in ``double_oracle/adversarial``)."""
        from safetensors.torch import load_file, save_file

        ident = {"mixture": mixture_id, "attack": attack.config(), "data": digest, "seed": config.seed, "batch_size": batch}
        rel = f"{adv_rel}/{cache_keys.key_of(ident)}.safetensors"
        path = out.path(rel)
        if path.exists():
            try:
                return load_file(str(path))["x_adv"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("recrafting %s (%s)", path, exc)
        mixture = MixedStrategyModel([defenders[n] for n in members], weights, names=members)
        gen = cell_generator(config.seed, "double-oracle", mixture_id, canonical_json(attack.config()))
        with use_generator(mixture, gen):
            x_adv = torch.cat(
                [attack(mixture, x[i : i + batch], y[i : i + batch], generator=gen).cpu() for i in range(0, len(y), batch)]
            )
        out.write_with(rel, lambda p: save_file({"x_adv": x_adv.contiguous()}, str(p)))
        return x_adv

    def attack_oracle(strategy: np.ndarray, current: Any) -> Any:
        """Best response: the attack crafted against the current mixture; one cell per defender."""
        calls["n"] += 1
        names = list(current.defenders)
        probs = np.asarray(strategy, dtype=float)
        support = support_indices(probs)
        weights = probs[support] / probs[support].sum()  # as the ensemble renormalises them
        mixture_id = mixture_identity([identity_of(names[i]) for i in support], weights, "per-example")
        cells = {d: cell_of(defenders[d], mixture_id) for d in names}
        records = {d: store.get(k, expected_shape=(dr, len(y))) for d, (k, _, dr) in cells.items()}
        x_adv = None
        if do.defense_oracle or any(r is None for r in records.values()):  # new rows need the examples
            x_adv = crafted(mixture_id, [names[i] for i in support], weights)
        for dname, (key, identity, draws) in cells.items():
            if records[dname] is None:
                evaluate_cell(defenders[dname], dname, key, identity, draws, x_adv)
        records = {d: store.get(k, expected_shape=(dr, len(y))) for d, (k, _, dr) in cells.items()}
        stats = [outcome_stats(records[d].outcomes) for d in names]
        name = f"do{calls['n']}-{do.attack}"
        columns[name] = (mixture_id, x_adv)
        return OracleResponse(
            name=name,
            payoffs=np.array([s[0] for s in stats]),
            stderr=np.array([s[1] for s in stats]),
            n_samples=np.array([s[2] for s in stats]),
            info={"attack": attack.config(), "mixture": mixture_id},
        )

    defense_oracle = None
    if do.defense_oracle is not None:
        from gametheory_defense.psro import pipeline_defense_oracle

        defense_oracle = pipeline_defense_oracle(
            config, out, defenders, (x, y), train_set, attack, columns, cell_of, evaluate_cell, store,
            device=device, progress=progress,
        )
    deadline = None if do.time_limit is None else _time.monotonic() + do.time_limit

    def callback(record: Any, eq: Any) -> bool:
        return deadline is not None and _time.monotonic() > deadline

    result = double_oracle(
        matrix,
        attack_oracle,
        defense_oracle,
        tol=do.tol,
        max_iterations=do.max_iterations,
        method=config.game.solver,
        select=config.game.select,
        callback=callback,
        progress=progress,
    )
    if defense_oracle is not None:
        from gametheory_defense.psro import oracle_log

        out.write_json("double_oracle/defense_oracle.json", oracle_log(defense_oracle, result))
    return result


# --------------------------------------------------------------------------- evaluation


def _evaluate_models(
    config: RunConfig,
    out: RunDirectory,
    models: Mapping[str, torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """Run the adaptive suite on every model (the mixture first) on the same examples.

    Each model's report is cached in ``robustness/NAME.json`` with its identity
    (:func:`~gametheory_defense.cache_keys.evaluation_identity`) and a digest over key and
    content; on resume it is reused only if both still match, else recomputed with a
    warning naming the file.
    """
    from gametheory_defense.evaluation import evaluate, suite

    ev = config.evaluation
    out.directory("robustness")
    digest = data_digest(x, y)
    start = config.data.eval_offset
    results: dict[str, Any] = {"threat_model": {"norm": ev.norm, "eps": ev.eps}}
    for name, model in models.items():
        # The suite adapts to the model: PGD/APGD (CE, CW, DLR) for deterministic models, EOT
        # versions for randomized ones, mixture-aware PGD and ARC for mixtures (docs/evaluation.md).
        attacks = suite(ev.suite, eps=ev.eps, norm=ev.norm, model=model)
        seed = cell_seed(config.seed, "evaluate", name)
        identity = cache_keys.evaluation_identity(
            model=defender_identity(model),
            attacks={k: a.config() for k, a in attacks.items()},
            eps=ev.eps,
            norm=ev.norm,
            suite=ev.suite,
            repeats=ev.repeats,
            draws=ev.draws,
            seed=seed,
            data=digest,
            data_range=[start, start + len(y)],
            batch_size=config.game.batch_size,
        )
        rel = f"robustness/{name}.json"
        report_dict = _cached_evaluation(out, rel, identity) if resume else None
        if report_dict is not None:
            log.info("reusing adaptive evaluation of %s", name)
        else:
            log.info("adaptive evaluation of %s", name)
            report = evaluate(
                model,
                (x, y),
                attacks,
                eps=ev.eps,
                norm=ev.norm,
                repeats=ev.repeats,
                draws=ev.draws,
                batch_size=config.game.batch_size,
                device=device,
                seed=seed,
                progress=progress,
            )
            report_dict = report.to_dict()
            key = cache_keys.key_of(identity)
            out.write_json(
                rel,
                {
                    "format": EVALUATION_FORMAT,
                    "key": key,
                    "identity": identity,
                    "report": report_dict,
                    "torch_threads": torch.get_num_threads(),
                    "digest": cache_keys.content_digest(key, {"identity": identity, "report": report_dict}),
                },
            )
        results[name] = {
            "clean_accuracy": report_dict["clean_accuracy"],
            "attacks": {a["name"]: a["accuracy"] for a in report_dict["attacks"]},
            "attacks_ci": {a["name"]: [a["ci_low"], a["ci_high"]] for a in report_dict["attacks"]},
            "worst_case_accuracy": report_dict["worst_case_accuracy"],
            "worst_case_ci": [report_dict["worst_case_ci_low"], report_dict["worst_case_ci_high"]],
            "worst_case_accuracy_all_draws": report_dict.get("worst_case_accuracy_all_draws"),
            "stochastic": report_dict.get("stochastic"),
            "n_examples": report_dict.get("n_examples"),
            "warnings": report_dict.get("warnings", []),
        }
    return results


def _cached_evaluation(out: RunDirectory, rel: str, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cached report at ``rel`` if it was computed for ``identity`` and is unedited, else ``None``."""
    path = out.path(rel)
    if not path.exists():
        return None
    cached = _read_json(path)
    key = cache_keys.key_of(identity)
    reason = None
    if not isinstance(cached, dict) or cached.get("format") != EVALUATION_FORMAT:
        reason = "not an evaluation cache of this version"
    elif cached.get("key") != key:
        changed = cache_keys.identity_changes(cached.get("identity"), identity)
        reason = f"computed for another configuration ({', '.join(changed)} differ)"
    elif cache_keys.key_of(cached.get("identity") or {}) != key or cached.get("digest") != cache_keys.content_digest(
        key, {"identity": cached.get("identity"), "report": cached.get("report")}
    ):
        reason = "edited or corrupt (its content does not match its digest)"
    if reason is not None:
        log.warning("%s: %s; recomputing", path, reason)
        return None
    return cached["report"]


# --------------------------------------------------------------------------- the pipeline


def _check_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not resume:
        raise ConfigError(f"--out {out}: directory is not empty; pass --resume to continue that run or choose a new one")


# Which outputs each part of the configuration feeds (to say what a changed config recomputes).
_FEEDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("seed", ("models", "payoff cells", "double oracle", "evaluations")),
    ("data.dataset", ("models", "payoff cells", "double oracle", "evaluations")),
    ("data.train_size", ("models", "payoff cells", "double oracle", "evaluations")),
    ("data.eval_", ("payoff cells", "double oracle", "evaluations")),
    ("models", ("models", "payoff cells", "double oracle", "evaluations")),
    ("defenders", ("payoff cells", "double oracle", "evaluations")),
    ("attackers", ("payoff cells", "double oracle", "evaluations")),
    ("game.solver", ("equilibrium", "double oracle", "evaluations")),
    ("game.select", ("equilibrium", "double oracle", "evaluations")),
    ("game.batch_size", ("payoff cells", "double oracle", "evaluations")),
    ("game.", ("payoff cells", "double oracle", "evaluations")),
    ("evaluation", ("evaluations",)),
    ("double_oracle", ("double oracle", "evaluations")),
)


def _recomputed(changes: Sequence[str]) -> list[str]:
    """The outputs a list of config changes (``"key: old -> new"``) recomputes, in pipeline order."""
    order = ["models", "payoff cells", "equilibrium", "double oracle", "evaluations"]
    hit: set[str] = set()
    for change in changes:
        key = change.split(":", 1)[0]
        for prefix, feeds in _FEEDS:
            if key.startswith(prefix):
                hit.update(feeds)
                if "payoff cells" in feeds:
                    hit.add("equilibrium")
                break
    return [o for o in order if o in hit]


def run_pipeline(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = "cpu",
    executor: str | None = None,
    data_dir: str | None = None,
    command: Sequence[str] | None = None,
    progress: bool = True,
    trust_code: bool = False,
) -> RunResult:
    """Train, build the payoff matrix, solve, save the ensemble, evaluate adaptively, report.

    The run holds an exclusive lock on ``out`` (a second process gets
    :class:`~gametheory_defense.rundir.RunLockedError`), writes only inside ``out`` and
    never through symbolic links, and reuses an artefact only when its cache key and
    digest match (``docs/reliability.md``).

    Parameters
    ----------
    config : RunConfig
        A validated configuration (:func:`gametheory_defense.config.load_config`).
    out : path
        Output directory; must be empty unless ``resume`` is true.
    resume : bool
        Reuse trained models, finished payoff cells and finished evaluations found in
        ``out`` (those computed for this configuration and unedited); a changed
        configuration is logged with what it recomputes.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    executor : {"serial", "ray"}, optional
        Overrides ``[game] executor``.
    data_dir : str, optional
        Overrides ``[data] data_dir``.
    command : sequence of str, optional
        The command line that reproduces this run (written into the report).
    progress : bool
        Show progress bars.
    trust_code : bool
        Allow importing models' architectures named as ``"package.module:Class"`` that are
        not registered (``--trust-code``); without it such a configuration fails before
        any work.
    """
    out = Path(out)
    dev = resolve_device(device)
    if executor is not None:
        config = dataclasses.replace(config, game=dataclasses.replace(config.game, executor=executor))
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=data_dir))
    _check_architectures(config, trust_code=trust_code)
    _check_out_dir(out, resume)
    rd = RunDirectory(out)
    shown = " ".join(command) if command else reproduce_command()
    with rd.lock(command=shown):
        _check_out_dir(out, resume)  # again, now that no other process can write
        return _run_locked(
            config, rd, resume=resume, dev=dev, command=command, progress=progress, trust_code=trust_code
        )


def _run_locked(
    config: RunConfig,
    rd: RunDirectory,
    *,
    resume: bool,
    dev: torch.device,
    command: Sequence[str] | None,
    progress: bool,
    trust_code: bool,
) -> RunResult:
    from gametheory_defense.data import load_dataset
    from gametheory_defense.ensemble import MixedStrategyModel
    from gametheory_defense.plots import plot_convergence, plot_payoff
    from gametheory_defense.solvers import solve_zero_sum
    from payoff.builder import build_payoff_matrix

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    out = rd.root
    env = environment()
    previous_env = rd.previous_environment()
    changes = rd.record_config(config.to_dict(), command=" ".join(command) if command else None, environment=env)
    if resume and changes:
        log.warning("resume: the configuration changed since the last run: %s", "; ".join(changes))
        log.warning(
            "resume: recomputing what depends on it: %s (the rest is reused)", ", ".join(_recomputed(changes)) or "nothing"
        )
    if resume and previous_env and previous_env.get("torch_threads") not in (None, env["torch_threads"]):
        log.warning(
            "resume: this directory was written with %s torch threads, this process uses %s; reused models and "
            "results are those of %s threads (a fresh run may differ in the last bits: docs/reliability.md)",
            previous_env["torch_threads"], env["torch_threads"], previous_env["torch_threads"],
        )
    for sub in ("ensemble", "ensemble_double_oracle"):  # a linked sub-directory is refused before any work
        if (out / sub).is_symlink():
            raise ConfigError(
                f"{out / sub}: is a symbolic link; a run directory's sub-directories must be its own "
                "(remove the link, or copy what it points to into place)"
            )

    # 1. data and base models
    t = time.perf_counter()
    d = config.data
    train_set = load_dataset(d.dataset, "train", data_dir=d.data_dir, download=d.download)
    test_set = load_dataset(d.dataset, "test", data_dir=d.data_dir, download=d.download)
    if d.train_size is not None:
        train_set = train_set.subset(min(d.train_size, len(train_set)))
    if d.eval_offset + d.eval_size > len(test_set):
        raise ConfigError(
            f"data.eval_size: {d.eval_offset}+{d.eval_size} exceeds the {len(test_set)} test images of {d.dataset}"
        )
    idx = list(range(d.eval_offset, d.eval_offset + d.eval_size))
    eval_set = test_set.subset(idx)
    x_eval, y_eval = eval_set.images, eval_set.labels
    model_paths = _train_models(
        config, rd, train_set, eval_set, device=dev, resume=resume, progress=progress, trust_code=trust_code
    )
    seconds["train"] = time.perf_counter() - t

    # 2. payoff matrix
    t = time.perf_counter()
    specs = defender_specs(config, model_paths, trust_code=trust_code)
    _check_sap_sites(config, model_paths, trust_code=trust_code)
    from gametheory_defense.attacks import build_attack

    attackers = {a.name: build_attack(a.attack, **a.params) for a in config.attackers}
    ray_options = (
        {"num_gpus": config.game.ray_num_gpus, "address": config.game.ray_address}
        if config.game.executor == "ray"
        else None
    )
    store = rd.directory("cells")
    for sub in ("cells/cells", "cells/runs"):
        rd.directory(sub)
    matrix = build_payoff_matrix(
        specs,
        attackers,
        (x_eval, y_eval),
        formulation=config.game.formulation,
        sources=config.game.sources,
        repeats=config.game.repeats,
        seed=config.seed,
        store=store,
        executor=config.game.executor,
        ray_options=ray_options,
        batch_size=config.game.batch_size,
        device=str(dev),
        progress=progress,
    )
    rd.write_with("payoff.json", matrix.to_json)
    with warnings.catch_warnings():  # the CSV is the values-only view; payoff.json keeps everything
        warnings.simplefilter("ignore", UserWarning)
        rd.write_with("payoff.csv", matrix.to_csv)
    seconds["payoff"] = time.perf_counter() - t

    # 3. solve, plot, ensemble
    t = time.perf_counter()
    eq = solve_zero_sum(matrix, config.game.solver, select=config.game.select)
    rd.write_json("equilibrium.json", eq.to_dict())
    fig = plot_payoff(matrix, eq)
    rd.write_with("payoff.png", lambda p: fig.savefig(p, dpi=120, bbox_inches="tight"))
    _close(fig)
    defenders = load_defenders(specs, dev)
    ensemble = _ensemble(eq, defenders, config)
    ensemble.save(out / "ensemble", overwrite=True)
    seconds["solve"] = time.perf_counter() - t

    # 4. double oracle
    do_result = None
    do_defenders = dict(defenders)  # gains the defenders a defense oracle trains
    if config.double_oracle.enabled:
        t = time.perf_counter()
        do_result = _run_double_oracle(
            config, rd, matrix, do_defenders, x_eval, y_eval, device=dev, progress=progress, train_set=train_set
        )
        rd.write_with("double_oracle_payoff.json", do_result.matrix.to_json)
        rd.write_json("double_oracle.json", _do_summary(do_result))
        fig = plot_convergence(do_result.history)
        rd.write_with("double_oracle.png", lambda p: fig.savefig(p, dpi=120, bbox_inches="tight"))
        _close(fig)
        do_rows = {k: do_defenders[k] for k in do_result.matrix.defenders}
        do_ensemble = _ensemble(do_result.equilibrium, do_rows, config)
        do_ensemble.save(out / "ensemble_double_oracle", overwrite=True)
        seconds["double_oracle"] = time.perf_counter() - t

    # 5. adaptive evaluation on the same examples
    robustness = None
    if config.evaluation.enabled:
        t = time.perf_counter()
        n_eval = config.evaluation.size or len(y_eval)
        n_eval = min(n_eval, len(y_eval))
        models: dict[str, torch.nn.Module] = {"mixture": ensemble}
        if do_result is not None and (do_result.added_attackers or do_result.added_defenders):
            models["mixture-double-oracle"] = _ensemble(
                do_result.equilibrium, {k: do_defenders[k] for k in do_result.matrix.defenders}, config
            )
        wanted = config.evaluation.models
        models.update({k: v for k, v in defenders.items() if wanted is None or k in wanted})
        if do_result is not None:  # defenders trained by the defense oracle: candidates for the best one seen
            models.update({k: do_defenders[k] for k in do_result.added_defenders})
        robustness = _evaluate_models(
            config, rd, models, x_eval[:n_eval], y_eval[:n_eval], device=dev, resume=resume, progress=progress
        )
        rd.write_json("robustness.json", robustness)
        seconds["evaluation"] = time.perf_counter() - t

    seconds["total"] = time.perf_counter() - t_start
    from gametheory_defense.report import render_report

    rd.write_text(
        "report.md",
        render_report(
            config=config,
            matrix=matrix,
            equilibrium=eq,
            robustness=robustness,
            double_oracle=do_result,
            seconds=seconds,
            device=str(dev),
            command=list(command) if command is not None else None,
        ),
    )
    return RunResult(out=out, matrix=matrix, equilibrium=eq, robustness=robustness, double_oracle=do_result, seconds=seconds)


def _ensemble(eq: Any, defenders: Mapping[str, torch.nn.Module], config: RunConfig) -> Any:
    """The equilibrium mixture, recording the data set and threat model it was built for.

    ``gtdefense evaluate OUT/ensemble`` reads the data set from here.
    """
    from gametheory_defense.ensemble import MixedStrategyModel

    ensemble = MixedStrategyModel.from_equilibrium(eq, defenders, atol=SUPPORT_TOL)
    d, ev = config.data, config.evaluation
    ensemble.metadata.update(
        {
            "dataset": d.dataset,
            "threat_model": {"norm": ev.norm, "eps": ev.eps},
            "data": {"split": "test", "offset": d.eval_offset, "size": d.eval_size},
            "run": config.name,
        }
    )
    return ensemble


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _do_summary(result: Any) -> dict[str, Any]:
    return {
        "initial_value": float(result.initial_value),
        "final_value": float(result.equilibrium.value),
        "converged": bool(result.converged),
        "stop_reason": result.stop_reason,
        "added_attackers": list(result.added_attackers),
        "added_defenders": list(result.added_defenders),
        "history": [dataclasses.asdict(h) if dataclasses.is_dataclass(h) else dict(h) for h in result.history],
        "equilibrium": result.equilibrium.to_dict(),
    }
