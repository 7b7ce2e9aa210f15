"""Overhead of Stochastic Activation Pruning (Dhillon et al., ICLR 2018) on a forward+backward pass.

Times one forward+backward pass (gradient w.r.t. the input and the parameters, as an
attack or adversarial training step needs) of a model from
:func:`gametheory_defense.models.build_model` without SAP, with SAP in ``fast`` and
``exact`` mode (also on the same model written with ``F.relu`` calls, which ``apply_sap``
turns into a :class:`~gametheory_defense.sap.SAPForward`), and with a naive reference that calls ``torch.multinomial`` once per
example in a Python loop (the same sampling law as ``exact``). Variants are timed
round-robin in the same process, so slow drift of a shared machine hits all alike; each
entry is the median over ``--repeats`` rounds. Targets: ``fast`` <= 1.5x, ``exact`` <= 3x.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sap_overhead.py --threads 1 --repeats 15

This is a benchmark, not a test: it prints a markdown table and gates nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gametheory_defense.models import build_model
from gametheory_defense.sap import StochasticActivationPruning, apply_sap
from gametheory_defense.stochastic import StochasticModule, use_generator

TARGETS = {"sap-fast": 1.5, "sap-exact": 3.0}


class NaiveSAP(StochasticModule):
    """Reference SAP: one ``torch.multinomial`` call per example (a Python loop)."""

    def __init__(self, frac: float) -> None:
        super().__init__()
        self.frac = frac

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(h.shape[0], -1)
        a = flat.detach().abs()
        n = a.shape[1]
        r = StochasticActivationPruning(self.frac).num_draws(n)
        total = a.sum(dim=1, keepdim=True)
        p = a / torch.where(total > 0, total, torch.ones_like(total))
        mask = torch.zeros_like(a)
        for i in range(a.shape[0]):  # the per-example loop that apply_sap avoids
            if total[i] > 0:
                idx = torch.multinomial(p[i], r, replacement=True, generator=self.generator)
                mask[i, idx] = 1.0
        q = -torch.expm1(r * torch.log1p(-p.clamp(max=1.0)))
        scale = torch.where(q > 0, 1.0 / q.clamp(min=torch.finfo(q.dtype).tiny), torch.zeros_like(q))
        return (flat * mask * scale).reshape(h.shape)


def naive_model(model: nn.Module, frac: float) -> nn.Module:
    """``model`` with SAP after every ReLU, sampled by :class:`NaiveSAP`."""
    sap_model = apply_sap(model, frac, mode="exact")
    for parent in list(sap_model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StochasticActivationPruning):
                setattr(parent, name, NaiveSAP(frac))
    return sap_model


class FunctionalReLU(nn.Module):
    """The layers of a sequential model run in a loop, with ``F.relu`` calls for its ``nn.ReLU``.

    ``apply_sap`` turns it into a :class:`~gametheory_defense.sap.SAPForward` (generated
    code) instead of wrapping modules: the same computation, to time that path.
    """

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.layers = nn.ModuleList(m for m in model if not isinstance(m, nn.ReLU))
        self.relu_after = [i for i, m in enumerate(self.layers) if _followed_by_relu(model, m)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.relu_after:
                x = F.relu(x)
        return x


def _followed_by_relu(model: nn.Sequential, layer: nn.Module) -> bool:
    items = list(model)
    i = next(k for k, m in enumerate(items) if m is layer)
    return i + 1 < len(items) and isinstance(items[i + 1], nn.ReLU)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Callable[[], None]:
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_(True)
        loss_fn(model(xx), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (median reported)")
    parser.add_argument("--naive-repeats", type=int, default=3, help="rounds for the slow naive reference")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--frac", type=float, default=1.0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    base = build_model(args.model, input_shape=(1, 28, 28), num_classes=10, generator=gen).to(device).eval()
    x = torch.rand((args.batch_size, 1, 28, 28), generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    variants: dict[str, nn.Module] = {
        "no SAP": base,
        "sap-fast": apply_sap(base, args.frac, mode="fast"),
        "sap-exact": apply_sap(base, args.frac, mode="exact"),
        "sap-exact, F.relu model (SAPForward)": apply_sap(FunctionalReLU(base), args.frac, mode="exact"),
        "naive multinomial loop": naive_model(base, args.frac),
    }
    sap_gen = torch.Generator(device=device).manual_seed(1)
    steps = {name: make_step(m, x, y, device) for name, m in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, step in steps.items():
        with use_generator(variants[name], sap_gen):
            for _ in range(args.warmup if name != "naive multinomial loop" else 1):
                step()
    for rnd in range(args.repeats):  # round-robin: machine drift hits every variant alike
        for name, step in steps.items():
            if name == "naive multinomial loop" and rnd >= args.naive_repeats:
                continue
            with use_generator(variants[name], sap_gen):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)

    ref = statistics.median(times["no SAP"])
    print(
        f"\nSAP overhead, forward+backward, {args.model}, batch {args.batch_size}, 1x28x28, "
        f"frac={args.frac}, device={device}, threads={args.threads}, torch {torch.__version__}\n"
    )
    print("| variant | ms/iter (median) | ratio | target |")
    print("| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        med = statistics.median(ts)
        target = f"<= {TARGETS[name]}x" if name in TARGETS else ""
        print(f"| {name} | {1e3 * med:.2f} | {med / ref:.2f}x | {target} |")


if __name__ == "__main__":
    main()
