"""The project's attack suites against torchattacks' AutoAttack, paired per image (issue 13).

Not a test: it trains the models, attacks the same images with both libraries, prints
markdown tables and never fails on a number. Models (L-inf):

- ``digits-standard``, ``digits-at``: the demo's MLPs on scikit-learn's 8x8 digits
  (standard training; PGD-AT eps 0.1, 7 steps), 30 epochs, evaluated at eps 0.1 on the
  whole digits test split;
- ``mnist-at``: ``small-cnn`` PGD-AT on real MNIST (all 60,000 images, 6 epochs, eps 0.3,
  warm-up 3 epochs; as in ``benchmarks/pgd_at_mnist.py``), evaluated at eps 0.3 on the
  first ``--n-mnist`` test images.

For each model, per image (1 = still correct):

- the project's ``autoattack`` suite (APGD-CE, APGD-T, Square; AutoAttack's budgets) and
  ``adaptive`` suite (worst case over its attacks), run once through
  :func:`gametheory_defense.evaluate` (``adaptive`` contains every ``autoattack`` entry
  with the same settings, so both worst cases come from the same run);
- torchattacks 3.5.1 in its own environment (``--torchattacks-python``): ``AutoAttack``
  as shipped (its ``standard`` version builds APGD, APGD-T and FAB-T with torchattacks'
  default of 10 steps) and each component at AutoAttack's own budgets (100 steps, 5000
  Square queries), whose per-image worst case is "torchattacks AA-100".

Differences are paired per image: mean difference of the 0/1 robust indicators with a
95% normal interval (``1.96 * sd / sqrt(n)``), and the discordant counts (images robust
to one side and broken by the other).

Usage (from the repository root; torchattacks installed with ``--no-deps`` in /tmp/ta, see
``benchmarks/attack_throughput.py``)::

    OMP_NUM_THREADS=1 python benchmarks/autoattack_parity.py --torchattacks-python /tmp/ta/bin/python \\
        --models digits-standard,digits-at,mnist-at --n-mnist 500 --work runs/parity --json parity.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
if not DEFAULT_MNIST.is_dir():
    DEFAULT_MNIST = Path("/work/shared/data/mnist")

#: The torchattacks side, run in the other interpreter: argv = checkpoint, data file, eps, seed, out.
_TA_SCRIPT = r"""
import json, sys, time
import torch, torchattacks
from safetensors.torch import load_file
from gametheory_defense.checkpoint import load_checkpoint

ckpt, data, eps, seed, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(seed)
model = load_checkpoint(ckpt, sap=None).model.eval()
for p in model.parameters():
    p.requires_grad_(False)
t = load_file(data)
x, y = t["x"], t["y"]
K = 10

def robust(atk, bs=250):
    flags = []
    for i in range(0, len(x), bs):
        xa = atk(x[i:i + bs], y[i:i + bs])
        with torch.no_grad():
            flags.append(model(xa).argmax(1) == y[i:i + bs])
    return torch.cat(flags).int().tolist()

runs = {
    "aa-shipped": lambda: torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=K, seed=seed),
    "apgd-ce": lambda: torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, loss="ce", seed=seed),
    "apgd-t": lambda: torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_classes=K, seed=seed),
    "fab-t": lambda: torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, multi_targeted=True, n_classes=K, seed=seed),
    "square": lambda: torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, seed=seed),
}
res = {}
for name, make in runs.items():
    t0 = time.perf_counter()
    res[name] = {"robust": robust(make()), "seconds": time.perf_counter() - t0}
    print(name, sum(res[name]["robust"]) / len(x), f"{res[name]['seconds']:.0f}s", flush=True)
json.dump(res, open(out, "w"))
"""


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of ``a - b`` (0/1 per image) with a 95% normal interval, and the discordant counts."""
    d = a.astype(float) - b.astype(float)
    n = d.size
    mean = float(d.mean())
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"diff": mean, "lo": mean - half, "hi": mean + half, "a_only": int(((a == 1) & (b == 0)).sum()),
            "b_only": int(((a == 0) & (b == 1)).sum())}


