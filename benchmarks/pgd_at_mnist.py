"""Sizing benchmark: PGD adversarial training (Madry et al., 2018) of ``small-cnn`` on real MNIST.

Trains ``small-cnn`` with L-inf PGD-AT (eps 0.3 by default, linear eps warm-up) on the
first ``--train-size`` MNIST training images, then measures clean accuracy and the
accuracy under 40-step L-inf PGD (eps 0.3, step 2.5 * eps / steps, random start) on the first
``--eval-size`` test images, and the wall time of training. A standard-training
baseline of the same size is trained too (``--no-baseline`` skips it), so the table
shows what PGD-AT buys. Prints a markdown table; the numbers size later experiments
(seconds per epoch per 1000 images scale linearly in ``--train-size`` and in
``--attack-steps + 1``).

Usage (from the repository root; the data folder defaults to ``../shared/data/mnist``)::

    OMP_NUM_THREADS=1 python benchmarks/pgd_at_mnist.py --epochs 1 --train-size 10000

Exits 0 with a message, without training, when the MNIST files are not there.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"MNIST IDX files (default {DEFAULT_DATA})")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    p.add_argument("--train-size", type=int, default=10000, help="first N training images (default 10000)")
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps in training (default 10)")
    p.add_argument("--eps", type=float, default=0.3, help="L-inf radius for training and evaluation (default 0.3)")
    p.add_argument("--eps-warmup-epochs", type=int, default=None,
                   help="eps warm-up length in epochs (default: half the epochs, at least the first; 0 disables)")
    p.add_argument("--eval-size", type=int, default=1000, help="first N test images (default 1000)")
    p.add_argument("--eval-steps", type=int, default=40, help="PGD steps in evaluation (default 40)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--no-baseline", action="store_true", help="skip the standard-training baseline")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--out", type=Path, default=None,
                   help="also save the PGD-AT model as a checkpoint OUT (for stronger attacks: gtdefense attack OUT)")
    return p.parse_args(argv)


def _have_mnist(data_dir: Path) -> bool:
    if not data_dir.is_dir():
        return False
    names = {p.name for p in data_dir.iterdir()}
    return all(f in names or f + ".gz" in names for f in MNIST_FILES)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not _have_mnist(args.data_dir):
        print(f"skipped: MNIST IDX files not found in {args.data_dir} (pass --data-dir)")
        return 0

    import torch

    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.data import load_dataset
    from gametheory_defense.models import build_model
    from gametheory_defense.training import accuracy, default_eval_attack, train

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warmup = args.eps_warmup_epochs
    if warmup is None:
        warmup = max(1, math.ceil(args.epochs / 2))

    t_load = time.perf_counter()
    train_set = load_dataset("mnist", "train", data_dir=args.data_dir).subset(args.train_size)
    test_set = load_dataset("mnist", "test", data_dir=args.data_dir).subset(args.eval_size)
    t_load = time.perf_counter() - t_load
    n_train, n_eval = len(train_set), len(test_set)
    attack = default_eval_attack(args.eps, steps=args.eval_steps)

    runs = [("standard", {})] if not args.no_baseline else []
    runs.append(("pgd-at", {"eps": args.eps, "attack_steps": args.attack_steps, "eps_warmup_epochs": warmup}))
    rows = []
    for method, extra in runs:
        g = torch.Generator().manual_seed(args.seed)
        model = build_model("small-cnn", input_shape=train_set.input_shape, num_classes=10, generator=g)
        result = train(model, train_set, method=method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       device=args.device, generator=g, progress=args.progress, **extra)
        t_eval = time.perf_counter()
        clean = accuracy(model, test_set, device=args.device)
        robust = accuracy(model, test_set, attack=attack, batch_size=500, device=args.device,
                          generator=torch.Generator().manual_seed(args.seed + 1), progress=args.progress)
        t_eval = time.perf_counter() - t_eval
        if args.out is not None and method == "pgd-at":
            metrics = {"clean_accuracy": clean, "robust_accuracy": robust, "robust_attack": attack.config(),
                       "eval_size": n_eval}
            save_checkpoint(model, args.out, training=result.as_dict(), dataset="mnist", metrics=metrics)
        steps = extra.get("attack_steps", 0)
        rows.append((
            method,
            args.epochs,
            n_train,
            f"{extra['eps']:g} / {steps} / {warmup}" if extra else "-",
            result.seconds,
            1000 * result.seconds / (args.epochs * n_train),
            clean,
            robust,
            t_eval,
        ))

    threads = torch.get_num_threads() if args.device == "cpu" else "-"
    print(f"\nPGD-AT sizing on MNIST, small-cnn, device {args.device} (torch threads: {threads}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), Adam lr {args.lr:g}, "
          f"batch {args.batch_size}, seed {args.seed}; data loaded in {t_load:.1f}s.")
    print(f"Evaluation: first {n_eval} test images, L-inf PGD eps={args.eps:g}, {args.eval_steps} steps, "
          f"step {attack.step_size:.4g}, 1 random start.\n")
    print("| method | epochs | train images | eps / PGD steps / warm-up epochs | train s | s per epoch per 1k imgs "
          f"| clean acc | PGD-{args.eval_steps} acc | eval s |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for method, epochs, n, at, secs, per_k, clean, robust, t_eval in rows:
        print(f"| {method} | {epochs} | {n} | {at} | {secs:.1f} | {per_k:.2f} | {clean:.4f} | {robust:.4f} "
              f"| {t_eval:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
