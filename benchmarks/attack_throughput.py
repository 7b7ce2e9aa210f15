"""Cost of a PGD step against a bare forward+backward loop (and torchattacks' PGD).

Not a test: it prints a markdown table and never fails on a time. The target is a PGD
step costing at most 1.10x one forward+backward pass for the input gradient on the same
model and batch.

Rows (all with the same model weights, batch and number of steps; minimum and median
of ``--repeats`` interleaved runs, milliseconds per step; on a shared machine the
minimum is the steadier estimate of the intrinsic cost):

- ``bare fwd+bwd (input grad)``: ``torch.autograd.grad(loss, x)`` with frozen
  parameters, the least work any gradient attack does per step; the reference (1.00x).
- ``bare fwd+bwd (loss.backward)``: the naive loop, which also computes every
  parameter's gradient.
- ``gametheory_defense PGD``: ``PGD(eps, steps=steps)(model, x, y, generator=g)``,
  including its input checks, random start and runtime warnings checks.
- ``torchattacks PGD`` (with ``--torchattacks-python``): torchattacks' PGD timed in that
  interpreter through a subprocess, on the same weights (saved with safetensors), next
  to the bare loop timed in the same subprocess (its ratio is to that bare loop).

Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_throughput.py \\
        --torchattacks-python /tmp/ta/bin/python

torchattacks can live in its own environment (it imports without torchvision when
installed with ``--no-deps``): ``python -m venv /tmp/ta && /tmp/ta/bin/pip install
torch==2.13.0 && /tmp/ta/bin/pip install --no-deps torchattacks safetensors && /tmp/ta/bin/pip
install scipy tqdm requests numpy``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class LocalSmallCNN(nn.Sequential):
    """Stand-in for ``small-cnn`` when ``gametheory_defense.models`` is unavailable."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 100),
            nn.ReLU(),
            nn.Linear(100, NUM_CLASSES),
        )


def build(arch: str, generator: torch.Generator | None = None) -> nn.Module:
    """The benchmark model: ``small-cnn`` from the library, or the local stand-in."""
    if arch == "small-cnn":
        from gametheory_defense.models import build_model

        return build_model("small-cnn", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, generator=generator)
    model = LocalSmallCNN()
    if generator is not None:
        with torch.no_grad():
            for p in model.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
    return model


def default_arch() -> str:
    try:
        import gametheory_defense.models  # noqa: F401
    except ImportError:
        return "local-small-cnn"
    return "small-cnn"


def bare_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, params: bool) -> None:
    """``steps`` forward+backward passes: input gradient only, or ``loss.backward()`` on all."""
    for p in model.parameters():
        p.requires_grad_(params)
    try:
        for _ in range(steps):
            leaf = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(leaf), y)
            if params:
                loss.backward()
            else:
                torch.autograd.grad(loss, leaf)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each function in ``repeats`` interleaved runs (after one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - t0)
    return times


def worker(args: argparse.Namespace) -> int:
    """Run inside the torchattacks interpreter: time its PGD and the bare loop, print JSON."""
    import torchattacks
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tensors = load_file(args.worker)
    x, y = tensors.pop("__x__").to(device), tensors.pop("__y__").to(device)
    model = build(args.arch).to(device)
    model.load_state_dict(tensors)
    model.eval()
    atk = torchattacks.PGD(model, eps=args.eps, alpha=2.5 * args.eps / args.steps, steps=args.steps, random_start=True)
    res = time_runs(
        {
            "bare": lambda: bare_loop(model, x, y, args.steps, params=False),
            "torchattacks": lambda: atk(x, y),
        },
        args.repeats,
        device,
    )
    print(json.dumps({"version": torchattacks.__version__, "torch": torch.__version__, **res}))
    return 0


def run_torchattacks(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file({**state, "__x__": x.cpu(), "__y__": y.cpu()}, str(path))
        cmd = [
            args.torchattacks_python, str(Path(__file__).resolve()), "--worker", str(path),
            "--arch", args.arch, "--batch", str(args.batch), "--steps", str(args.steps),
            "--eps", str(args.eps), "--repeats", str(args.repeats), "--threads", str(args.threads),
            "--device", args.device,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"torchattacks worker failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="small-cnn (library) or local-small-cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torchattacks-python", default=None, help="interpreter with torchattacks installed")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.arch = args.arch or default_arch()
    if args.worker:
        return worker(args)

    from gametheory_defense.attacks import PGD

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    model = build(args.arch, g).to(device).eval()
    x = torch.rand((args.batch, *INPUT_SHAPE), generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device)
    attack = PGD(args.eps, steps=args.steps)
    res = time_runs(
        {
            "bare": lambda: bare_loop(model, x, y, args.steps, params=False),
            "bare-params": lambda: bare_loop(model, x, y, args.steps, params=True),
            "pgd": lambda: attack(model, x, y, generator=torch.Generator().manual_seed(1)),
        },
        args.repeats,
        device,
    )
    ta = run_torchattacks(args, model, x, y) if args.torchattacks_python else None

    def row(name: str, t: list[float], ref: list[float]) -> str:
        best, med = min(t), statistics.median(t)
        return (
            f"| {name} | {1e3 * best / args.steps:.3f} | {1e3 * med / args.steps:.3f} "
            f"| {best / min(ref):.2f}x | {med / statistics.median(ref):.2f}x |"
        )

    print(
        f"PGD step cost: {args.arch}, batch {args.batch}, {args.steps} steps, eps {args.eps}, "
        f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}, "
        f"{args.repeats} interleaved repeats\n"
    )
    print("| loop | ms/step (min) | ms/step (median) | vs bare (min) | vs bare (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(row("bare fwd+bwd (input grad)", res["bare"], res["bare"]))
    print(row("bare fwd+bwd (loss.backward)", res["bare-params"], res["bare"]))
    print(row("gametheory_defense PGD", res["pgd"], res["bare"]))
    if ta is None:
        print("| torchattacks PGD | skipped | skipped | skipped | skipped |")
    else:
        print(row("bare fwd+bwd (input grad), torchattacks interpreter", ta["bare"], ta["bare"]))
        print(row(f"torchattacks {ta['version']} PGD", ta["torchattacks"], ta["bare"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
