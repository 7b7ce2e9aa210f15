"""Re-evaluate a finished ``benchmarks/psro_mnist.py`` run's two headline models under another suite.

``psro_mnist.py`` evaluates every defender of the run with the configuration's suite (``quick``
on CPU). This script evaluates only the final PSRO mixture and PGD-AT trained for the same
compute, with ``--suite`` (default ``adaptive``), on the same first ``--n`` test images and with
the same per-model seeds (``cell_seed(seed, "paired", name)``), and reports their paired
difference (:mod:`gametheory_defense.stats`). Nothing is trained or recomputed: it reads the
run's checkpoints. Resumable: the per-model results are cached next to ``--out``
(``NAME.cache.json``). Disjoint chunks of images (``--offset``, e.g. run in parallel) are
joined per example with ``--merge`` (which evaluates nothing).

    python benchmarks/psro_suite.py --run runs/psro-cpu --data-dir ../shared/data/mnist \\
        --suite adaptive --n 1000 --out runs/psro-cpu/paired-adaptive.json
    python benchmarks/psro_suite.py --run runs/psro-cpu --n 100 --offset 100 --out runs/psro-cpu/a100.json
    python benchmarks/psro_suite.py --run runs/psro-cpu --merge runs/psro-cpu/a0.cache.json \\
        runs/psro-cpu/a100.cache.json --out runs/psro-cpu/a.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_claim import paired, paired_difference  # noqa: E402  (shared paired evaluation)

from gametheory_defense.config import load_config  # noqa: E402
from gametheory_defense.evaluation import wilson_interval  # noqa: E402
from gametheory_defense.report import pct  # noqa: E402


def merge(chunks: list[dict]) -> dict:
    """Per-model results of disjoint image chunks combined: per-example lists joined, rates weighted by size."""
    out = {}
    for name in chunks[0]:
        rs = [c[name] for c in chunks]
        n = sum(r["n"] for r in rs)
        per_example = [x for r in rs for x in r["per_example"]]
        out[name] = {
            "n": n,
            "clean": sum(r["clean"] * r["n"] for r in rs) / n,
            "worst_case_accuracy": sum(per_example) / n,
            "attacks": {a: sum(r["attacks"][a] * r["n"] for r in rs) / n for a in rs[0]["attacks"]},
            "per_example": per_example,
            "seconds": sum(r["seconds"] for r in rs),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="--out directory of benchmarks/psro_mnist.py")
    parser.add_argument("--config", default="examples/mnist_psro.toml")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--suite", default="adaptive")
    parser.add_argument("--n", type=int, default=1000, help="first N test images (after the config's eval_offset)")
    parser.add_argument("--offset", type=int, default=None,
                        help="first test image (default: the config's eval_offset); chunks can be merged per example")
    parser.add_argument("--out", required=True, type=Path, help="JSON cache and results")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], metavar="CACHE_JSON",
                        help="evaluate nothing: join these earlier runs' caches (disjoint --offset chunks) per example")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    config = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, suite=args.suite))
    if args.data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=args.data_dir))
    if args.offset is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, eval_offset=args.offset))
    device = torch.device(args.device)

    from gametheory_defense.checkpoint import load_checkpoint
    from gametheory_defense.ensemble import MixedStrategyModel
    from gametheory_defense.identity import defender_identity

    loaders = {
        "psro-mixture": lambda: MixedStrategyModel.load(args.run / "run" / "ensemble_double_oracle", device=str(device)),
        "pgd-at-same-compute": lambda: load_checkpoint(args.run / "baseline" / "pgd-at-same-compute",
                                                       device=device).model,
    }
    t = time.perf_counter()
    identities = {name: defender_identity(load()) for name, load in loaders.items()}
    if not args.merge:
        # the cache is reused only for the same model, suite and images
        keys = {name: f"{identities[name]}|{args.suite}|{config.data.eval_offset}+{args.n}" for name in loaders}
        chunks = [paired(config, device, loaders, args.n, args.out.with_suffix(".cache.json"), not args.no_progress,
                         keys=keys)]
        starts = [config.data.eval_offset]
    else:  # no evaluation: join earlier runs of this script (disjoint images, same two models) per example
        chunks, starts = [], []
        for other in args.merge:
            done = json.loads(other.read_text())
            parts = [str(done.get(k, {}).get("key", "")).split("|") for k in loaders]
            if any(len(p) != 3 or p[0] != identities[k] or p[1] != args.suite for p, k in zip(parts, loaders)):
                parser.error(f"--merge {other}: not a --suite {args.suite} cache of these two models")
            chunks.append({k: done[k] for k in loaders})
            starts.append(int(parts[0][2].split("+")[0]))
        spans = sorted((o, o + c["psro-mixture"]["n"]) for o, c in zip(starts, chunks))
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            parser.error(f"--merge: the chunks' images overlap: {spans}")
    results = merge(chunks)
    n = len(results["psro-mixture"]["per_example"])
    mean, lo, hi = paired_difference(results["psro-mixture"]["per_example"],
                                     results["pgd-at-same-compute"]["per_example"])
    summary = {
        "suite": args.suite, "n": n, "offset": starts[0],
        "chunks": [{"offset": o, "n": c["psro-mixture"]["n"]} for o, c in zip(starts, chunks)],
        "run": str(args.run), "seconds": time.perf_counter() - t,
        "results": {k: {kk: vv for kk, vv in r.items() if kk != "per_example"} for k, r in results.items()},
        "paired_difference": {"mean": mean, "ci": [lo, hi]},
    }
    args.out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    ranges = ", ".join(f"{o}-{o + c['psro-mixture']['n'] - 1}" for o, c in zip(starts, chunks))
    print(f"suite {args.suite}, {n} test images ({ranges})")
    for k, r in results.items():
        wlo, whi = wilson_interval(r["worst_case_accuracy"], n)
        atk = ", ".join(f"{a} {pct(v)}" for a, v in r["attacks"].items())
        print(f"{k}: clean {pct(r['clean'])}, worst case {pct(r['worst_case_accuracy'])} [{pct(wlo)}, {pct(whi)}] "
              f"({r['seconds']:.0f} s; {atk})")
    print(f"psro-mixture minus pgd-at-same-compute: {100 * mean:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
