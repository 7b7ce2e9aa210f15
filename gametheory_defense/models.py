"""Classifier architectures for the defenders of the game.

Every model maps float inputs N x C x H x W in [0, 1] to **logits** N x num_classes.
Input normalisation, where a model wants it, is a :class:`Normalize` layer inside the
model, so attacks always work (and measure ``eps``) in [0, 1] input space.

Every activation is its own :class:`torch.nn.ReLU` instance (never functional, never
``inplace=True``, never shared between two places in the graph), registered in the order
the forward pass calls it. Stochastic Activation Pruning (Dhillon et al., 2018) can then
be attached after any one of them by name (see :func:`relu_names`).

Models are built by name through :func:`build_model` from the :data:`MODELS` registry;
the built model carries ``model.architecture = {"name", "input_shape", "num_classes"}``,
which the checkpoint code stores to rebuild it.

Any other ``nn.Module`` class can be a defender too ("bring your own model",
``docs/models.md``): its architecture is named as an importable ``"package.module:Class"``
with JSON keyword arguments (``kwargs``), recorded in the checkpoint's sidecar. Importing
code because a *file* names it needs consent: ``trust_code=True`` (CLI ``--trust-code``),
or a prior :func:`register_model` (in Python, or for every process through an entry point
of the ``gametheory_defense.models`` group in an installed package). Models that expect
normalised inputs get a :class:`Normalize` layer in front (``normalize={"mean", "std"}``).
:func:`check_classifier` turns the usual mistakes (wrong input shape, tuple outputs,
float64 weights) into one-line errors before any attack runs.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "relu_names",
    "init_parameters",
    "Normalize",
    "MLP",
    "SmallCNN",
    "MadryCNN",
    "PreActBlock",
    "PreActResNet18",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ENTRY_POINT_GROUP",
    "register_model",
    "registered_models",
    "resolve_architecture",
    "is_import_spec",
    "parse_normalize",
    "with_normalize",
    "check_classifier",
    "check_logits",
]

#: Per-channel mean of the CIFAR-10 training images (in [0, 1] units).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Per-channel standard deviation of the CIFAR-10 training images.
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def _conv_out(size: int, *, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution or pooling layer."""
    return (size + 2 * padding - kernel) // stride + 1


