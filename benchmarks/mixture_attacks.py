"""Attacks aimed at a mixture versus PGD aimed at one member at a time (digits).

Trains three small MLPs on digits (different seeds, widths and halves of the data), mixes them
0.5/0.3/0.2, and prints the mixture's expected accuracy under per-member PGD (each example
attacked through a member drawn from the mixture), MixturePGD (Dbouk & Shanbhag 2022's
expected-loss baseline), ARC (Dbouk & Shanbhag 2022) and APGD-CE with EOT (Croce & Hein 2020),
at the same eps and step budget, averaged over seeds.

    python benchmarks/mixture_attacks.py [--eps 0.05 0.1 0.15] [--steps 20] [--seeds 3]
"""

from __future__ import annotations

import argparse

import torch

from gametheory_defense.attacks import APGDCE, ARC, PGD, MixturePGD
from gametheory_defense.attacks.mixture import expected_accuracy, mixture_components
from gametheory_defense.data import load_dataset
from gametheory_defense.ensemble import MixedStrategyModel
from gametheory_defense.models import build_model
from gametheory_defense.training import train


def member(train_set, seed: int, part: slice):
    g = torch.Generator().manual_seed(seed)
    model = build_model("mlp", input_shape=train_set.input_shape, num_classes=10, generator=g)
    idx = list(range(len(train_set)))[part]
    train(model, train_set.subset(idx), epochs=20, batch_size=64, generator=g, progress=False)
    return model.eval()


def per_member_pgd(members, strategy, x, y, eps, steps, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(torch.tensor(strategy), len(y), replacement=True, generator=g)
    x_adv = x.clone()
    for i, m in enumerate(members):
        sel = idx == i
        if sel.any():
            x_adv[sel] = PGD(eps, steps=steps)(m, x[sel], y[sel], generator=g)
    return x_adv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    members = [member(tr, 0, slice(None)), member(tr, 1, slice(0, None, 2)), member(tr, 2, slice(1, None, 2))]
    strategy = [0.5, 0.3, 0.2]
    mix = MixedStrategyModel(members, strategy)
    comps = mixture_components(mix)
    x, y = te.images, te.labels

    def ev(xa):
        return expected_accuracy(comps, xa, y).mean().item()

    print(f"mixture of 3 digits MLPs (0.5/0.3/0.2), {len(y)} test images, L-inf, {args.steps} steps, {args.seeds} seeds")
    print("| eps | clean | per-member PGD | MixturePGD | ARC | APGD-CE (EOT 10) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for eps in args.eps:
        r = {k: [] for k in ["pm", "mp", "arc", "apgd"]}
        for s in range(args.seeds):
            def g(s=s):
                return torch.Generator().manual_seed(s)
            r["pm"].append(ev(per_member_pgd(members, strategy, x, y, eps, args.steps, s)))
            r["mp"].append(ev(MixturePGD(eps, steps=args.steps)(mix, x, y, generator=g())))
            r["arc"].append(ev(ARC(eps, steps=args.steps)(mix, x, y, generator=g())))
            r["apgd"].append(ev(APGDCE(eps, steps=args.steps, eot_samples=10)(mix, x, y, generator=g())))
        m = {k: 100 * sum(v) / len(v) for k, v in r.items()}
        print(f"| {eps:g} | {100 * ev(x):.1f} | {m['pm']:.1f} | {m['mp']:.1f} | {m['arc']:.1f} | {m['apgd']:.1f} |")


if __name__ == "__main__":
    main()
