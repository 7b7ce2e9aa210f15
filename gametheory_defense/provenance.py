"""Provenance of a result: library and machine versions, torch threads, the reproducing command.

Reports (``report.md``), checkpoint sidecars and benchmark tables record these so that a
number can be traced to the software and hardware that produced it. Two of them change
results in their last bits and so decide whether a rerun is bit-for-bit identical:

- ``torch_cpu_capability``: the vector instruction set torch's CPU kernels use (AVX2,
  AVX512, ...);
- ``torch_threads``: the number of intra-op threads; reductions are split differently,
  so gradients (hence trained weights and attacks) differ between 1 and 2 threads.

See ``docs/results.md`` and ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence

import numpy as np
import torch

from gametheory_defense import __version__

__all__ = ["environment", "reproduce_command", "torch_threads", "cpu_model"]


def torch_threads() -> int:
    """The number of intra-op threads torch uses now (``torch.get_num_threads()``)."""
    return int(torch.get_num_threads())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Library and machine versions recorded in reports.

    ``torch_cpu_capability`` is the vector instruction set torch's CPU kernels use and
    ``torch_threads`` the number of intra-op threads; trained weights and attacks differ in
    their last bits between values of either, so bit-for-bit reproduction needs the same
    ones (docs/results.md).
    """
    cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return {
        "gametheory-defense": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "torch_cpu_capability": cap() if cap is not None else "unknown",
        "torch_threads": str(torch_threads()),
        "cpu_count": str(os.cpu_count()),
        "cuda": _cuda_devices(),
    }


def _cuda_devices() -> str:
    """``"none"``, or the CUDA runtime version and each visible device's name."""
    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"CUDA {torch.version.cuda}: " + ", ".join(names)


def reproduce_command(argv: Sequence[str] | None = None) -> str:
    """The shell command that reproduces the current invocation."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "gtdefense " + " ".join(shlex.quote(a) for a in args)
