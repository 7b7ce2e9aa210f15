"""Benchmark: the transfer game built by ``build_payoff_matrix`` vs a naive per-cell loop.

The transfer (moving-target defense) game has attacker strategies (attack j, source k);
cell (i, (j, k)) is defender i's accuracy on attack j crafted against model k. The
builder crafts each (j, k) once and evaluates every defender on it
(|attacks| x |sources| crafts); the naive loop crafts again for every cell
(|attacks| x |sources| x |defenders| crafts). Both use the same per-cell generators, so
their matrices are identical (checked). Digits, small MLPs trained here from fixed seeds.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/payoff_build.py --defenders 4 --n 256 --pgd-steps 10

Prints a markdown table. Not a test: wall times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
from torch import nn

from gametheory_defense.attacks import FGSM, PGD
from gametheory_defense.data import as_tensors, load_dataset
from gametheory_defense.models import build_model

from payoff import build_payoff_matrix
from gametheory_defense.identity import cell_seed, defender_identity


def train_mlp(seed: int, x: torch.Tensor, y: torch.Tensor, *, steps: int) -> nn.Module:
    """A digits MLP trained full-batch with Adam from a fixed seed."""
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())


def naive_transfer(
    defenders: dict[str, nn.Module], attacks: dict[str, object], x: torch.Tensor, y: torch.Tensor, *, seed: int
) -> tuple[np.ndarray, int]:
    """Craft per cell: |attacks| x |sources| x |defenders| crafts (deterministic models, one draw)."""
    ident = {k: defender_identity(m) for k, m in defenders.items()}
    cols = [(a, s) for a in attacks for s in defenders]
    values = np.empty((len(defenders), len(cols)))
    crafts = 0
    for i, d in enumerate(defenders):
        for j, (a, s) in enumerate(cols):
            cfg = json.dumps(attacks[a].config(), sort_keys=True, separators=(",", ":"))
            g = torch.Generator().manual_seed(cell_seed(seed, "craft", ident[s], cfg, 0))
            x_adv = attacks[a](defenders[s], x, y, generator=g)
            crafts += 1
            values[i, j] = _accuracy(defenders[d], x_adv, y)
    return values, crafts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defenders", type=int, default=4)
    parser.add_argument("--n", type=int, default=256, help="evaluation examples")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    xtr, ytr = as_tensors(load_dataset("digits", "train"))
    xte, yte = as_tensors(load_dataset("digits", "test"))
    x, y = xte[: args.n], yte[: args.n]
    defenders = {f"mlp{i}": train_mlp(i, xtr, ytr, steps=args.train_steps) for i in range(args.defenders)}
    attacks = {"fgsm": FGSM(0.1), "pgd": PGD(0.1, steps=args.pgd_steps)}

    t0 = time.perf_counter()
    m = build_payoff_matrix(
        defenders, attacks, (x, y), formulation="transfer", seed=args.seed, batch_size=max(args.n, 1), progress=False
    )
    t_builder = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive, naive_crafts = naive_transfer(defenders, attacks, x, y, seed=args.seed)
    t_naive = time.perf_counter() - t0
    same = bool(np.array_equal(naive, m.values))

    shape = f"{m.shape[0]} x {m.shape[1]}"
    print(f"transfer game on digits: {args.defenders} MLP defenders = sources, FGSM + PGD-{args.pgd_steps}, "
          f"n = {args.n}, torch {torch.__version__}, 1 thread; matrices identical: {same}\n")
    print("| method | matrix | crafts | wall time (s) |")
    print("| --- | --- | ---: | ---: |")
    print(f"| build_payoff_matrix (craft once per attack x source) | {shape} | {m.metadata['crafts']} | {t_builder:.2f} |")
    print(f"| naive loop (craft per cell) | {shape} | {naive_crafts} | {t_naive:.2f} |")
    print(f"\nspeed-up: {t_naive / t_builder:.2f}x")


if __name__ == "__main__":
    main()
