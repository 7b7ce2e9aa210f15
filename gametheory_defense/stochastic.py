"""Explicit randomness for stochastic defenses.

A :class:`StochasticModule` draws random numbers in its forward pass (SAP, mixtures).
It stays stochastic in ``eval()`` mode: randomness is switched off only explicitly,
through its ``stochastic`` flag or :func:`deterministic`. Its random numbers come from
its ``generator`` attribute (a ``torch.Generator``; ``None`` means torch's default
generator), which callers set for a block of code with :func:`use_generator`.
Library code never seeds a global generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "StochasticModule",
    "stochastic_modules",
    "is_stochastic",
    "use_generator",
    "deterministic",
    "random_tensor",
]


class StochasticModule(nn.Module):
    """Base class of modules whose forward pass is random.

    Attributes
    ----------
    generator : torch.Generator or None
        Source of randomness; ``None`` uses torch's default generator.
    stochastic : bool
        When ``False`` the module computes its deterministic (expected) version.
        Unaffected by ``train()``/``eval()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None
        self.stochastic: bool = True


def stochastic_modules(model: nn.Module) -> list[StochasticModule]:
    """All :class:`StochasticModule` submodules of ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, StochasticModule)]


def is_stochastic(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` currently draws random numbers."""
    return any(m.stochastic for m in stochastic_modules(model))


@contextlib.contextmanager
def use_generator(model: nn.Module, generator: torch.Generator | None) -> Iterator[None]:
    """Make every stochastic submodule of ``model`` draw from ``generator`` inside the block.

    With ``generator=None`` nothing changes. The previous generators are restored on exit.
    """
    if generator is None:
        yield
        return
    mods = stochastic_modules(model)
    saved = [m.generator for m in mods]
    try:
        for m in mods:
            m.generator = generator
        yield
    finally:
        for m, g in zip(mods, saved):
            m.generator = g


@contextlib.contextmanager
def deterministic(model: nn.Module) -> Iterator[None]:
    """Switch every stochastic submodule of ``model`` to its deterministic version inside the block."""
    mods = stochastic_modules(model)
    saved = [m.stochastic for m in mods]
    try:
        for m in mods:
            m.stochastic = False
        yield
    finally:
        for m, s in zip(mods, saved):
            m.stochastic = s


def random_tensor(
    kind: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``torch.rand`` (``kind="rand"``) or ``torch.randn`` (``"randn"``) on ``device``.

    If ``generator`` lives on another device than ``device`` (a CPU generator feeding CUDA
    tensors, as every seeded path of the library does), one 63-bit seed is drawn from it
    and the numbers are drawn on ``device`` by a generator of that device seeded with it.
    The result is a function of the CPU generator's state, so a seeded run repeats exactly
    on a given device type, and no large tensor of random numbers is made on the host and
    copied: SAP under EOT draws one uniform per unit and example, hundreds of millions per
    forward pass, which the host generator would make the bottleneck of a GPU. (CPU and
    CUDA streams differ; results of the two devices differ in floating point anyway.)
    Devices without their own generator fall back to drawing on the generator's device
    and moving the numbers.
    """
    fn = {"rand": torch.rand, "randn": torch.randn}[kind]
    device = torch.device(device)
    if generator is None or generator.device.type == device.type:
        return fn(tuple(shape), generator=generator, device=device, dtype=dtype)
    local = _derived_generator(generator, device)
    if local is not None:
        return fn(tuple(shape), generator=local, device=device, dtype=dtype)
    return fn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def _derived_generator(generator: torch.Generator, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded from one draw of ``generator`` (``None`` if the device has none)."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    try:
        local = torch.Generator(device=device)
    except RuntimeError:
        return None
    return local.manual_seed(seed)
