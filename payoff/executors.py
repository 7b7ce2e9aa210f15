"""Executors that run the payoff builder's tasks: in this process, or as Ray tasks.

A task (:class:`payoff.tasks.ColumnTask`) crafts one attack against one source model
and evaluates some defenders on the result (or measures clean accuracy), writing each
finished cell to the :class:`~payoff.store.PayoffStore`. Cells are seeded from their
identity, so both executors give the same matrix.

``serial``
    Runs the tasks one after another with the models already in memory.
``ray``
    One Ray task per builder task (Moritz et al., 2018, "Ray: a distributed framework for
    emerging AI applications"). Workers receive defenders as
    :class:`~payoff.tasks.DefenderSpec` (they load the checkpoint themselves) or, for
    in-memory models with an ``architecture`` record (``build_model``, ``load_model``), as
    safetensors bytes of the ``state_dict`` with the architecture and SAP settings. An
    architecture the main process built (with its ``trust_code`` or registration) may be
    imported by the workers too: the consent was given in the main process. Any other
    ``nn.Module`` (no architecture, or a class the workers cannot import by name, e.g.
    one registered under a short name in this process) is shipped as the object itself,
    serialised in memory by Ray (cloudpickle), never through a file. Each worker checks
    that the model it rebuilt has the identity the main process computed, and writes its
    cells to the same store directory (which must be reachable from every worker: a local
    cluster, or a shared file system). Classes shipped by name, and classes of modules
    shipped as objects, must be importable on the workers: a local cluster started here
    gets this process's ``sys.path`` as its ``PYTHONPATH``; on another cluster, install the
    package or set the ``PYTHONPATH`` of its workers.

Ray options (``ray_options``)
    ``address`` (``None``: start a local cluster, or use the one already initialised),
    ``num_cpus`` (CPUs of a local cluster started here, default 2), ``num_gpus`` (GPUs per
    task, e.g. 0.25, default 0), ``cpus_per_task`` (default 1), ``shutdown`` (shut Ray down
    after the build if it was started here, default True).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gametheory_defense.identity import defender_identity
from payoff.store import PayoffStore
from payoff.tasks import BuildSettings, ColumnTask, DefenderSpec, execute_task

__all__ = ["EXECUTORS", "run_tasks", "ModulePayload", "ObjectPayload"]

log = logging.getLogger(__name__)

#: Executor names accepted by :func:`payoff.build_payoff_matrix`.
EXECUTORS: tuple[str, ...] = ("serial", "ray")

_RAY_KEYS = frozenset({"address", "num_cpus", "num_gpus", "cpus_per_task", "shutdown"})


def run_tasks(
    tasks: Sequence[ColumnTask],
    *,
    executor: str,
    ray_options: Mapping[str, Any] | None,
    models: Mapping[str, nn.Module],
    specs: Mapping[str, DefenderSpec],
    attacks: Mapping[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: BuildSettings,
    store: PayoffStore,
    on_cells: Callable[[int], None] | None = None,
) -> None:
    """Run ``tasks`` with the named executor; every task writes its cells to ``store``.

    Parameters
    ----------
    tasks : sequence of ColumnTask
        Work planned by the builder (only missing cells).
    executor : {"serial", "ray"}
    ray_options : Mapping, optional
        See the module docstring.
    models : Mapping[str, nn.Module]
        Every defender, loaded (used by ``serial``; ``ray`` ships specs or weights).
    specs : Mapping[str, DefenderSpec]
        The defenders given as specs (shipped as they are to Ray workers).
    attacks : Mapping[str, Attack]
    x, y : torch.Tensor
        Evaluation set (CPU).
    settings : BuildSettings
    store : PayoffStore
    on_cells : callable, optional
        Called with the number of cells finished, as they finish (progress).
    """
    if not tasks:
        return
    if executor == "serial":
        _run_serial(tasks, models=models, attacks=attacks, x=x, y=y, settings=settings, store=store, on_cells=on_cells)
    elif executor == "ray":
        _run_ray(
            tasks, ray_options=ray_options or {}, models=models, specs=specs, attacks=attacks,
            x=x, y=y, settings=settings, store=store, on_cells=on_cells,
        )
    else:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")


def _run_serial(
    tasks: Sequence[ColumnTask],
    *,
    models: Mapping[str, nn.Module],
    attacks: Mapping[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: BuildSettings,
    store: PayoffStore,
    on_cells: Callable[[int], None] | None,
) -> None:
    callback = (lambda _key: on_cells(1)) if on_cells is not None else None
    for task in tasks:
        execute_task(task, get_model=models.__getitem__, attacks=attacks, x=x, y=y, settings=settings, store=store, on_cell=callback)


# --------------------------------------------------------------------------- ray


def _worker_buildable(model: nn.Module) -> bool:
    """Whether a worker can rebuild ``model`` from its ``architecture`` record by name."""
    from gametheory_defense.models import ENTRY_POINT_GROUP, MODELS, is_import_spec

    arch = getattr(model, "architecture", None)
    if not isinstance(arch, Mapping) or not {"name", "input_shape", "num_classes"} <= set(arch):
        return False
    name = arch["name"]
    if name in MODELS:
        return True
    if is_import_spec(name):
        return not str(name).startswith("__main__:")
    from importlib.metadata import entry_points

    return any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP))


@dataclass(frozen=True)
class ModulePayload:
    """An in-memory model shipped to a worker as its architecture record and safetensors weights.

    Attributes
    ----------
    architecture : dict
        ``model.architecture`` (``build_model`` arguments: name, input_shape,
        num_classes, and kwargs/normalize where recorded).
    sap : dict or None
        SAP settings to re-apply.
    weights : bytes
        ``safetensors.torch.save(state_dict)``.
    identity : str
        The defender identity the rebuilt model must have.
    """

    architecture: dict[str, Any]
    sap: dict[str, Any] | None
    weights: bytes
    identity: str

    @classmethod
    def from_module(cls, name: str, model: nn.Module, identity: str) -> ModulePayload:
        """Serialise ``model`` (one with an ``architecture`` record, optionally with SAP)."""
        from safetensors.torch import save

        from gametheory_defense.sap import sap_settings

        if not _worker_buildable(model):
            raise ValueError(
                f"defender {name!r} cannot be rebuilt by name on Ray workers (no importable `architecture`); "
                "ship it with ObjectPayload"
            )
        arch = dict(model.architecture)  # type: ignore[arg-type]
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        return cls(
            architecture={
                "name": str(arch["name"]),
                "input_shape": [int(d) for d in arch["input_shape"]],
                "num_classes": int(arch["num_classes"]),
                **({"kwargs": dict(arch["kwargs"])} if arch.get("kwargs") else {}),
                **({"normalize": dict(arch["normalize"])} if arch.get("normalize") is not None else {}),
            },
            sap=sap_settings(model),
            weights=save(tensors),
            identity=identity,
        )

    def load(self, *, device: str | torch.device = "cpu") -> nn.Module:
        """Rebuild the model in ``eval()`` mode on ``device``."""
        from safetensors.torch import load

        from gametheory_defense.models import build_model
        from gametheory_defense.sap import apply_sap

        model = build_model(
            self.architecture["name"],
            input_shape=tuple(self.architecture["input_shape"]),
            num_classes=self.architecture["num_classes"],
            kwargs=self.architecture.get("kwargs"),
            normalize=self.architecture.get("normalize"),
            trust_code=True,  # the main process built this architecture: its consent covers the workers
            generator=torch.Generator().manual_seed(0),
        )
        model.load_state_dict(load(self.weights), strict=True)
        if self.sap is not None:
            model = apply_sap(
                model,
                self.sap["frac"],
                mode=self.sap["mode"],
                layers=self.sap["layers"],
                activations=self.sap.get("activations", "relu"),
            )
        return model.to(device).eval()


@dataclass(frozen=True)
class ObjectPayload:
    """Any other ``nn.Module``, shipped as the object (Ray serialises it in memory, never to a file).

    Attributes
    ----------
    module : nn.Module
        A CPU copy of the defender.
    """

    module: nn.Module

    @classmethod
    def from_module(cls, model: nn.Module) -> ObjectPayload:
        """A CPU copy of ``model`` (the caller's model is not moved)."""
        import copy

        return cls(copy.deepcopy(model).cpu())

    def load(self, *, device: str | torch.device = "cpu") -> nn.Module:
        """The module on ``device`` in ``eval()`` mode."""
        return self.module.to(device).eval()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "executor='ray' needs Ray: install the ray extra (pip install 'gametheory-defense[ray]')"
        ) from None
    return ray


