"""Helper for tests/test_oracles.py: a PSRO run in its own process, to be SIGKILLed during oracle training.

Usage: ``python tests/_psro_worker.py WORKDIR [--pause SECONDS]``

Builds a small digits game ({an MLP trained on clean data} x {FGSM, PGD}), runs
:func:`double_oracle` with a :class:`TrainingOracle` (``pgd-at``, several epochs per call)
and an exact column oracle over a fixed attack set, with the payoff store and the oracle's
training states under WORKDIR, and prints the result as one JSON line. With ``--pause`` it
sleeps after every training epoch so that a test can kill it mid-training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gametheory_defense.attacks import build_attack
from gametheory_defense.checkpoint import weights_digest
from gametheory_defense.data import load_dataset
from gametheory_defense.double_oracle import double_oracle
from gametheory_defense.models import build_model
from gametheory_defense.oracles import BuilderRows, TrainingOracle
from payoff import PayoffStore, build_payoff_matrix

N_TRAIN, N_EVAL, EPOCHS = 400, 60, 4


def make_model(g: torch.Generator) -> torch.nn.Module:
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=g)


def run(workdir: Path, pause: float = 0.0) -> dict[str, Any]:
    train = load_dataset("digits", "train").subset(N_TRAIN)
    test = load_dataset("digits", "test").subset(N_EVAL)
    base = make_model(torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(base.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(base(train.images), train.labels).backward()
        opt.step()
    base.eval()
    attacks = {
        "fgsm": build_attack("fgsm", eps=0.1),
        "pgd": build_attack("pgd", eps=0.1, steps=5),
    }
    store = PayoffStore(workdir / "cells")
    members: dict[str, torch.nn.Module] = {"standard": base}
    matrix = build_payoff_matrix(members, attacks, test, store=store, progress=False)

    def on_epoch(name: str, epoch: int, stats: Any) -> None:
        print(f"epoch {name} {epoch}", file=sys.stderr, flush=True)
        if pause:
            time.sleep(pause)

    oracle = TrainingOracle(
        make_model, train, BuilderRows(attacks, test, store=store), attacks, epochs=EPOCHS, batch_size=50,
        lr=1e-2, members=members, workdir=workdir / "oracle", seed=7, progress=False, on_epoch=on_epoch,
    )
    result = double_oracle(matrix, None, oracle, max_iterations=2, tol=0.0, progress=False)
    return {
        "values": np.asarray(result.matrix.values).tolist(),
        "defenders": list(result.matrix.defenders),
        "value": result.equilibrium.value,
        "weights": {n: weights_digest(members[n]) for n in result.added_defenders},
        "resumed_from": [c.resumed_from_epoch for c in oracle.calls],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(run(Path(args.workdir), args.pause)))