class Normalize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std`` as a layer inside a model.

    Keeping normalisation inside the model lets attacks operate in [0, 1] input space
    (``eps`` in input units). ``mean`` and ``std`` are buffers: they move with
    ``.to(device)`` and are saved in the ``state_dict``.

    Parameters
    ----------
    mean, std : sequence of float
        One value per input channel; every ``std`` must be positive.

    Shape
    -----
    - Input: ``(N, C, H, W)`` with ``C == len(mean)``.
    - Output: same shape as the input.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape or mean_t.numel() == 0:
            raise ValueError(
                f"gametheory_defense.models.Normalize needs one mean and one std per channel, got "
                f"{mean_t.numel()} means and {std_t.numel()} stds"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()) or not bool(torch.isfinite(std_t).all()):
            raise ValueError(
                f"gametheory_defense.models.Normalize needs finite means and positive finite stds, got "
                f"mean={mean_t.tolist()}, std={std_t.tolist()}"
            )
        self.register_buffer("mean", mean_t.view(-1, 1, 1))
        self.register_buffer("std", std_t.view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


class MLP(nn.Sequential):
    """Two-hidden-layer perceptron, the small model for the 8x8 ``digits`` data set.

    Flatten -> Linear(C*H*W, hidden) -> ReLU -> Linear(hidden, hidden) -> ReLU ->
    Linear(hidden, num_classes).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one input.
    num_classes : int
        Number of output logits.
    hidden : int, optional
        Width of both hidden layers (256).

    Shape
    -----
    - Input: ``(N, C, H, W)``.
    - Output: ``(N, num_classes)`` logits.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, *, hidden: int = 256
    ) -> None:
        c, h, w = input_shape
        super().__init__(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class SmallCNN(nn.Sequential):
    """A fast two-convolution network for MNIST-sized inputs.

    Conv 3x3x16 stride 2 -> ReLU -> Conv 3x3x32 stride 2 -> ReLU -> Flatten -> FC 100 ->
    ReLU -> FC num_classes (both convolutions padded by 1, so a 28x28 input becomes
    14x14 then 7x7).

    Shape
    -----
    - Input: ``(N, C, H, W)``.
    - Output: ``(N, num_classes)`` logits.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        c, h, w = input_shape
        for _ in range(2):
            h = _conv_out(h, kernel=3, stride=2, padding=1)
            w = _conv_out(w, kernel=3, stride=2, padding=1)
        super().__init__(
            nn.Conv2d(c, 16, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * h * w, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )


class MadryCNN(nn.Sequential):
    """The MNIST-challenge CNN of Madry et al., "Towards Deep Learning Models ..." (ICLR 2018).

    From "Towards Deep Learning Models Resistant to Adversarial Attacks".

    Conv 5x5x32 (pad 2) -> ReLU -> MaxPool 2 -> Conv 5x5x64 (pad 2) -> ReLU -> MaxPool 2
    -> Flatten -> FC 1024 -> ReLU -> FC num_classes. For 1x28x28 inputs and 10 classes it
    has 3,274,634 parameters.

    Shape
    -----
    - Input: ``(N, C, H, W)`` with ``H, W >= 4``.
    - Output: ``(N, num_classes)`` logits.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        c, h, w = input_shape
        h, w = h // 2 // 2, w // 2 // 2
        super().__init__(
            nn.Conv2d(c, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * h * w, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )


class PreActBlock(nn.Module):
    """Pre-activation basic block of He et al., "Identity Mappings in Deep ResNets" (ECCV 2016).

    BN -> ReLU -> Conv 3x3 (stride) -> BN -> ReLU -> Conv 3x3, plus the shortcut. When the
    block changes resolution or width, the shortcut is a 1x1 convolution applied to the
    pre-activated input (as in the paper's implementation); otherwise it is the identity.

    Shape
    -----
    - Input: ``(N, in_planes, H, W)``.
    - Output: ``(N, planes, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1) -> None:
        super().__init__()
        # Registration order equals call order, so relu_names() lists them as called.
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 of He et al., "Identity Mappings in Deep ResNets" (ECCV 2016).

    The CIFAR variant: Normalize (CIFAR-10 mean/std) -> Conv 3x3x64 -> four stages of two
    :class:`PreActBlock` each (64, 128, 256, 512 channels; strides 1, 2, 2, 2) -> BN ->
    ReLU -> global average pool -> FC num_classes. Global pooling is adaptive, so inputs
    other than 32x32 work too.

    Parameters
    ----------
    input_shape : tuple of int
        ``(3, H, W)``; the built-in normalisation holds three channel statistics.
    num_classes : int
        Number of output logits.
    mean, std : sequence of float, optional
        Normalisation statistics (CIFAR-10's by default).

    Shape
    -----
    - Input: ``(N, 3, H, W)`` in [0, 1].
    - Output: ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        c = input_shape[0]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for block_stride in (stride, 1):
                blocks.append(PreActBlock(in_planes, planes, stride=block_stride))
                in_planes = planes
        self.layer1 = nn.Sequential(*blocks[0:2])
        self.layer2 = nn.Sequential(*blocks[2:4])
        self.layer3 = nn.Sequential(*blocks[4:6])
        self.layer4 = nn.Sequential(*blocks[6:8])
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu(self.bn(out))
        return self.linear(self.flatten(self.pool(out)))


def _check_any(input_shape: tuple[int, int, int]) -> None:
    """Every positive ``(C, H, W)`` is fine."""


def _check_madry(input_shape: tuple[int, int, int]) -> None:
    if min(input_shape[1:]) < 4:
        raise ValueError(
            f"madry-cnn needs inputs of at least 4x4 (two 2x2 max-pools), got input_shape "
            f"{list(input_shape)}"
        )


def _check_preact(input_shape: tuple[int, int, int]) -> None:
    if input_shape[0] != 3:
        raise ValueError(
            f"preact-resnet18 needs 3-channel (RGB, CIFAR-10-normalised) inputs, got input_shape "
            f"{list(input_shape)}; for 1-channel data use small-cnn, madry-cnn or mlp"
        )


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build one architecture and which inputs it accepts.

    Attributes
    ----------
    name : str
        Registry name.
    constructor : callable
        ``constructor(input_shape, num_classes) -> nn.Module``.
    check_input : callable
        Raises ``ValueError`` for input shapes the architecture cannot take.
    description : str
        One line for ``--help`` and the docs.
    """

    name: str
    constructor: Callable[[tuple[int, int, int], int], nn.Module]
    check_input: Callable[[tuple[int, int, int]], None]
    description: str

    def __call__(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        self.check_input(input_shape)
        return self.constructor(input_shape, num_classes)


#: Registry of architectures: name -> :class:`ModelSpec` (callable as a constructor).
MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", MLP, _check_any, "flatten -> 256 -> 256 -> classes (digits)"),
    "small-cnn": ModelSpec(
        "small-cnn", SmallCNN, _check_any, "two stride-2 3x3 convs, FC 100 (fast MNIST)"
    ),
    "madry-cnn": ModelSpec(
        "madry-cnn", MadryCNN, _check_madry, "Madry et al. MNIST-challenge CNN (3.27 M params)"
    ),
    "preact-resnet18": ModelSpec(
        "preact-resnet18", PreActResNet18, _check_preact, "pre-activation ResNet-18 (CIFAR-10)"
    ),
}


def _validate_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in input_shape)
        exact = all(int(s) == s for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"input_shape must be three positive integers (C, H, W), got {input_shape!r}"
        ) from None
    if len(shape) != 3 or not exact or min(shape) < 1:
        raise ValueError(
            f"input_shape must be three positive integers (C, H, W), got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``model`` deterministically from ``generator`` (He et al., ICCV 2015 init).

    Each ``nn.Linear`` and ``nn.Conv*`` weight is drawn as PyTorch's default does
    (kaiming-uniform with ``a = sqrt(5)``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), and its
    bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), but from ``generator`` in module order;
    batch-norm layers get weight 1, bias 0 and fresh running statistics. The same
    generator state therefore gives bit-identical weights.

    Parameters
    ----------
    model : nn.Module
        Model to initialise in place (its parameters must live on the CPU).
    generator : torch.Generator
        A CPU generator; it is advanced.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            module.reset_parameters()
    return model


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    kwargs: Mapping[str, Any] | None = None,
    normalize: Mapping[str, Sequence[float]] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Build a classifier: a built-in architecture of :data:`MODELS`, or any ``nn.Module`` class.

    Parameters
    ----------
    name : str
        A registry name (``"mlp"``, ``"small-cnn"``, ``"madry-cnn"``, ``"preact-resnet18"``),
        a name given to :func:`register_model` or to a ``gametheory_defense.models`` entry
        point, or an importable ``"package.module:Class"`` (a class or factory returning an
        ``nn.Module``; see :func:`resolve_architecture` for when it may be imported).
    input_shape : tuple of int
        ``(C, H, W)`` of one input in [0, 1].
    num_classes : int, optional
        Number of logits (at least 2). Required for built-in architectures; for others it
        is checked against one forward pass, or read from it when omitted.
    generator : torch.Generator, optional
        When given, all parameters are initialised from it and torch's global generator
        is left exactly as it was (built-ins: :func:`init_parameters`; other classes:
        their own initialisation, run under a seed drawn from ``generator``); when
        ``None``, PyTorch's default initialisation draws from the global generator.
    kwargs : mapping, optional
        JSON keyword arguments of a non-built-in constructor (``Class(**kwargs)``).
    normalize : mapping, optional
        ``{"mean": [...], "std": [...]}``, one value per input channel: the model is
        wrapped as ``Sequential(normalize=Normalize(mean, std), model=net)`` so that it takes
        inputs in [0, 1] (see :func:`with_normalize`).
    trust_code : bool, default False
        Allow importing ``name`` when it is a ``"package.module:Class"`` that was not
        registered. Only set it for code you trust: importing runs it.

    Returns
    -------
    nn.Module
        The model on the CPU in training mode, with the attribute
        ``architecture = {"name", "input_shape", "num_classes"}`` plus ``"kwargs"`` and
        ``"normalize"`` where given; the checkpoint sidecar records it.

    Raises
    ------
    ValueError
        Unknown name (the message lists the choices), malformed or incompatible
        ``input_shape``, ``num_classes < 2``, bad ``kwargs`` or ``normalize``, a model that
        does not map ``input_shape`` inputs to ``num_classes`` logits.
    UntrustedCodeError
        ``name`` is an unregistered ``"package.module:Class"`` and ``trust_code`` is false.
    """
    shape = _validate_shape(input_shape)
    norm = parse_normalize(normalize)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, (int, float)) or int(num_classes) != num_classes or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"build_model needs a CPU generator, got one on {generator.device}; "
            "move the model with .to(device) after building"
        )
    spec = MODELS.get(name) if isinstance(name, str) else None
    if spec is not None:
        if kwargs:
            raise ValueError(
                f"the built-in model {name!r} takes no kwargs (got {sorted(kwargs)}); kwargs are for "
                "architectures named as 'package.module:Class'"
            )
        if num_classes is None:
            raise ValueError(f"num_classes is required to build the built-in model {name!r}")
        num_classes = int(num_classes)
        if generator is None:
            model = spec(shape, num_classes)
        else:
            # The default initialisation inside the constructors draws from the global
            # generator; fork_rng puts its state back so a seeded build has no side effect.
            with torch.random.fork_rng(devices=[]):
                model = spec(shape, num_classes)
            init_parameters(model, generator)
        arch: dict[str, Any] = {"name": name, "input_shape": list(shape), "num_classes": num_classes}
    else:
        constructor = resolve_architecture(name, trust_code=trust_code)
        kw = _check_kwargs(kwargs, name)
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                # the CPU generator only: torch.manual_seed would also reseed every CUDA
                # device, which fork_rng(devices=[]) does not restore
                torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            try:
                model = constructor(**kw)
            except Exception as exc:  # the user's constructor: any failure becomes one line
                raise ValueError(f"building {name!r} with kwargs {kw} failed: {_first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name!r} returned a {type(model).__name__}, not a torch.nn.Module")
        arch = {"name": name, "input_shape": list(shape), "num_classes": None, "kwargs": kw}
    if norm is not None:
        if len(norm["mean"]) != shape[0]:
            raise ValueError(
                f"normalize gives {len(norm['mean'])} channel statistics but the inputs have {shape[0]} "
                "channel(s) (gametheory_defense.models.Normalize needs one mean and one std per input channel)"
            )
        model = with_normalize(model, mean=norm["mean"], std=norm["std"])
        arch["normalize"] = norm
    if arch["num_classes"] is None:
        arch["num_classes"] = check_classifier(
            model, input_shape=shape, num_classes=None if num_classes is None else int(num_classes), name=f"architecture {name!r}"
        )
    model.architecture = arch  # type: ignore[assignment]
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_kwargs(kwargs: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """Constructor keyword arguments as a plain JSON object (they are recorded in sidecars)."""
    import json

    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"kwargs of {name!r} must be a JSON object (string keys), got {kwargs!r}")
    try:
        return json.loads(json.dumps(dict(kwargs), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"kwargs of {name!r} must be JSON (strings, numbers, booleans, lists, objects): {exc}"
        ) from None


# --------------------------------------------------------------------------- open world

#: Entry-point group through which installed packages register their architectures
#: (``[project.entry-points."gametheory_defense.models"] my-net = "my_pkg.nets:MyNet"``).
ENTRY_POINT_GROUP = "gametheory_defense.models"

_IMPORT_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# name -> constructor, or the "package.module:Class" to import when first used
_REGISTERED: dict[str, Callable[..., nn.Module] | str] = {}


def is_import_spec(name: object) -> bool:
    """Whether ``name`` has the form ``"package.module:Class"`` (``"pkg.mod:Outer.Inner"`` too)."""
    return isinstance(name, str) and _IMPORT_SPEC.match(name) is not None


def _spec_of(obj: Callable[..., Any]) -> str:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        raise ValueError(
            f"{obj!r} is not importable by name (defined inside a function?); pass name=... "
            "to register it under a name of your choice"
        )
    return f"{module}:{qualname}"


def register_model(target: str | Callable[..., nn.Module], *, name: str | None = None) -> str:
    """Trust an architecture: checkpoints and configs that name it load without ``trust_code``.

    Parameters
    ----------
    target : str or callable
        A ``"package.module:Class"`` to import when first used, or the class (or factory)
        itself; it is called with the ``kwargs`` recorded for the model and must return an
        ``nn.Module``.
    name : str, optional
        A short name (e.g. ``"my-resnet"``) under which configs and sidecars may refer to
        it (the ``"package.module:Class"`` it stands for is registered too); default the
        ``"package.module:Class"`` of ``target``.

    Returns
    -------
    str
        The name the architecture is recorded under.

    Raises
    ------
    ValueError
        ``target`` is neither an import spec nor callable, or ``name`` is a built-in name
        or already registered for something else.

    Notes
    -----
    Registration lasts for the process. Installed packages register theirs for every
    process through entry points of the ``gametheory_defense.models`` group.
    """
    if isinstance(target, str):
        if not is_import_spec(target):
            raise ValueError(f"register_model needs 'package.module:Class' or a class, got {target!r}")
        spec = target
    elif callable(target):
        spec = _spec_of(target) if name is None else None  # type: ignore[assignment]
    else:
        raise ValueError(f"register_model needs 'package.module:Class' or a class, got {type(target).__name__}")
    key = name if name is not None else spec
    if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key):
        raise ValueError(f"register_model: name must be a non-empty string without spaces, got {key!r}")
    if key in MODELS:
        raise ValueError(f"register_model: {key!r} is a built-in model name; choose another name")
    keys = [key]
    if name is not None:  # consent to the short name covers the import path it stands for
        try:
            keys.append(target if isinstance(target, str) else _spec_of(target))
        except ValueError:
            pass
    for k in keys:
        old = _REGISTERED.get(k)
        if old is not None and old is not target and old != target:
            raise ValueError(f"register_model: {k!r} is already registered for {old!r}")
    for k in keys:
        _REGISTERED[k] = target
    return key


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_models() -> dict[str, str]:
    """Architectures that load without ``trust_code``: name -> what it refers to.

    The built-ins of :data:`MODELS`, :func:`register_model` registrations of this process,
    and the ``gametheory_defense.models`` entry points of installed packages.
    """
    out = {name: f"built-in: {spec.description}" for name, spec in MODELS.items()}
    for name, ep in _entry_points().items():
        out.setdefault(name, f"entry point: {ep.value}")
    for name, target in _REGISTERED.items():
        out[name] = target if isinstance(target, str) else f"registered: {_spec_of_or_repr(target)}"
    return out


def _spec_of_or_repr(obj: Any) -> str:
    try:
        return _spec_of(obj)
    except ValueError:
        return repr(obj)


def _import_spec(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # ImportError, AttributeError, or an error raised by the module itself
        raise ValueError(f"cannot import architecture {spec!r}: {_first_line(exc)}") from None
    if not callable(obj):
        raise ValueError(f"architecture {spec!r} is a {type(obj).__name__}, not a class or function")
    return obj  # type: ignore[no-any-return]


def resolve_architecture(name: str, *, trust_code: bool = False) -> Callable[..., nn.Module]:
    """The constructor an architecture name stands for, importing code only with consent.

    Looked up in order: :func:`register_model` registrations; entry points of the
    ``gametheory_defense.models`` group (by entry-point name, or by the
    ``"package.module:Class"`` they point at); then, only when ``trust_code`` is true, any
    ``"package.module:Class"``. A name read from a file never triggers an import by itself.

    Parameters
    ----------
    name : str
        An architecture name (not one of the built-ins of :data:`MODELS`, which
        :func:`build_model` builds itself).
    trust_code : bool, default False
        Allow importing an unregistered ``"package.module:Class"``.

    Returns
    -------
    callable
        Called with the model's ``kwargs``; returns an ``nn.Module``.

    Raises
    ------
    UntrustedCodeError
        An unregistered ``"package.module:Class"`` without ``trust_code``.
    ValueError
        An unknown name, or code that cannot be imported.
    """
    from gametheory_defense.errors import UntrustedCodeError

    if not isinstance(name, str):
        raise ValueError(f"an architecture name must be a string, got {name!r}")
    target = _REGISTERED.get(name)
    if target is None:
        for ep_name, ep in _entry_points().items():
            if name in (ep_name, ep.value):
                try:
                    target = ep.load()
                except Exception as exc:
                    raise ValueError(
                        f"entry point {ep_name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r} cannot be loaded: {_first_line(exc)}"
                    ) from None
                break
    if target is None and is_import_spec(name):
        if not trust_code:
            raise UntrustedCodeError(
                f"architecture {name!r} is code to import; pass trust_code=True (CLI: --trust-code) if you "
                f"trust it, or register it first with gametheory_defense.models.register_model({name!r})"
            )
        target = name
    if target is None:
        known = sorted(set(MODELS) | set(_REGISTERED) | set(_entry_points()))
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(known)}, or name a class as 'package.module:Class'"
        )
    return _import_spec(target) if isinstance(target, str) else target


def parse_normalize(normalize: Mapping[str, Any] | None) -> dict[str, list[float]] | None:
    """Validate a ``{"mean": [...], "std": [...]}`` option; ``None`` stays ``None``.

    Raises
    ------
    ValueError
        Not a mapping with exactly ``mean`` and ``std``, lists of different lengths,
        non-finite values or a non-positive std (the message names
        ``gametheory_defense.models.Normalize``).
    """
    if normalize is None:
        return None
    what = "normalize (gametheory_defense.models.Normalize)"
    if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
        got = sorted(normalize) if isinstance(normalize, Mapping) else type(normalize).__name__
        raise ValueError(f"{what} must be {{mean = [...], std = [...]}} with one value per channel, got {got}")
    out: dict[str, list[float]] = {}
    for key in ("mean", "std"):
        value = normalize[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            raise ValueError(f"{what}: {key} must be a non-empty list of finite numbers, got {value!r}")
        out[key] = [float(v) for v in value]
    if len(out["mean"]) != len(out["std"]):
        raise ValueError(f"{what}: {len(out['mean'])} means but {len(out['std'])} stds; give one of each per channel")
    if min(out["std"]) <= 0:
        raise ValueError(f"{what}: every std must be positive, got {out['std']}")
    return out


def with_normalize(model: nn.Module, *, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """``model`` behind a :class:`Normalize` layer, so that it takes inputs in [0, 1].

    Returns ``nn.Sequential(normalize=Normalize(mean, std), model=model)``: the state dict
    holds ``normalize.mean``, ``normalize.std`` and ``model.*`` (the wrapped model's own
    tensors, prefixed).
    """
    return nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), ("model", model)]))


