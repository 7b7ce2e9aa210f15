"""Resumable on-disk store of payoff cells (per-example outcomes) and bootstrap intervals.

A payoff matrix of a defense game is expensive: every cell runs an attack over an
evaluation set. :class:`PayoffStore` keeps every finished cell as one small safetensors
file whose name is the SHA-256 of the cell's identity (defender weights and SAP settings,
attack settings, source model, data digest, seed, draws), so a rerun of
:func:`payoff.build_payoff_matrix` computes only what is missing, whatever the order of
defenders or the executor. Each file carries the per-example outcomes (a ``bool`` array,
draws x examples), the identity it was computed for and a checksum; a file that fails
any check is reported with :func:`logging.warning` and treated as missing.

Writes are atomic: a temporary file in the same directory, ``fsync``, then
:func:`os.replace`, so a process killed at any instant leaves either a complete cell or
none. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from gametheory_defense.identity import canonical_json, digest

__all__ = [
    "CELL_FORMAT",
    "CellRecord",
    "ConfidenceInterval",
    "PayoffStore",
    "StoreStats",
    "bootstrap_ci",
    "canonical_json",
    "cell_key",
]

logger = logging.getLogger(__name__)

#: Format identifier written into every cell file.
CELL_FORMAT = "gametheory-defense/payoff-cell"
_CELL_VERSION = 1
_RUN_FORMAT = "gametheory-defense/payoff-run"


def cell_key(identity: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a cell's identity: the cell's store key."""
    return digest(dict(identity))


@dataclass(frozen=True)
class CellRecord:
    """One stored cell.

    Attributes
    ----------
    key : str
        The cell's store key (:func:`cell_key` of ``identity``).
    outcomes : numpy.ndarray
        ``bool`` array, shape ``(draws, n_examples)``: whether draw ``r`` of the defender
        classified example ``e`` correctly. Read-only.
    identity : dict
        What the cell was computed for (defender identity, attack settings, ...).
    info : dict
        Free-form facts about the computation (wall time, names at the time).
    """

    key: str
    outcomes: np.ndarray
    identity: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Mean correctness over draws and examples."""
        return float(self.outcomes.mean())


@dataclass
class StoreStats:
    """Counters of one :class:`PayoffStore` instance (reads, writes, corrupt files)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupt: int = 0


