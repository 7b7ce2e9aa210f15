"""``gtdefense attack``: clean and adversarial accuracy of a checkpoint under one attack."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from gametheory_defense.cli import add_sap_activations_option, add_trust_code_option, sap_request

__all__ = ["register", "run", "NON_EOT_WARNING"]

log = logging.getLogger(__name__)

NON_EOT_WARNING = (
    "warning: SAP makes the model randomized; accuracy under an attack without EOT "
    "(--eot-samples 1) is not a robustness claim (Athalye et al. 2018): use --eot-samples >= 10"
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``attack`` subcommand."""
    from gametheory_defense.attacks import ATTACKS, LOSSES, NORMS
    from gametheory_defense.data import DATASETS
    from gametheory_defense.sap import SAP_MODES

    p = subparsers.add_parser(
        "attack",
        help="measure a checkpoint's clean and adversarial accuracy under one attack",
        description=(
            "Load CKPT (NAME.safetensors + NAME.json), optionally add Stochastic Activation Pruning, "
            "attack the first N test images and print clean and adversarial accuracy. Attack "
            "arguments not given take the attack's own defaults."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint path (NAME, NAME.safetensors or NAME.json)")
    p.add_argument("--attack", default="pgd", choices=sorted(ATTACKS), help="attack (default pgd)")
    p.add_argument("--eps", type=float, default=0.3, help="attack radius in [0,1] input units (default 0.3)")
    p.add_argument("--steps", type=int, default=None, help="iterations (default: the attack's)")
    p.add_argument("--step-size", type=float, default=None, help="step size (default: the attack's)")
    p.add_argument("--norm", default=None, choices=list(NORMS), help="threat model (default: the attack's)")
    p.add_argument("--loss", default=None, choices=sorted(LOSSES), help="loss to maximise (default: the attack's)")
    p.add_argument("--restarts", type=int, default=None, help="random restarts (default: the attack's)")
    p.add_argument("--eot-samples", type=int, default=None,
                   help="gradient samples per step (Expectation over Transformation; default: the attack's)")
    p.add_argument("--sap-frac", type=float, default=None, help="add SAP with this draw fraction")
    p.add_argument("--sap-mode", default="exact", choices=list(SAP_MODES), help="SAP sampling mode (default exact)")
    add_sap_activations_option(p)
    p.add_argument("--n", type=int, default=1000, help="attack the first N test images (default 1000)")
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="data set (default: the one recorded in the checkpoint)")
    p.add_argument("--data-dir", default=None, help="directory holding the data set files")
    p.add_argument("--download", action="store_true", help="download the data set if missing")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's and SAP's randomness (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per attack call (default 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_code_option(p)
    p.set_defaults(func=run)


def _attack_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The attack arguments the user gave (None means: the attack's default)."""
    names = ("steps", "step_size", "norm", "loss", "restarts", "eot_samples")
    kwargs: dict[str, object] = {"eps": args.eps}
    kwargs.update({k: getattr(args, k) for k in names if getattr(args, k) is not None})
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Load, (optionally) add SAP, attack, print accuracies."""
    import torch

    from gametheory_defense.attacks import RandomizedDefenseWarning, build_attack
    from gametheory_defense.checkpoint import load_checkpoint, read_metadata
    from gametheory_defense.data import load_dataset
    from gametheory_defense.errors import ConfigError
    from gametheory_defense.training import _resolve_device, accuracy

    _resolve_device(args.device)  # an unknown or unavailable device is one line, not a traceback
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    attack = build_attack(args.attack, **_attack_kwargs(args))  # fail fast on bad attack arguments

    meta = read_metadata(args.checkpoint)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise ConfigError(f"{args.checkpoint}: the checkpoint records no data set; pass --dataset")
    sap = sap_request(args)
    ckpt = load_checkpoint(args.checkpoint, device=args.device, sap=sap, trust_code=args.trust_code)

    test_set = load_dataset(dataset, "test", data_dir=args.data_dir, download=args.download)
    test_set = test_set.subset(min(args.n, len(test_set.labels)))
    want = list(meta["architecture"]["input_shape"])
    if list(test_set.input_shape) != want:
        raise ConfigError(
            f"{args.checkpoint}: model expects inputs {want}, data set {dataset!r} has {list(test_set.input_shape)}"
        )

    from gametheory_defense.stochastic import is_stochastic

    eot = getattr(attack, "eot_samples", None) or args.eot_samples or 1
    warned = is_stochastic(ckpt.model) and eot <= 1
    if warned:
        print(NON_EOT_WARNING, file=sys.stderr)

    clean_gen = torch.Generator().manual_seed(args.seed)
    attack_gen = torch.Generator().manual_seed(args.seed + 1)
    clean = accuracy(ckpt.model, test_set, batch_size=args.batch_size, device=args.device, generator=clean_gen)
    with warnings.catch_warnings():
        if warned:  # said once above, in CLI terms; the attack would repeat it for every batch
            warnings.simplefilter("ignore", RandomizedDefenseWarning)
        adv = accuracy(ckpt.model, test_set, attack=attack, batch_size=args.batch_size, device=args.device,
                       generator=attack_gen, progress=not args.no_progress)
    settings = ", ".join(f"{k}={v}" for k, v in sorted(_attack_kwargs(args).items()))
    sap_note = "" if args.sap_frac is None else f", SAP frac={args.sap_frac:g} mode={args.sap_mode}"
    if args.sap_activations is not None:
        sap_note += f" activations={','.join(args.sap_activations)}"
    n = len(test_set.labels)
    print(f"clean accuracy {clean:.4f}, adversarial accuracy {adv:.4f} "
          f"({args.attack}: {settings}{sap_note}; {n} {dataset} test images)")
    return 0
