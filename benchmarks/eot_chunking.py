"""How many EOT draws to stack per forward pass on this machine (issue 13).

Not a test: prints a markdown table. For a SAP ``small-cnn`` (MNIST-sized inputs) and a SAP
MLP, a batch of ``N`` images and ``S`` EOT draws, it times one EOT gradient
(:func:`gametheory_defense.attacks.eot_gradient`) with ``max_batch = c * N`` for copies per
chunk ``c`` in 1 (a loop over draws), 2, 4, ... , ``S`` (every draw stacked into one
batch), and the library's default (``max_batch=None``). Minimum and median of
``--repeats`` interleaved runs, milliseconds per draw; the ratio is to the per-draw loop.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/eot_chunking.py --batch 128,256 --draws 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gametheory_defense.attacks import eot_gradient  # noqa: E402
from gametheory_defense.attacks.losses import ce_loss  # noqa: E402
from gametheory_defense.models import build_model  # noqa: E402
from gametheory_defense.sap import apply_sap  # noqa: E402
from gametheory_defense.stochastic import use_generator  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", default="128,256")
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--archs", default="small-cnn,mlp")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    s_total = args.draws
    copies = sorted({c for c in (1, 2, 4, 5, 10, s_total) if c <= s_total})
    print(f"\nEOT gradient, {s_total} draws, SAP frac 1.0 (exact), device {dev}, torch threads "
          f"{torch.get_num_threads()}; ms per draw (min / median of {args.repeats}); ratio of the min to the loop\n")
    print("| model | N | " + " | ".join(f"c={c}" for c in copies) + " | default (max_batch=None) |")
    print("| --- | ---: |" + " --- |" * (len(copies) + 1))
    for arch in args.archs.split(","):
        g = torch.Generator().manual_seed(0)
        shape = (1, 28, 28)
        model = apply_sap(build_model(arch, input_shape=shape, num_classes=10, generator=g), 1.0).to(dev).eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        for n in (int(b) for b in args.batch.split(",")):
            x = torch.rand((n, *shape), generator=g).to(dev)
            y = torch.randint(0, 10, (n,), generator=g).to(dev)
            settings = [(f"c={c}", c * n) for c in copies] + [("default", None)]
            times: dict[str, list[float]] = {k: [] for k, _ in settings}
            for _ in range(args.repeats + 1):  # first round warms up
                for key, cap in settings:
                    with use_generator(model, torch.Generator().manual_seed(1)):
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        eot_gradient(model, x, y, ce_loss, eot_samples=s_total, max_batch=cap)
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        times[key].append((time.perf_counter() - t0) * 1000 / s_total)
            base = min(times["c=1"][1:])
            cells = []
            for key, _ in settings:
                t = times[key][1:]
                cells.append(f"{min(t):.2f} / {statistics.median(t):.2f} ({min(t) / base:.2f}x)")
            print(f"| {arch} | {n} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
