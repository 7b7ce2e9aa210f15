"""``gtdefense evaluate``: adaptive robustness evaluation of a checkpoint or an ensemble.

Loads a checkpoint (``NAME.safetensors`` + ``NAME.json``) or an ensemble directory (one
with ``ensemble.json``), attacks the first N test images with an attack suite or with
named attacks, prints the report as a Markdown table and writes it as JSON and Markdown
(by default next to the model, named after what was run so that no evaluation overwrites
another: ``NAME.evaluation.SUITE.NORM-EPS[.sapFRAC-MODE].json``/``.md`` for a checkpoint,
``DIR/evaluation.SUITE.NORM-EPS[...].json``/``.md`` for an ensemble directory). The JSON
records, besides the report, the model, its SAP settings, the suite, the seed and the
threat model under ``"evaluation"``.

The threat model is the one recorded with the model when ``--eps``/``--norm`` are not
given: an ensemble's ``metadata["threat_model"]`` (the pipeline records its game's), a
checkpoint's ``threat_model`` (sidecar ``extra``) or, for a PGD-AT checkpoint, its
training radius; else L-inf eps 0.3.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gametheory_defense.cli import add_sap_activations_option, add_trust_code_option, sap_request

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluate`` subcommand."""
    from gametheory_defense.attacks import ATTACKS, NORMS
    from gametheory_defense.data import DATASETS
    from gametheory_defense.evaluation import SUITES
    from gametheory_defense.sap import SAP_MODES

    p = subparsers.add_parser(
        "evaluate",
        help="robust accuracy under adaptive attacks, with confidence intervals and sanity checks",
        description=(
            "Evaluate MODEL (a checkpoint NAME.safetensors/NAME.json, or an ensemble directory with "
            "ensemble.json) on the first N test images under an attack suite (default: adaptive) or the "
            "attacks named with --attack. Prints a Markdown table: clean accuracy, accuracy under each "
            "attack, and the per-example worst case over all attacks (the number to quote)."
        ),
    )
    p.add_argument("model", metavar="MODEL_OR_ENSEMBLE", help="checkpoint path or ensemble directory")
    p.add_argument("--suite", default=None, choices=sorted(SUITES),
                   help="attack suite (default adaptive, unless --attack is given)")
    p.add_argument("--attack", action="append", default=None, choices=sorted(ATTACKS), metavar="NAME",
                   help=f"an attack to run (repeatable; one of {', '.join(sorted(ATTACKS))}); "
                        "--steps/--step-size/--eot-samples/--restarts/--loss apply to each")
    p.add_argument("--eps", type=float, default=None,
                   help="threat-model radius in [0,1] input units (default: the one recorded with the model, else 0.3)")
    p.add_argument("--norm", default=None, choices=list(NORMS),
                   help="threat model (default: the one recorded with the model, else linf)")
    p.add_argument("--steps", type=int, default=None, help="iterations of --attack attacks (default: the attack's)")
    p.add_argument("--step-size", type=float, default=None, help="step size of --attack attacks")
    p.add_argument("--eot-samples", type=int, default=None, help="EOT samples of --attack attacks")
    p.add_argument("--restarts", type=int, default=None, help="restarts of --attack attacks")
    p.add_argument("--loss", default=None, help="loss of --attack attacks (ce or cw)")
    p.add_argument("--sap-frac", type=float, default=None,
                   help="add Stochastic Activation Pruning with this fraction (to every member of an ensemble)")
    p.add_argument("--sap-mode", default="exact", choices=list(SAP_MODES), help="SAP sampling mode (default exact)")
    add_sap_activations_option(p)
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="data set (default: the one recorded with the model)")
    p.add_argument("--data-dir", default=None, help="directory holding the data set files")
    p.add_argument("--n", type=int, default=1000, help="evaluate the first N test images (default 1000)")
    p.add_argument("--repeats", type=int, default=1, help="independent runs of every attack on a randomized model (default 1)")
    p.add_argument(
        "--draws",
        type=int,
        default=1,
        help="classifications of every example by a randomized model; 10-20 avoid a low-biased worst case (default 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of all randomness (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per attack call (default 256)")
    p.add_argument("--no-sanity-checks", action="store_true", help="skip the sanity checks")
    p.add_argument("--out-json", default=None, metavar="R.json",
                   help="where to write the report as JSON (default: NAME.evaluation.json next to a "
                        "checkpoint, DIR/evaluation.json for an ensemble)")
    p.add_argument("--out-md", default=None, metavar="R.md",
                   help="where to write the report as Markdown (default: NAME.evaluation.md next to a "
                        "checkpoint, DIR/evaluation.md for an ensemble)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_code_option(p)
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> tuple[Any, str | None, dict[str, Any]]:
    """The model (SAP added if asked), the data set and the threat model recorded with it."""
    from gametheory_defense.checkpoint import load_checkpoint, read_metadata
    from gametheory_defense.ensemble import MANIFEST, MixedStrategyModel
    from gametheory_defense.errors import CheckpointError
    from gametheory_defense.sap import apply_sap

    path = Path(args.model)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise CheckpointError(f"{path}: a directory without {MANIFEST} is not an ensemble; pass a checkpoint or an ensemble directory")
        model = MixedStrategyModel.load(path, device=args.device, trust_code=args.trust_code)
        dataset = model.metadata.get("dataset")
        if dataset is None:
            import json

            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            members = manifest.get("members") or []
            if members and isinstance(members[0], dict) and "sidecar" in members[0]:
                dataset = read_metadata(path / members[0]["sidecar"]).get("dataset")
        sap = sap_request(args)
        if isinstance(sap, dict):
            model = MixedStrategyModel(
                [apply_sap(m, sap["frac"], mode=sap["mode"], activations=sap.get("activations", "relu"))
                 for m in model.members],
                model.strategy,
                names=model.names,
                sample=model.sample,
                value=model.value,
                metadata=model.metadata,
            )
        return model, dataset, dict(model.metadata.get("threat_model") or {})
    candidates = [path, path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")]
    if not any(c.is_file() for c in candidates):
        raise FileNotFoundError(f"{path}: no such checkpoint or ensemble directory")
    sap = sap_request(args)
    ckpt = load_checkpoint(path, device=args.device, sap=sap, trust_code=args.trust_code)
    return ckpt.model, ckpt.metadata.get("dataset"), _recorded_threat_model(ckpt.metadata)


def _recorded_threat_model(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's threat model: ``threat_model`` (top level or in ``extra``), else PGD-AT's radius."""
    for where in (meta, meta.get("extra") or {}):
        tm = where.get("threat_model") if isinstance(where, dict) else None
        if isinstance(tm, dict) and "eps" in tm:
            return dict(tm)
    config = (meta.get("training") or {}).get("config") or {}
    if isinstance(config, dict) and config.get("method") == "pgd-at" and isinstance(config.get("eps"), (int, float)):
        return {"norm": "linf", "eps": float(config["eps"])}
    return {}


def _threat_model(args: argparse.Namespace, recorded: dict[str, Any]) -> tuple[float, str]:
    """``(eps, norm)``: the flags, else the recorded threat model, else L-inf 0.3 (with a note)."""
    eps = args.eps if args.eps is not None else recorded.get("eps")
    norm = args.norm if args.norm is not None else recorded.get("norm")
    if eps is None:
        print("gtdefense evaluate: no threat model is recorded with the model; using eps 0.3 (pass --eps)",
              file=sys.stderr)
        eps = 0.3
    elif args.eps is None:
        print(f"gtdefense evaluate: using the threat model recorded with the model: eps {float(eps):g}",
              file=sys.stderr)
    return float(eps), str(norm or "linf")


def _tag(args: argparse.Namespace, eps: float, norm: str) -> str:
    """What was run, for file names: ``SUITE[+ATTACK...].NORM-EPS[.sapFRAC-MODE]``."""
    parts = ([args.suite or "adaptive"] if (not args.attack or args.suite) else []) + list(dict.fromkeys(args.attack or []))
    tag = f"{'+'.join(parts)}.{norm}-{eps:g}"
    if args.sap_frac is not None:
        tag += f".sap{args.sap_frac:g}-{args.sap_mode}"
    return tag


def _default_outputs(model: str, tag: str) -> tuple[Path, Path]:
    """``(json, md)`` paths next to the model: ``NAME.evaluation.TAG.*`` or ``DIR/evaluation.TAG.*``."""
    path = Path(model)
    if path.is_dir():
        return path / f"evaluation.{tag}.json", path / f"evaluation.{tag}.md"
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(f"{path.name}.evaluation.{tag}.json"), path.with_name(f"{path.name}.evaluation.{tag}.md")


def _check_fits(model: Any, test: Any, dataset: str, device: str) -> None:
    """One forward pass on two test images: a model built for other inputs fails here, in one line."""
    import torch

    from gametheory_defense.errors import ConfigError

    x = test.images[:2].to(device)
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            out = model.eval()(x)  # eval(), as evaluate() runs it (batch norm on two images)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"the model does not accept {dataset} images of shape {tuple(x.shape[1:])} ({first}); "
            "pass the --dataset it was trained on"
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode
    classes = getattr(test, "num_classes", None)
    if out.dim() != 2 or (classes is not None and out.shape[1] != classes):
        raise ConfigError(
            f"the model returns outputs of shape {tuple(out.shape[1:])} but {dataset} has {classes} classes; "
            "pass the --dataset it was trained on"
        )


def _attacks(args: argparse.Namespace, eps: float, norm: str) -> dict[str, Any] | None:
    """The attacks named with ``--attack`` (None when none was)."""
    from gametheory_defense.attacks import build_attack

    if not args.attack:
        return None
    names = ("steps", "step_size", "eot_samples", "restarts", "loss")
    extra = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    out: dict[str, Any] = {}
    for name in dict.fromkeys(args.attack):
        out[name] = build_attack(name, eps=eps, norm=norm, **extra)
    return out


def _sap_record(model: Any) -> Any:
    """The SAP settings of the evaluated model (one per member for an ensemble; None: no SAP)."""
    from gametheory_defense.attacks.mixture import is_mixture
    from gametheory_defense.sap import sap_settings

    if is_mixture(model):
        return {name: sap_settings(m) for name, m in zip(model.names, model.members)}
    return sap_settings(model)


def _randomized(model: Any) -> bool:
    from gametheory_defense.attacks.mixture import is_mixture, mixture_components
    from gametheory_defense.stochastic import is_stochastic

    if is_mixture(model) and len(mixture_components(model)) > 1:
        return True
    return bool(is_stochastic(model))


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print and write the report."""
    import torch

    from gametheory_defense.data import load_dataset
    from gametheory_defense.errors import ConfigError
    from gametheory_defense.evaluation import evaluate, suite
    from gametheory_defense.provenance import environment

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.draws < 1:
        raise ValueError(f"--draws must be >= 1, got {args.draws}")
    _attacks(args, args.eps if args.eps is not None else 0.3, args.norm or "linf")  # fail fast on bad arguments
    model, recorded, threat = _load(args)
    eps, norm = _threat_model(args, threat)
    named = _attacks(args, eps, norm)
    if args.draws == 1 and _randomized(model):
        print("gtdefense evaluate: warning: the model is randomized and --draws is 1: the per-example worst case "
              "is a minimum of 0/1 estimates, biased low; use --draws 10-20 (docs/evaluation.md)", file=sys.stderr)
    dataset = args.dataset or recorded
    if not dataset:
        raise ConfigError(f"{args.model}: no data set is recorded with the model; pass --dataset")
    test = load_dataset(dataset, "test", data_dir=args.data_dir, progress=not args.no_progress)
    test = test.subset(min(args.n, len(test.labels)))
    _check_fits(model, test, dataset, args.device)

    attacks: dict[str, Any] = {}
    if named is None or args.suite is not None:
        attacks.update(suite(args.suite or "adaptive", eps=eps, norm=norm, model=model))
    if named is not None:
        attacks.update(named)
    report = evaluate(
        model,
        test,
        attacks,
        repeats=args.repeats,
        draws=args.draws,
        batch_size=args.batch_size,
        device=args.device,
        generator=torch.Generator().manual_seed(args.seed),
        seed=args.seed,
        sanity_checks=not args.no_sanity_checks,
        progress=not args.no_progress,
    )
    text = report.to_markdown()
    print(text, end="")
    default_json, default_md = _default_outputs(args.model, _tag(args, eps, norm))
    out_json = Path(args.out_json) if args.out_json else default_json
    out_md = Path(args.out_md) if args.out_md else default_md
    record = report.to_dict()
    record["evaluation"] = {
        "model": str(args.model),
        "sap": _sap_record(model),
        "suite": args.suite or ("adaptive" if not args.attack else None),
        "attacks": list(dict.fromkeys(args.attack or [])),
        "seed": args.seed,
        "eps": eps,
        "norm": norm,
        "n": report.n_examples,
        "repeats": args.repeats,
        "draws": args.draws,
        "dataset": dataset,
        "device": str(args.device),
        "environment": environment(),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text, encoding="utf-8")
    print(f"wrote {out_json} and {out_md}", file=sys.stderr)
    return 0
