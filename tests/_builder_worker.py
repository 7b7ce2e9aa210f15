"""Helper for tests/test_builder.py: a payoff build in its own process, to be SIGKILLed part-way.

Usage: ``python tests/_builder_worker.py TMPDIR [--stop-after K] [--threads N]``

Writes (once) two digits MLP checkpoints trained from fixed seeds under TMPDIR/ckpt,
then builds the self game of :func:`game` into the store TMPDIR/store. With
``--stop-after K`` the process, once it has written its K-th cell, writes TMPDIR/stopped
and waits to be killed, so a test kills it at a known point whatever the machine's speed
(no race between the test's kill and the worker's next cell). ``--threads`` sets torch's
thread count (the test passes its own, so both processes compute alike). The test
imports :func:`game` to resume the same build in-process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gametheory_defense.attacks import FGSM, PGD
from gametheory_defense.checkpoint import save_checkpoint
from gametheory_defense.data import as_tensors, load_dataset
from gametheory_defense.models import build_model

from payoff import DefenderSpec, PayoffStore

N_EVAL = 48


def _train(seed: int, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def game(root: Path) -> dict[str, Any]:
    """Keyword arguments of the build (checkpoints written on first use)."""
    ckpt = root / "ckpt"
    if not (ckpt / "b.json").is_file():
        x, y = as_tensors(load_dataset("digits", "train"))
        for i, name in enumerate(["a", "b"]):
            save_checkpoint(_train(i, x, y), ckpt / name)
    xt, yt = as_tensors(load_dataset("digits", "test"))
    sap = {"frac": 1.0, "mode": "exact", "layers": None}
    return {
        "defenders": {
            "a": DefenderSpec("a", ckpt / "a"),
            "b": DefenderSpec("b", ckpt / "b"),
            "a+sap": DefenderSpec("a+sap", ckpt / "a", sap=sap),
        },
        "attackers": {"fgsm": FGSM(0.15), "pgd": PGD(0.15, steps=4, eot_samples=2)},
        "data": (xt[:N_EVAL], yt[:N_EVAL]),
        "repeats": 2,
        "seed": 7,
        "batch_size": 32,
        "progress": False,
    }


class StoppingStore(PayoffStore):
    """A store that, after its K-th write, announces it and waits (to be killed there)."""

    def __init__(self, root: Path, stop_after: int, marker: Path) -> None:
        super().__init__(root)
        self.stop_after = stop_after
        self.marker = marker
        self.written = 0

    def put(self, key: str, outcomes: np.ndarray, **kwargs: Any) -> Path:
        path = super().put(key, outcomes, **kwargs)
        self.written += 1
        if self.written == self.stop_after:
            self.marker.write_text(f"{self.written}\n")
            while True:  # until SIGKILL
                time.sleep(1.0)
        return path


def main(argv: list[str]) -> int:
    from payoff import build_payoff_matrix

    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--stop-after", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kwargs = game(args.root)
    (args.root / "ready").write_text("building\n")
    build_payoff_matrix(**kwargs, store=StoppingStore(args.root / "store", args.stop_after, args.root / "stopped"))
    (args.root / "done").write_text("finished\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
