"""Standard and PGD adversarial training (Madry et al., 2018).

:func:`train` fits a classifier in place, either on clean data (``method="standard"``) or
with PGD adversarial training (``method="pgd-at"``): the saddle-point problem

.. math::

    \\min_\\theta \\; \\mathbb{E}_{(x, y)} \\max_{\\|\\delta\\|_\\infty \\le \\epsilon}
    L(f_\\theta(x + \\delta), y)

whose inner maximisation is approximated by projected gradient descent with a random
start (:class:`gametheory_defense.attacks.PGD`), and whose outer minimisation takes
optimizer steps on the adversarial examples only, as in Madry et al. (2018).

Design choices (documented here once):

* **Adversarial examples are crafted with the model in ``eval()`` mode** and the weight
  update runs in ``train()`` mode. Madry et al. craft in train mode; for models with
  batch normalisation (``preact-resnet18``) that makes the attack update the running
  statistics with adversarial batches and lets the attack exploit batch statistics, so
  eval-mode crafting is the more stable choice (it is also what most maintained
  implementations do). Models without BN or dropout are unaffected.
* **eps warm-up** (``eps_warmup_epochs = K > 0``) raises eps linearly per batch, from
  ``eps / B`` at the first batch to ``eps`` at batch ``B = K * batches_per_epoch``; the
  step size scales with it. Useful for MNIST at eps=0.3, where training at full eps from scratch can stall.
* **Mixed precision** (CUDA only, on by default there): ``bfloat16`` autocast where the
  GPU supports it, otherwise ``float16`` autocast with a ``GradScaler``. The inner attack
  runs under the same autocast only with ``bfloat16`` (whose exponent range equals
  float32's, so input gradients do not underflow to zero and PGD's sign steps stay
  meaningful); with ``float16`` the attack runs in float32.
* **Randomness** comes only from ``generator``: it orders the batches and feeds the PGD
  random starts; a second stream derived from it at the start drives evaluation, so
  adding ``eval_data`` does not change the trained weights. Modules that draw from
  torch's global generator (dropout) are run inside ``torch.random.fork_rng`` seeded from
  ``generator``, so the caller's global RNG state is left untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from gametheory_defense.errors import ConfigError, DataError
from gametheory_defense.stochastic import use_generator

if TYPE_CHECKING:
    from gametheory_defense.attacks import Attack
    from gametheory_defense.data import ArrayDataset

    DataLike = ArrayDataset | tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "TRAIN_SETTINGS",
    "DEFAULT_EPOCHS",
    "train_defaults",
    "EpochStats",
    "TrainResult",
    "train",
    "accuracy",
    "default_eval_attack",
]

log = logging.getLogger(__name__)

METHODS = ("standard", "pgd-at")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9
DEFAULT_EVAL_STEPS = 20
#: Epochs when a caller does not choose (``gtdefense train``, a run configuration's ``[[models]]``).
DEFAULT_EPOCHS = 10
#: Keyword arguments of :func:`train` that change the trained weights: the training recipe
#: of a pipeline model (``[[models]]`` keys of the same names) and of ``gtdefense train``.
TRAIN_SETTINGS: tuple[str, ...] = (
    "method",
    "epochs",
    "eps",
    "attack_steps",
    "step_size",
    "eps_warmup_epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
)
_POSTFIX_EVERY = 10  # batches between progress-bar updates (each one syncs with the device)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch of :func:`train` did.

    Attributes
    ----------
    epoch : int
        1-based epoch number.
    eps : float
        The attack radius at the end of the epoch (smaller than the target during
        warm-up; 0 for standard training).
    loss : float
        Mean training loss over the epoch's examples (on adversarial examples for PGD-AT).
    train_accuracy : float
        Accuracy on the examples trained on (adversarial for PGD-AT), in train mode.
    eval_clean_accuracy : float or None
        Clean accuracy on ``eval_data`` after the epoch, if given.
    eval_robust_accuracy : float or None
        Accuracy under ``eval_attack`` on ``eval_data`` after the epoch, if evaluated.
    seconds : float
        Wall time of the epoch's training (evaluation excluded).
    """

    epoch: int
    eps: float
    loss: float
    train_accuracy: float
    eval_clean_accuracy: float | None
    eval_robust_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: per-epoch history and the settings that produced it.

    Attributes
    ----------
    history : tuple of EpochStats
        One entry per epoch.
    settings : dict
        The training configuration (see :meth:`config`).
    """

    history: tuple[EpochStats, ...]
    settings: dict[str, Any]

    @property
    def final(self) -> EpochStats:
        """The last epoch's statistics."""
        return self.history[-1]

    @property
    def seconds(self) -> float:
        """Total training wall time (evaluation excluded)."""
        return float(sum(e.seconds for e in self.history))

    def config(self) -> dict[str, Any]:
        """JSON-able training configuration (method, eps, steps, optimizer, seed, ...)."""
        return dict(self.settings)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able config and history, e.g. for a checkpoint's ``training`` field."""
        return {"config": self.config(), "history": [asdict(e) for e in self.history], "seconds": self.seconds}


