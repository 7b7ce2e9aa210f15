"""PSRO (Lanctot et al., 2017) on the defense game against PGD-AT trained for the same compute.

Runs the pipeline with a defense oracle (``examples/mnist_psro.toml`` on CPU,
``examples/mnist_psro_gpu.toml`` on a GPU), then trains PGD-AT (Madry et al., 2018) for as
many PGD-AT epochs as the run spent training (its base PGD-AT model plus every defense-oracle
call; standard training is counted at 1/(attack_steps+1) of a PGD-AT epoch and rounded up),
and evaluates, under the adaptive suite and paired on the same test images:

- the final PSRO mixture,
- PGD-AT trained for the same compute,
- the base PGD-AT model, the final mixture's members and every defender the oracle added
  (the best single defender seen is the best of them).

Writes ``results.md`` and ``results.json`` into ``--out``. Every step is resumable: rerun
the same command to continue.

    python benchmarks/psro_mnist.py --config examples/mnist_psro.toml \\
        --data-dir ../shared/data/mnist --out runs/psro-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_claim import paired, paired_difference  # noqa: E402  (shared paired evaluation)

from gametheory_defense.config import load_config  # noqa: E402
from gametheory_defense.evaluation import wilson_interval  # noqa: E402
from gametheory_defense.pipeline import cell_seed, environment, run_pipeline  # noqa: E402
from gametheory_defense.report import pct  # noqa: E402


def psro_epochs(config, run_out: Path) -> tuple[float, int, float]:
    """(PGD-AT-equivalent training epochs of the run, epochs to train the baseline, training seconds)."""
    calls = json.loads((run_out / "double_oracle" / "defense_oracle.json").read_text())["calls"]
    oracle_epochs = sum(len(c["epochs"]) for c in calls)
    seconds = sum(e["seconds"] for c in calls for e in c["epochs"])
    steps = next((m.attack_steps for m in config.models if m.method == "pgd-at"), 10)
    base = 0.0
    for m in config.models:
        meta = json.loads((run_out / "models" / f"{m.name}.json").read_text())
        base += m.epochs if m.method == "pgd-at" else m.epochs / (steps + 1)
        # the checkpoint keeps the last epoch's statistics: its time x epochs
        seconds += float((meta.get("metrics") or {}).get("seconds", 0.0)) * m.epochs
    total = base + oracle_epochs
    return total, math.ceil(total - 1e-9), seconds


def train_baseline(config, out: Path, epochs: int, device: torch.device, progress: bool):
    """The run's base PGD-AT model trained on for ``epochs`` more PGD-AT epochs (reused when already trained).

    Its total training is then the base model's epochs plus ``epochs``: the same number of
    PGD-AT epochs as the PSRO run when ``epochs`` is the oracle's total.
    """
    from gametheory_defense.checkpoint import load_checkpoint, read_metadata, save_checkpoint, weights_digest
    from gametheory_defense.data import load_dataset
    from gametheory_defense.errors import CheckpointError
    from gametheory_defense.training import train

    m = next(m for m in config.models if m.method == "pgd-at")
    base = load_checkpoint(out / "run" / "models" / m.name, device=device).model
    path = out / "baseline" / "pgd-at-same-compute"
    recipe = {"base": weights_digest(base), "epochs": epochs, "train_size": config.data.train_size,
              "seed": config.seed}
    try:
        meta = read_metadata(path)
        if (meta.get("extra") or {}).get("recipe") == json.loads(json.dumps(recipe)):
            return load_checkpoint(path, device=device).model, meta["extra"]["seconds"]
    except CheckpointError:
        pass
    d = config.data
    train_set = load_dataset(d.dataset, "train", data_dir=d.data_dir)
    if d.train_size is not None:
        train_set = train_set.subset(min(d.train_size, len(train_set)))
    gen = torch.Generator().manual_seed(cell_seed(config.seed, "psro-baseline", m.name))
    res = train(base, train_set, method="pgd-at", epochs=epochs, eps=m.eps, attack_steps=m.attack_steps,
                step_size=m.step_size, batch_size=m.batch_size, lr=m.lr, optimizer=m.optimizer,
                weight_decay=m.weight_decay, device=device, generator=gen, progress=progress)
    save_checkpoint(base.cpu(), path, training=res.config(), dataset=d.dataset,
                    extra={"recipe": recipe, "seconds": res.seconds, "base_epochs": m.epochs})
    return base.to(device), res.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/mnist_psro.toml")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=1000, help="test images of the paired evaluation")
    parser.add_argument("--defense-oracle", choices=("pgd-at", "sap", "boost"), default=None,
                        help="override [double_oracle] defense_oracle")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    progress = not args.no_progress
    config = load_config(args.config)
    if args.data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=args.data_dir))
    if args.defense_oracle is not None:
        config = dataclasses.replace(
            config, double_oracle=dataclasses.replace(config.double_oracle, defense_oracle=args.defense_oracle)
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    run = run_pipeline(config, out / "run", resume=True, device=args.device, progress=progress,
                       command=["python", "benchmarks/psro_mnist.py", *sys.argv[1:]])
    times["psro run (train, game, PSRO rounds)"] = time.perf_counter() - t0
    do = run.double_oracle
    total, base_epochs, train_seconds = psro_epochs(config, out / "run")
    at_epochs = next(m.epochs for m in config.models if m.method == "pgd-at")

    t = time.perf_counter()
    _, baseline_seconds = train_baseline(config, out, max(1, base_epochs - at_epochs), device, progress)
    times["baseline PGD-AT training"] = time.perf_counter() - t

    from gametheory_defense.checkpoint import load_checkpoint
    from gametheory_defense.ensemble import MixedStrategyModel

    loaders = {
        "psro-mixture": lambda: MixedStrategyModel.load(out / "run" / "ensemble_double_oracle", device=str(device)),
        "pgd-at-same-compute": lambda: load_checkpoint(out / "baseline" / "pgd-at-same-compute", device=device).model,
    }
    ens = MixedStrategyModel.load(out / "run" / "ensemble_double_oracle", device=str(device))
    for name, member, p in zip(ens.names, ens.members, ens.strategy):
        if p > 0 and name != "standard":
            loaders[name] = (lambda mm=member: mm)
    for m in config.models:
        if m.method == "pgd-at" and m.name not in loaders:
            loaders[m.name] = (lambda p=out / "run" / "models" / m.name: load_checkpoint(p, device=device).model)
    for name in do.added_defenders:
        if name not in loaders:
            path = out / "run" / "double_oracle" / "defenders" / name / "model"
            loaders[name] = (lambda p=path: load_checkpoint(p, device=device).model)
    from gametheory_defense.identity import defender_identity

    t = time.perf_counter()
    # cached evaluations are reused only for the very same model (a retrained baseline is evaluated again)
    keys = {name: defender_identity(load()) for name, load in loaders.items()}
    results = paired(config, device, loaders, args.n, out / "paired.json", progress, keys=keys)
    times["paired adaptive evaluation"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0

    singles = [k for k in results if k not in ("psro-mixture", "pgd-at-same-compute")]  # defenders seen
    best = max(singles, key=lambda k: results[k]["worst_case_accuracy"])
    diffs = {}
    for other in dict.fromkeys(["pgd-at-same-compute", best]):
        diffs[other] = paired_difference(results["psro-mixture"]["per_example"], results[other]["per_example"])

    lines = [
        f"# PSRO on {config.data.dataset}: `{args.config}`",
        "",
        f"Game: {len(run.matrix.defenders)} defenders x {len(run.matrix.attackers)} attackers on {config.data.eval_size} "
        f"test images; PSRO rounds: {len(do.history)} (stopped: {do.stop_reason}); defense oracle "
        f"`{config.double_oracle.defense_oracle}` ({config.double_oracle.defense.epochs} epochs per call), attack "
        f"oracle `{config.double_oracle.attack}`.",
        "",
        "| iteration | game size | value | lower bound (estimate) | upper bound (estimate) | added attacker | added defender |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in do.history:
        lines.append(f"| {h.iteration} | {h.n_defenders}x{h.n_attackers} | {pct(h.value)} | {pct(h.lower_bound)} | "
                     f"{pct(h.upper_bound)} | {h.added_attacker or '-'} | {h.added_defender or '-'} |")
    support = ", ".join(f"`{n}` {p:.3f}" for n, p in zip(ens.names, ens.strategy) if p > 0)
    lines += [
        "",
        f"Final mixture: {support}.",
        "",
        f"Training compute: the PSRO run trained {total:.2f} PGD-AT-equivalent epochs ({train_seconds:.0f} s of "
        f"training); the baseline is the run's PGD-AT model trained on for {base_epochs - at_epochs} more epochs "
        f"({base_epochs} in all; the extra ones took {baseline_seconds:.0f} s). Crafting the attack oracle's "
        "columns and scoring new rows is not counted.",
        "",
        f"Adaptive suite `{config.evaluation.suite}` (L-inf eps {config.evaluation.eps}), per-example worst case over "
        f"clean and every attack, first {args.n} test images (95% Wilson intervals):",
        "",
        "| model | clean | worst case | 95% CI |",
        "| --- | --- | --- | --- |",
    ]
    for k, r in results.items():
        lo, hi = wilson_interval(r["worst_case_accuracy"], args.n)
        lines.append(f"| `{k}` | {pct(r['clean'])} | {pct(r['worst_case_accuracy'])} | [{pct(lo)}, {pct(hi)}] |")
    lines += ["", "Paired differences (PSRO mixture minus the other model, same images, normal 95% interval):", ""]
    for other, (mean, lo, hi) in diffs.items():
        lines.append(f"- minus `{other}`: {100 * mean:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}]")
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ".", "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in environment().items()) + ".", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    summary = {
        "config": args.config,
        "history": [dataclasses.asdict(h) for h in do.history],
        "stop_reason": do.stop_reason,
        "final_mixture": {n: float(p) for n, p in zip(ens.names, ens.strategy)},
        "psro_pgd_at_equivalent_epochs": total,
        "psro_training_seconds": train_seconds,
        "baseline_epochs": base_epochs,
        "baseline_training_seconds": baseline_seconds,
        "n": args.n,
        "results": {k: {kk: vv for kk, vv in r.items() if kk != "per_example"} for k, r in results.items()},
        "paired_differences": {k: {"mean": v[0], "ci": [v[1], v[2]]} for k, v in diffs.items()},
        "seconds": times,
        "environment": environment(),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
