"""The TOML run configuration of ``gtdefense run``.

A configuration names the data set, the base models to train, the defenders (base models
x SAP rates), the attackers, the game (formulation, repeats, solver, selection), the
adaptive evaluation and the double-oracle loop. Unknown keys and bad values are rejected
with a :class:`~gametheory_defense.errors.ConfigError` that names the key. See
``docs/config.md`` for every key and ``examples/digits.toml`` for a complete example.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gametheory_defense.attacks.base import NORMS
from gametheory_defense.errors import ConfigError
from gametheory_defense.oracles import DEFENSE_ORACLES
from gametheory_defense.sap import SAP_ACTIVATIONS, SAP_MODES
from gametheory_defense.solvers._core import SELECTIONS
from gametheory_defense.training import METHODS, OPTIMIZERS, train_defaults
from payoff.builder import FORMULATIONS
from payoff.executors import EXECUTORS

__all__ = [
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "DefendersConfig",
    "AttackerConfig",
    "GameConfig",
    "EvaluationConfig",
    "DoubleOracleConfig",
    "DefenseOracleConfig",
    "load_config",
    "parse_config",
    "RESERVED_NAMES",
]

# Names that cannot be used for defenders because robustness.json uses them as keys.
RESERVED_NAMES = frozenset({"mixture", "mixture-double-oracle", "threat_model"})

# Defaults of the [[models]] training keys: those of gametheory_defense.training.train.
_TRAIN = train_defaults()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``[data]``: which data set, and which test images form the evaluation subset."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    train_size: int | None = None
    eval_size: int = 200
    eval_offset: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``[[models]]`` or ``[models.NAME]``: one base model, trained here or pretrained.

    ``architecture`` is a built-in name, a registered name or ``"package.module:Class"``
    (with constructor ``kwargs``; importing it needs ``--trust-code`` unless registered).
    ``checkpoint`` points at pretrained weights used as they are (no training): a
    checkpoint with its sidecar, or a plain ``.pt``/``.pth``/``.safetensors`` state dict
    together with ``architecture``. ``normalize = {mean, std}`` puts a
    :class:`~gametheory_defense.models.Normalize` layer in front of the model.
    """

    name: str
    architecture: str | None = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    normalize: Mapping[str, Any] | None = None
    checkpoint: str | None = None
    method: str = _TRAIN["method"]
    epochs: int = _TRAIN["epochs"]
    eps: float = _TRAIN["eps"]
    attack_steps: int = _TRAIN["attack_steps"]
    step_size: float | None = _TRAIN["step_size"]
    eps_warmup_epochs: int = _TRAIN["eps_warmup_epochs"]
    batch_size: int = _TRAIN["batch_size"]
    lr: float = _TRAIN["lr"]
    optimizer: str = _TRAIN["optimizer"]
    weight_decay: float = _TRAIN["weight_decay"]
    seed: int | None = None

    def training_kwargs(self) -> dict[str, Any]:
        """The :func:`~gametheory_defense.training.train` keyword arguments of this model."""
        from gametheory_defense.training import TRAIN_SETTINGS

        return {k: getattr(self, k) for k in TRAIN_SETTINGS}


@dataclasses.dataclass(frozen=True)
class DefendersConfig:
    """``[defenders]``: every base model, plus SAP at each rate on top of each base model.

    ``sap_activations`` names the activation families SAP follows (one name or a list, from
    :data:`~gametheory_defense.sap.SAP_ACTIVATIONS`); ReLU is the paper's setting.
    """

    sap_fracs: tuple[float, ...] = ()
    sap_mode: str = "exact"
    include_base: bool = True
    sap_models: tuple[str, ...] | None = None
    sap_activations: str | tuple[str, ...] = "relu"


