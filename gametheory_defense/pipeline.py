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
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gametheory_defense import __version__
from gametheory_defense.config import RunConfig, defender_names
from gametheory_defense.errors import CheckpointError, ConfigError
from gametheory_defense.identity import cell_seed, defender_identity

__all__ = ["RunResult", "run_pipeline", "resolve_device", "defender_specs", "load_defenders"]

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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- training


def _training_kwargs(m: Any) -> dict[str, Any]:
    return {
        "method": m.method,
        "epochs": m.epochs,
        "eps": m.eps,
        "attack_steps": m.attack_steps,
        "step_size": m.step_size,
        "eps_warmup_epochs": m.eps_warmup_epochs,
        "batch_size": m.batch_size,
        "lr": m.lr,
        "optimizer": m.optimizer,
        "weight_decay": m.weight_decay,
    }


def _train_models(
    config: RunConfig, out: Path, train_set: Any, eval_set: Any, *, device: torch.device, resume: bool, progress: bool
) -> dict[str, Path]:
    from gametheory_defense.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
    from gametheory_defense.models import build_model
    from gametheory_defense.training import train

    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for m in config.models:
        path = models_dir / m.name
        seed = m.seed if m.seed is not None else cell_seed(config.seed, "model", m.name)
        recipe = {
            "architecture": m.architecture,
            "dataset": config.data.dataset,
            "train_size": config.data.train_size,
            "seed": seed,
            **_training_kwargs(m),
        }
        sidecar = _read_json(checkpoint_paths(path)[1])  # NAME.json; names may contain dots ("pgd-at-0.3")
        if resume and sidecar is not None and (sidecar.get("extra") or {}).get("recipe") == recipe:
            try:
                load_checkpoint(path)  # verifies the weights
                log.info("reusing trained model %s", m.name)
                paths[m.name] = path
                continue
            except CheckpointError as exc:
                log.warning("retraining %s: %s", m.name, exc)
        gen = torch.Generator().manual_seed(seed)
        model = build_model(
            m.architecture, input_shape=tuple(train_set.input_shape), num_classes=train_set.num_classes, generator=gen
        )
        log.info("training %s (%s, %s)", m.name, m.architecture, m.method)
        result = train(
            model,
            train_set,
            **_training_kwargs(m),
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


def defender_specs(config: RunConfig, model_paths: Mapping[str, Path]) -> dict[str, Any]:
    """The game's defenders (rows) of ``config``: each base model and SAP at every configured rate.

    Parameters
    ----------
    config : RunConfig
    model_paths : Mapping[str, Path]
        Checkpoint of every base model by name (``OUT/models/NAME`` in a pipeline run).

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
    for m in config.models:
        if config.defenders.include_base:
            specs[m.name] = DefenderSpec(m.name, model_paths[m.name], None)
        if sap_models is None or m.name in sap_models:
            for frac in config.defenders.sap_fracs:
                name = f"{m.name}+sap{frac:g}"
                sap = {"frac": float(frac), "mode": config.defenders.sap_mode, "layers": None}
                specs[name] = DefenderSpec(name, model_paths[m.name], sap)
    assert list(specs) == defender_names(config)
    return specs


def load_defenders(specs: Mapping[str, Any], device: str | torch.device) -> dict[str, torch.nn.Module]:
    """Load every ``DefenderSpec`` of ``specs`` (SAP applied as the spec says) onto ``device``."""
    from gametheory_defense.checkpoint import load_checkpoint

    return {name: load_checkpoint(s.checkpoint, device=device, sap=s.sap).model for name, s in specs.items()}


# --------------------------------------------------------------------------- double oracle


def _run_double_oracle(
    config: RunConfig,
    out: Path,
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
    from gametheory_defense.identity import (
        canonical_json,
        cell_generator,
        data_digest,
        mixture_identity,
        support_indices,
    )
    from payoff.builder import correctness, outcome_stats
    from payoff.store import PayoffStore, cell_key

    do = config.double_oracle
    attack = build_attack(do.attack, **do.params)
    store = PayoffStore(out / "cells")
    batch = config.game.batch_size
    digest = data_digest(x, y)
    identities: dict[str, str] = {}
    calls = {"n": 0}
    adv_dir = out / "double_oracle" / "adversarial"
    columns: dict[str, tuple[str, torch.Tensor | None]] = {}  # oracle column -> (mixture identity, examples)

    def identity_of(name: str) -> str:
        if name not in identities:
            identities[name] = defender_identity(defenders[name])
        return identities[name]

    def cell_of(model: torch.nn.Module, mixture_id: str) -> tuple[str, dict[str, Any], int]:
        draws = config.game.repeats if is_stochastic(model) else 1
        identity = {
            "kind": "double-oracle",
            "defender": defender_identity(model),
            "mixture": mixture_id,
            "attack": attack.config(),
            "data": digest,
            "seed": config.seed,
            "draws": draws,
            "batch_size": batch,
        }
        return cell_key(identity), identity, draws

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

        path = adv_dir / f"{cell_key({'mixture': mixture_id, 'attack': attack.config(), 'data': digest, 'seed': config.seed, 'batch_size': batch})}.safetensors"
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
        adv_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"x_adv": x_adv.contiguous()}, str(tmp))
        os.replace(tmp, path)
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
        from gametheory_defense.psro import write_oracle_log

        write_oracle_log(out / "double_oracle" / "defense_oracle.json", defense_oracle, result)
    return result


# --------------------------------------------------------------------------- evaluation


def _evaluate_models(
    config: RunConfig,
    out: Path,
    models: Mapping[str, torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """Run the adaptive suite on every model (the mixture first) on the same examples."""
    from gametheory_defense.evaluation import evaluate, suite

    ev = config.evaluation
    cache_dir = out / "robustness"
    cache_dir.mkdir(exist_ok=True)
    results: dict[str, Any] = {"threat_model": {"norm": ev.norm, "eps": ev.eps}}
    reports: dict[str, Any] = {}
    for name, model in models.items():
        # The suite adapts to the model: PGD/APGD (CE, CW, DLR) for deterministic models, EOT
        # versions for randomized ones, mixture-aware PGD and ARC for mixtures (docs/evaluation.md).
        target = model
        attacks = suite(ev.suite, eps=ev.eps, norm=ev.norm, model=target)
        key_src = json.dumps(
            {
                "model": defender_identity(target),
                "attacks": {k: a.config() for k, a in attacks.items()},
                "repeats": ev.repeats,
                **({"draws": ev.draws} if ev.draws != 1 else {}),
                "seed": config.seed,
                "n": len(y),
            },
            sort_keys=True,
        )
        cache = cache_dir / f"{name}.json"
        cached = _read_json(cache) if resume else None
        if cached is not None and cached.get("key_src") == key_src:
            log.info("reusing adaptive evaluation of %s", name)
            report_dict = cached["report"]
        else:
            log.info("adaptive evaluation of %s", name)
            report = evaluate(
                target,
                (x, y),
                attacks,
                eps=ev.eps,
                norm=ev.norm,
                repeats=ev.repeats,
                draws=ev.draws,
                batch_size=config.game.batch_size,
                device=device,
                seed=cell_seed(config.seed, "evaluate", name),
                progress=progress,
            )
            report_dict = report.to_dict()
            _write_json(cache, {"key_src": key_src, "report": report_dict})
        reports[name] = report_dict
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


# --------------------------------------------------------------------------- the pipeline


def _check_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"--out {out}: directory is not empty; pass --resume to continue that run or choose a new one")
    out.mkdir(parents=True, exist_ok=True)


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
) -> RunResult:
    """Train, build the payoff matrix, solve, save the ensemble, evaluate adaptively, report.

    Parameters
    ----------
    config : RunConfig
        A validated configuration (:func:`gametheory_defense.config.load_config`).
    out : path
        Output directory; must be empty unless ``resume`` is true.
    resume : bool
        Reuse trained models, finished payoff cells and finished evaluations found in ``out``.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    executor : {"serial", "ray"}, optional
        Overrides ``[game] executor``.
    data_dir : str, optional
        Overrides ``[data] data_dir``.
    command : sequence of str, optional
        The command line that reproduces this run (written into the report).
    """
    from gametheory_defense.data import load_dataset
    from gametheory_defense.ensemble import MixedStrategyModel
    from gametheory_defense.plots import plot_convergence, plot_payoff
    from gametheory_defense.solvers import solve_zero_sum
    from payoff.builder import build_payoff_matrix

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(out)
    dev = resolve_device(device)
    _check_out_dir(out, resume)
    if executor is not None:
        config = dataclasses.replace(config, game=dataclasses.replace(config.game, executor=executor))
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=data_dir))
    _write_json(out / "config.json", config.to_dict())

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
    model_paths = _train_models(config, out, train_set, eval_set, device=dev, resume=resume, progress=progress)
    seconds["train"] = time.perf_counter() - t

    # 2. payoff matrix
    t = time.perf_counter()
    specs = defender_specs(config, model_paths)
    from gametheory_defense.attacks import build_attack

    attackers = {a.name: build_attack(a.attack, **a.params) for a in config.attackers}
    ray_options = (
        {"num_gpus": config.game.ray_num_gpus, "address": config.game.ray_address}
        if config.game.executor == "ray"
        else None
    )
    matrix = build_payoff_matrix(
        specs,
        attackers,
        (x_eval, y_eval),
        formulation=config.game.formulation,
        sources=config.game.sources,
        repeats=config.game.repeats,
        seed=config.seed,
        store=out / "cells",
        executor=config.game.executor,
        ray_options=ray_options,
        batch_size=config.game.batch_size,
        device=str(dev),
        progress=progress,
    )
    matrix.to_json(out / "payoff.json")
    with warnings.catch_warnings():  # the CSV is the values-only view; payoff.json keeps everything
        warnings.simplefilter("ignore", UserWarning)
        matrix.to_csv(out / "payoff.csv")
    seconds["payoff"] = time.perf_counter() - t

    # 3. solve, plot, ensemble
    t = time.perf_counter()
    eq = solve_zero_sum(matrix, config.game.solver, select=config.game.select)
    _write_json(out / "equilibrium.json", eq.to_dict())
    fig = plot_payoff(matrix, eq)
    fig.savefig(out / "payoff.png", dpi=120, bbox_inches="tight")
    _close(fig)
    defenders = load_defenders(specs, dev)
    ensemble = MixedStrategyModel.from_equilibrium(eq, defenders)
    ensemble.save(out / "ensemble", overwrite=True)
    seconds["solve"] = time.perf_counter() - t

    # 4. double oracle
    do_result = None
    do_defenders = dict(defenders)  # gains the defenders a defense oracle trains
    if config.double_oracle.enabled:
        t = time.perf_counter()
        do_result = _run_double_oracle(
            config, out, matrix, do_defenders, x_eval, y_eval, device=dev, progress=progress, train_set=train_set
        )
        do_result.matrix.to_json(out / "double_oracle_payoff.json")
        _write_json(out / "double_oracle.json", _do_summary(do_result))
        fig = plot_convergence(do_result.history)
        fig.savefig(out / "double_oracle.png", dpi=120, bbox_inches="tight")
        _close(fig)
        do_rows = {k: do_defenders[k] for k in do_result.matrix.defenders}
        do_ensemble = MixedStrategyModel.from_equilibrium(do_result.equilibrium, do_rows)
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
            models["mixture-double-oracle"] = MixedStrategyModel.from_equilibrium(
                do_result.equilibrium, {k: do_defenders[k] for k in do_result.matrix.defenders}
            )
        wanted = config.evaluation.models
        models.update({k: v for k, v in defenders.items() if wanted is None or k in wanted})
        if do_result is not None:  # defenders trained by the defense oracle: candidates for the best one seen
            models.update({k: do_defenders[k] for k in do_result.added_defenders})
        robustness = _evaluate_models(
            config, out, models, x_eval[:n_eval], y_eval[:n_eval], device=dev, resume=resume, progress=progress
        )
        _write_json(out / "robustness.json", robustness)
        seconds["evaluation"] = time.perf_counter() - t

    seconds["total"] = time.perf_counter() - t_start
    from gametheory_defense.report import write_report

    write_report(
        out / "report.md",
        config=config,
        matrix=matrix,
        equilibrium=eq,
        robustness=robustness,
        double_oracle=do_result,
        seconds=seconds,
        device=str(dev),
        command=list(command) if command is not None else None,
    )
    return RunResult(out=out, matrix=matrix, equilibrium=eq, robustness=robustness, double_oracle=do_result, seconds=seconds)


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


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Library and machine versions recorded in reports.

    ``torch_cpu_capability`` is the vector instruction set torch's CPU kernels use (AVX2,
    AVX512, ...): gradients, hence trained weights and attacks, differ in their last bits
    between them, so bit-for-bit reproduction needs the same one (docs/results.md).
    """
    cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return {
        "gametheory-defense": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "torch_cpu_capability": cap() if cap is not None else "unknown",
        "cpu_count": str(os.cpu_count()),
    }


def reproduce_command(argv: Sequence[str] | None = None) -> str:
    """The shell command that reproduces the current invocation."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "gtdefense " + " ".join(shlex.quote(a) for a in args)
