"""Train one model of a run configuration exactly as ``gtdefense run`` would, without the others.

The pipeline's training step (same seed derivation, recipe and checkpoint) restricted to
``--model``; the checkpoint lands in ``OUT/models/NAME`` and is reused by a later ``gtdefense run``
with the same configuration and ``--out``. Used to re-measure one model under a newer suite:

    python benchmarks/train_one.py --config examples/mnist_paper.toml --model pgd-at-0.3 \\
        --data-dir ../shared/data/mnist --out runs/paper --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from gametheory_defense.config import load_config
from gametheory_defense.data import load_dataset
from gametheory_defense.pipeline import _train_models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", required=True, help="name of a [[models]] entry")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (weights may depend on it)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    c = load_config(args.config)
    models = tuple(m for m in c.models if m.name == args.model)
    if not models:
        parser.error(f"--model {args.model!r} is not in {args.config}; it has {', '.join(m.name for m in c.models)}")
    data = c.data if args.data_dir is None else dataclasses.replace(c.data, data_dir=args.data_dir)
    c = dataclasses.replace(c, models=models, data=data)
    train_set = load_dataset(data.dataset, "train", data_dir=data.data_dir)
    if data.train_size is not None:
        train_set = train_set.subset(min(data.train_size, len(train_set)))
    test = load_dataset(data.dataset, "test", data_dir=data.data_dir)
    eval_set = test.subset(list(range(data.eval_offset, data.eval_offset + data.eval_size)))
    paths = _train_models(c, args.out, train_set, eval_set, device=torch.device(args.device), resume=True,
                          progress=True)
    print(paths[args.model])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
