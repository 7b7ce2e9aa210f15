"""The defender's equilibrium mixture as one model (Perdomo & Singer, 2019; Pinot et al., 2020).

A mixed strategy of the defense game is a probability vector over trained defenders.
:class:`MixedStrategyModel` serves it: each input is answered by a member drawn from the
mixture (``sample="per-example"``), or one member answers a whole forward call
(``"per-batch"``), or the output is the log of the mixture's expected softmax
(``"expected"``), which is what an attacker that knows the mixture should differentiate.

It is a :class:`~gametheory_defense.stochastic.StochasticModule`: the member draws use
its ``generator`` attribute and it stays random in ``eval()`` mode. ``use_generator(model,
g)`` reaches the mixture *and* every stochastic layer inside its members (SAP), so one
generator reproduces a forward pass exactly. When ``model.generator`` is set directly,
the forward pass hands the same generator to the members for the duration of the call.

Ensembles are saved as a directory of safetensors member checkpoints plus one JSON
manifest (``ensemble.json``); nothing is ever pickled. See ``docs/ensemble.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gametheory_defense import __version__
from gametheory_defense.errors import CheckpointError
from gametheory_defense.identity import SUPPORT_TOL, digest
from gametheory_defense.stochastic import StochasticModule, use_generator

__all__ = [
    "MixedStrategyModel",
    "SAMPLE_MODES",
    "MANIFEST",
    "MANIFEST_DIGEST",
    "FORMAT",
    "FORMAT_VERSION",
    "manifest_digest",
]

log = logging.getLogger(__name__)

#: Ways a :class:`MixedStrategyModel` answers a forward call.
SAMPLE_MODES: tuple[str, ...] = ("per-example", "per-batch", "expected")
#: File name of the manifest inside an ensemble directory.
MANIFEST = "ensemble.json"
#: Value of the manifest's ``"format"`` key.
FORMAT = "gametheory-defense/ensemble"
#: Version of the manifest format written and read here.
FORMAT_VERSION = 1

SampleMode = Literal["per-example", "per-batch", "expected"]

#: Manifest key holding the SHA-256 of the manifest's other fields (:func:`manifest_digest`).
MANIFEST_DIGEST = "manifest_sha256"

_PROB_TOL = 1e-6
_CHUNK = 1 << 20


def _validate_strategy(strategy: Sequence[float] | np.ndarray | torch.Tensor, n_members: int) -> np.ndarray:
    """Probabilities as a read-only float64 vector summing to 1 (tiny negatives clipped)."""
    if isinstance(strategy, torch.Tensor):
        strategy = strategy.detach().cpu().double().numpy()
    try:
        p = np.array(strategy, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        raise ValueError(f"strategy must be a sequence of probabilities, got {strategy!r}") from None
    if p.ndim != 1:
        raise ValueError(f"strategy must be 1-D (one probability per member), got shape {p.shape}")
    if p.shape[0] != n_members:
        raise ValueError(f"strategy has {p.shape[0]} probabilities but there are {n_members} members")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"strategy must be finite, got {p.tolist()}")
    if np.any(p < -_PROB_TOL):
        i = int(np.argmin(p))
        raise ValueError(f"strategy probability {i} is negative ({p[i]!r}); probabilities must be >= 0")
    p = np.clip(p, 0.0, None)  # solver round-off (e.g. -1e-12) is set to zero, as OpenSpiel does
    total = float(p.sum())
    if abs(total - 1.0) > _PROB_TOL:
        raise ValueError(f"strategy must sum to 1 (within {_PROB_TOL:g}), got {total!r}")
    p = p / total
    p.setflags(write=False)
    return p


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON, every field but :data:`MANIFEST_DIGEST` itself.

    Covers what changes the ensemble's outputs (names, strategy, sampling mode, each
    member's SAP settings, architecture and file digests) and its metadata (data set,
    threat model): a hand-edited manifest is an error naming the file.
    """
    return digest({k: v for k, v in manifest.items() if k != MANIFEST_DIGEST})


