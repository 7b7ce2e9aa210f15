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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
                f"Normalize needs one mean and one std per channel, got {len(mean_t)} means "
                f"and {len(std_t)} stds"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"Normalize std must be positive, got {std_t.tolist()}")
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
    num_classes: int,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Build a registered classifier (architectures: see :data:`MODELS`).

    Parameters
    ----------
    name : str
        Registry name: ``"mlp"``, ``"small-cnn"``, ``"madry-cnn"`` or ``"preact-resnet18"``.
    input_shape : tuple of int
        ``(C, H, W)`` of one input in [0, 1].
    num_classes : int
        Number of logits (at least 2).
    generator : torch.Generator, optional
        When given, all parameters are initialised from it (:func:`init_parameters`) and
        torch's global generator is left exactly as it was; when ``None``, PyTorch's
        default initialisation draws from the global generator.

    Returns
    -------
    nn.Module
        The model on the CPU in training mode, with the attribute
        ``architecture = {"name": name, "input_shape": [C, H, W], "num_classes": k}``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the choices), malformed or incompatible
        ``input_shape``, or ``num_classes < 2``.
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    shape = _validate_shape(input_shape)
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    if generator is None:
        model = spec(shape, num_classes)
    else:
        if generator.device.type != "cpu":
            raise ValueError(
                f"build_model needs a CPU generator, got one on {generator.device}; "
                "move the model with .to(device) after building"
            )
        # The default initialisation inside the constructors draws from the global
        # generator; fork_rng puts its state back so a seeded build has no side effect.
        with torch.random.fork_rng(devices=[]):
            model = spec(shape, num_classes)
        init_parameters(model, generator)
    model.architecture = {  # type: ignore[assignment]
        "name": name,
        "input_shape": list(shape),
        "num_classes": num_classes,
    }
    return model


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
