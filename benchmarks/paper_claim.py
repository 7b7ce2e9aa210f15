"""Measure the source paper's claim (mixture beats PGD-AT by ~6-7 points) under both protocols.

Runs the pipeline on a configuration (``examples/mnist_paper.toml`` on CPU,
``examples/mnist_paper_full.toml`` on a GPU) in both game formulations on the same models
and images, adds robustness-versus-eps curves for the equilibrium mixture and every PGD-AT
model under the adaptive suite, and writes ``results.md`` / ``results.json`` and the
figures into ``--out``. Every step is resumable: rerun the same command to continue.

    python benchmarks/paper_claim.py --config examples/mnist_paper.toml \
        --data-dir ../shared/data/mnist --out runs/paper-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gametheory_defense.config import defender_names, load_config
from gametheory_defense.identity import support_indices
from gametheory_defense.pipeline import cell_seed, run_pipeline
from gametheory_defense.provenance import environment
from gametheory_defense.report import pct
from gametheory_defense.stats import game_value_stderr, normal_interval, per_example_worst_case, robustness_curve
from gametheory_defense.stats import paired_difference as _paired_difference
from gametheory_defense.stats import strategy_stderr as _strategy_stderr


def value_stderr(matrix, eq) -> float:
    """Standard error of the game value (:func:`gametheory_defense.stats.game_value_stderr`)."""
    return game_value_stderr(matrix, eq)


def strategy_stderr(matrix, x, cols) -> float:
    """Largest standard error of ``(x A)_j`` over the columns ``cols`` (:mod:`gametheory_defense.stats`)."""
    if matrix.stderr is None:
        return float("nan")
    return _strategy_stderr(matrix.stderr, x, cols)


def ci(acc: float, se: float) -> str:
    iv = normal_interval(acc, se)
    if not math.isfinite(iv.low):
        return "n/a"
    return f"[{pct(iv.low)}, {pct(iv.high)}]"


def ci_pair(pair) -> str:
    return f"[{pct(pair[0])}, {pct(pair[1])}]"


def eps_curve(result, config, device, eps_list, out: Path, progress: bool) -> dict:
    """Adaptive-suite worst case of the mixture and of every PGD-AT defender at each eps."""
    from gametheory_defense.checkpoint import load_checkpoint
    from gametheory_defense.data import load_dataset
    from gametheory_defense.ensemble import MixedStrategyModel
    from gametheory_defense.evaluation import evaluate, suite

    cache = out / "eps_curve.json"
    curves = json.loads(cache.read_text()) if cache.exists() else {}
    d = config.data
    test = load_dataset(d.dataset, "test", data_dir=d.data_dir)
    n = min(config.evaluation.size or d.eval_size, d.eval_size)
    idx = list(range(d.eval_offset, d.eval_offset + n))
    x, y = test.subset(idx).images, test.subset(idx).labels
    models = {"mixture": MixedStrategyModel.load(result.out / "ensemble", device=str(device))}
    for m in config.models:
        if m.method == "pgd-at":
            models[m.name] = load_checkpoint(result.out / "models" / m.name, device=str(device)).model
    for name, model in models.items():
        for eps in eps_list:
            key = f"{name}@{eps:g}"
            if key in curves:
                continue
            if abs(eps - config.evaluation.eps) < 1e-12 and result.robustness is not None and name in result.robustness:
                r = result.robustness[name]
                curves[key] = {"worst_case_accuracy": r["worst_case_accuracy"], "worst_case_ci": r["worst_case_ci"]}
            else:
                def at(e, model=model, name=name):
                    return evaluate(
                        model, (x, y), suite(config.evaluation.suite, eps=e, norm=config.evaluation.norm, model=model),
                        eps=e, norm=config.evaluation.norm, repeats=config.evaluation.repeats,
                        draws=config.evaluation.draws,
                        batch_size=config.game.batch_size, device=device,
                        seed=cell_seed(config.seed, "eps-curve", name, e), progress=progress,
                    )

                iv = robustness_curve(at, [eps])[float(eps)]
                curves[key] = {"worst_case_accuracy": iv.estimate, "worst_case_ci": [iv.low, iv.high]}
            cache.write_text(json.dumps(curves, indent=2))
    return curves


def saved_model(result, name: str, device):
    """A loader of the run's equilibrium mixture (``"mixture"``) or of one of its trained models."""
    from gametheory_defense.checkpoint import load_checkpoint
    from gametheory_defense.ensemble import MixedStrategyModel

    if name == "mixture":
        return lambda: MixedStrategyModel.load(result.out / "ensemble", device=str(device))
    return lambda: load_checkpoint(result.out / "models" / name, device=str(device)).model