def check_logits(out: Any, *, batch: int, name: str = "the model") -> torch.Tensor:
    """``out`` if it is an ``(batch, num_classes)`` floating tensor of logits; else a one-line ValueError."""
    if isinstance(out, (tuple, list)):
        shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__ for o in out]
        raise ValueError(
            f"{name} returned a {type(out).__name__} {shapes}; a defender must return one logits tensor of "
            "shape (N, num_classes): wrap it in a module whose forward returns only the logits"
        )
    if isinstance(out, Mapping):
        raise ValueError(
            f"{name} returned a dict with keys {sorted(map(str, out))}; a defender must return one logits "
            "tensor of shape (N, num_classes): wrap it in a module whose forward returns only the logits"
        )
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{name} returned a {type(out).__name__}; a defender must return a logits tensor (N, num_classes)")
    if out.dim() != 2 or out.shape[0] != batch:
        raise ValueError(
            f"{name} returned shape {tuple(out.shape)} for a batch of {batch}; a defender must return 2-D "
            "logits (N, num_classes) (flatten or squeeze extra dimensions inside the model)"
        )
    if not out.is_floating_point():
        raise ValueError(f"{name} returned {out.dtype} outputs; a defender must return floating-point logits")
    return out


def _first_layer_hint(model: nn.Module, shape: tuple[int, ...]) -> str:
    """What the first convolution or linear layer expects, as a hint for a shape error."""
    for qual, module in model.named_modules():
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return ""  # its input size is not known before the first call
        if isinstance(module, nn.modules.conv._ConvNd):
            if module.in_channels != shape[0]:
                return f"; its first convolution {qual!r} expects {module.in_channels} input channel(s)"
            return ""
        if isinstance(module, nn.Linear):
            numel = math.prod(shape)
            if module.in_features != numel:
                return f"; its first linear layer {qual!r} expects {module.in_features} input features, the inputs have {numel}"
            return ""
    return ""


