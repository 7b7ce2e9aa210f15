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

    If ``generator`` lives on another device than ``device`` the numbers are drawn on the
    generator's device and moved, so one CPU generator reproduces the same stream on CPU
    and CUDA.
    """
    fn = {"rand": torch.rand, "randn": torch.randn}[kind]
    device = torch.device(device)
    if generator is None or generator.device.type == device.type:
        return fn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return fn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)