def paired(config, device, loaders: dict, n: int, cache: Path, progress: bool, keys: dict | None = None) -> dict:
    """Adaptive suite on the first ``n`` test images for every model of ``loaders``; per-example worst cases kept.

    ``loaders`` maps a name to a function returning the model. The per-example worst case
    of a model is the minimum over clean and every attack of the estimated probability of a
    correct answer; the paired difference of two models on the same images has a much
    smaller error than the difference of two independent figures. Cached in ``cache`` per
    model (resumable); an entry is reused when its ``n`` and its ``keys[name]`` (e.g. a
    fixed mixture's weights) match.
    """
    from gametheory_defense.attacks import build_attack
    from gametheory_defense.data import load_dataset
    from gametheory_defense.evaluation import evaluate, suite

    keys = keys or {}
    done = json.loads(cache.read_text()) if cache.exists() else {}
    d = config.data
    test = load_dataset(d.dataset, "test", data_dir=d.data_dir)
    sub = test.subset(list(range(d.eval_offset, d.eval_offset + n)))
    ev = config.evaluation

    def run(model, name, attacks, **kw):
        return evaluate(
            model, (sub.images, sub.labels), attacks,
            eps=ev.eps, norm=ev.norm, repeats=ev.repeats, draws=ev.draws, batch_size=config.game.batch_size,
            device=device, seed=cell_seed(config.seed, "paired", name), progress=progress, **kw,
        )

    for name, load in loaders.items():
        if name in done and done[name]["n"] == n and done[name].get("key") == keys.get(name):
            if "clean" not in done[name]:  # an entry from before clean accuracy was kept: evaluate
                # measures clean first from the seed, so one cheap attack gives the full suite's figure
                cheap = {"fgsm": build_attack("fgsm", eps=ev.eps, norm=ev.norm)}
                done[name]["clean"] = run(load(), name, cheap, sanity_checks=False).clean_accuracy
                cache.write_text(json.dumps(done))
            continue
        model = load()
        t = time.perf_counter()
        rep = run(model, name, suite(ev.suite, eps=ev.eps, norm=ev.norm, model=model))
        per_example = per_example_worst_case(rep.clean_outcomes, [a.outcomes for a in rep.attacks])
        done[name] = {
            "n": n,
            **({"key": keys[name]} if name in keys else {}),
            "clean": rep.clean_accuracy,
            "worst_case_accuracy": float(per_example.mean()),
            "worst_case_ci": [rep.worst_case_ci_low, rep.worst_case_ci_high],
            "attacks": {a.name: a.accuracy for a in rep.attacks},
            "per_example": per_example.tolist(),
            "seconds": time.perf_counter() - t,
        }
        cache.write_text(json.dumps(done))
    return {name: done[name] for name in loaders}


