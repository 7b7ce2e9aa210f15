"""Load a saved mixed-strategy ensemble and classify images with it.

Usage::

    python examples/classify_with_ensemble.py runs/demo/ensemble [--n 16] [--seed 0]

Each image is answered by a member drawn from the equilibrium mixture (``sample="per-example"``);
``expected`` mode gives the mixture's expected prediction instead.
"""

from __future__ import annotations

import argparse

import torch

from gametheory_defense import MixedStrategyModel
from gametheory_defense.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensemble", help="directory written by MixedStrategyModel.save (e.g. runs/demo/ensemble)")
    parser.add_argument("--n", type=int, default=16, help="number of test images to classify")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = MixedStrategyModel.load(args.ensemble)
    print("members:", ", ".join(f"{n} ({p:.3f})" for n, p in zip(model.names, model.strategy)))
    test = load_dataset("digits", "test")
    x, y = test.images[: args.n], test.labels[: args.n]

    generator = torch.Generator().manual_seed(args.seed)
    model.generator = generator           # member draws and SAP draws come from this generator
    with torch.no_grad():
        sampled = model(x).argmax(1)       # per-example member draws
        model.sample = "expected"
        expected = model(x).argmax(1)      # the mixture's expected prediction
    print("labels:   ", y.tolist())
    print("sampled:  ", sampled.tolist())
    print("expected: ", expected.tolist())
    print(f"accuracy: sampled {(sampled == y).float().mean():.3f}, expected {(expected == y).float().mean():.3f}")


if __name__ == "__main__":
    main()