def check_classifier(
    model: nn.Module,
    x: torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    name: str = "the model",
) -> int:
    """Check that ``model`` is a usable defender; return its number of classes.

    One forward pass without gradients on two examples (``x[:2]``, or zeros of
    ``input_shape``), in ``eval()`` mode with a private generator; the model's modes and
    every stochastic layer's generator are restored afterwards, so the check changes
    nothing. Used by the payoff builder, :func:`~gametheory_defense.evaluation.evaluate`
    and the attacks, so a mistake fails before any work with a message that says what to
    do, not with a torch error from deep inside an attack.

    Parameters
    ----------
    model : nn.Module
        Maps ``(N, C, H, W)`` floats in [0, 1] to ``(N, num_classes)`` logits.
    x : torch.Tensor, optional
        Example inputs (only the first two are used).
    input_shape : sequence of int, optional
        ``(C, H, W)``, when ``x`` is not given (default: ``model.architecture``'s).
    num_classes : int, optional
        Expected number of logits.
    name : str
        How error messages refer to the model (e.g. ``"defender 'at'"``).

    Returns
    -------
    int
        The number of logits.

    Raises
    ------
    ValueError
        Inputs of another shape than ``model.architecture["input_shape"]`` (naming it), a
        forward pass that fails (with what the first layer expects), float64 weights,
        outputs that are a tuple, a dict, not 2-D or of the wrong number of classes.
    """
    from gametheory_defense.stochastic import use_generator

    arch = getattr(model, "architecture", None)
    expected = None
    if isinstance(arch, Mapping) and isinstance(arch.get("input_shape"), (list, tuple)):
        expected = tuple(int(d) for d in arch["input_shape"])
    if x is None:
        shape = tuple(int(d) for d in (input_shape if input_shape is not None else expected or ()))
        if len(shape) == 0:
            raise ValueError(f"check_classifier: give x or input_shape for {name}")
        x = torch.zeros((2, *shape))
    shape = tuple(int(d) for d in x.shape[1:])
    if expected is not None and shape != expected:
        raise ValueError(
            f"{name} expects inputs of shape {list(expected)} (model.architecture['input_shape']) but the "
            f"data has shape {list(shape)}; use the data set it was built for"
        )
    tensors = list(model.parameters()) + list(model.buffers())
    for qual, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and t.dtype != torch.float32 and x.dtype == torch.float32:
            raise ValueError(
                f"{name} has {t.dtype} weights ({qual!r}) but inputs are float32 in [0, 1]; convert it with "
                "model.float() (attacks and payoffs run in float32)"
            )
    device = tensors[0].device if tensors else torch.device("cpu")
    xs = x[:2].detach().to(device)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), use_generator(model, torch.Generator().manual_seed(0)):
            out = model(xs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{name} fails on inputs of shape {list(shape)} ({_first_line(exc)}){_first_layer_hint(model, shape)}"
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode
    out = check_logits(out, batch=xs.shape[0], name=name)
    k = int(out.shape[1])
    if num_classes is not None and k != num_classes:
        raise ValueError(f"{name} returns {k} logits but {num_classes} classes are expected")
    if k < 2:
        raise ValueError(f"{name} returns {k} logit(s); a classifier needs at least 2")
    return k


def relu_names(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.ReLU`` modules of ``model``, in forward order.

    The built-in architectures register every activation in the order the forward pass
    calls it, so this is also the order in which Stochastic Activation Pruning layers
    (Dhillon et al., ICLR 2018) would act. Names are those of ``model.named_modules()``
    and can be passed to SAP's ``layers`` setting.

    Parameters
    ----------
    model : nn.Module
        Any module.

    Returns
    -------
    list of str
        One entry per distinct ``nn.ReLU`` instance (``""`` if ``model`` itself is one).
    """
    return [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