@dataclasses.dataclass(frozen=True)
class AttackerConfig:
    """``[[attackers]]``: a named attack; every other key is an argument of the attack."""

    name: str
    attack: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class GameConfig:
    """``[game]``: how the payoff matrix is built and solved."""

    formulation: str = "self"
    repeats: int = 1
    solver: str = "lp"
    select: str | None = None
    executor: str = "serial"
    batch_size: int = 256
    ray_num_gpus: float = 0.0
    ray_address: str | None = None
    sources: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """``[evaluation]``: the adaptive suite run on the mixture and on every pure defender.

    ``eps`` and ``norm`` default to the game's threat model: the one ``eps`` (``norm``)
    every attacker uses. When the attackers use several, the section must state it (a
    :class:`ConfigError` otherwise); :func:`load_config` always returns them filled in.
    """

    enabled: bool = True
    suite: str = "adaptive"
    eps: float | None = None
    norm: str | None = None
    size: int | None = None
    repeats: int = 2
    draws: int = 1
    models: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class DefenseOracleConfig:
    """``[double_oracle.defense]``: how the defense oracle trains new defenders (PSRO)."""

    architecture: str | None = None
    epochs: int = 1
    train_size: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    attack_steps: int | None = None
    warm_start: bool = False
    sap_fracs: tuple[float, ...] = (0.5, 1.0, 2.0)
    sap_mode: str = "exact"
    boost_weight: float = 4.0


@dataclasses.dataclass(frozen=True)
class DoubleOracleConfig:
    """``[double_oracle]``: best-response columns (and optionally rows) added to the game."""

    enabled: bool = False
    max_iterations: int = 3
    tol: float = 0.01
    attack: str = "mixture-pgd"
    defense_oracle: str | None = None
    time_limit: float | None = None
    defense: DefenseOracleConfig = DefenseOracleConfig()
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole ``gtdefense run`` configuration."""

    name: str
    seed: int
    data: DataConfig
    models: tuple[ModelConfig, ...]
    defenders: DefendersConfig
    attackers: tuple[AttackerConfig, ...]
    game: GameConfig
    evaluation: EvaluationConfig
    double_oracle: DoubleOracleConfig
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (used in reports and metadata)."""
        return _jsonable(dataclasses.asdict(self))


# Valid values of the string keys, imported from the modules that own them.
_CHOICES: dict[str, tuple[str, ...]] = {
    "models.method": tuple(METHODS),
    "models.optimizer": tuple(OPTIMIZERS),
    "defenders.sap_mode": tuple(SAP_MODES),
    "game.formulation": tuple(FORMULATIONS),
    "game.executor": tuple(EXECUTORS),
    "game.select": tuple(SELECTIONS),
    "evaluation.norm": tuple(NORMS),
    "double_oracle.defense_oracle": tuple(DEFENSE_ORACLES),
    "double_oracle.defense.optimizer": tuple(OPTIMIZERS),
    "double_oracle.defense.sap_mode": tuple(SAP_MODES),
}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _section(cls: type, raw: Any, where: str, *, extra_key: str | None = None) -> Any:
    """Build dataclass ``cls`` from table ``raw``; keys not in ``cls`` go to ``extra_key`` or fail."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != extra_key}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key in fields:
            kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
        elif extra_key is not None:
            extra[key] = value
        else:
            raise ConfigError(
                f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(fields))})"
            )
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key '{missing[0]}'")
    if extra_key is not None:
        kwargs[extra_key] = extra
    return cls(**kwargs)


def _evaluation_threat_model(evaluation: EvaluationConfig, attackers: tuple[AttackerConfig, ...]) -> EvaluationConfig:
    """Fill ``evaluation.eps``/``norm`` from the attackers' threat model when not stated."""
    found = {"eps": sorted({a.params["eps"] for a in attackers if "eps" in a.params}),
             "norm": sorted({str(a.params.get("norm", "linf")) for a in attackers})}
    filled = {}
    for key in ("eps", "norm"):
        if getattr(evaluation, key) is not None:
            continue
        values = found[key]
        if len(values) != 1:
            raise ConfigError(
                f"evaluation.{key}: the attackers use several values ({', '.join(map(str, values))}), so the "
                f"threat model to evaluate at is ambiguous; state it, e.g. {key} = {values[-1]!r}"
            )
        filled[key] = values[0]
    return dataclasses.replace(evaluation, **filled) if filled else evaluation


def _check_choice(value: str | None, key: str) -> None:
    choices = _CHOICES[key]
    if value is not None and value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r} (choose from {', '.join(choices)})")


