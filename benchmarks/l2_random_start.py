"""Which random start makes L2 PGD strongest? Paired per image over several seeds (issue 13).

Not a test: it prints a markdown table. Three starting points for L2 PGD (Madry et al., 2018),
everything else equal (steps, step size ``2.5 eps / steps``, CE loss, one restart):

- ``ball``: uniform in the L2 ball (a normalised Gaussian direction times ``eps * U^(1/d)``);
  in ``d`` dimensions almost every such point lies near the sphere of radius ``eps``;
- ``radius``: a normalised Gaussian direction times ``eps * U`` (uniform *radius*, the start
  of torchattacks' ``PGDL2``): typically ``eps / 2`` from ``x``;
- ``none``: ``x`` itself.

For each model and seed, every image is attacked with each start from the same generator
seed; the table gives the robust accuracy (mean over seeds) and the paired difference with
``none`` (mean over images of the per-image robust rate difference averaged over seeds, 95%
normal interval over images).

Models: the digits MLPs of ``benchmarks/autoattack_parity.py`` (standard, PGD-AT; L2 eps 1.0
on 8x8 images) and, if ``--mnist-checkpoint`` is given, the MNIST PGD-AT ``small-cnn`` (L2 eps
2.0 on its first ``--n-mnist`` test images).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/l2_random_start.py --work /tmp/parity --seeds 5 \\
        --mnist-checkpoint /tmp/parity/mnist-at --n-mnist 500
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gametheory_defense.attacks import base as attack_base  # noqa: E402
from gametheory_defense.attacks import PGD  # noqa: E402
from gametheory_defense.stochastic import random_tensor  # noqa: E402

LAWS = ("ball", "radius", "none")


def _start(law: str):  # type: ignore[no-untyped-def]
    def start(x: torch.Tensor, *, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
        kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
        delta = random_tensor("randn", x.shape, **kw)
        n = x.shape[0]
        u = random_tensor("rand", (n,), **kw)
        radius = eps * (u.pow(1.0 / delta[0].numel()) if law == "ball" else u)
        norms = delta.reshape(n, -1).norm(dim=1).clamp_min(1e-12)
        return (x + delta * (radius / norms).view(-1, *([1] * (x.dim() - 1)))).clamp(0.0, 1.0)

    return start


def robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, law: str, eps: float, steps: int,
           seed: int) -> np.ndarray:
    saved = attack_base.random_start
    try:
        if law != "none":
            attack_base.random_start = _start(law)
        attack = PGD(eps, steps=steps, norm="l2", random_start=law != "none")
        out = []
        g = torch.Generator().manual_seed(seed)
        for i in range(0, len(y), 500):
            xa = attack(model, x[i : i + 500], y[i : i + 500], generator=g)
            with torch.no_grad():
                out.append((model(xa).argmax(1) == y[i : i + 500]).numpy())
        return np.concatenate(out).astype(float)
    finally:
        attack_base.random_start = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "parity", help="where the digits models live/go")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--mnist-checkpoint", type=Path, default=None)
    p.add_argument("--n-mnist", type=int, default=500)
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO / "benchmarks"))
    from autoattack_parity import DEFAULT_MNIST, _train  # the same models

    from gametheory_defense.checkpoint import load_checkpoint
    from gametheory_defense.data import as_tensors, load_dataset

    args.work.mkdir(parents=True, exist_ok=True)
    cases = []
    for name in ("digits-standard", "digits-at"):
        _, model, x, y, _ = _train(name, args.work, DEFAULT_MNIST, 0, 0)
        cases.append((name, model, x, y, 1.0))
    if args.mnist_checkpoint is not None:
        model = load_checkpoint(args.mnist_checkpoint, sap=None).model
        x, y = as_tensors(load_dataset("mnist", "test", data_dir=DEFAULT_MNIST).subset(args.n_mnist))
        cases.append(("mnist-at", model, x, y, 2.0))

    print(f"\nL2 PGD, {args.steps} steps, step 2.5 eps / steps, CE, 1 restart; {args.seeds} seeds; "
          "robust accuracy (%) and paired difference with `none` (points, 95% CI over images)\n")
    print("| model | L2 eps | n | " + " | ".join(LAWS) + " | ball - none | radius - none | ball - radius |")
    print("| --- | ---: | ---: |" + " ---: |" * len(LAWS) + " --- | --- | --- |")
    for name, model, x, y, eps in cases:
        for prm in model.parameters():
            prm.requires_grad_(False)
        rates = {law: np.mean([robust(model, x, y, law, eps, args.steps, s) for s in range(args.seeds)], axis=0)
                 for law in LAWS}

        def diff(a: str, b: str) -> str:
            d = rates[a] - rates[b]
            half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
            return f"{100 * d.mean():+.2f} [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}]"

        print(f"| {name} | {eps:g} | {len(y)} | " + " | ".join(f"{100 * rates[k].mean():.2f}" for k in LAWS)
              + f" | {diff('ball', 'none')} | {diff('radius', 'none')} | {diff('ball', 'radius')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
