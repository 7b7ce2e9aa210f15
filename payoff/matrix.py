"""The payoff matrix of the defense game (von Neumann 1928 two-player zero-sum form).

The one convention
------------------
**Rows are defenders** (the maximizer), **columns are attackers** (the minimizer), and each
entry is **the defender's accuracy in [0, 1]** under that attack. Nothing else is accepted:
percentages, error rates, attack-success rates and [-1, 1] win/loss games are rejected with a
:class:`PayoffError` naming the row and column at fault (and the file, when loading).

A :class:`PayoffMatrix` is immutable: its arrays are copied and made read-only, and the
"modifiers" (:meth:`~PayoffMatrix.with_column`, :meth:`~PayoffMatrix.with_row`,
:meth:`~PayoffMatrix.submatrix`) return new matrices.

Files round-trip exactly: JSON and CSV write floats with Python's shortest ``repr``, which
reads back to the identical double. The formats are described in ``docs/payoff-format.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gametheory_defense.errors import GTDError

__all__ = ["PayoffError", "PayoffMatrix", "load_payoff", "FORMAT", "FORMAT_VERSION"]

FORMAT = "gametheory-defense/payoff"
"""Value of the ``"format"`` key of a payoff JSON file."""

FORMAT_VERSION = 1
"""Version of the payoff JSON format that this module writes and reads."""

# Largest possible standard deviation of a [0, 1]-valued quantity (a fair coin's).
_MAX_STDERR = 0.5

_JSON_KEYS = frozenset(
    {
        "format",
        "format_version",
        "defenders",
        "attackers",
        "values",
        "stderr",
        "n_samples",
        "clean_accuracy",
        "metadata",
    }
)
_REQUIRED_KEYS = ("defenders", "attackers", "values")
_CSV_CORNER = "defender"


class PayoffError(GTDError, ValueError):
    """A payoff matrix or payoff file is invalid.

    The message names the file (when loading), then the row and column at fault, each by
    index (0-based) and name: ``"game.json: row 2 ('pgd-at'), column 1 ('fgsm-0.1'): ..."``.
    """


# --------------------------------------------------------------------------- helpers


def _label(kind: str, index: int, names: Sequence[str] | None) -> str:
    """``"row 2 ('pgd-at')"``; default names when none were given; ``"row 2"`` if unknown."""
    if names is None and kind in ("row", "column", "defender", "attacker"):
        return f"{kind} {index} ({('a' if kind in ('column', 'attacker') else 'd') + str(index)!r})"
    if names is not None and 0 <= index < len(names):
        return f"{kind} {index} ({names[index]!r})"
    return f"{kind} {index}"


def _cell(i: int, j: int, rows: Sequence[str] | None, cols: Sequence[str] | None) -> str:
    return f"{_label('row', i, rows)}, {_label('column', j, cols)}"


def _is_real(x: object) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


_INT64_LIMIT = 2**63


def _convert(x: float | int, what: str, *, integer: bool) -> float | int:
    """A real number as a Python float (or, with ``integer``, an int that fits int64).

    Raises :class:`PayoffError` (without the cell, which the caller adds) for numbers that
    do not fit: ``float(10**400)`` overflows, a JSON file can hold such integers.
    """
    if integer:
        if not isinstance(x, numbers.Integral):
            try:
                whole = math.isfinite(float(x)) and float(x).is_integer()
            except OverflowError:
                whole = False
            if not whole:
                raise PayoffError(f"{what} must be whole numbers, got {x!r}")
        n = int(x)
        if not -_INT64_LIMIT <= n < _INT64_LIMIT:
            raise PayoffError(f"{what} {n} is too large (the limit is 2**63 - 1)")
        return n
    try:
        return float(x)
    except OverflowError:
        shown = repr(x) if len(repr(x)) <= 40 else repr(x)[:37] + "..."
        raise PayoffError(f"{what} entry {shown} is too large for a float") from None


def _coerce_2d(
    data: object,
    what: str,
    rows: Sequence[str] | None,
    cols: Sequence[str] | None,
    *,
    integer: bool = False,
) -> np.ndarray:
    """Turn a 2-D list of rows or a 2-D array into a new float64 (or int64) array.

    Ragged rows, non-numeric cells and wrong dimensions raise :class:`PayoffError` naming
    the row/column at fault; range checks are the caller's.
    """
    dtype = np.int64 if integer else np.float64
    if isinstance(data, np.ndarray) and data.dtype != object:
        if data.dtype.kind == "b" or data.dtype.kind not in "iuf":
            raise PayoffError(f"{what} must hold real numbers, got an array of dtype {data.dtype}")
        if data.ndim != 2:
            raise PayoffError(
                f"{what} must be 2-D (defenders x attackers), got an array of shape {data.shape}"
            )
        if integer and data.dtype.kind in "fu":
            bad = ~np.isfinite(data) | (data != np.round(data)) | (np.abs(data) >= _INT64_LIMIT)
            if bad.any():
                i, j = (int(t[0]) for t in np.nonzero(bad))
                raise PayoffError(
                    f"{_cell(i, j, rows, cols)}: {what} must be whole numbers below 2**63, "
                    f"got {data[i, j].item()!r}"
                )
        if data.size == 0:
            raise PayoffError(
                f"{what} is empty (shape {data.shape}); the game needs at least one defender "
                "and one attacker"
            )
        return np.array(data, dtype=dtype, copy=True)

    if isinstance(data, np.ndarray):  # object array: check it cell by cell
        if data.ndim != 2:
            raise PayoffError(
                f"{what} must be 2-D (defenders x attackers), got an array of shape {data.shape}"
            )
        data = data.tolist()
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise PayoffError(
            f"{what} must be a list of rows or a 2-D array, got {type(data).__name__}"
        )
    out_rows: list[list[float | int]] = []
    width: int | None = None
    for i, row in enumerate(data):
        if isinstance(row, np.ndarray):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise PayoffError(
                f"{what} must be 2-D (a list of rows); {_label('row', i, rows)} is "
                f"{type(row).__name__} {row!r}, not a list"
            )
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise PayoffError(
                f"{_label('row', i, rows)}: {what} has {len(row)} entries but row 0 has "
                f"{width} (ragged rows)"
            )
        cells: list[float | int] = []
        for j, x in enumerate(row):
            if isinstance(x, (np.integer, np.floating)):
                x = x.item()
            if not _is_real(x):
                raise PayoffError(
                    f"{_cell(i, j, rows, cols)}: {what} entry {x!r} "
                    f"({type(x).__name__}) is not a number"
                )
            try:
                x = _convert(x, what, integer=integer)
            except PayoffError as exc:
                raise PayoffError(f"{_cell(i, j, rows, cols)}: {exc}") from None
            cells.append(x)
        out_rows.append(cells)
    if not out_rows or width == 0:
        shape = (len(out_rows), width or 0)
        raise PayoffError(
            f"{what} is empty (shape {shape}); the game needs at least one defender "
            "and one attacker"
        )
    return np.array(out_rows, dtype=dtype)


def _coerce_1d(
    data: object, what: str, n: int, label: Callable[[int], str], *, integer: bool = False
) -> np.ndarray:
    """A 1-D numeric vector of length ``n``."""
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            raise PayoffError(f"{what} must be 1-D, got an array of shape {data.shape}")
        data = data.tolist()
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise PayoffError(f"{what} must be a list or 1-D array, got {type(data).__name__}")
    if len(data) != n:
        raise PayoffError(f"{what} has {len(data)} entries but {n} are needed")
    out: list[float | int] = []
    for i, x in enumerate(data):
        if isinstance(x, (np.integer, np.floating)):
            x = x.item()
        if not _is_real(x):
            raise PayoffError(f"{label(i)}: {what} entry {x!r} ({type(x).__name__}) is not a number")
        try:
            x = _convert(x, what, integer=integer)
        except PayoffError as exc:
            raise PayoffError(f"{label(i)}: {exc}") from None
        out.append(x)
    return np.array(out, dtype=np.int64 if integer else np.float64)


def _names(given: object, kind: str, n: int, prefix: str) -> tuple[str, ...]:
    """Validate defender/attacker names; empty means the defaults ``d0, d1, ...``."""
    if given is None:
        given = ()
    if isinstance(given, (str, bytes)) or not isinstance(given, (Sequence, np.ndarray)):
        raise PayoffError(
            f"{kind} names must be a list of strings, got {type(given).__name__} {given!r}"
        )
    names = tuple(given)
    if not names:
        return tuple(f"{prefix}{i}" for i in range(n))
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if isinstance(name, np.str_):
            name = str(name)
        if not isinstance(name, str):
            raise PayoffError(
                f"{kind} {i} name {name!r} is {type(name).__name__}; names must be non-empty strings"
            )
        if not name.strip():
            raise PayoffError(f"{kind} {i} has an empty name; names must be non-empty strings")
        if name != name.strip():
            raise PayoffError(
                f"{kind} {i} name {name!r} has leading or trailing whitespace; remove it"
            )
        if name in seen:
            raise PayoffError(
                f"duplicate {kind} name {name!r} ({kind}s {seen[name]} and {i}); names must be unique"
            )
        seen[name] = i
    return tuple(str(x) for x in names)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _value_hint(values: np.ndarray) -> str:
    """A guess at the convention used, only when most of the matrix supports it."""
    low, high = float(values.min()), float(values.max())
    if low < 0 and low >= -1 and high <= 1 and np.count_nonzero(values < 0) * 10 >= values.size:
        return " (is this a [-1, 1] win/loss game? map it to accuracy with (A + 1) / 2)"
    # Percentages: accuracies of 1 % and more are above 1, so most entries would be.
    if high > 1 and low >= 0 and high <= 100 and np.count_nonzero(values > 1) * 2 > values.size:
        return " (the values look like percentages: divide them by 100)"
    return ""


def _json_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise PayoffError(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise PayoffError(f"metadata keys must be strings, got {key!r} ({type(key).__name__})")
    try:
        text = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayoffError(f"metadata must be JSON-serialisable: {exc}") from None
    # A deep copy normalised exactly as a JSON file would read it back (tuples -> lists).
    result: dict[str, Any] = json.loads(text)
    return result


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True, eq=False, repr=False)
class PayoffMatrix:
    """Payoff matrix of the zero-sum defense game (von Neumann 1928).

    Rows are **defenders** (the maximizer), columns are **attackers**, and each entry is
    the **defender's accuracy in [0, 1]** under that attack. Anything else (NaN, inf,
    values outside [0, 1], wrong label counts, duplicate names, mis-shaped optional
    fields) raises :class:`PayoffError` naming the row and column at fault by index
    (0-based) and name.

    Parameters
    ----------
    values : array_like, shape (n_defenders, n_attackers)
        Defender accuracies; copied to a read-only float64 array.
    defenders, attackers : sequence of str, optional
        Unique, non-empty names without surrounding whitespace. When omitted (or empty)
        the names default to ``d0, d1, ...`` and ``a0, a1, ...``.
    stderr : array_like, same shape as ``values``, optional
        Standard error of each accuracy estimate; finite, in [0, 0.5].
    n_samples : array_like of int, same shape as ``values``, optional
        Number of test points behind each entry; non-negative whole numbers.
    clean_accuracy : array_like, shape (n_defenders,), optional
        Each defender's accuracy without attack, in [0, 1].
    metadata : dict, optional
        Free-form JSON-serialisable information (data set, eps units, commit, ...). Stored
        as a deep copy normalised as JSON would read it back (tuples become lists).

    Notes
    -----
    Instances are immutable and compare by content: ``a == b`` is :meth:`equals` (exact),
    never an element-wise array. A value that exceeds its defender's clean accuracy by
    more than three standard errors (0.01 when ``stderr`` is unknown) triggers a warning.

    Examples
    --------
    >>> m = PayoffMatrix([[0.9, 0.2], [0.5, 0.6]], defenders=["standard", "pgd-at"],
    ...                  attackers=["fgsm-0.1", "pgd40-0.3"])
    >>> m.shape, m.row("pgd-at").tolist()
    ((2, 2), [0.5, 0.6])
    >>> PayoffMatrix([[0.5, 1.2]])
    Traceback (most recent call last):
    ...
    payoff.matrix.PayoffError: row 0 ('d0'), column 1 ('a1'): value 1.2 is outside [0, 1]; ...
    """

    values: np.ndarray
    defenders: tuple[str, ...] = ()
    attackers: tuple[str, ...] = ()
    stderr: np.ndarray | None = None
    n_samples: np.ndarray | None = None
    clean_accuracy: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        # Names first (they need no shape) so that value errors can name the cell.
        pre_rows = _names(self.defenders, "defender", 0, "d")
        pre_cols = _names(self.attackers, "attacker", 0, "a")
        values = _coerce_2d(self.values, "values", pre_rows or None, pre_cols or None)
        n, k = values.shape
        rows = pre_rows or tuple(f"d{i}" for i in range(n))
        cols = pre_cols or tuple(f"a{j}" for j in range(k))
        if len(rows) != n:
            raise PayoffError(
                f"values has {n} row(s) (defenders) but {len(rows)} defender names were given"
            )
        if len(cols) != k:
            raise PayoffError(
                f"values has {k} column(s) (attackers) but {len(cols)} attacker names were given"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            i, j = (int(t[0]) for t in np.nonzero(bad))
            raise PayoffError(
                f"{_cell(i, j, rows, cols)}: value is {float(values[i, j])!r}; "
                "every entry must be a finite accuracy in [0, 1]"
            )
        bad = (values < 0) | (values > 1)
        if bad.any():
            i, j = (int(t[0]) for t in np.nonzero(bad))
            raise PayoffError(
                f"{_cell(i, j, rows, cols)}: value {float(values[i, j])!r} is outside [0, 1]; "
                f"entries are the defender's accuracy{_value_hint(values)}"
            )
        set_(self, "values", _readonly(values))
        set_(self, "defenders", rows)
        set_(self, "attackers", cols)

        if self.stderr is not None:
            se = _coerce_2d(self.stderr, "stderr", rows, cols)
            if se.shape != values.shape:
                raise PayoffError(f"stderr has shape {se.shape} but values has shape {values.shape}")
            bad = ~np.isfinite(se) | (se < 0) | (se > _MAX_STDERR)
            if bad.any():
                i, j = (int(t[0]) for t in np.nonzero(bad))
                raise PayoffError(
                    f"{_cell(i, j, rows, cols)}: stderr {float(se[i, j])!r} must be finite and "
                    f"in [0, {_MAX_STDERR}] (the largest standard deviation of an accuracy)"
                )
            set_(self, "stderr", _readonly(se))
        if self.n_samples is not None:
            ns = _coerce_2d(self.n_samples, "n_samples", rows, cols, integer=True)
            if ns.shape != values.shape:
                raise PayoffError(
                    f"n_samples has shape {ns.shape} but values has shape {values.shape}"
                )
            bad = ns < 0
            if bad.any():
                i, j = (int(t[0]) for t in np.nonzero(bad))
                raise PayoffError(
                    f"{_cell(i, j, rows, cols)}: n_samples {int(ns[i, j])} is negative"
                )
            set_(self, "n_samples", _readonly(ns))
        if self.clean_accuracy is not None:
            def label(i: int) -> str:
                return _label("defender", i, rows)

            clean = _coerce_1d(self.clean_accuracy, "clean_accuracy", n, label)
            bad = ~np.isfinite(clean) | (clean < 0) | (clean > 1)
            if bad.any():
                i = int(np.nonzero(bad)[0][0])
                raise PayoffError(
                    f"{label(i)}: clean_accuracy {float(clean[i])!r} must be an accuracy in [0, 1]"
                )
            set_(self, "clean_accuracy", _readonly(clean))
            self._warn_above_clean()
        set_(self, "metadata", _json_metadata(self.metadata))

    def _warn_above_clean(self) -> None:
        assert self.clean_accuracy is not None
        tol = 3.0 * self.stderr if self.stderr is not None else np.full(self.shape, 0.01)
        excess = self.values - self.clean_accuracy[:, None] - tol
        if (excess > 0).any():
            i, j = (int(t[0]) for t in np.nonzero(excess > 0))
            warnings.warn(
                f"{_cell(i, j, self.defenders, self.attackers)}: accuracy under attack "
                f"{self.values[i, j]:.4g} exceeds the defender's clean accuracy "
                f"{self.clean_accuracy[i]:.4g}; are rows and columns swapped, or the "
                "clean accuracy measured on other data?",
                stacklevel=4,
            )

    # ------------------------------------------------------------------ basic facts

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_defenders, n_attackers)``."""
        n, k = self.values.shape
        return (n, k)

    @property
    def n_defenders(self) -> int:
        """Number of defenders (rows)."""
        return self.values.shape[0]

    @property
    def n_attackers(self) -> int:
        """Number of attackers (columns)."""
        return self.values.shape[1]

    def defender_index(self, name: str) -> int:
        """Row index of defender ``name``; :class:`PayoffError` naming the choices if unknown."""
        return _index(self.defenders, name, "defender")

    def attacker_index(self, name: str) -> int:
        """Column index of attacker ``name``; :class:`PayoffError` naming the choices if unknown."""
        return _index(self.attackers, name, "attacker")

    def row(self, name: str) -> np.ndarray:
        """Accuracies of defender ``name`` against every attacker (read-only view)."""
        return self.values[self.defender_index(name)]

    def column(self, name: str) -> np.ndarray:
        """Accuracies of every defender against attacker ``name`` (read-only view)."""
        return self.values[:, self.attacker_index(name)]

    # ------------------------------------------------------------------ new matrices

    def submatrix(
        self,
        defenders: Sequence[str] | None = None,
        attackers: Sequence[str] | None = None,
    ) -> PayoffMatrix:
        """The game restricted to some defenders and attackers, in the order given.

        Parameters
        ----------
        defenders, attackers : sequence of str, optional
            Names to keep; ``None`` keeps all. Every optional field is sliced alike.
        """
        rows = self._select(defenders, self.defenders, "defender")
        cols = self._select(attackers, self.attackers, "attacker")
        ix = np.ix_(rows, cols)
        return PayoffMatrix(
            self.values[ix],
            defenders=[self.defenders[i] for i in rows],
            attackers=[self.attackers[j] for j in cols],
            stderr=None if self.stderr is None else self.stderr[ix],
            n_samples=None if self.n_samples is None else self.n_samples[ix],
            clean_accuracy=None if self.clean_accuracy is None else self.clean_accuracy[rows],
            metadata=self.metadata,
        )

    @staticmethod
    def _select(chosen: Sequence[str] | None, names: tuple[str, ...], kind: str) -> list[int]:
        if chosen is None:
            return list(range(len(names)))
        if isinstance(chosen, str) or not isinstance(chosen, (Sequence, np.ndarray)):
            raise PayoffError(f"{kind}s to keep must be a list of names, got {chosen!r}")
        if len(chosen) == 0:
            raise PayoffError(f"no {kind}s selected; keep at least one")
        return [_index(names, name, kind) for name in chosen]

    def with_column(
        self,
        name: str,
        values: Sequence[float] | np.ndarray,
        *,
        stderr: Sequence[float] | np.ndarray | None = None,
        n_samples: Sequence[int] | np.ndarray | None = None,
    ) -> PayoffMatrix:
        """A new matrix with attacker ``name`` appended as the last column.

        ``stderr`` / ``n_samples`` must be given exactly when this matrix carries them.
        Used by the double-oracle loop (McMahan, Gordon and Blum 2003) to add a best response.
        """
        n = self.n_defenders

        def label(i: int) -> str:
            return _label("row", i, self.defenders) + f", new column {name!r}"

        col = _coerce_1d(values, f"column {name!r}", n, label)
        se = self._extra(self.stderr, stderr, "stderr", f"column {name!r}", n, label)
        ns = self._extra(self.n_samples, n_samples, "n_samples", f"column {name!r}", n, label)
        return PayoffMatrix(
            np.column_stack([self.values, col]),
            defenders=self.defenders,
            attackers=(*self.attackers, name),
            stderr=None if se is None else np.column_stack([self.stderr, se]),
            n_samples=None if ns is None else np.column_stack([self.n_samples, ns]),
            clean_accuracy=self.clean_accuracy,
            metadata=self.metadata,
        )

    def with_row(
        self,
        name: str,
        values: Sequence[float] | np.ndarray,
        *,
        stderr: Sequence[float] | np.ndarray | None = None,
        n_samples: Sequence[int] | np.ndarray | None = None,
        clean_accuracy: float | None = None,
    ) -> PayoffMatrix:
        """A new matrix with defender ``name`` appended as the last row.

        ``stderr`` / ``n_samples`` / ``clean_accuracy`` must be given exactly when this
        matrix carries them. Used by the double-oracle loop (McMahan, Gordon and Blum 2003).
        """
        k = self.n_attackers

        def label(j: int) -> str:
            return f"new row {name!r}, " + _label("column", j, self.attackers)

        row = _coerce_1d(values, f"row {name!r}", k, label)
        se = self._extra(self.stderr, stderr, "stderr", f"row {name!r}", k, label)
        ns = self._extra(self.n_samples, n_samples, "n_samples", f"row {name!r}", k, label)
        if (self.clean_accuracy is None) != (clean_accuracy is None):
            raise PayoffError(_presence_message("clean_accuracy", f"row {name!r}", self.clean_accuracy))
        if clean_accuracy is not None and not _is_real(clean_accuracy):
            raise PayoffError(f"clean_accuracy of new row {name!r} must be a number, got {clean_accuracy!r}")
        return PayoffMatrix(
            np.vstack([self.values, row]),
            defenders=(*self.defenders, name),
            attackers=self.attackers,
            stderr=None if se is None else np.vstack([self.stderr, se]),
            n_samples=None if ns is None else np.vstack([self.n_samples, ns]),
            clean_accuracy=(
                None
                if self.clean_accuracy is None
                else np.append(self.clean_accuracy, float(clean_accuracy))  # type: ignore[arg-type]
            ),
            metadata=self.metadata,
        )

    @staticmethod
    def _extra(
        mine: np.ndarray | None,
        given: object,
        what: str,
        where: str,
        n: int,
        label: Callable[[int], str],
    ) -> np.ndarray | None:
        if (mine is None) != (given is None):
            raise PayoffError(_presence_message(what, where, mine))
        if given is None:
            return None
        return _coerce_1d(given, f"{what} of {where}", n, label, integer=what == "n_samples")

    # ------------------------------------------------------------------ comparison

    def equals(self, other: object, *, atol: float = 0.0, check_metadata: bool = True) -> bool:
        """Whether ``other`` is the same game: names, values and every optional field.

        Parameters
        ----------
        other : object
            Anything; only a :class:`PayoffMatrix` can be equal.
        atol : float, default 0.0
            Absolute tolerance on ``values``, ``stderr`` and ``clean_accuracy``
            (0 means bit-exact).
        check_metadata : bool, default True
            Also compare ``metadata``.
        """
        if not isinstance(other, PayoffMatrix):
            return False
        if self.defenders != other.defenders or self.attackers != other.attackers:
            return False

        def same(a: np.ndarray | None, b: np.ndarray | None, tol: float) -> bool:
            if a is None or b is None:
                return a is None and b is None
            if tol == 0.0:
                return bool(np.array_equal(a, b))
            return bool(np.allclose(a, b, rtol=0.0, atol=tol))

        return (
            same(self.values, other.values, atol)
            and same(self.stderr, other.stderr, atol)
            and same(self.n_samples, other.n_samples, 0.0)
            and same(self.clean_accuracy, other.clean_accuracy, atol)
            and (not check_metadata or self.metadata == other.metadata)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PayoffMatrix):
            return NotImplemented
        return self.equals(other)

    def __hash__(self) -> int:
        # + 0.0 maps -0.0 to 0.0, which compare equal
        return hash((self.defenders, self.attackers, (self.values + 0.0).tobytes()))

    def __repr__(self) -> str:
        extras = [
            f for f in ("stderr", "n_samples", "clean_accuracy") if getattr(self, f) is not None
        ]
        more = f", with {', '.join(extras)}" if extras else ""
        return (
            f"PayoffMatrix({self.n_defenders} defenders x {self.n_attackers} attackers{more}; "
            f"defenders={list(self.defenders)!r}, attackers={list(self.attackers)!r})"
        )

    # ------------------------------------------------------------------ dict / JSON

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict in the payoff file format (see ``docs/payoff-format.md``)."""
        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "defenders": list(self.defenders),
            "attackers": list(self.attackers),
            "values": self.values.tolist(),
        }
        if self.stderr is not None:
            d["stderr"] = self.stderr.tolist()
        if self.n_samples is not None:
            d["n_samples"] = self.n_samples.tolist()
        if self.clean_accuracy is not None:
            d["clean_accuracy"] = self.clean_accuracy.tolist()
        if self.metadata:
            d["metadata"] = json.loads(json.dumps(self.metadata))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> PayoffMatrix:
        """Build a matrix from :meth:`to_dict` output (``format`` keys optional).

        Parameters
        ----------
        d : mapping
            ``defenders``, ``attackers`` and ``values`` are required; ``stderr``,
            ``n_samples``, ``clean_accuracy``, ``metadata``, ``format`` and
            ``format_version`` are optional; any other key is an error.
        source : str, optional
            File name to start error messages with.
        """
        prefix = f"{source}: " if source else ""
        if not isinstance(d, Mapping):
            raise PayoffError(f"{prefix}a payoff must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - _JSON_KEYS)
        if unknown:
            raise PayoffError(
                f"{prefix}unknown key {unknown[0]!r}; allowed keys are {sorted(_JSON_KEYS)}"
            )
        missing = [key for key in _REQUIRED_KEYS if key not in d]
        if missing:
            raise PayoffError(f"{prefix}missing key {missing[0]!r} (required: {list(_REQUIRED_KEYS)})")
        fmt = d.get("format", FORMAT)
        if fmt != FORMAT:
            raise PayoffError(f"{prefix}'format' is {fmt!r}, expected {FORMAT!r}")
        version = d.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PayoffError(f"{prefix}'format_version' must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise PayoffError(
                f"{prefix}format_version {version} is newer than this library reads "
                f"({FORMAT_VERSION}); upgrade gametheory-defense"
            )
        for key in ("defenders", "attackers"):
            if not isinstance(d[key], list):
                raise PayoffError(f"{prefix}{key!r} must be a list of names, got {d[key]!r}")
            if not d[key]:
                # In a file the name lists are the matrix's: an empty one is not "use defaults".
                what = "row" if key == "defenders" else "column"
                raise PayoffError(
                    f"{prefix}{key!r} is empty; it must name every {what} of 'values' (one name per {what})"
                )
        try:
            return cls(
                d["values"],
                defenders=tuple(d["defenders"]),
                attackers=tuple(d["attackers"]),
                stderr=d.get("stderr"),
                n_samples=d.get("n_samples"),
                clean_accuracy=d.get("clean_accuracy"),
                metadata=d.get("metadata") or {},
            )
        except PayoffError as exc:
            if not source:
                raise
            raise PayoffError(f"{prefix}{exc}") from None

    def to_json(self, path: str | Path) -> None:
        """Write the payoff JSON file (one matrix row per line; exact round trip)."""
        Path(path).write_text(_format_json(self.to_dict()), encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path) -> PayoffMatrix:
        """Read a payoff JSON file; errors name the file, row and column at fault."""
        path = Path(path)
        text = _read_text(path)
        try:
            d = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise PayoffError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        except PayoffError as exc:
            raise PayoffError(f"{path}: {exc}") from None
        except RecursionError:
            raise PayoffError(f"{path}: JSON nested too deeply to be a payoff file") from None
        return cls.from_dict(d, source=str(path))

    # ------------------------------------------------------------------ CSV

    def to_csv(self, path: str | Path) -> None:
        """Write ``values`` as CSV: header ``defender,<attackers...>``, one row per defender.

        CSV carries values only; ``stderr``, ``n_samples``, ``clean_accuracy`` and
        ``metadata`` are dropped (with a warning); use :meth:`to_json` to keep them.
        """
        dropped = [
            f for f in ("stderr", "n_samples", "clean_accuracy") if getattr(self, f) is not None
        ] + (["metadata"] if self.metadata else [])
        if dropped:
            warnings.warn(
                f"CSV holds values only; {', '.join(dropped)} not written to {path} "
                "(use to_json to keep them)",
                stacklevel=2,
            )
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([_CSV_CORNER, *self.attackers])
        for name, row in zip(self.defenders, self.values.tolist(), strict=True):
            writer.writerow([name, *(repr(float(x)) for x in row)])
        Path(path).write_text(buf.getvalue(), encoding="utf-8")

    @classmethod
    def from_csv(cls, path: str | Path) -> PayoffMatrix:
        """Read a payoff CSV file (see :meth:`to_csv`); errors name file, line, row, column.

        The file is read line by line and each row becomes a float64 array at once, so the
        memory used stays near that of the matrix (8 bytes per value) rather than of Python
        lists of strings.
        """
        path = Path(path)
        try:
            handle = path.open(encoding="utf-8-sig", newline="")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such payoff file") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{path}: is a directory, not a payoff file") from None
        with handle:
            reader = csv.reader(handle, strict=True, skipinitialspace=True)
            try:
                return cls._parse_csv(path, reader)
            except csv.Error as exc:
                raise PayoffError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
            except UnicodeDecodeError as exc:
                raise PayoffError(
                    f"{path}: not UTF-8 text ({exc.reason} after line {reader.line_num})"
                ) from None

    @classmethod
    def _parse_csv(cls, path: Path, reader: Any) -> PayoffMatrix:
        records = ((reader.line_num, r) for r in reader if r and any(cell.strip() for cell in r))
        first = next(records, None)
        if first is None:
            raise PayoffError(f"{path}: empty file; expected a header 'defender,<attacker names...>'")
        line, header = first
        if header[0].strip() != _CSV_CORNER:
            raise PayoffError(
                f"{path}: line {line}: the header must start with {_CSV_CORNER!r} and then name "
                f"the attackers, got {header[0]!r} first"
            )
        # Names never carry surrounding whitespace, so spaces before a comma are dropped too.
        attackers = [cell.strip() for cell in header[1:]]
        if not attackers:
            raise PayoffError(f"{path}: line {line}: the header names no attackers")
        defenders: list[str] = []
        rows: list[np.ndarray] = []
        for i, (line, record) in enumerate(records):
            name = record[0].strip()
            defenders.append(name)
            where = f"{path}: line {line}: {_label('row', i, defenders)}"
            cells = record[1:]
            if len(cells) < len(attackers):
                j = len(cells)
                raise PayoffError(
                    f"{where}, {_label('column', j, attackers)}: missing value (the row has "
                    f"{len(cells)} value(s), the header names {len(attackers)} attackers)"
                )
            if len(cells) > len(attackers):
                raise PayoffError(
                    f"{where}: {len(cells)} values but the header names {len(attackers)} "
                    f"attackers (extra value {cells[len(attackers)]!r})"
                )
            try:
                rows.append(np.fromiter(map(float, cells), dtype=np.float64, count=len(cells)))
            except ValueError:
                for j, cell in enumerate(cells):
                    text_cell = cell.strip()
                    try:
                        float(text_cell)
                    except ValueError:
                        problem = "empty cell" if not text_cell else f"{cell!r} is not a number"
                        raise PayoffError(f"{where}, {_label('column', j, attackers)}: {problem}") from None
                raise
        if not rows:
            raise PayoffError(f"{path}: no defender rows after the header")
        values = np.vstack(rows)
        del rows
        try:
            return cls(values, defenders=tuple(defenders), attackers=tuple(attackers))
        except PayoffError as exc:
            raise PayoffError(f"{path}: {exc}") from None


def load_payoff(path: str | Path) -> PayoffMatrix:
    """Read a payoff file, choosing the format by suffix (``.json`` or ``.csv``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    PayoffError
        For an unknown suffix or invalid content (the message names file, row and column).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return PayoffMatrix.from_json(path)
    if suffix == ".csv":
        return PayoffMatrix.from_csv(path)
    raise PayoffError(f"{path}: unknown payoff file type {path.suffix!r}; use .json or .csv")


# --------------------------------------------------------------------------- file helpers


def _index(names: tuple[str, ...], name: str, kind: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        shown = ", ".join(repr(x) for x in names[:10]) + (", ..." if len(names) > 10 else "")
        raise PayoffError(f"unknown {kind} {name!r}; known {kind}s: {shown}") from None


def _presence_message(what: str, where: str, mine: np.ndarray | None) -> str:
    if mine is not None:
        return f"this matrix carries {what}; pass {what}= for the new {where}"
    return f"this matrix has no {what}; a new {where} cannot add one (leave {what}=None)"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such payoff file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a directory, not a payoff file") from None
    except UnicodeDecodeError as exc:
        raise PayoffError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for key, value in pairs:
        if key in d:
            raise PayoffError(f"duplicate JSON key {key!r}")
        d[key] = value
    return d


def _format_json(d: dict[str, Any]) -> str:
    """JSON with one matrix row per line; floats use the shortest round-trip ``repr``."""

    def dump(value: Any) -> str:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)

    parts = []
    for key, value in d.items():
        if key in ("values", "stderr", "n_samples"):
            rows = ",\n".join(f"    {dump(row)}" for row in value)
            body = f"[\n{rows}\n  ]"
        elif key == "metadata":
            body = json.dumps(value, allow_nan=False, ensure_ascii=False, indent=2).replace(
                "\n", "\n  "
            )
        else:
            body = dump(value)
        parts.append(f"  {dump(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"
