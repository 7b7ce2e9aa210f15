"""``gtdefense import-model WEIGHTS --architecture ARCH --out NAME``: a plain PyTorch file as a checkpoint.

Reads a ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict (``torch.load(weights_only=True)``
only) or a bare ``.safetensors`` file, loads it into the architecture (a built-in name, a
registered name, or ``package.module:Class`` with ``--kwargs`` JSON and ``--trust-code``),
checks it on one forward pass, and writes ``NAME.safetensors`` + ``NAME.json``, which
every other command (``evaluate``, ``attack``, the pipeline's ``checkpoint = ...``) loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gametheory_defense.cli import add_trust_code_option

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``import-model`` subcommand."""
    from gametheory_defense.data import DATASETS

    p = subparsers.add_parser(
        "import-model",
        help="convert a plain PyTorch state dict (.pt/.pth/.safetensors) into a checkpoint",
        description=(
            "Load WEIGHTS (a state dict saved with torch.save(model.state_dict(), ...) or a bare .safetensors "
            "file; {'state_dict': ...} wrappers and 'module.' prefixes are handled) into --architecture and "
            "write the checkpoint --out NAME (NAME.safetensors + NAME.json). See docs/models.md."
        ),
    )
    p.add_argument("weights", help="the .pt/.pth/.bin/.ckpt or .safetensors file")
    p.add_argument("--architecture", required=True,
                   help="built-in name, registered name, or package.module:Class (needs --trust-code unless registered)")
    p.add_argument("--kwargs", default=None, metavar="JSON", help="constructor keyword arguments as a JSON object")
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="data set the model is for: sets the input shape and number of classes, recorded in the sidecar")
    p.add_argument("--input-shape", default=None, metavar="C,H,W", help="input shape (instead of --dataset)")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes (default: from --dataset or the model)")
    p.add_argument("--normalize-mean", type=float, nargs="+", default=None, metavar="M",
                   help="per-channel mean: the model gets a gametheory_defense.models.Normalize layer in front")
    p.add_argument("--normalize-std", type=float, nargs="+", default=None, metavar="S", help="per-channel std (with --normalize-mean)")
    p.add_argument("--out", required=True, help="checkpoint base path NAME (writes NAME.safetensors and NAME.json)")
    add_trust_code_option(p)
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be C,H,W (e.g. 3,32,32), got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input-shape must be three positive integers C,H,W, got {text!r}")
    return shape


def normalize_option(mean: list[float] | None, std: list[float] | None) -> dict[str, Any] | None:
    """``--normalize-mean``/``--normalize-std`` as a ``normalize`` option (both or neither)."""
    from gametheory_defense.models import parse_normalize

    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(
            "give both --normalize-mean and --normalize-std (one value per channel; "
            "gametheory_defense.models.Normalize)"
        )
    return parse_normalize({"mean": mean, "std": std})


def run(args: argparse.Namespace) -> int:
    """Load, check and save; print where the checkpoint went."""
    from gametheory_defense.checkpoint import import_model
    from gametheory_defense.data import DATASETS

    kwargs = None
    if args.kwargs is not None:
        try:
            kwargs = json.loads(args.kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--kwargs is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--kwargs must be a JSON object, got {args.kwargs!r}")
    shape = _shape(args.input_shape) if args.input_shape is not None else None
    classes = args.num_classes
    if args.dataset is not None:
        spec = DATASETS[args.dataset]
        ds_shape = tuple(spec.input_shape)
        if shape is not None and shape != ds_shape:
            raise ValueError(f"--input-shape {list(shape)} disagrees with {args.dataset}'s {list(ds_shape)}")
        shape = ds_shape
        if classes is not None and classes != spec.num_classes:
            raise ValueError(f"--num-classes {classes} disagrees with {args.dataset}'s {spec.num_classes}")
        classes = spec.num_classes
    if shape is None:
        raise ValueError("give --dataset or --input-shape C,H,W")
    base = import_model(
        args.weights,
        args.out,
        architecture=args.architecture,
        input_shape=shape,
        num_classes=classes,
        kwargs=kwargs,
        normalize=normalize_option(args.normalize_mean, args.normalize_std),
        trust_code=args.trust_code,
        dataset=args.dataset,
    )
    print(f"wrote {base}.safetensors and {base}.json", file=sys.stderr)
    return 0