def mixture_spec(text: str) -> tuple[str, dict[str, float] | None]:
    """Parse ``--mixture``: ``NAME=ROW:WEIGHT,ROW:WEIGHT,...`` (weights renormalised) or ``multi-sap``.

    ``multi-sap`` is the uniform mixture over the SAP rows of the most robust PGD-AT model
    (by the adaptive suite), the source paper's multi-SAP without a game; it is resolved
    once the run is done (``None`` weights here).
    """
    if text == "multi-sap":
        return text, None
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not name or not body.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=ROW:WEIGHT,ROW:WEIGHT,... or multi-sap, got {text!r}")
    weights: dict[str, float] = {}
    for part in body.split(","):
        row, sep, w = part.strip().rpartition(":")
        try:
            weight = float(w)
        except ValueError:
            weight = float("nan")
        if not sep or not row or not math.isfinite(weight) or weight <= 0:
            raise argparse.ArgumentTypeError(f"mixture {name!r}: expected ROW:WEIGHT with a positive weight, got {part.strip()!r}")
        if row in weights:
            raise argparse.ArgumentTypeError(f"mixture {name!r}: row {row!r} given twice")
        weights[row] = weight
    total = sum(weights.values())
    return name, {row: w / total for row, w in weights.items()}


def check_mixture_specs(specs, rows: list[str], config) -> str | None:
    """One line saying what is wrong with the ``--mixture`` specs for this game, or ``None``."""
    names = [n for n, _ in specs]
    for name, weights in specs:
        if names.count(name) > 1:
            return f"--mixture {name!r} given twice"
        if name == "mixture" or name in rows:
            return f"--mixture name {name!r} is taken (the equilibrium mixture or a defender); choose another"
        if weights is None:
            at = [m.name for m in config.models if m.method == "pgd-at"]
            if not any(r.startswith(f"{a}+sap") for a in at for r in rows):
                return "--mixture multi-sap needs SAP rows on a PGD-AT model; this configuration has none"
            continue
        unknown = [r for r in weights if r not in rows]
        if unknown:
            return f"--mixture {name!r}: unknown defender(s) {', '.join(unknown)}; the game's rows are {', '.join(rows)}"
    return None


