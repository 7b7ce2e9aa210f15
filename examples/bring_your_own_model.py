"""Bring your own model: a ResNet trained with plain PyTorch becomes a defender of the game.

Usage::

    python examples/bring_your_own_model.py [--out runs/byom] [--epochs 6] [--n 128]

Steps (see docs/models.md); about a minute on a laptop CPU:

1. train :class:`TinyResNet` (residual blocks with BatchNorm) on the embedded digits data with
   an ordinary PyTorch loop, on *normalised* inputs as most training scripts do, and save its
   ``state_dict`` with ``torch.save`` -- nothing from this library is involved;
2. register the class (consent to import it) and convert the ``.pt`` file into a checkpoint
   (``import_model``; the command line equivalent is ``gtdefense import-model``), with
   ``normalize = {mean, std}`` so that the defender takes inputs in [0, 1] like every other;
3. build the payoff matrix of the ResNet, and SAP on top of it, against FGSM and PGD (the
   data given as a ``DataLoader``), solve the game, save the equilibrium ensemble;
4. load the ensemble back and evaluate it under adaptive attacks.

The class lives in this file, so it is importable as ``bring_your_own_model:TinyResNet`` by
any process that has ``examples/`` on its ``PYTHONPATH``; the script prints the
``gtdefense evaluate`` command that loads the saved ensemble in a fresh process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

#: Per-channel statistics the training loop below normalises the digits with.
MEAN, STD = [0.3], [0.4]


class Block(nn.Module):
    """Basic residual block (He et al., 2016): conv-BN-ReLU-conv-BN plus the input, then ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # one module per call site: SAP acts on each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    """A two-block ResNet for 1x8x8 digits; expects normalised inputs (no normalisation inside)."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def train_plain(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, generator: torch.Generator
) -> nn.Module:
    """An ordinary PyTorch training loop (Adam, cross-entropy) on inputs normalised with MEAN/STD."""
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model((x[idx] - mean) / std), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    from torch.utils.data import DataLoader

    from gametheory_defense import MixedStrategyModel, evaluate, solve_zero_sum
    from gametheory_defense.attacks import FGSM, PGD
    from gametheory_defense.checkpoint import import_model
    from gametheory_defense.data import load_dataset
    from gametheory_defense.models import register_model
    from payoff import DefenderSpec, build_payoff_matrix

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/byom"), help="output directory")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the plain PyTorch loop")
    parser.add_argument("--n", type=int, default=100, help="test images for the game and the evaluation")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. plain PyTorch: train and save a state dict
    train = load_dataset("digits", "train", progress=False)
    torch.manual_seed(0)  # the script's own model initialisation (a user's script, not the library)
    net = train_plain(TinyResNet(width=8), train.images, train.labels, epochs=args.epochs,
                      generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), args.out / "resnet.pt")

    # 2. consent to import the class, then convert the .pt file into a checkpoint
    register_model("bring_your_own_model:TinyResNet")
    ckpt = import_model(
        args.out / "resnet.pt",
        args.out / "models" / "resnet",
        architecture="bring_your_own_model:TinyResNet",
        kwargs={"width": 8},
        input_shape=(1, 8, 8),
        normalize={"mean": MEAN, "std": STD},
        dataset="digits",
    )

    # 3. the game: the ResNet, and SAP on its activations, against FGSM and PGD
    test = load_dataset("digits", "test", progress=False).subset(args.n)
    defenders = {
        "resnet": DefenderSpec("resnet", ckpt, None),
        "resnet+sap2": DefenderSpec("resnet+sap2", ckpt, {"frac": 2.0, "mode": "exact", "layers": None}),
    }
    attackers = {"fgsm": FGSM(eps=0.1, eot_samples=4), "pgd": PGD(eps=0.1, steps=10, eot_samples=4)}
    matrix = build_payoff_matrix(
        defenders, attackers, DataLoader(test, batch_size=64), repeats=2, seed=0, progress=False
    )
    for name, row in zip(matrix.defenders, matrix.values):
        print(f"{name:>14}: " + "  ".join(f"{a} {v:.3f}" for a, v in zip(matrix.attackers, row)))
    eq = solve_zero_sum(matrix)
    support = ", ".join(f"{n} {p:.3f}" for n, p in zip(eq.defenders, eq.defender_strategy))
    print(f"game value {eq.value:.3f}; defender mixture: {support}")
    models = {name: spec.load() for name, spec in defenders.items()}
    mixture = MixedStrategyModel.from_equilibrium(eq, models)
    mixture.metadata["dataset"] = "digits"  # so that `gtdefense evaluate` needs no --dataset
    mixture.save(args.out / "ensemble", overwrite=True)

    # 4. load the ensemble back (the registration above covers its members) and attack it with
    #    EOT-PGD (the full adaptive suite: evaluate(ensemble, test, "adaptive", eps=0.1))
    ensemble = MixedStrategyModel.load(args.out / "ensemble")
    eot_pgd = {"eot-pgd": PGD(eps=0.1, steps=10, eot_samples=4)}
    report = evaluate(ensemble, test, eot_pgd, batch_size=64, seed=0, sanity_checks=False, progress=False)
    print(report.to_markdown())
    print(
        f"in a fresh process: PYTHONPATH={Path(__file__).resolve().parent} "
        f"gtdefense evaluate {args.out / 'ensemble'} --trust-code"
    )


if __name__ == "__main__":
    main()