def _ray_task(
    task: ColumnTask,
    payloads: Mapping[str, Any],
    attacks: Mapping[str, Any],
    data: tuple[torch.Tensor, torch.Tensor],
    settings: BuildSettings,
    store_root: str,
) -> int:
    """Body of one Ray task: load the defenders it needs, run the task, return the cells written."""
    cache: dict[str, nn.Module] = {}

    def get_model(name: str) -> nn.Module:
        if name not in cache:
            payload = payloads[name]
            model = payload["spec"].load(device=settings.device)
            if defender_identity(model) != payload["identity"]:
                raise RuntimeError(f"defender {name!r} loaded on a Ray worker differs from the main process's model")
            cache[name] = model
        return cache[name]

    x, y = data
    written = execute_task(
        task, get_model=get_model, attacks=attacks, x=x, y=y, settings=settings, store=PayoffStore(store_root)
    )
    return len(written)


def _run_ray(
    tasks: Sequence[ColumnTask],
    *,
    ray_options: Mapping[str, Any],
    models: Mapping[str, nn.Module],
    specs: Mapping[str, DefenderSpec],
    attacks: Mapping[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: BuildSettings,
    store: PayoffStore,
    on_cells: Callable[[int], None] | None,
) -> None:
    from payoff.store import MemoryStore

    unknown = set(ray_options) - _RAY_KEYS
    if unknown:
        raise ValueError(f"unknown ray_options {sorted(unknown)}; allowed: {sorted(_RAY_KEYS)}")
    if isinstance(store, MemoryStore):
        raise ValueError("the ray executor needs an on-disk PayoffStore (workers write cells to it)")
    ray = _import_ray()

    started = False
    if not ray.is_initialized():
        address = ray_options.get("address")
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            init_kwargs["num_cpus"] = int(ray_options.get("num_cpus", 2))
            # local workers see this process's import path: classes it can import by name, they can
            paths = [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
            init_kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}}
        ray.init(address=address, **init_kwargs)
        started = True
    try:
        payloads: dict[str, Any] = {}
        for name, model in models.items():
            identity = defender_identity(model)
            spec = specs.get(name)
            payload: Any
            if not _worker_buildable(model):
                payload = ObjectPayload.from_module(model)
            elif spec is not None:
                # workers may run in another directory (or machine): ship absolute paths; the
                # main process loaded this checkpoint (trusted or registered), so may they
                payload = replace(spec, checkpoint=Path(spec.checkpoint).expanduser().resolve(), trust_code=True)
            else:
                payload = ModulePayload.from_module(name, model, identity)
            payloads[name] = {"spec": payload, "identity": identity}
        payloads_ref = ray.put(payloads)
        attacks_ref = ray.put(dict(attacks))
        data_ref = ray.put((x.cpu(), y.cpu()))
        remote = ray.remote(_ray_task).options(
            num_cpus=float(ray_options.get("cpus_per_task", 1)),
            num_gpus=float(ray_options.get("num_gpus", 0)),
        )
        pending = [
            remote.remote(task, payloads_ref, attacks_ref, data_ref, settings, str(store.root.expanduser().resolve()))
            for task in tasks
        ]
        log.info("submitted %d payoff tasks to Ray", len(pending))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                count = ray.get(ref)
                if on_cells is not None:
                    on_cells(count)
    finally:
        if started and ray_options.get("shutdown", True):
            ray.shutdown()