def fixed_mixtures(self_res, config, device, specs, best_at: str, n: int, out: Path, progress: bool) -> dict:
    """Fixed (not solved-for) mixtures of the game's defenders, next to the equilibrium and PGD-AT.

    For every mixture: the paper protocol's figure, ``min_j (x A)_j`` over the configured
    attackers (its expected accuracy against the best configured attack), and the adaptive
    suite on the first ``n`` test images: with two or more members the suite includes
    MixturePGD and ARC. The equilibrium mixture and ``best_at`` are evaluated on the same
    images with the same suite, so the differences are paired. Cached in
    ``out/mixtures.json`` (resumable).
    """
    from gametheory_defense.ensemble import MixedStrategyModel
    from gametheory_defense.pipeline import defender_specs, load_defenders

    m = self_res.matrix
    specs_by_row = defender_specs(config, {mc.name: self_res.out / "models" / mc.name for mc in config.models})
    resolved: dict[str, dict[str, float]] = {}
    for name, weights in specs:
        if weights is None:
            rows = [r for r in m.defenders if r.startswith(f"{best_at}+sap")]
            weights = {r: 1.0 / len(rows) for r in rows}
        resolved[name] = weights

    def mixture_loader(weights: dict[str, float]):
        def load():
            members = load_defenders({r: specs_by_row[r] for r in weights}, device)
            return MixedStrategyModel(list(members.values()), list(weights.values()), names=list(members))
        return load

    loaders = {
        **{name: mixture_loader(w) for name, w in resolved.items()},
        "mixture": saved_model(self_res, "mixture", device),
        best_at: saved_model(self_res, best_at, device),
    }
    keys = {name: w for name, w in resolved.items()}
    evaluated = paired(config, device, loaders, n, out / "mixtures.json", progress, keys=keys)
    results = {}
    for name, rep in evaluated.items():
        if name == "mixture":
            x = np.asarray(self_res.equilibrium.defender_strategy, dtype=np.float64)
        else:
            x = np.zeros(len(m.defenders))
            for r, w in resolved.get(name, {name: 1.0}).items():
                x[m.defenders.index(r)] = w
        payoffs = x @ np.asarray(m.values)
        j = int(np.argmin(payoffs))
        results[name] = {
            "weights": {m.defenders[i]: float(x[i]) for i in support_indices(x)},  # solver round-off left out
            "paper_protocol": float(payoffs[j]),
            "paper_protocol_attack": m.attackers[j],
            "paper_protocol_stderr": strategy_stderr(m, x, [j]),
            **rep,
        }
    return results


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same examples and its normal 95% interval (:mod:`gametheory_defense.stats`)."""
    d = _paired_difference(a, b)
    return d.mean, d.low, d.high


def plot_curves(curves: dict, eps_list, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    names = sorted({k.split("@")[0] for k in curves}, key=lambda s: (s != "mixture", s))
    for name in names:
        pts = [(e, curves[f"{name}@{e:g}"]) for e in eps_list if f"{name}@{e:g}" in curves]
        xs = [e for e, _ in pts]
        ys = [100 * c["worst_case_accuracy"] for _, c in pts]
        lo = [100 * c["worst_case_ci"][0] for _, c in pts]
        hi = [100 * c["worst_case_ci"][1] for _, c in pts]
        ax.plot(xs, ys, marker="o", label=name, linewidth=2.5 if name == "mixture" else 1.5)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel("adaptive worst-case accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=130, bbox_inches="tight")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/mnist_paper.toml")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/paper-cpu", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--skip-transfer", action="store_true", help="run only the self formulation")
    p.add_argument("--transfer-sources", nargs="+", default=None, metavar="NAME",
                   help="defenders the transfer game crafts on (default: the trained models, without SAP)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default 2); trained weights depend on it, so reruns must use the same")
    p.add_argument("--paired-size", type=int, default=0, metavar="N",
                   help="also run the adaptive suite on the first N test images for the mixture and the best "
                        "PGD-AT model and report their paired difference (outside the timed setting)")
    p.add_argument("--mixture", type=mixture_spec, action="append", default=[], metavar="SPEC",
                   help="also evaluate a fixed mixture of the game's defenders: NAME=ROW:WEIGHT,ROW:WEIGHT,... or "
                        "multi-sap (uniform over the SAP rows of the most robust PGD-AT model); with 2+ members the "
                        "adaptive suite includes MixturePGD and ARC (repeatable; outside the timed setting)")
    p.add_argument("--mixture-size", type=int, default=0, metavar="N",
                   help="test images for --mixture (default: the configuration's adaptive evaluation size)")
    p.add_argument("--compare", type=Path, default=None, metavar="RESULTS_JSON",
                   help="results.json of an earlier run: report the largest difference from it (reproducibility)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    progress = not args.no_progress
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    config = load_config(args.config)
    if args.mixture_size < 0:
        p.error(f"--mixture-size must be >= 0, got {args.mixture_size}")
    problem = check_mixture_specs(args.mixture, defender_names(config), config)
    if problem is not None:
        p.error(problem)
    args.out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}

    t = time.perf_counter()
    self_res = run_pipeline(
        config, args.out / "self", resume=True, device=args.device, data_dir=args.data_dir, progress=progress,
        command=sys.argv,
    )
    walls["self formulation (train + game + double oracle + adaptive)"] = time.perf_counter() - t

    transfer_res = None
    if not args.skip_transfer:
        t = time.perf_counter()
        tdir = args.out / "transfer"
        tdir.mkdir(exist_ok=True)
        for sub in ("models", "robustness"):  # same models; pure defenders' evaluations are reused
            if (args.out / "self" / sub).is_dir() and not (tdir / sub).exists():
                shutil.copytree(args.out / "self" / sub, tdir / sub)
        sources = tuple(args.transfer_sources or [m.name for m in config.models])
        tconfig = dataclasses.replace(
            config,
            game=dataclasses.replace(config.game, formulation="transfer", sources=sources),
            double_oracle=dataclasses.replace(config.double_oracle, enabled=False),
        )
        transfer_res = run_pipeline(
            tconfig, tdir, resume=True, device=args.device, data_dir=args.data_dir, progress=progress, command=sys.argv
        )
        walls["transfer formulation (game + adaptive on its mixture)"] = time.perf_counter() - t

    t = time.perf_counter()
    data_config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=args.data_dir or config.data.data_dir))
    curves = eps_curve(self_res, data_config, args.device, args.eps, args.out, progress)
    plot_curves(curves, args.eps, args.out / "eps_curve.png")
    walls["robustness-versus-eps curves"] = time.perf_counter() - t
    walls["total"] = time.perf_counter() - t0
    # the most robust PGD-AT model under the adaptive suite: the reference of every comparison
    at_names = [mc.name for mc in config.models if mc.method == "pgd-at"]
    best_at = max(at_names, key=lambda n: self_res.robustness[n]["worst_case_accuracy"])
    paired_res = None
    if args.paired_size > 0:
        t = time.perf_counter()
        paired_res = paired(
            data_config, args.device, {k: saved_model(self_res, k, args.device) for k in ("mixture", best_at)},
            args.paired_size, args.out / "paired.json", progress,
        )
        walls[f"paired comparison on {args.paired_size} images (not part of the setting's total)"] = time.perf_counter() - t

    mixtures_res = None
    if args.mixture:
        t = time.perf_counter()
        n_mix = args.mixture_size or min(config.evaluation.size or config.data.eval_size, config.data.eval_size)
        mixtures_res = fixed_mixtures(self_res, data_config, args.device, args.mixture, best_at, n_mix, args.out, progress)
        walls[f"fixed mixtures on {n_mix} images (not part of the setting's total)"] = time.perf_counter() - t

    # ----------------------------------------------------------------- the table
    m, eq, rob = self_res.matrix, self_res.equilibrium, self_res.robustness
    rows = []
    for name in at_names:
        i = m.defenders.index(name)
        j = int(np.argmin(m.values[i]))
        rows.append((f"{name} alone", "paper protocol: worst configured attack", m.values[i, j], ci(m.values[i, j], m.stderr[i, j])))
        r = rob[name]
        rows.append((f"{name} alone", "adaptive suite, per-example worst case", r["worst_case_accuracy"], ci_pair(r["worst_case_ci"])))
    best_row = int(np.argmax(m.values.min(axis=1)))
    rows.append((f"best pure defender ({m.defenders[best_row]})", "paper protocol", m.values[best_row].min(), "n/a"))
    rows.append(("equilibrium mixture (self game)", "paper protocol: game value", eq.value, ci(eq.value, value_stderr(m, eq))))
    rows.append(("equilibrium mixture (self game)", "adaptive suite, per-example worst case", rob["mixture"]["worst_case_accuracy"], ci_pair(rob["mixture"]["worst_case_ci"])))
    do = self_res.double_oracle
    if do is not None:
        rows.append(("mixture after double oracle", "game value incl. best-response columns", do.equilibrium.value, ci(do.equilibrium.value, value_stderr(do.matrix, do.equilibrium))))
        if "mixture-double-oracle" in rob:
            r = rob["mixture-double-oracle"]
            rows.append(("mixture after double oracle", "adaptive suite, per-example worst case", r["worst_case_accuracy"], ci_pair(r["worst_case_ci"])))
    if transfer_res is not None:
        tm, teq, trob = transfer_res.matrix, transfer_res.equilibrium, transfer_res.robustness
        tbest = int(np.argmax(tm.values.min(axis=1)))
        rows.append((f"best pure defender, transfer game ({tm.defenders[tbest]})", "paper protocol", tm.values[tbest].min(), "n/a"))
        rows.append(("equilibrium mixture (transfer game)", "paper protocol: game value", teq.value, ci(teq.value, value_stderr(tm, teq))))
        rows.append(("equilibrium mixture (transfer game)", "adaptive suite, per-example worst case", trob["mixture"]["worst_case_accuracy"], ci_pair(trob["mixture"]["worst_case_ci"])))

    at_adaptive = rob[best_at]["worst_case_accuracy"]
    at_paper = max(m.values[m.defenders.index(n)].min() for n in at_names)
    mix_adaptive = rob["mixture"]["worst_case_accuracy"]
    def support(res) -> str:
        x = np.asarray(res.equilibrium.defender_strategy)
        names = res.matrix.defenders
        return ", ".join(f"`{names[i]}` {x[i]:.3f}" for i in sorted(support_indices(x), key=lambda i: -x[i]))

    lines = [
        f"# Results: {config.name}",
        "",
        f"Self-game equilibrium mixture: {support(self_res)}."
        + (f" Transfer-game mixture (sources: {', '.join(tconfig.game.sources)}): {support(transfer_res)}." if transfer_res is not None else ""),
        "",
        f"Threat model L-inf eps {config.evaluation.eps}; {config.data.eval_size} test images for the game, "
        f"the first {min(config.evaluation.size or config.data.eval_size, config.data.eval_size)} of them for the adaptive suite; "
        f"stochastic defenders over {config.game.repeats} draws (game); adaptive suite: {config.evaluation.repeats} "
        f"run(s) of every attack, each adversarial example classified {config.evaluation.draws} time(s).",
        "",
        "| model | protocol | accuracy | 95% CI |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {pct(c)} | {d} |" for a, b, c, d in rows],
        "",
        "## Verdict",
        "",
        f"- Paper protocol: game value {pct(eq.value)} vs best PGD-AT {pct(at_paper)}: "
        f"{100 * (eq.value - at_paper):+.2f} points (claim: about +6 to +7).",
        f"- Adaptive protocol: mixture {pct(mix_adaptive)} vs best PGD-AT ({best_at}) {pct(at_adaptive)}: "
        f"{100 * (mix_adaptive - at_adaptive):+.2f} points.",
        "",
        "## Robustness versus eps (adaptive suite, worst case)",
        "",
        "| model | " + " | ".join(f"eps {e:g}" for e in args.eps) + " |",
        "| --- | " + " | ".join("---" for _ in args.eps) + " |",
    ]
    for name in ["mixture", *at_names]:
        lines.append(f"| {name} | " + " | ".join(pct(curves[f'{name}@{e:g}']['worst_case_accuracy']) for e in args.eps) + " |")
    if paired_res is not None:
        (mname, aname) = list(paired_res)[:2]
        mean, lo, hi = paired_difference(paired_res[mname]["per_example"], paired_res[aname]["per_example"])
        lines += [
            "",
            f"## Paired comparison on the first {args.paired_size} test images (adaptive suite, eps {config.evaluation.eps:g})",
            "",
            "| model | per-example worst case | 95% CI | attacks |",
            "| --- | --- | --- | --- |",
            *[
                f"| {k} | {pct(v['worst_case_accuracy'])} | {ci_pair(v['worst_case_ci'])} | "
                + ", ".join(f"{a} {pct(x)}" for a, x in v["attacks"].items()) + " |"
                for k, v in paired_res.items()
            ],
            "",
            f"Paired difference {mname} - {aname}: {100 * mean:+.2f} points, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] "
            "(normal interval on the per-example differences).",
        ]
    if mixtures_res is not None:
        names = list(mixtures_res)
        ref_names = names[-2:]  # the equilibrium mixture and the best PGD-AT model
        n_mix = mixtures_res[names[0]]["n"]
        lines += [
            "",
            f"## Fixed mixtures (adaptive suite on the first {n_mix} test images, eps {config.evaluation.eps:g})",
            "",
            "| model | weights | paper protocol: worst configured attack | clean | adaptive worst case | 95% CI | attacks |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for k, v in mixtures_res.items():
            weights = ", ".join(f"{r} {w:.3f}" for r, w in v["weights"].items())
            lines.append(
                f"| {k} | {weights} | {pct(v['paper_protocol'])} ({v['paper_protocol_attack']}) {ci(v['paper_protocol'], v['paper_protocol_stderr'])} "
                f"| {pct(v['clean'])} | {pct(v['worst_case_accuracy'])} | {ci_pair(v['worst_case_ci'])} | "
                + ", ".join(f"{a} {pct(x)}" for a, x in v["attacks"].items()) + " |"
            )
        lines.append("")
        for k in names[:-2]:
            for ref in ref_names:
                mean, lo, hi = paired_difference(mixtures_res[k]["per_example"], mixtures_res[ref]["per_example"])
                lines.append(f"- Paired difference {k} - {ref}: {100 * mean:+.2f} points, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}].")
    env = environment()
    lines += [
        "",
        "## Wall time and machine",
        "",
        *[f"- {k}: {v / 60:.1f} min" for k, v in walls.items()],
        f"- device `{args.device}`; " + ", ".join(f"{k} {v}" for k, v in env.items()),
        f"- torch threads {torch.get_num_threads()}; {platform.node()}",
        "",
        "## Command",
        "",
        "```",
        "python " + " ".join(sys.argv),
        "```",
        "",
    ]
    (args.out / "results.md").write_text("\n".join(lines))
    (args.out / "results.json").write_text(json.dumps({
        "rows": [{"model": a, "protocol": b, "accuracy": c, "ci": d} for a, b, c, d in rows],
        "eps_curve": curves, "wall_seconds": walls, "environment": env,
        "paired": None if paired_res is None else {k: {kk: vv for kk, vv in v.items() if kk != "per_example"} for k, v in paired_res.items()},
        "mixtures": None if mixtures_res is None else {k: {kk: vv for kk, vv in v.items() if kk != "per_example"} for k, v in mixtures_res.items()},
    }, indent=2))
    print("\n".join(lines))
    if args.compare is not None:
        return compare(args.out / "results.json", args.compare)
    return 0


def compare(new_path: Path, old_path: Path) -> int:
    """Print the largest differences between two results.json files; 0 if every number is equal."""
    new, old = json.loads(new_path.read_text()), json.loads(old_path.read_text())
    diffs = []
    old_rows = {(r["model"], r["protocol"]): r["accuracy"] for r in old["rows"]}
    for r in new["rows"]:
        key = (r["model"], r["protocol"])
        if key in old_rows:
            diffs.append((f"{key[0]} / {key[1]}", r["accuracy"], old_rows[key]))
        else:
            diffs.append((f"{key[0]} / {key[1]} (missing in {old_path})", r["accuracy"], float("nan")))
    for k, v in new["eps_curve"].items():
        o = old["eps_curve"].get(k, {}).get("worst_case_accuracy", float("nan"))
        diffs.append((f"eps curve {k}", v["worst_case_accuracy"], o))
    for k, v in (new.get("mixtures") or {}).items():  # --mixture, when the new run has it
        o = (old.get("mixtures") or {}).get(k, {})
        diffs.append((f"fixed mixture {k} / adaptive worst case", v["worst_case_accuracy"], o.get("worst_case_accuracy", float("nan"))))
        for a, x in v["attacks"].items():
            diffs.append((f"fixed mixture {k} / {a}", x, o.get("attacks", {}).get(a, float("nan"))))
    print(f"\n## Reproducibility: this run vs {old_path}\n")
    print("| number | this run | earlier run | difference |")
    print("| --- | ---: | ---: | ---: |")
    worst = 0.0
    for name, a, b in diffs:
        d = abs(a - b) if math.isfinite(b) else float("inf")
        worst = max(worst, d)
        print(f"| {name} | {pct(a)} | {pct(b) if math.isfinite(b) else 'n/a'} | {100 * d:.2f} points |")
    print(f"\nlargest difference: {100 * worst:.4f} points" + (" (identical)" if worst == 0 else ""))
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