# --------------------------------------------------------------------------- helpers


def _as_xy(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels as CPU tensors (float32 N x C x H x W, int64 N), validated."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    else:
        from gametheory_defense.data import as_tensors

        x, y = as_tensors(data)
    x = x.detach().to("cpu")
    y = y.detach().to("cpu")
    if x.dim() != 4:
        raise DataError(f"{what}: images must be N x C x H x W, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise DataError(f"{what}: images must be floats in [0, 1], got dtype {x.dtype}; divide uint8 images by 255")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{what}: labels must be a vector of length {x.shape[0]}, got shape {list(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integers, got dtype {y.dtype}")
    if x.shape[0] == 0:
        raise DataError(f"{what}: no examples")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{what}: images must lie in [0, 1] (normalisation belongs inside the model: "
            f"gametheory_defense.models.Normalize, or the normalize = {{mean, std}} option), got range [{lo:.3g}, {hi:.3g}]"
        )
    return x.float(), y.long()


def _num_classes(model: nn.Module, data: Any) -> int | None:
    arch = getattr(model, "architecture", None)
    if isinstance(arch, dict) and "num_classes" in arch:
        return int(arch["num_classes"])
    n = getattr(data, "num_classes", None)
    return int(n) if n is not None else None


def _check_labels(y: torch.Tensor, num_classes: int | None, what: str) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise DataError(f"{what}: labels must lie in [0, {num_classes}), got range [{lo}, {hi}]")


def _derive_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """An independent CPU generator seeded from ``generator`` (None stays None)."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)


def _autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _global_rng_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run with torch's global RNG seeded from ``generator``; the caller's state is restored after."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def default_eval_attack(eps: float, *, steps: int = DEFAULT_EVAL_STEPS) -> Attack:
    """The evaluation attack :func:`train` uses for PGD-AT: L-inf PGD (Madry et al., 2018) with a random start.

    Parameters
    ----------
    eps : float
        L-inf radius in input units.
    steps : int, default 20
        Iterations; the step size is ``2.5 * eps / steps``.

    Returns
    -------
    Attack
        A cross-entropy L-inf :class:`~gametheory_defense.attacks.PGD`.
    """
    from gametheory_defense.attacks import PGD

    return PGD(eps, 2.5 * eps / steps, steps, norm="linf", loss="ce", random_start=True)


@torch.no_grad()
def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(dim=1) == y).sum())


def accuracy(
    model: nn.Module,
    data: DataLike,
    *,
    attack: Attack | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on clean or attacked inputs (the robust accuracy of Madry et al., 2018).

    The model is evaluated in ``eval()`` mode (its mode is restored afterwards); stochastic
    layers (SAP) stay random and draw from ``generator``, as does the attack.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits.
    data : ArrayDataset, (x, y), Dataset or DataLoader
        Images in [0, 1] (N x C x H x W) and integer labels (see
        :func:`gametheory_defense.data.as_tensors`).
    attack : Attack, optional
        If given, each batch is replaced by ``attack(model, x, y, generator=generator)``.
    batch_size : int, default 256
        Examples per forward pass / attack call.
    device : str or torch.device, default "cpu"
        Where to compute; the model must already live there.
    generator : torch.Generator, optional
        Randomness of the attack and of stochastic layers.
    progress : bool, default False
        Show a tqdm bar over batches.

    Returns
    -------
    float
        Fraction of examples classified correctly, in [0, 1].
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = _as_xy(data, "evaluation data")
    device = torch.device(device)
    from gametheory_defense.models import check_classifier

    check_classifier(model, x[:2].to(device))  # wrong shapes, tuple outputs, float64 weights: one line
    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct = 0
    try:
        with use_generator(model, generator):
            starts = range(0, x.shape[0], batch_size)
            for i in tqdm(starts, desc="attack" if attack is not None else "eval", disable=not progress, leave=False):
                xb = x[i : i + batch_size].to(device, non_blocking=True)
                yb = y[i : i + batch_size].to(device, non_blocking=True)
                if attack is not None:
                    xb = attack(model, xb, yb, generator=generator)
                correct += _clean_correct(model, xb, yb)
    finally:
        for m, was_training in modes.items():
            m.train(was_training)
    return correct / x.shape[0]


def _validate(
    method: str,
    epochs: int,
    eps: float,
    step_size: float | None,
    attack_steps: int,
    eps_warmup_epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    weight_decay: float,
    log_every: int,
) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown training method {method!r}; choose one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)) or eps < 0:
        raise ConfigError(f"eps must be a finite number >= 0 (input units), got {eps!r}")
    if eps > 1:
        raise ConfigError(f"eps={eps} exceeds the [0, 1] input range; eps is in input units (e.g. 8/255, not 8)")
    if method == "pgd-at":
        if eps == 0:
            raise ConfigError("pgd-at needs eps > 0; use method='standard' for clean training")
        if isinstance(attack_steps, bool) or not isinstance(attack_steps, int) or attack_steps < 1:
            raise ConfigError(f"attack_steps must be an integer >= 1, got {attack_steps!r}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ConfigError(f"step_size must be a positive number or None, got {step_size!r}")
        if isinstance(eps_warmup_epochs, bool) or not isinstance(eps_warmup_epochs, int) or eps_warmup_epochs < 0:
            raise ConfigError(f"eps_warmup_epochs must be an integer >= 0, got {eps_warmup_epochs!r}")
        if eps_warmup_epochs > epochs:
            warnings.warn(
                f"eps_warmup_epochs={eps_warmup_epochs} > epochs={epochs}: training never reaches eps={eps}",
                stacklevel=3,
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
        raise ConfigError(f"log_every must be an integer >= 0 (0: once per epoch), got {log_every!r}")


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r} ({exc}); use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


# --------------------------------------------------------------------------- train


def train(
    model: nn.Module,
    dataset: DataLike,
    *,
    method: Literal["standard", "pgd-at"] = "standard",
    epochs: int,
    eps: float = 0.3,
    step_size: float | None = None,
    attack_steps: int = 10,
    eps_warmup_epochs: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    generator: torch.Generator | None = None,
    eval_data: DataLike | None = None,
    eval_attack: Attack | None = None,
    progress: bool = True,
    log_every: int = 0,
) -> TrainResult:
    """Train a classifier in place, clean or with PGD adversarial training (Madry et al., 2018).

    With ``method="pgd-at"`` every batch is replaced by L-inf PGD adversarial examples
    (random start, ``attack_steps`` steps of size ``step_size``, cross-entropy loss),
    crafted with the model in ``eval()`` mode, and the optimizer step is taken on those
    alone. See the module docstring for the design choices (eval-mode crafting, eps
    warm-up, mixed precision, randomness).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits; moved to ``device`` and trained in place, left in
        ``eval()`` mode.
    dataset : ArrayDataset or (x, y)
        Training images in [0, 1] (N x C x H x W, float) and integer labels.
    method : {"standard", "pgd-at"}, default "standard"
        Clean training or PGD adversarial training.
    epochs : int
        Passes over ``dataset`` (>= 1).
    eps : float, default 0.3
        L-inf radius of PGD-AT in input units (ignored by standard training).
    step_size : float, optional
        PGD step size; default ``2.5 * eps / attack_steps`` (Madry et al.).
    attack_steps : int, default 10
        PGD iterations of the inner maximisation.
    eps_warmup_epochs : int, default 0
        Raise eps linearly (per batch) over this many epochs; 0 trains at ``eps`` from the start.
    batch_size : int, default 128
        Examples per optimizer step.
    lr : float, default 1e-3
        Learning rate (constant).
    optimizer : {"adam", "sgd"}, default "adam"
        Adam, or SGD with momentum 0.9.
    weight_decay : float, default 0.0
        L2 penalty passed to the optimizer.
    device : str or torch.device, default "cpu"
        ``"cpu"`` or ``"cuda[:i]"``.
    amp : bool, optional
        Automatic mixed precision; default on for CUDA, off on CPU (where it is refused).
    generator : torch.Generator, optional
        Source of all randomness (batch order, PGD random starts, dropout); the same
        generator state gives identical weights on the same device.
    eval_data : ArrayDataset or (x, y), optional
        Held-out data evaluated after every epoch (keep it small: it is attacked).
    eval_attack : Attack, optional
        Attack for the robust evaluation; default for PGD-AT is 20-step L-inf PGD at
        ``eps`` (:func:`default_eval_attack`), for standard training none.
    progress : bool, default True
        Show a tqdm bar per epoch with the running loss and accuracy.
    log_every : int, default 0
        Also log running statistics every this many batches (0: once per epoch).

    Returns
    -------
    TrainResult
        Per-epoch history and the JSON-able configuration.

    Raises
    ------
    ConfigError
        For an unknown method or optimizer, ``epochs < 1``, ``eps < 0`` or ``eps > 1``, or
        other invalid settings.
    DataError
        If images are not floats in [0, 1] or labels are out of range.
    """
    from tqdm.auto import tqdm

    _validate(method, epochs, eps, step_size, attack_steps, eps_warmup_epochs, batch_size, lr, optimizer,
              weight_decay, log_every)
    dev = _resolve_device(device)
    if amp is None:
        amp = dev.type == "cuda"
    if amp and dev.type != "cuda":
        raise ConfigError("amp=True needs a CUDA device; leave amp=None (automatic) on CPU")
    if generator is not None and generator.device.type not in ("cpu", dev.type):
        raise ConfigError(f"generator lives on {generator.device}, training on {dev}; use a CPU generator")

    x, y = _as_xy(dataset, "training data")
    n_classes = _num_classes(model, dataset)
    _check_labels(y, n_classes, "training data")
    eval_xy = None
    if eval_data is not None:
        eval_xy = _as_xy(eval_data, "eval_data")
        _check_labels(eval_xy[1], n_classes, "eval_data")
    adversarial = method == "pgd-at"
    if adversarial and eval_attack is None:
        eval_attack = default_eval_attack(eps)
    eval_generator = _derive_generator(generator)

    n = x.shape[0]
    batches_per_epoch = math.ceil(n / batch_size)
    warmup_batches = eps_warmup_epochs * batches_per_epoch if adversarial else 0
    base_step = step_size if step_size is not None else 2.5 * eps / max(attack_steps, 1)
    amp_dtype = _autocast_dtype(dev, bool(amp))
    attack_dtype = amp_dtype if amp_dtype == torch.bfloat16 else None

    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)

    settings: dict[str, Any] = {
        "method": method,
        "epochs": epochs,
        "eps": float(eps) if adversarial else 0.0,
        "step_size": float(base_step) if adversarial else None,
        "attack_steps": int(attack_steps) if adversarial else 0,
        "eps_warmup_epochs": int(eps_warmup_epochs) if adversarial else 0,
        "attack_mode": "eval" if adversarial else None,
        "batch_size": batch_size,
        "lr": float(lr),
        "optimizer": optimizer,
        "momentum": SGD_MOMENTUM if optimizer == "sgd" else None,
        "weight_decay": float(weight_decay),
        "device": str(dev),
        "torch_threads": int(torch.get_num_threads()),  # weights differ between thread counts
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else False,
        "seed": int(generator.initial_seed()) if generator is not None else None,
        "train_size": int(n),
        "dataset": getattr(dataset, "name", None),
        "eval_attack": eval_attack.config() if eval_xy is not None and eval_attack is not None else None,
    }
    log.info("training %s: %s", type(model).__name__, settings)

    from gametheory_defense.attacks import PGD

    history: list[EpochStats] = []
    step = 0
    cur_eps = 0.0
    with _global_rng_from(generator, dev):
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            perm_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=perm_device).cpu()
            # running sums stay on the device: no host sync per batch on CUDA
            loss_acc = torch.zeros((), device=dev)
            correct_acc = torch.zeros((), dtype=torch.long, device=dev)
            seen = 0
            bar = tqdm(range(batches_per_epoch), desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
            for b in bar:
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb = x[idx].to(dev, non_blocking=True)
                yb = y[idx].to(dev, non_blocking=True)
                if adversarial:
                    ramp = min(1.0, (step + 1) / warmup_batches) if warmup_batches else 1.0
                    cur_eps = eps * ramp
                    attack = PGD(cur_eps, base_step * ramp, attack_steps, norm="linf", loss="ce", random_start=True)
                    model.eval()
                    with _autocast(dev, attack_dtype):
                        xb = attack(model, xb, yb, generator=generator).detach()
                model.train()
                with _autocast(dev, amp_dtype):
                    logits = model(xb)
                    loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step += 1

                bs = yb.shape[0]
                loss_acc += loss.detach().float() * bs
                correct_acc += (logits.detach().argmax(dim=1) == yb).sum()
                seen += bs
                last = b + 1 == batches_per_epoch
                if progress and (b % _POSTFIX_EVERY == 0 or last):
                    bar.set_postfix(loss=f"{float(loss_acc) / seen:.4f}", acc=f"{int(correct_acc) / seen:.3f}",
                                    refresh=False)
                if log_every and step % log_every == 0:
                    log.info("epoch %d batch %d/%d: loss %.4f acc %.4f eps %.4g", epoch, b + 1,
                             batches_per_epoch, float(loss_acc) / seen, int(correct_acc) / seen, cur_eps)
            bar.close()
            loss_sum, correct = float(loss_acc), int(correct_acc)
            seconds = time.perf_counter() - t0
            if not math.isfinite(loss_sum):
                raise ConfigError(f"training diverged in epoch {epoch} (non-finite loss); lower lr (now {lr})")

            clean_acc = robust_acc = None
            if eval_xy is not None:
                clean_acc = accuracy(model, eval_xy, batch_size=max(batch_size, 256), device=dev,
                                     generator=eval_generator)
                if eval_attack is not None:
                    robust_acc = accuracy(model, eval_xy, attack=eval_attack, batch_size=batch_size, device=dev,
                                          generator=eval_generator, progress=progress)
            stats = EpochStats(
                epoch=epoch,
                eps=float(cur_eps),
                loss=loss_sum / seen,
                train_accuracy=correct / seen,
                eval_clean_accuracy=clean_acc,
                eval_robust_accuracy=robust_acc,
                seconds=seconds,
            )
            history.append(stats)
            log.info(
                "epoch %d/%d: loss %.4f train acc %.4f%s%s (%.1fs)", epoch, epochs, stats.loss,
                stats.train_accuracy,
                "" if clean_acc is None else f" eval clean {clean_acc:.4f}",
                "" if robust_acc is None else f" eval robust {robust_acc:.4f}",
                seconds,
            )
    model.eval()
    return TrainResult(history=tuple(history), settings=settings)


def train_defaults() -> dict[str, Any]:
    """Default of every :data:`TRAIN_SETTINGS` entry, read from :func:`train`'s signature.

    ``epochs`` (required by :func:`train`) defaults to :data:`DEFAULT_EPOCHS`. The run
    configuration and the ``gtdefense train`` command take their defaults from here, so
    they cannot drift from the function.
    """
    import inspect

    params = inspect.signature(train).parameters
    out: dict[str, Any] = {}
    for name in TRAIN_SETTINGS:
        default = params[name].default
        out[name] = DEFAULT_EPOCHS if default is inspect.Parameter.empty else default
    return out