def _check_positive(value: float | int | None, key: str, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _validate_names(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{what}: duplicate name {n!r}")
        if any(c in n for c in "/\\@,\n") or n.startswith("."):
            raise ConfigError(f"{what}: name {n!r} may not contain '/', '\\', '@', ',' or start with '.'")
        seen.add(n)


def file_key(name: str) -> str:
    """The file a name maps to, up to what file systems and checkpoint paths conflate.

    ``NFKC`` normalisation (macOS stores names decomposed), case folding (case-insensitive
    file systems), and a trailing ``.json`` or ``.safetensors`` dropped (a checkpoint
    ``NAME.json`` is the checkpoint ``NAME``). Two names with the same key would write the
    same files of a run directory.
    """
    import unicodedata

    key = unicodedata.normalize("NFKC", name).casefold()
    for suffix in (".safetensors", ".json"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    return key


def _check_file_collisions(names: list[str], what: str, files: str, reserved: frozenset[str] = frozenset()) -> None:
    """Refuse names that map to the same file (``files`` shows the pattern, e.g. ``models/NAME.*``)."""
    taken: dict[str, str] = {file_key(r): r for r in reserved}
    for n in names:
        key = file_key(n)
        other = taken.get(key)
        if other is not None and other != n:
            if other in reserved:
                raise ConfigError(
                    f"{what}: the name {n!r} maps to the same file as the reserved name {other!r} "
                    f"({files.replace('NAME', other)}); rename it"
                )
            raise ConfigError(
                f"{what}: the names {other!r} and {n!r} map to the same file ({files.replace('NAME', other)}: "
                "names may not differ only in case, Unicode normalisation or a .json/.safetensors suffix); rename one"
            )
        taken[key] = n


# Upper bounds of counts: beyond them a run would not finish (or a number was mistyped).
_MAX: dict[str, float] = {
    "data.eval_size": 10_000_000,
    "data.train_size": 100_000_000,
    "models.epochs": 10_000,
    "models.attack_steps": 10_000,
    "models.eps_warmup_epochs": 10_000,
    "models.batch_size": 1_000_000,
    "defenders.sap_fracs": 1_000.0,
    "game.repeats": 10_000,
    "game.batch_size": 1_000_000,
    "evaluation.size": 10_000_000,
    "evaluation.repeats": 1_000,
    "evaluation.draws": 10_000,
    "double_oracle.max_iterations": 1_000,
    "attack.steps": 100_000,
    "attack.restarts": 1_000,
    "attack.eot_samples": 10_000,
}


def _check_max(value: float | int | None, key: str, where: str | None = None) -> None:
    limit = _MAX[key]
    if value is not None and value > limit:
        raise ConfigError(
            f"{where or key}: {value!r} is beyond the supported maximum {limit:g} "
            "(a run of that size would not finish; check the number)"
        )


def max_eps(norm: str, input_shape: tuple[int, ...] | None) -> float:
    """The largest meaningful radius for inputs in [0, 1]: 1 (L-inf), the cube's diagonal (L2)."""
    if norm == "l2":
        return math.sqrt(math.prod(input_shape)) if input_shape else math.inf
    return 1.0


def _check_eps(eps: float | None, norm: str, input_shape: tuple[int, ...] | None, where: str) -> None:
    if eps is None:
        return
    limit = max_eps(norm, input_shape)
    if not (isinstance(eps, int | float) and math.isfinite(eps)) or eps < 0 or eps > limit:
        raise ConfigError(
            f"{where}: eps {eps!r} is outside the input range: inputs lie in [0, 1], so a {norm} radius "
            f"must lie in [0, {limit:g}]"
        )


def _check_attack(attack: Any, input_shape: tuple[int, ...] | None, where: str) -> None:
    """Radius within the input range and counts within bounds, from the built attack's settings."""
    cfg = attack.config()
    _check_eps(cfg.get("eps"), str(cfg.get("norm", "linf")), input_shape, f"{where}.eps")
    for key in ("steps", "restarts", "eot_samples"):
        value = cfg.get(key)
        if isinstance(value, int | float):
            _check_max(value, f"attack.{key}", f"{where}.{key}")


def parse_config(raw: Mapping[str, Any], *, source: str | None = None) -> RunConfig:
    """Validate a configuration table (already parsed from TOML) and return a :class:`RunConfig`."""
    from gametheory_defense.attacks import ATTACKS, build_attack
    from gametheory_defense.data import DATASETS

    allowed = {"run", "data", "models", "defenders", "attackers", "game", "evaluation", "double_oracle"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown section '{key}' (allowed: {', '.join(sorted(allowed))})")
    run = dict(raw.get("run", {}))
    for key in run:
        if key not in ("name", "seed"):
            raise ConfigError(f"run: unknown key '{key}' (allowed: name, seed)")
    name = _coerce(run.get("name", "run"), str, "run.name")
    seed = _coerce(run.get("seed", 0), int, "run.seed")

    data = _section(DataConfig, raw.get("data", {}), "data")
    if data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown data set {data.dataset!r} (choose from {', '.join(DATASETS)})")
    _check_positive(data.eval_size, "data.eval_size")
    _check_positive(data.eval_offset, "data.eval_offset", allow_zero=True)
    _check_positive(data.train_size, "data.train_size")
    _check_max(data.eval_size, "data.eval_size")
    _check_max(data.train_size, "data.train_size")
    input_shape = tuple(DATASETS[data.dataset].input_shape)

    models = _parse_models(raw.get("models"), source)
    for i, m in enumerate(models):
        where = f"models[{i}]"
        _check_choice(m.method, "models.method")
        _check_choice(m.optimizer, "models.optimizer")
        _check_positive(m.epochs, f"{where}.epochs")
        _check_positive(m.eps, f"{where}.eps", allow_zero=True)
        _check_positive(m.attack_steps, f"{where}.attack_steps")
        _check_positive(m.step_size, f"{where}.step_size")
        _check_positive(m.batch_size, f"{where}.batch_size")
        _check_positive(m.lr, f"{where}.lr")
        _check_positive(m.eps_warmup_epochs, f"{where}.eps_warmup_epochs", allow_zero=True)
        for key in ("epochs", "attack_steps", "eps_warmup_epochs", "batch_size"):
            _check_max(getattr(m, key), f"models.{key}", f"{where}.{key}")
        _check_eps(m.eps, "linf", input_shape, f"{where}.eps")  # PGD-AT trains under L-inf
        _check_eps(m.step_size, "linf", input_shape, f"{where}.step_size")
    _validate_names([m.name for m in models], "models")
    _check_file_collisions([m.name for m in models], "models", "models/NAME.safetensors and .json")

    defenders = _section(DefendersConfig, raw.get("defenders", {}), "defenders")
    _check_choice(defenders.sap_mode, "defenders.sap_mode")
    for i, f in enumerate(defenders.sap_fracs):
        _check_positive(f, f"defenders.sap_fracs[{i}]")
        _check_max(f, "defenders.sap_fracs", f"defenders.sap_fracs[{i}]")
    if defenders.sap_models is not None:
        for n in defenders.sap_models:
            if n not in {m.name for m in models}:
                raise ConfigError(f"defenders.sap_models: {n!r} is not a model name")
    if not defenders.include_base and not defenders.sap_fracs:
        raise ConfigError("defenders: include_base = false needs at least one entry in sap_fracs")
    acts = defenders.sap_activations
    if not acts:
        raise ConfigError(f"defenders.sap_activations: give at least one of {', '.join(SAP_ACTIVATIONS)}")
    for a in (acts,) if isinstance(acts, str) else acts:
        if a not in SAP_ACTIVATIONS:
            raise ConfigError(
                f"defenders.sap_activations: unknown activation {a!r} "
                f"(choose from {', '.join(SAP_ACTIVATIONS)}, or a list of them)"
            )

    attackers_raw = raw.get("attackers")
    if not isinstance(attackers_raw, list) or not attackers_raw:
        raise ConfigError("attackers: at least one [[attackers]] table is required")
    attackers = tuple(
        _section(AttackerConfig, a, f"attackers[{i}]", extra_key="params") for i, a in enumerate(attackers_raw)
    )
    for i, a in enumerate(attackers):
        if a.attack not in ATTACKS:
            raise ConfigError(
                f"attackers[{i}].attack: unknown attack {a.attack!r} (choose from {', '.join(ATTACKS)})"
            )
        try:
            built = build_attack(a.attack, **a.params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"attackers[{i}] ({a.name}): {exc}") from None
        _check_attack(built, input_shape, f"attackers[{i}]")
    _validate_names([a.name for a in attackers], "attackers")

    game = _section(GameConfig, raw.get("game", {}), "game")
    _check_choice(game.formulation, "game.formulation")
    _check_choice(game.executor, "game.executor")
    _check_choice(game.select, "game.select")
    _check_positive(game.repeats, "game.repeats")
    _check_positive(game.batch_size, "game.batch_size")
    _check_max(game.repeats, "game.repeats")
    _check_max(game.batch_size, "game.batch_size")
    from gametheory_defense.solvers import SOLVERS

    if game.solver not in SOLVERS:
        raise ConfigError(f"game.solver: unknown solver {game.solver!r} (choose from {', '.join(SOLVERS)})")

    evaluation = _section(EvaluationConfig, raw.get("evaluation", {}), "evaluation")
    evaluation = _evaluation_threat_model(evaluation, attackers)
    _check_choice(evaluation.norm, "evaluation.norm")
    _check_positive(evaluation.eps, "evaluation.eps")
    _check_positive(evaluation.size, "evaluation.size")
    _check_positive(evaluation.repeats, "evaluation.repeats")
    _check_positive(evaluation.draws, "evaluation.draws")
    _check_eps(evaluation.eps, evaluation.norm, input_shape, "evaluation.eps")
    for key in ("size", "repeats", "draws"):
        _check_max(getattr(evaluation, key), f"evaluation.{key}")
    from gametheory_defense.evaluation import SUITES

    if evaluation.suite not in SUITES:
        raise ConfigError(
            f"evaluation.suite: unknown suite {evaluation.suite!r} (choose from {', '.join(SUITES)})"
        )

    do_raw = raw.get("double_oracle", {})
    defense_raw = {}
    if isinstance(do_raw, Mapping) and "defense" in do_raw:
        do_raw = dict(do_raw)
        defense_raw = do_raw.pop("defense")
    do = _section(DoubleOracleConfig, do_raw, "double_oracle", extra_key="params")
    do = dataclasses.replace(do, defense=_defense_oracle(defense_raw, do))
    _check_positive(do.max_iterations, "double_oracle.max_iterations")
    _check_positive(do.tol, "double_oracle.tol", allow_zero=True)
    _check_max(do.max_iterations, "double_oracle.max_iterations")
    if do.attack not in ATTACKS:
        raise ConfigError(f"double_oracle.attack: unknown attack {do.attack!r} (choose from {', '.join(ATTACKS)})")
    if do.enabled or do.params:
        # A disabled loop with no settings (the default when the section is left out) has no
        # attack to build; settings that are given are checked even when it is disabled.
        try:
            built = build_attack(do.attack, **do.params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"double_oracle ({do.attack}): {exc}") from None
        _check_attack(built, input_shape, "double_oracle")

    config = RunConfig(
        name=name,
        seed=seed,
        data=data,
        models=models,
        defenders=defenders,
        attackers=attackers,
        game=game,
        evaluation=evaluation,
        double_oracle=do,
        source=source,
    )
    names = defender_names(config)
    _validate_names(names, "defenders")
    if game.sources is not None:
        if game.formulation != "transfer":
            raise ConfigError("game.sources: only applies to formulation = \"transfer\" (the self game attacks each defender itself)")
        if not game.sources:
            raise ConfigError("game.sources: give at least one defender name")
        for n in game.sources:
            if n not in names:
                raise ConfigError(f"game.sources: {n!r} is not a defender (defenders: {', '.join(names)})")
        if len(set(game.sources)) != len(game.sources):
            raise ConfigError("game.sources: names must be distinct")
    for n in evaluation.models or ():
        if n not in names:
            raise ConfigError(f"evaluation.models: {n!r} is not a defender (defenders: {', '.join(names)})")
    for n in names:
        if n in RESERVED_NAMES:
            raise ConfigError(f"defenders: the name {n!r} is reserved; rename that model")
    _check_file_collisions(names, "defenders", "robustness/NAME.json", reserved=RESERVED_NAMES)
    return config


def _defense_oracle(raw: Any, do: DoubleOracleConfig) -> DefenseOracleConfig:
    """Validate ``[double_oracle.defense]`` and the defense-oracle keys of ``[double_oracle]``."""
    from gametheory_defense.models import MODELS, registered_models

    _check_choice(do.defense_oracle, "double_oracle.defense_oracle")
    _check_positive(do.time_limit, "double_oracle.time_limit")
    d = _section(DefenseOracleConfig, raw, "double_oracle.defense")
    where = "double_oracle.defense"
    if d.architecture is not None and d.architecture not in MODELS and d.architecture not in registered_models():
        raise ConfigError(
            f"{where}.architecture: unknown model {d.architecture!r} (choose from {', '.join(MODELS)} or a "
            "registered name; leave it out to use the first model's)"
        )
    for key in ("epochs", "batch_size", "lr", "attack_steps", "train_size"):
        _check_positive(getattr(d, key), f"{where}.{key}")
    _check_positive(d.weight_decay, f"{where}.weight_decay", allow_zero=True)
    _check_positive(d.boost_weight, f"{where}.boost_weight", allow_zero=True)
    _check_choice(d.optimizer, f"{where}.optimizer")
    _check_choice(d.sap_mode, f"{where}.sap_mode")
    for i, f in enumerate(d.sap_fracs):
        _check_positive(f, f"{where}.sap_fracs[{i}]")
    if do.defense_oracle == "sap" and not d.sap_fracs:
        raise ConfigError(f"{where}.sap_fracs: the 'sap' oracle needs at least one rate")
    return d


#: Keys of a model table that only concern training (refused next to ``checkpoint``).
_TRAINING_KEYS = (
    "method", "epochs", "eps", "attack_steps", "step_size", "eps_warmup_epochs",
    "batch_size", "lr", "optimizer", "weight_decay", "seed",
)


def _parse_models(models_raw: Any, source: str | None) -> tuple[ModelConfig, ...]:
    """``[[models]]`` (a list of tables with ``name``) or ``[models.NAME]`` (a table of tables)."""
    from gametheory_defense.models import MODELS, is_import_spec, parse_normalize, registered_models

    if isinstance(models_raw, Mapping):
        tables = []
        for name, table in models_raw.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"models.{name}: expected a table, got {type(table).__name__}")
            if "name" in table and table["name"] != name:
                raise ConfigError(f"models.{name}: 'name' = {table['name']!r} differs from the table's name")
            tables.append((f"models.{name}", {**table, "name": name}))
    elif isinstance(models_raw, list):
        tables = [(f"models[{i}]", m) for i, m in enumerate(models_raw)]
    else:
        tables = []
    if not tables:
        raise ConfigError("models: at least one [[models]] (or [models.NAME]) table is required")
    out = []
    for where, table in tables:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
        rest = {k: v for k, v in table.items() if k not in ("kwargs", "normalize")}
        m = _section(ModelConfig, rest, where)
        kwargs = table.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{where}.kwargs: expected a table of constructor arguments, got {kwargs!r}")
        try:
            normalize = parse_normalize(table.get("normalize"))
        except ValueError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        arch = m.architecture
        if arch is not None and arch not in MODELS and not is_import_spec(arch) and arch not in registered_models():
            raise ConfigError(
                f"{where}.architecture: unknown model {arch!r} (choose from {', '.join(MODELS)}, a registered "
                "name, or 'package.module:Class')"
            )
        if kwargs and (arch is None or arch in MODELS):
            raise ConfigError(f"{where}.kwargs: only for architectures named as 'package.module:Class' or registered")
        checkpoint = m.checkpoint
        if checkpoint is not None:
            given = [k for k in _TRAINING_KEYS if k in table]
            if given:
                raise ConfigError(
                    f"{where}: '{given[0]}' configures training, but checkpoint = {checkpoint!r} is used as it is "
                    "(no training); remove it"
                )
            path = Path(checkpoint).expanduser()
            if not path.is_absolute() and source is not None:
                path = Path(source).parent / path  # relative to the configuration file
            checkpoint = str(path)
        elif arch is None:
            raise ConfigError(f"{where}: missing required key 'architecture' (or a pretrained 'checkpoint')")
        out.append(dataclasses.replace(m, kwargs=dict(kwargs), normalize=normalize, checkpoint=checkpoint))
    return tuple(out)


def defender_names(config: RunConfig) -> list[str]:
    """Defender names in row order: each base model, then ``<model>+sap<frac>`` for each rate."""
    names: list[str] = []
    sap_models = config.defenders.sap_models
    for m in config.models:
        if config.defenders.include_base:
            names.append(m.name)
        if sap_models is None or m.name in sap_models:
            names.extend(f"{m.name}+sap{frac:g}" for frac in config.defenders.sap_fracs)
    return names


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    try:
        return parse_config(raw, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