def _train(name: str, work: Path, mnist_dir: Path, seed: int, n_mnist: int):
    """Train (or load from ``work``) model ``name``; returns (checkpoint path, x, y, eps)."""
    import torch

    from gametheory_defense.checkpoint import load_checkpoint, save_checkpoint
    from gametheory_defense.data import load_dataset
    from gametheory_defense.models import build_model
    from gametheory_defense.training import train

    if name.startswith("digits"):
        train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
        arch, eps, extra, epochs, bs = "mlp", 0.1, {"eps": 0.1, "attack_steps": 7}, 30, 64
    else:
        train_set = load_dataset("mnist", "train", data_dir=mnist_dir)
        test_set = load_dataset("mnist", "test", data_dir=mnist_dir).subset(n_mnist)
        arch, eps, extra, epochs, bs = "small-cnn", 0.3, {"eps": 0.3, "attack_steps": 10, "eps_warmup_epochs": 3}, 6, 128
    method = "standard" if name.endswith("standard") else "pgd-at"
    path = work / name
    if not path.with_suffix(".json").exists():
        g = torch.Generator().manual_seed(seed)
        model = build_model(arch, input_shape=train_set.input_shape, num_classes=10, generator=g)
        t0 = time.perf_counter()
        train(model, train_set, method=method, epochs=epochs, batch_size=bs, lr=1e-3, generator=g, progress=False,
              **(extra if method == "pgd-at" else {}))
        print(f"trained {name} in {time.perf_counter() - t0:.0f}s", flush=True)
        save_checkpoint(model, path, dataset=name.split("-")[0])
    model = load_checkpoint(path, sap=None).model
    from gametheory_defense.data import as_tensors

    x, y = as_tensors(test_set)
    return path, model, x, y, eps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits-standard,digits-at,mnist-at")
    p.add_argument("--n-mnist", type=int, default=500, help="first N MNIST test images (default 500)")
    p.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--torchattacks-python", default=None, help="interpreter with torchattacks (else ours only)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "parity", help="checkpoints and data files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every per-image result here")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    from gametheory_defense.evaluation import AUTOATTACK_SUITE, evaluate

    args.work.mkdir(parents=True, exist_ok=True)
    everything: dict[str, dict] = {}
    for name in args.models.split(","):
        path, model, x, y, eps = _train(name, args.work, args.mnist_dir, args.seed, args.n_mnist)
        data_file = args.work / f"{name}.data.safetensors"
        save_file({"x": x.contiguous(), "y": y.contiguous()}, str(data_file))
        proc = None
        if args.torchattacks_python:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            ta_out = args.work / f"{name}.torchattacks.json"
            proc = subprocess.Popen([args.torchattacks_python, "-c", _TA_SCRIPT, str(path), str(data_file), str(eps),
                                     str(args.seed), str(ta_out)], env=env)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = evaluate(model, (x, y), "adaptive", eps=eps, seed=args.seed, progress=False, sanity_checks=False)
        ours_s = time.perf_counter() - t0
        clean = report.clean_outcomes[0].astype(int)
        per = {r.name: r.outcomes[0].astype(int) for r in report.attacks}
        secs = {r.name: r.seconds for r in report.attacks}
        aa_names = [k for k in AUTOATTACK_SUITE if k in per]
        ours_aa = clean.copy()
        for k in aa_names:
            ours_aa &= per[k]
        ours_adaptive = report.worst_case_outcomes[0].astype(int)
        row: dict = {"eps": eps, "n": int(len(y)), "clean": clean.tolist(), "ours": {k: v.tolist() for k, v in per.items()},
                     "ours_seconds": secs, "ours_autoattack": ours_aa.tolist(), "ours_adaptive": ours_adaptive.tolist()}
        if proc is not None:
            proc.wait()
            ta = json.loads(ta_out.read_text())
            row["torchattacks"] = ta
        everything[name] = row
        print(f"{name}: ours in {ours_s:.0f}s", flush=True)
        if args.json:
            args.json.write_text(json.dumps(everything))
    _print(everything)
    return 0


#: The deterministic-model entries of the adaptive suite before issue 13.
OLD_ADAPTIVE = ("pgd-ce", "pgd-cw", "apgd-ce", "apgd-dlr")


def _pct(v: np.ndarray) -> str:
    return f"{100 * v.mean():.2f}"


def _d(r: dict[str, float]) -> str:
    return f"{100 * r['diff']:+.2f} [{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}] ({r['a_only']}/{r['b_only']})"


def _print(everything: dict[str, dict]) -> None:
    print("\n| model | eps | n | clean | old adaptive | ours autoattack | ours adaptive | torchattacks AA (shipped, 10 steps) "
          "| torchattacks AA-100 | old adaptive - AA-100 | adaptive - AA-100 | adaptive - AA shipped | adaptive - ours autoattack |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |")
    for name, row in everything.items():
        clean = np.array(row["clean"])
        aa, ad = np.array(row["ours_autoattack"]), np.array(row["ours_adaptive"])
        old = clean.copy()  # the adaptive suite before issue 13: PGD (CE, CW), APGD-CE, APGD-DLR
        for k in OLD_ADAPTIVE:
            old &= np.array(row["ours"][k])
        ta = row.get("torchattacks")
        if ta:
            shipped = np.array(ta["aa-shipped"]["robust"]) & clean
            aa100 = clean.copy()
            for k in ("apgd-ce", "apgd-t", "fab-t", "square"):
                aa100 &= np.array(ta[k]["robust"])
            cols = [_pct(shipped), _pct(aa100), _d(paired(old, aa100)), _d(paired(ad, aa100)), _d(paired(ad, shipped))]
        else:
            cols = ["-"] * 5
        print(f"| {name} | {row['eps']:g} | {row['n']} | {_pct(clean)} | {_pct(old)} | {_pct(aa)} | {_pct(ad)} | "
              + " | ".join(cols) + f" | {_d(paired(ad, aa))} |")
    print("\nPer attack (robust accuracy %; ours - torchattacks paired, (ours-only robust / theirs-only robust)):\n")
    print("| model | attack | ours | torchattacks | ours - torchattacks | ours s | torchattacks s |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for name, row in everything.items():
        ta = row.get("torchattacks") or {}
        for k in ("apgd-ce", "apgd-t", "square", "fab-t"):
            mine = np.array(row["ours"][k]) if k in row["ours"] else None
            theirs = np.array(ta[k]["robust"]) if k in ta else None
            print(f"| {name} | {k} | {_pct(mine) if mine is not None else '-'} | "
                  f"{_pct(theirs) if theirs is not None else '-'} | "
                  f"{_d(paired(mine, theirs)) if mine is not None and theirs is not None else '-'} | "
                  f"{row['ours_seconds'].get(k, float('nan')):.0f} | "
                  f"{ta[k]['seconds'] if k in ta else float('nan'):.0f} |")
        if ta:
            clean = np.array(row["clean"])
            others = np.array(row["ours_adaptive"]).copy()
            for k in ("apgd-ce", "apgd-t", "square"):
                others &= np.array(ta[k]["robust"])
            fab_only = int((others & (1 - np.array(ta["fab-t"]["robust"]))).sum())
            print(f"| {name} | fab-t adds (images broken only by torchattacks FAB-T) | {fab_only} | | | | |")


if __name__ == "__main__":
    sys.exit(main())