@dataclass(frozen=True)
class ConfidenceInterval:
    """A bootstrap confidence interval of a mean accuracy.

    Attributes
    ----------
    estimate : float
        The mean accuracy of the data.
    low, high : float
        Percentile-bootstrap bounds.
    confidence : float
        Nominal coverage, e.g. 0.95.
    n_resamples : int
        Number of bootstrap resamples.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int


def bootstrap_ci(
    outcomes: np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    generator: np.random.Generator,
) -> ConfidenceInterval:
    """Percentile bootstrap interval (Efron & Tibshirani, 1993) of a cell's mean accuracy.

    Examples are the resampling unit: the draws of one example (rows of ``outcomes``)
    share that example and are not independent, so the statistic is the mean over
    resampled examples of the per-example mean correctness over draws.

    Parameters
    ----------
    outcomes : numpy.ndarray
        ``bool`` or 0/1 array, shape ``(draws, n_examples)`` or ``(n_examples,)``.
    confidence : float
        Nominal coverage in (0, 1).
    n_resamples : int
        Number of bootstrap resamples (at least 100).
    generator : numpy.random.Generator
        Source of the resampling indices.

    Returns
    -------
    ConfidenceInterval
    """
    arr = np.asarray(outcomes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"outcomes must have shape (draws, n_examples) with n_examples > 0, got {arr.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
    per_example = arr.mean(axis=0)
    n = per_example.shape[0]
    idx = generator.integers(0, n, size=(n_resamples, n))
    means = per_example[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return ConfidenceInterval(
        estimate=float(per_example.mean()),
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        n_resamples=int(n_resamples),
    )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # directory fsync is best effort (not on every OS)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` table of a safetensors blob (raises ``ValueError`` if malformed)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("safetensors header length exceeds the file size")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise ValueError("safetensors header has no __metadata__ table")
    return meta


def _outcomes_sha256(outcomes: np.ndarray) -> str:
    arr = np.ascontiguousarray(outcomes, dtype=np.bool_)
    h = hashlib.sha256(f"{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class PayoffStore:
    """Directory of payoff cells, keyed by the SHA-256 of each cell's identity.

    Layout::

        ROOT/cells/<key>.safetensors   one cell: outcomes (bool, draws x examples) + metadata
        ROOT/runs/<run_id>.json        which cell answers which (defender, attacker) of a build
        ROOT/latest.json               the most recent run manifest

    Parameters
    ----------
    root : str or pathlib.Path
        Directory of the store; created on first write.

    Notes
    -----
    Every write is atomic (temp file, ``fsync``, ``os.replace``). On read, a cell file is
    checked (safetensors structure, metadata JSON, format, key, checksum and shape of the
    outcomes); a file failing a check is reported with ``logging.warning`` naming it and
    treated as missing, so the builder recomputes and overwrites it.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.stats = StoreStats()

    def __repr__(self) -> str:
        return f"PayoffStore({str(self.root)!r})"

    # ----------------------------------------------------------------- cells
    @property
    def cells_dir(self) -> Path:
        """Directory holding the cell files."""
        return self.root / "cells"

    def cell_path(self, key: str) -> Path:
        """Path of the cell file for ``key``."""
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cell key (64 lowercase hex digits): {key!r}")
        return self.cells_dir / f"{key}.safetensors"

    def keys(self) -> list[str]:
        """Keys of all cell files present (not validated)."""
        if not self.cells_dir.is_dir():
            return []
        return sorted(p.stem for p in self.cells_dir.glob("*.safetensors"))

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _count=False) is not None

    def put(
        self,
        key: str,
        outcomes: np.ndarray,
        *,
        identity: Mapping[str, Any],
        info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Store a cell atomically.

        Parameters
        ----------
        key : str
            Must equal ``cell_key(identity)``.
        outcomes : numpy.ndarray
            ``bool`` array, shape ``(draws, n_examples)``.
        identity : Mapping
            JSON-able identity of the cell.
        info : Mapping, optional
            JSON-able facts about the computation.

        Returns
        -------
        pathlib.Path
            The cell file.
        """
        arr = np.ascontiguousarray(outcomes)
        if arr.dtype != np.bool_:
            raise ValueError(f"outcomes must be a bool array, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"outcomes must have shape (draws, n_examples), got {arr.shape}")
        if cell_key(identity) != key:
            raise ValueError("cell key does not match its identity; compute it with payoff.store.cell_key")
        meta = {
            "format": CELL_FORMAT,
            "format_version": str(_CELL_VERSION),
            "key": key,
            "identity": canonical_json(dict(identity)),
            "info": canonical_json(dict(info or {})),
            "shape": canonical_json(list(arr.shape)),
            "outcomes_sha256": _outcomes_sha256(arr),
        }
        path = self.cell_path(key)
        _atomic_write_bytes(path, safetensors.numpy.save({"outcomes": arr}, metadata=meta))
        self.stats.writes += 1
        return path

    def get(
        self,
        key: str,
        *,
        expected_shape: tuple[int, int] | None = None,
        _count: bool = True,
    ) -> CellRecord | None:
        """Load and verify a cell; ``None`` if absent or corrupt (corruption is logged).

        Parameters
        ----------
        key : str
            The cell key.
        expected_shape : tuple of int, optional
            ``(draws, n_examples)`` the cell must have; a mismatch counts as corrupt.
        """
        path = self.cell_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if _count:
                self.stats.misses += 1
            return None
        try:
            record = self._decode(key, data, expected_shape)
        except Exception as exc:  # noqa: BLE001 - JSON, struct and safetensors' own errors
            self._report_corrupt(path, exc, _count)
            return None
        if _count:
            self.stats.hits += 1
        return record

    def _report_corrupt(self, path: Path, exc: BaseException, count: bool) -> None:
        if count:
            self.stats.corrupt += 1
            self.stats.misses += 1
        logger.warning("payoff store: corrupt cell file %s (%s); it will be recomputed", path, exc)

    @staticmethod
    def _decode(key: str, data: bytes, expected_shape: tuple[int, int] | None) -> CellRecord:
        meta = _read_safetensors_metadata(data)
        if meta.get("format") != CELL_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {CELL_FORMAT!r}")
        if meta.get("format_version") != str(_CELL_VERSION):
            raise ValueError(f"unsupported format_version {meta.get('format_version')!r}")
        if meta.get("key") != key:
            raise ValueError("key inside the file does not match its name")
        identity = json.loads(meta["identity"])
        if cell_key(identity) != key:
            raise ValueError("identity inside the file does not hash to its key")
        info = json.loads(meta.get("info", "{}"))
        tensors = safetensors.numpy.load(data)
        if set(tensors) != {"outcomes"}:
            raise ValueError(f"expected one tensor 'outcomes', found {sorted(tensors)}")
        outcomes = tensors["outcomes"]
        if outcomes.dtype != np.bool_ or outcomes.ndim != 2:
            raise ValueError(f"outcomes must be a 2-D bool array, got {outcomes.dtype} {outcomes.shape}")
        if list(outcomes.shape) != json.loads(meta["shape"]):
            raise ValueError("outcomes shape differs from the recorded shape")
        if expected_shape is not None and tuple(outcomes.shape) != tuple(expected_shape):
            raise ValueError(f"outcomes shape {outcomes.shape} differs from the expected {tuple(expected_shape)}")
        if _outcomes_sha256(outcomes) != meta.get("outcomes_sha256"):
            raise ValueError("outcomes checksum mismatch")
        outcomes = outcomes.copy()
        outcomes.setflags(write=False)
        return CellRecord(key=key, outcomes=outcomes, identity=identity, info=info)

    # ------------------------------------------------------------------ runs
    def write_run(self, run_id: str, manifest: Mapping[str, Any]) -> Path:
        """Record which cell answers which (defender, attacker) of a build; also ``latest.json``."""
        body = dict(manifest)
        body["format"] = _RUN_FORMAT
        body["run_id"] = run_id
        text = json.dumps(body, indent=1, sort_keys=True).encode("utf-8")
        path = self.root / "runs" / f"{run_id}.json"
        _atomic_write_bytes(path, text)
        _atomic_write_bytes(self.root / "latest.json", text)
        return path

    def run_manifest(self, run: str | None = None) -> dict[str, Any]:
        """The manifest of build ``run`` (its ``metadata["run_id"]``), or of the latest build."""
        path = self.root / "latest.json" if run is None else self.root / "runs" / f"{run}.json"
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no payoff build recorded in {path}; run build_payoff_matrix with this store") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"corrupt run manifest {path}: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != _RUN_FORMAT:
            raise ValueError(f"{path} is not a payoff run manifest")
        return body

    def outcomes(self, defender: str, attacker: str, *, run: str | None = None) -> np.ndarray:
        """Per-example outcomes of one cell of a build.

        Parameters
        ----------
        defender, attacker : str
            Row and column names of the matrix (``"<attack>@<source>"`` in the transfer game).
            ``attacker="clean"`` is not special: use :meth:`clean_outcomes`.
        run : str, optional
            ``matrix.metadata["run_id"]``; default the latest build written to this store.

        Returns
        -------
        numpy.ndarray
            Read-only ``bool`` array, shape ``(draws, n_examples)``.
        """
        manifest = self.run_manifest(run)
        try:
            key = manifest["cells"][defender][attacker]
        except KeyError:
            raise KeyError(
                f"no cell ({defender!r}, {attacker!r}) in run {manifest['run_id']}; "
                f"defenders: {sorted(manifest['cells'])}"
            ) from None
        return self._must_get(key)

    def clean_outcomes(self, defender: str, *, run: str | None = None) -> np.ndarray:
        """Per-example clean outcomes of ``defender`` in a build, shape ``(draws, n_examples)``."""
        manifest = self.run_manifest(run)
        try:
            key = manifest["clean"][defender]
        except KeyError:
            raise KeyError(f"no clean cell for {defender!r} in run {manifest['run_id']}") from None
        return self._must_get(key)

    def _must_get(self, key: str) -> np.ndarray:
        record = self.get(key)
        if record is None:
            raise FileNotFoundError(f"cell file {self.cell_path(key)} is missing or corrupt; rebuild the matrix")
        return record.outcomes


class MemoryStore(PayoffStore):
    """In-memory stand-in for :class:`PayoffStore` (used when the builder is given no store)."""

    def __init__(self) -> None:
        super().__init__(Path("<memory>"))
        self._cells: dict[str, CellRecord] = {}

    def __repr__(self) -> str:
        return "MemoryStore()"

    def keys(self) -> list[str]:
        return sorted(self._cells)

    def put(
        self,
        key: str,
        outcomes: np.ndarray,
        *,
        identity: Mapping[str, Any],
        info: Mapping[str, Any] | None = None,
    ) -> Path:
        arr = np.array(outcomes, dtype=np.bool_, copy=True)
        if arr.ndim != 2:
            raise ValueError(f"outcomes must have shape (draws, n_examples), got {arr.shape}")
        if cell_key(identity) != key:
            raise ValueError("cell key does not match its identity")
        arr.setflags(write=False)
        self._cells[key] = CellRecord(key=key, outcomes=arr, identity=dict(identity), info=dict(info or {}))
        self.stats.writes += 1
        return Path("<memory>") / key

    def get(
        self,
        key: str,
        *,
        expected_shape: tuple[int, int] | None = None,
        _count: bool = True,
    ) -> CellRecord | None:
        record = self._cells.get(key)
        if record is not None and expected_shape is not None and record.outcomes.shape != tuple(expected_shape):
            record = None
        if _count:
            if record is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
        return record

    def write_run(self, run_id: str, manifest: Mapping[str, Any]) -> Path:
        self._latest = {**manifest, "format": _RUN_FORMAT, "run_id": run_id}
        return Path("<memory>")

    def run_manifest(self, run: str | None = None) -> dict[str, Any]:
        latest = getattr(self, "_latest", None)
        if latest is None or (run is not None and latest["run_id"] != run):
            raise FileNotFoundError("no payoff build recorded in this in-memory store")
        return latest


def iter_cell_files(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Cell files under a store root (for tools and tests that watch a build)."""
    cells = Path(root) / "cells"
    if cells.is_dir():
        yield from sorted(cells.glob("*.safetensors"))
