"""``gtdefense train``: train a classifier (clean or PGD-AT) and write a checkpoint."""

from __future__ import annotations

import argparse
import logging

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``train`` subcommand."""
    from gametheory_defense.data import DATASETS
    from gametheory_defense.models import MODELS
    from gametheory_defense.training import METHODS, OPTIMIZERS, train_defaults

    d = train_defaults()  # the defaults of training.train, declared once there

    p = subparsers.add_parser(
        "train",
        help="train a model (standard or PGD adversarial training) and save a checkpoint",
        description=(
            "Train a classifier on a data set, clean (--method standard) or with PGD adversarial "
            "training (--method pgd-at, Madry et al. 2018), evaluate it on the test split and write "
            "OUT.safetensors + OUT.json. SAP is not a training option: it is applied at attack/"
            "evaluation time (gtdefense attack --sap-frac)."
        ),
    )
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="training data set")
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="architecture")
    p.add_argument("--method", default=d["method"], choices=list(METHODS), help=f"training method (default: {d['method']})")
    p.add_argument("--eps", type=float, default=d["eps"], help=f"PGD-AT L-inf radius in [0,1] input units (default {d['eps']:g})")
    p.add_argument("--attack-steps", type=int, default=d["attack_steps"], help=f"PGD-AT inner steps (default {d['attack_steps']})")
    p.add_argument("--step-size", type=float, default=d["step_size"], help="PGD-AT step size (default 2.5*eps/steps)")
    p.add_argument("--eps-warmup-epochs", type=int, default=d["eps_warmup_epochs"], help="ramp eps up linearly over these epochs")
    p.add_argument("--epochs", type=int, default=d["epochs"], help=f"passes over the training data (default {d['epochs']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"examples per step (default {d['batch_size']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"learning rate (default {d['lr']:g})")
    p.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS), help=f"optimizer (default {d['optimizer']})")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help=f"L2 penalty (default {d['weight_decay']:g})")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--eval-size", type=int, default=1000, help="test examples for the final evaluation (default 1000)")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD steps of the final robust evaluation (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of all randomness (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--data-dir", default=None, help="directory holding the data set files")
    p.add_argument("--download", action="store_true", help="download the data set if missing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="checkpoint path NAME (writes NAME.safetensors and NAME.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on the test split, save the checkpoint, print one summary line."""
    import torch

    from gametheory_defense.checkpoint import save_checkpoint
    from gametheory_defense.data import load_dataset
    from gametheory_defense.models import build_model
    from gametheory_defense.training import TRAIN_SETTINGS, _resolve_device, accuracy, default_eval_attack, train

    _resolve_device(args.device)  # fail before loading data: one line for a bad or missing device
    for flag, value, low in (("--train-size", args.train_size, 1), ("--eval-size", args.eval_size, 1),
                             ("--eval-steps", args.eval_steps, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")

    train_set = load_dataset(args.dataset, "train", data_dir=args.data_dir, download=args.download)
    if args.train_size is not None:
        train_set = train_set.subset(args.train_size)
    test_set = load_dataset(args.dataset, "test", data_dir=args.data_dir, download=args.download)
    test_set = test_set.subset(min(args.eval_size, len(test_set.labels)))

    generator = torch.Generator().manual_seed(args.seed)
    model = build_model(
        args.model, input_shape=train_set.input_shape, num_classes=train_set.num_classes, generator=generator
    )
    result = train(
        model,
        train_set,
        **{k: getattr(args, k) for k in TRAIN_SETTINGS},  # declared once, in training
        device=args.device,
        generator=generator,
        progress=not args.no_progress,
    )

    eval_generator = torch.Generator().manual_seed(args.seed + 1)
    n_eval = len(test_set.labels)
    clean = accuracy(model, test_set, batch_size=max(args.batch_size, 256), device=args.device)
    metrics: dict[str, object] = {"clean_accuracy": clean, "eval_size": n_eval, "eval_split": "test"}
    summary = (
        f"{args.model} on {args.dataset} ({args.method}, {args.epochs} epochs, {result.seconds:.1f}s): "
        f"clean accuracy {clean:.4f}"
    )
    if args.method == "pgd-at":
        attack = default_eval_attack(args.eps, steps=args.eval_steps)
        robust = accuracy(model, test_set, attack=attack, batch_size=args.batch_size, device=args.device,
                          generator=eval_generator, progress=not args.no_progress)
        metrics.update(robust_accuracy=robust, robust_attack=attack.config())
        summary += f", PGD-{args.eval_steps} accuracy at eps={args.eps:g} {robust:.4f}"
    summary += f" on {n_eval} test images"

    training = result.as_dict()
    base = save_checkpoint(model, args.out, training=training, dataset=args.dataset, metrics=metrics)
    print(f"{summary}; wrote {base}.safetensors")
    return 0