def _slug(name: str) -> str:
    """A file-name-safe rendering of a member name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return s[:48] or "member"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class MixedStrategyModel(StochasticModule):
    """A mixture of classifiers served as one model: the defender's mixed strategy (Perdomo & Singer, 2019).

    Parameters
    ----------
    members : sequence of nn.Module
        The defenders (pure strategies); each maps N x C x H x W inputs to N x K logits.
    strategy : sequence of float, numpy.ndarray or torch.Tensor
        One probability per member: finite, non-negative, summing to 1 within 1e-6;
        renormalised exactly. Negatives down to -1e-6 (solver round-off) are set to 0.
    names : sequence of str, optional
        Unique member names; default ``member0, member1, ...``.
    sample : {"per-example", "per-batch", "expected"}, default "per-example"
        ``"per-example"``: each input is answered by its own member drawn from the mixture
        (examples are grouped by the drawn member, and each member runs once on its
        group). ``"per-batch"``: one member per forward call. ``"expected"``: the output
        is ``log(sum_i p_i softmax(f_i(x)))``, the log-probabilities of the mixture's
        prediction (usable as logits for cross-entropy).
    value : float, optional
        The game value of the strategy (the guaranteed accuracy), if known.
    metadata : dict, optional
        JSON-serialisable provenance (solver, payoff file, ...), saved with the ensemble.

    Attributes
    ----------
    members : nn.ModuleList
        The members, in order.
    strategy : numpy.ndarray
        Read-only float64 probabilities of the members.
    names : tuple of str
    sample : str
    value : float or None
    metadata : dict

    Notes
    -----
    With ``stochastic = False`` (e.g. inside :func:`~gametheory_defense.stochastic.deterministic`)
    the forward pass returns the ``"expected"`` output whatever ``sample`` is: the mixture's
    expectation is its deterministic version, as SAP's identity is its own.
    :func:`deterministic` also makes stochastic members (SAP) deterministic.

    Shape
    -----
    - Input: ``(N, C, H, W)``.
    - Output: ``(N, K)`` logits (log-probabilities in ``"expected"`` mode).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    >>> mix = MixedStrategyModel([a, b], [0.25, 0.75], names=["a", "b"])
    >>> mix.strategy.tolist(), mix.names
    ([0.25, 0.75], ('a', 'b'))
    >>> mix(torch.zeros(5, 4)).shape
    torch.Size([5, 3])
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        strategy: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        names: Sequence[str] | None = None,
        sample: SampleMode | str = "per-example",
        value: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a MixedStrategyModel needs at least one member")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise ValueError(f"member {i} is a {type(m).__name__}, not a torch.nn.Module")
        self.members = nn.ModuleList(members)
        self._strategy = _validate_strategy(strategy, len(members))
        if names is None:
            names = [f"member{i}" for i in range(len(members))]
        names = tuple(str(n) for n in names)
        if len(names) != len(members):
            raise ValueError(f"{len(names)} names given for {len(members)} members")
        if any(not n.strip() for n in names):
            raise ValueError("member names must be non-empty strings")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"member names must be unique; duplicated: {dup}")
        self.names: tuple[str, ...] = names
        if sample not in SAMPLE_MODES:
            raise ValueError(f"sample must be one of {list(SAMPLE_MODES)}, got {sample!r}")
        self.sample: str = sample
        if value is not None:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"value must be finite, got {value!r}")
        self.value: float | None = value
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._probs_cpu = torch.from_numpy(np.array(self._strategy))
        self._support_cpu = torch.nonzero(self._probs_cpu > 0).flatten()

    # ---------------------------------------------------------------- properties
    @property
    def strategy(self) -> np.ndarray:
        """Read-only float64 probabilities of the members (sums to 1)."""
        return self._strategy

    @property
    def support(self) -> tuple[str, ...]:
        """Names of the members with positive probability."""
        return tuple(n for n, p in zip(self.names, self._strategy) if p > 0)

    def extra_repr(self) -> str:
        mix = ", ".join(f"{n}: {p:.4g}" for n, p in zip(self.names, self._strategy))
        return f"sample={self.sample!r}, strategy={{{mix}}}"

    # ------------------------------------------------------------------- drawing
    def draw_members(self, n: int) -> torch.Tensor:
        """Draw ``n`` member indices from the mixture with ``self.generator``.

        Zero-probability members are never drawn. The indices are drawn on the generator's
        device (CPU for ``None``) and returned on the CPU, so one CPU generator gives the
        same draws whatever device the inputs are on.

        Returns
        -------
        torch.Tensor
            ``int64`` tensor of shape ``(n,)``.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        g = self.generator
        # Draw over the support only, then map back: a zero-weight member cannot be drawn
        # whatever the sampler does with zero entries (e.g. a uniform draw of exactly 0).
        # With a full support this is the same stream as sampling over all members.
        support = self._support_cpu
        probs = self._probs_cpu[support]
        if g is not None:
            probs = probs.to(g.device)
        drawn = torch.multinomial(probs, n, replacement=True, generator=g).cpu()
        return support[drawn]

    def _run(self, i: int, x: torch.Tensor) -> torch.Tensor:
        member = self.members[i]
        with use_generator(member, self.generator):
            return member(x)

    # ------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Answer ``x`` with the mixture (see ``sample``)."""
        if not self.stochastic or self.sample == "expected":
            return self.expected_log_probs(x)
        n = x.shape[0]
        if self.sample == "per-batch" or n == 0:
            i = int(self.draw_members(1)[0]) if n else int(np.argmax(self._strategy))
            return self._run(i, x)
        idx = self.draw_members(n)
        order = torch.argsort(idx, stable=True)
        counts = torch.bincount(idx, minlength=len(self.members)).tolist()
        outs: list[torch.Tensor] = []
        start = 0
        for i, c in enumerate(counts):
            if c == 0:
                continue
            rows = order[start : start + c].to(x.device)
            outs.append(self._run(i, x.index_select(0, rows)))
            start += c
        self._check_shapes(outs)
        grouped = torch.cat(outs, dim=0)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n)
        return grouped.index_select(0, inverse.to(grouped.device))

    def _check_shapes(self, outs: Sequence[torch.Tensor]) -> None:
        shapes = {tuple(o.shape[1:]) for o in outs}
        if len(shapes) > 1:
            raise ValueError(f"members return outputs of different shapes {sorted(shapes)}; they must share classes")

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on all of ``x`` (members in order, zero-weight ones included).

        Stochastic members draw with ``self.generator`` (if set).

        Shape
        -----
        - Input: ``(N, C, H, W)``.
        - Output: ``(M, N, K)`` for ``M`` members.
        """
        outs = [self._run(i, x) for i in range(len(self.members))]
        self._check_shapes(outs)
        return torch.stack(outs, dim=0)

    def expected_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log(sum_i p_i softmax(f_i(x)))``: log-probabilities of the mixture's expected prediction.

        Computed as ``logsumexp_i(log p_i + log_softmax(f_i(x)))`` over the members with
        ``p_i > 0`` (the zero-weight ones are not run), which is exact and numerically
        stable; differentiable, so attacks may use it as logits.

        Shape
        -----
        - Input: ``(N, C, H, W)``.
        - Output: ``(N, K)``.
        """
        support = [i for i, p in enumerate(self._strategy) if p > 0]
        outs = [self._run(i, x) for i in support]
        self._check_shapes(outs)
        logp = torch.stack([torch.log_softmax(o, dim=-1) for o in outs], dim=0)
        logw = torch.log(self._probs_cpu[support]).to(device=logp.device, dtype=logp.dtype)
        return torch.logsumexp(logp + logw.view(-1, *([1] * (logp.dim() - 1))), dim=0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Predicted labels (argmax of :meth:`forward`), without gradients.

        Parameters
        ----------
        x : torch.Tensor
            Inputs N x C x H x W.
        batch_size : int, optional
            Process ``x`` in chunks of this many examples (default: all at once).

        Returns
        -------
        torch.Tensor
            ``int64`` labels of shape ``(N,)``.
        """
        if batch_size is None or batch_size >= x.shape[0]:
            return self(x).argmax(dim=-1)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return torch.cat([self(x[s : s + batch_size]).argmax(dim=-1) for s in range(0, x.shape[0], batch_size)])

    # ------------------------------------------------------------ from a solver
    @classmethod
    def from_equilibrium(
        cls,
        eq: Any,
        defenders: Mapping[str, nn.Module | Any],
        *,
        atol: float = SUPPORT_TOL,
        sample: SampleMode | str = "per-example",
    ) -> MixedStrategyModel:
        """The defender's equilibrium mixture of a solved game (von Neumann, 1928) as a model.

        Parameters
        ----------
        eq : Equilibrium
            A solved game (``gametheory_defense.solvers.Equilibrium``): uses its
            ``defenders`` names, ``defender_strategy``, ``value``, ``method``, ``status``
            and ``exploitability``.
        defenders : Mapping[str, nn.Module or DefenderSpec]
            Models by the names of the game's rows. Only the support (probability
            ``> atol``) must be present; a ``DefenderSpec`` is loaded on the CPU.
        atol : float, default :data:`~gametheory_defense.identity.SUPPORT_TOL` (1e-6)
            Probabilities ``<= atol`` are dropped and the rest renormalised. LP solvers
            leave round-off of about their feasibility tolerance (HiGHS: 1e-7) on rows
            outside the support; keeping such a member would change nothing at inference
            but would make a pure equilibrium look like a mixture to the attacks.
        sample : str, default "per-example"
            Sampling mode of the returned model.

        Returns
        -------
        MixedStrategyModel
            Members in the game's row order, restricted to the support.

        Raises
        ------
        ValueError
            A support member is missing from ``defenders``, or the strategy is invalid.
        """
        names = [str(n) for n in eq.defenders]
        p = np.asarray(eq.defender_strategy, dtype=np.float64).reshape(-1)
        if p.shape[0] != len(names):
            raise ValueError(f"equilibrium has {p.shape[0]} defender probabilities but {len(names)} defender names")
        keep = [i for i in range(len(names)) if p[i] > atol]
        if not keep:
            raise ValueError(f"equilibrium has no defender probability above atol={atol:g}")
        missing = [names[i] for i in keep if names[i] not in defenders]
        if missing:
            raise ValueError(
                f"no model given for equilibrium defender(s) {missing}; defenders has {sorted(defenders)}"
            )
        extra = sorted(set(defenders) - set(names))
        if extra:
            warnings.warn(
                f"defenders {extra} are not rows of the equilibrium's game (rows: {names}); "
                "is this the mapping of another game?",
                stacklevel=2,
            )
        members = []
        for i in keep:
            m = defenders[names[i]]
            if not isinstance(m, nn.Module) and callable(getattr(m, "load", None)):
                m = m.load()
            members.append(m)
        q = p[keep]
        q = np.clip(q, 0.0, None)
        q = q / q.sum()
        meta = {
            "solver": getattr(eq, "method", None),
            "status": getattr(eq, "status", None),
            "select": getattr(eq, "select", None),
            "exploitability": _float_or_none(getattr(eq, "exploitability", None)),
            "dropped": [names[i] for i in range(len(names)) if i not in keep],
        }
        return cls(members, q, names=[names[i] for i in keep], sample=sample, value=_float_or_none(eq.value), metadata=meta)

    # ---------------------------------------------------------------- save/load
    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the ensemble to ``directory`` atomically, without pickle.

        Layout::

            DIR/ensemble.json                      manifest (written last, inside a temp dir)
            DIR/members/<i>-<slug>.safetensors     base weights (save_checkpoint)
            DIR/members/<i>-<slug>.json            checkpoint sidecar

        Members with identical base weights (e.g. SAP variants of one model) share one
        checkpoint; each member's own SAP settings are in the manifest. The whole directory
        is built under a temporary name next to ``directory`` and renamed into place.

        Parameters
        ----------
        directory : str or os.PathLike
            Target directory; must not exist (or be empty) unless ``overwrite``.
        overwrite : bool, default False
            Replace an existing ensemble directory.

        Returns
        -------
        pathlib.Path
            ``directory``.

        Raises
        ------
        FileExistsError
            ``directory`` exists, is not empty, and ``overwrite`` is false (or it is not an
            ensemble directory).
        CheckpointError
            A member cannot be checkpointed (no ``architecture``) or ``metadata`` is not JSON.
        """
        from gametheory_defense.checkpoint import save_checkpoint, weights_digest
        from gametheory_defense.sap import sap_settings

        target = Path(directory)
        if target.exists():
            if not target.is_dir():
                raise FileExistsError(f"{target} exists and is not a directory")
            nonempty = any(target.iterdir())
            if nonempty and not overwrite:
                raise FileExistsError(f"{target} is not empty; pass overwrite=True to replace it")
            if nonempty and not (target / MANIFEST).is_file():
                raise FileExistsError(f"{target} is not an ensemble directory (no {MANIFEST}); refusing to replace it")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"ensemble metadata is not JSON-serialisable ({exc})") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            (tmp / "members").mkdir()
            by_digest: dict[str, dict[str, str]] = {}
            entries = []
            for i, (name, member) in enumerate(zip(self.names, self.members)):
                digest = weights_digest(member)
                arch = getattr(member, "architecture", None)
                share_key = digest + json.dumps(arch, sort_keys=True, default=str)
                files = by_digest.get(share_key)
                if files is None:
                    base = save_checkpoint(member, tmp / "members" / f"{i}-{_slug(name)}")
                    rel = f"members/{base.name}"
                    files = {
                        "weights": rel + ".safetensors",
                        "sidecar": rel + ".json",
                        "weights_sha256": _sha256_file(tmp / (rel + ".safetensors")),
                        "sidecar_sha256": _sha256_file(tmp / (rel + ".json")),
                    }
                    by_digest[share_key] = files
                entries.append(
                    {
                        "name": name,
                        "probability": float(self._strategy[i]),
                        "architecture": json.loads(json.dumps(arch, default=list)),
                        "sap": sap_settings(member),
                        "weights_digest": digest,
                        **files,
                    }
                )
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "names": list(self.names),
                "strategy": [float(p) for p in self._strategy],
                "value": self.value,
                "sample": self.sample,
                "members": entries,
                "metadata": self.metadata,
                "library_version": __version__,
                "torch_version": torch.__version__.split("+")[0],
                "torch_threads": int(torch.get_num_threads()),
            }
            manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
            text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
            with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            old: Path | None = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                os.rmdir(old)
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved ensemble of %d members to %s", len(self.members), target)
        return target

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: str | torch.device = "cpu", trust_code: bool = False
    ) -> MixedStrategyModel:
        """Rebuild an ensemble written by :meth:`save`, without unpickling anything.

        Checks the manifest (format, version, names, strategy length and sum, sample mode),
        the SHA-256 of every member file, and that each checkpoint matches the recorded
        architecture; SAP is re-applied with each member's recorded settings.

        Parameters
        ----------
        directory : str or os.PathLike
            An ensemble directory.
        device : str or torch.device, default "cpu"
            Where the members live.
        trust_code : bool, default False
            Allow importing members' architectures named as ``"package.module:Class"``
            that are not registered (see :func:`~gametheory_defense.checkpoint.load_checkpoint`).

        Returns
        -------
        MixedStrategyModel
            In ``eval()`` mode.

        Raises
        ------
        CheckpointError
            One line naming the file that is missing, corrupt or inconsistent.
        """
        from gametheory_defense.checkpoint import load_checkpoint

        root = Path(directory)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise CheckpointError(f"{root}: ensemble directory not found")
        if not mpath.is_file():
            raise CheckpointError(f"{mpath}: ensemble manifest not found; is {root} an ensemble saved by MixedStrategyModel.save?")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise CheckpointError(f"{mpath}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None

        def bad(msg: str) -> CheckpointError:
            return CheckpointError(f"{mpath}: {msg}")

        if not isinstance(manifest, dict):
            raise bad(f"expected a JSON object, got {type(manifest).__name__}")
        if manifest.get("format") != FORMAT:
            raise bad(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise bad(f"format_version {manifest.get('format_version')!r} is not supported (this library reads {FORMAT_VERSION})")
        recorded = manifest.get(MANIFEST_DIGEST)
        if recorded is None:
            log.warning("%s: no %s (written by an older version); its fields cannot be verified", mpath, MANIFEST_DIGEST)
        elif recorded != manifest_digest(manifest):
            raise bad(
                f"the manifest was edited after it was written (its fields do not match its {MANIFEST_DIGEST}); "
                "restore it or save the ensemble again"
            )
        members = manifest.get("members")
        names = manifest.get("names")
        strategy = manifest.get("strategy")
        if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
            raise bad("'members' must be a non-empty list of objects")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad("'names' must be a list of strings")
        if not isinstance(strategy, list) or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in strategy):
            raise bad("'strategy' must be a list of numbers")
        if len(strategy) != len(members) or len(names) != len(members):
            raise bad(f"{len(members)} members but {len(strategy)} probabilities and {len(names)} names")
        if [m.get("name") for m in members] != names:
            raise bad("member names disagree with 'names'")
        try:
            probs = _validate_strategy(strategy, len(members))
        except ValueError as exc:
            raise bad(f"invalid strategy: {exc}") from None
        sample = manifest.get("sample", "per-example")
        if sample not in SAMPLE_MODES:
            raise bad(f"unknown sample mode {sample!r}; expected one of {list(SAMPLE_MODES)}")
        value = manifest.get("value")
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise bad(f"'value' must be a number or null, got {value!r}")

        checked: set[str] = set()
        models: list[nn.Module] = []
        for i, entry in enumerate(members):
            for key in ("weights", "sidecar"):
                rel = entry.get(key)
                if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise bad(f"member {i} ({entry.get('name')!r}): '{key}' must be a relative path inside the directory, got {rel!r}")
                path = root / rel
                if not path.is_file():
                    raise CheckpointError(f"{path}: member file missing (listed in {MANIFEST} for {entry.get('name')!r})")
                if rel not in checked:
                    expected = entry.get(f"{key}_sha256")
                    actual = _sha256_file(path)
                    if actual != expected:
                        raise CheckpointError(
                            f"{path}: SHA-256 {actual[:12]}... does not match the manifest's "
                            f"{str(expected)[:12]}...; the file is corrupt or was replaced"
                        )
                    checked.add(rel)
            sap = entry.get("sap")
            if sap is not None and not isinstance(sap, dict):
                raise bad(f"member {i} ({entry['name']!r}): 'sap' must be null or an object, got {sap!r}")
            ckpt = load_checkpoint(root / entry["weights"], device=device, sap=sap, trust_code=trust_code)
            arch = ckpt.metadata.get("architecture")
            if entry.get("architecture") is not None and entry["architecture"] != arch:
                raise CheckpointError(
                    f"{root / entry['sidecar']}: architecture {arch!r} differs from the manifest's {entry['architecture']!r}"
                )
            models.append(ckpt.model)
        metadata = manifest.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad("'metadata' must be an object")
        model = cls(models, probs, names=names, sample=sample, value=value, metadata=metadata)
        model.to(device)
        model.eval()
        log.info("loaded ensemble of %d members from %s", len(models), root)
        return model


def _float_or_none(x: Any) -> float | None:
    if x is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        f = float(x)
        return f if math.isfinite(f) else None
    return None
