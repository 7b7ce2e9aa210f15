import torch, sys
sys.path.insert(0, "tests")
from test_adaptive_attacks import _fit_mlp, _per_member_pgd
from gametheory_defense.data import load_dataset
from gametheory_defense.ensemble import MixedStrategyModel
from gametheory_defense.attacks import PGD, MixturePGD, ARC, APGDCE, APGDDLR
from gametheory_defense.attacks.mixture import mixture_components, expected_accuracy
torch.set_num_threads(1)
tr, te = load_dataset("digits","train"), load_dataset("digits","test")
ms = [_fit_mlp(tr.images, tr.labels, 0, 64), _fit_mlp(tr.images[::2], tr.labels[::2], 1, 48), _fit_mlp(tr.images[1::2], tr.labels[1::2], 2, 32)]
st = [0.5, 0.3, 0.2]; mix = MixedStrategyModel(ms, st); comps = mixture_components(mix)
x, y = te.images, te.labels
ev = lambda xa: expected_accuracy(comps, xa, y).mean().item()
print("| eps | clean | per-member PGD | MixturePGD | ARC | APGD-CE (mixture forward, EOT 10) |")
print("| --- | --- | --- | --- | --- | --- |")
for eps in [0.05, 0.1, 0.15]:
    r = {k: [] for k in ["pm", "mp", "arc", "apgd"]}
    for s in range(3):
        g = lambda: torch.Generator().manual_seed(s)
        r["pm"].append(ev(_per_member_pgd(ms, st, x, y, eps, 20, s)))
        r["mp"].append(ev(MixturePGD(eps, steps=20)(mix, x, y, generator=g())))
        r["arc"].append(ev(ARC(eps, steps=20)(mix, x, y, generator=g())))
        r["apgd"].append(ev(APGDCE(eps, steps=20, eot_samples=10)(mix, x, y, generator=g())))
    m = {k: 100*sum(v)/3 for k, v in r.items()}
    print(f"| {eps} | {100*ev(x):.1f} | {m['pm']:.1f} | {m['mp']:.1f} | {m['arc']:.1f} | {m['apgd']:.1f} |")
