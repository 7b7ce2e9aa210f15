"""Shared pieces of the zero-sum solvers: the result type, the certificate, the registry.

The game convention is the project's only one: rows are defenders (the maximizer), columns
are attackers (the minimizer), ``A[i, j]`` is the defender's payoff (accuracy). A mixed
strategy pair ``(x, y)`` is certified by its **exploitability**

    max_i (A y)_i - min_j (x A)_j  >=  0,

the sum of what each player could gain by deviating; the game value lies in
``[min_j (x A)_j, max_i (A y)_i]``, an interval of exactly that width. It is computed here
from the matrix, independently of whichever solver produced ``x`` and ``y``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from gametheory_defense.errors import SolverError

__all__ = [
    "OPTIMAL",
    "CONVERGED",
    "MAX_ITERATIONS",
    "TIME_LIMIT",
    "INACCURATE",
    "STATUSES",
    "SELECTIONS",
    "Equilibrium",
    "SolverOutput",
    "SolverFn",
    "Game",
    "as_game",
    "exploitability",
    "Certificate",
    "certify",
    "payoff_scale",
    "clean_strategy",
    "SOLVERS",
    "register_solver",
    "resolve_method",
]

# --------------------------------------------------------------------------- status constants

OPTIMAL = "optimal"
"""An exact method (LP, enumeration) finished and the certificate is within ``tol``."""
CONVERGED = "converged"
"""An iterative method reached exploitability ``<= tol``."""
MAX_ITERATIONS = "max-iterations"
"""An iterative method stopped at ``max_iterations`` before reaching ``tol``."""
TIME_LIMIT = "time-limit"
"""An iterative method stopped at its ``time_limit`` before reaching ``tol``."""
INACCURATE = "inaccurate"
"""An exact method finished but its certificate exceeds ``tol`` (numerical trouble)."""
STATUSES = (OPTIMAL, CONVERGED, MAX_ITERATIONS, TIME_LIMIT, INACCURATE)

SELECTIONS = ("clean", "max-entropy", "min-support")
"""Equilibrium-selection rules accepted by ``solve_zero_sum(select=...)``."""

# Probabilities at or below this magnitude are set to exactly zero by :func:`clean_strategy`.
ZERO_TOL = 1e-13
# A probability below -NEGATIVE_TOL (after normalising) means the solver returned garbage.
NEGATIVE_TOL = 1e-6


# --------------------------------------------------------------------------- the game


@dataclass(frozen=True)
class Game:
    """A validated game: float64 payoffs and the players' names (internal carrier)."""

    values: np.ndarray
    defenders: tuple[str, ...]
    attackers: tuple[str, ...]
    clean_accuracy: np.ndarray | None = None


def as_game(matrix: Any) -> Game:
    """Validate a ``payoff.PayoffMatrix`` or a plain 2-D array and return a :class:`Game`.

    Plain arrays may hold any finite real payoffs (names default to ``d0, d1, ...`` and
    ``a0, a1, ...``); a ``PayoffMatrix`` has already checked its own entries.

    Raises
    ------
    ValueError
        If the payoffs are not a non-empty, finite, 2-D array of numbers.
    """
    if hasattr(matrix, "values") and hasattr(matrix, "defenders") and hasattr(matrix, "attackers"):
        values = np.asarray(matrix.values, dtype=np.float64)
        defenders = tuple(str(d) for d in matrix.defenders)
        attackers = tuple(str(a) for a in matrix.attackers)
        clean = getattr(matrix, "clean_accuracy", None)
        clean = None if clean is None else np.asarray(clean, dtype=np.float64)
    else:
        if isinstance(matrix, (str, bytes, Mapping)):
            raise ValueError(
                f"payoffs must be a PayoffMatrix or a 2-D array of numbers, got {type(matrix).__name__}"
            )
        if _is_sparse(matrix):  # scipy.sparse: the solvers work on dense arrays
            matrix = matrix.toarray()
        try:
            values = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"payoffs must be a 2-D array of finite numbers ({exc})") from None
        defenders = attackers = ()
        clean = None
    if values.ndim != 2:
        raise ValueError(
            f"payoffs must be a 2-D array (rows: defenders, columns: attackers), got {values.ndim}-D "
            f"with shape {values.shape}"
        )
    m, n = values.shape
    if m == 0 or n == 0:
        raise ValueError(f"payoffs are empty (shape {values.shape}); a game needs at least one row and column")
    if not np.all(np.isfinite(values)):
        i, j = (int(t[0]) for t in np.nonzero(~np.isfinite(values)))
        raise ValueError(f"payoff at row {i}, column {j} is {values[i, j]!r}; every payoff must be finite")
    defenders = defenders or tuple(f"d{i}" for i in range(m))
    attackers = attackers or tuple(f"a{j}" for j in range(n))
    if len(defenders) != m or len(attackers) != n:
        raise ValueError(
            f"payoffs have shape {values.shape} but {len(defenders)} defender and "
            f"{len(attackers)} attacker names"
        )
    if clean is not None and clean.shape != (m,):
        raise ValueError(f"clean_accuracy has shape {clean.shape}, expected ({m},)")
    return Game(np.ascontiguousarray(values), defenders, attackers, clean)


def _is_sparse(matrix: Any) -> bool:
    """Whether ``matrix`` is a ``scipy.sparse`` array or matrix (without importing scipy needlessly)."""
    if not type(matrix).__module__.startswith("scipy.sparse"):
        return False
    import scipy.sparse

    return bool(scipy.sparse.issparse(matrix))


# --------------------------------------------------------------------------- certificate

# Unit round-off of float64 (2**-53): every operation is exact up to a relative error of this.
UNIT_ROUNDOFF = float(np.finfo(np.float64).eps) / 2.0
# Payoffs above this magnitude are multiplied by a power of two before products are formed,
# so that sums of products cannot overflow (1e308 - (-1e308) is inf).
_HUGE = 2.0**1000


def _prescaled(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``(values * 2**-k, k)``: exact rescaling of huge payoffs (``k = 0`` for ordinary ones)."""
    big = max(abs(float(values.max())), abs(float(values.min())))  # no |A| copy
    if big <= _HUGE:
        return values, 0
    k = math.frexp(big)[1]
    return np.ldexp(values, -k), k


def _unscale(v: float, k: int) -> float:
    """``v * 2**k`` (``inf`` when that exceeds the float range)."""
    with np.errstate(over="ignore"):
        return float(np.ldexp(v, k)) if k else float(v)


def payoff_scale(values: np.ndarray) -> float:
    """``max A - min A``: the scale that :func:`solve_zero_sum`'s ``tol`` is relative to.

    Shift-invariant like the certificate itself (adding a constant to every payoff changes no
    strategy's exploitability), and computed without overflow for payoffs near the float limit.
    """
    scaled, k = _prescaled(np.asarray(values, dtype=np.float64))
    return _unscale(float(np.ptp(scaled)), k)


@dataclass(frozen=True)
class Certificate:
    """Both players' guarantees for a strategy pair, including floating-point rounding.

    Attributes
    ----------
    defender_guarantee : float
        A lower bound on ``min_j (x A)_j`` (the accuracy the defender's ``x`` guarantees
        against every attacker), rounded down by the bound on the rounding error of computing it.
    attacker_guarantee : float
        An upper bound on ``max_i (A y)_i`` (the most any defender gains against ``y``).
    value : float
        ``x A y``.
    rounding : float
        The rounding allowance included above (both sides together).
    """

    defender_guarantee: float
    attacker_guarantee: float
    value: float
    rounding: float

    @property
    def exploitability(self) -> float:
        """``attacker_guarantee - defender_guarantee`` (never negative)."""
        return max(self.attacker_guarantee - self.defender_guarantee, 0.0)

    @property
    def computed_gap(self) -> float:
        """The duality gap as computed in floating point, without the rounding allowance."""
        return self.exploitability - self.rounding

    @property
    def exact(self) -> bool:
        """Whether the computed gap is within a few rounding allowances (exact up to round-off)."""
        return self.computed_gap <= 4.0 * self.rounding


def certify(
    values: np.ndarray, x: np.ndarray, y: np.ndarray, *, products: tuple[np.ndarray, np.ndarray] | None = None
) -> Certificate:
    """Certified guarantees of ``(x, y)`` on ``values`` (von Neumann 1928; rounding as in Higham 2002).

    ``(x A)_j`` is a sum of ``m`` products: in floating point, in any summation order, it is
    exact up to ``gamma_m (x |A|)_j`` with ``gamma_k = k u / (1 - k u)`` (Higham 2002,
    Lemma 3.1). The strategies are certified as the distributions ``x / sum(x)``, whose exact
    sum differs from the stored one by at most another ``gamma_m``. So each ``(x A)_j`` is
    lowered by ``2.01 gamma_(m+1) (x |A|)_j`` before the minimum is taken, each ``(A y)_i``
    raised by ``2.01 gamma_(n+1) (|A| y)_i``, and the exploitability is the difference of the
    two guarantees: an upper bound on the exact duality gap of the exact distributions, never
    0 by round-off alone. For non-negative payoffs (accuracies) ``|A| = A`` and this costs
    nothing; otherwise ``|A|`` is formed in blocks of rows. ``products=(x A, A y)`` skips
    the two matrix-vector products when the caller has them (payoffs below ``2**1000``).
    """
    a, k = _prescaled(np.asarray(values, dtype=np.float64))
    m, n = a.shape
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if products is not None and k == 0:
        xa, ay = products
    else:
        xa = x @ a
        ay = a @ y
    if float(a.min()) >= 0.0:
        x_abs, abs_y = xa, ay
    else:
        x_abs = np.zeros(n)
        abs_y = np.empty(m)
        block = max(1, 2**22 // max(n, 1))  # 32 MiB of |A| at a time
        for start in range(0, m, block):
            part = np.abs(a[start : start + block])
            x_abs += x[start : start + block] @ part
            abs_y[start : start + block] = part @ y

    def gamma(k: int) -> float:
        return k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)

    err_low = 2.01 * gamma(m + 1) * np.abs(x_abs)
    err_high = 2.01 * gamma(n + 1) * np.abs(abs_y)
    # nextafter: forming a bound is itself one more rounding, taken outward (a zero allowance
    # means every product was exactly zero, so there is nothing to round).
    low = np.where(err_low > 0, np.nextafter(xa - err_low, -np.inf), xa)
    high = np.where(err_high > 0, np.nextafter(ay + err_high, np.inf), ay)
    computed = float(np.max(ay)) - float(np.min(xa))
    lower, upper = float(np.min(low)), float(np.max(high))
    rounding = max((upper - lower) - computed, 0.0)
    return Certificate(_unscale(lower, k), _unscale(upper, k), _unscale(float(xa @ y), k), _unscale(rounding, k))

def exploitability(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Duality gap ``max_i (A y)_i - min_j (x A)_j`` of the pair ``(x, y)`` (von Neumann 1928).

    Zero exactly at an equilibrium; the game value lies within this distance of ``x A y``.
    This is the gap as computed in floating point; :func:`certify` adds a bound on its
    rounding error (what :attr:`Equilibrium.exploitability` reports).
    """
    a = np.asarray(values, dtype=np.float64)
    return float(np.max(a @ y) - np.min(x @ a))


def clean_strategy(p: Any, n: int, *, who: str, method: str, zero_tol: float = ZERO_TOL) -> np.ndarray:
    """Turn a solver's raw probability vector into a clean distribution (OpenSpiel's rule).

    Entries of magnitude ``<= zero_tol`` (1e-13) times the sum and tiny negatives are set to
    zero and the vector is renormalised. Anything that is not close to a distribution raises
    :class:`SolverError`.
    """
    try:
        q = np.array(p, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise SolverError(f"method {method!r} returned a {who} strategy that is not numeric ({exc})") from None
    if q.shape != (n,):
        raise SolverError(
            f"method {method!r} returned a {who} strategy of length {q.size}; the game has {n} {who}s"
        )
    if not np.all(np.isfinite(q)):
        raise SolverError(f"method {method!r} returned a {who} strategy with NaN or infinite entries")
    total = float(q.sum())
    if not total > 0:
        raise SolverError(f"method {method!r} returned a {who} strategy summing to {total:.3g}, not 1")
    if q.min() < -NEGATIVE_TOL * total:
        i = int(np.argmin(q))
        raise SolverError(
            f"method {method!r} returned a {who} strategy with probability {q[i]:.3g} at index {i}"
        )
    if abs(total - 1.0) > 1e-6:
        warnings.warn(
            f"method {method!r} returned a {who} strategy summing to {total:.9g}; renormalised to 1",
            stacklevel=3,
        )
    q[q <= zero_tol * total] = 0.0
    return q / q.sum()


# --------------------------------------------------------------------------- result type


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Equilibrium:
    """A certified solution of a two-player zero-sum game (von Neumann 1928).

    Attributes
    ----------
    defender_strategy, attacker_strategy : ndarray
        Mixed strategies over ``defenders`` (rows) and ``attackers`` (columns); read-only,
        non-negative, summing to one.
    value : float
        The game value: ``x @ A @ y`` of the solver's pair, or with ``select`` the value
        of the first-stage solution (selection never changes it).
    exploitability : float
        ``attacker_guarantee - defender_guarantee``: the duality gap
        ``max_i (A y)_i - min_j (x A)_j`` of the returned strategies, computed from the matrix
        independently of the solver, plus a bound on the rounding error of computing it (so it
        is never 0 by round-off; see :func:`certify`).
    method : str
        The solver's registry name (or the callable's name).
    status : str
        One of :data:`STATUSES` (``"optimal"``, ``"converged"``, ``"max-iterations"``,
        ``"time-limit"``, ``"inaccurate"``).
    select : str or None
        The equilibrium-selection rule applied to the defender's strategy, if any.
    defenders, attackers : tuple of str
        Names in the order of the strategy vectors.
    iterations : int or None
        Iterations used by an iterative method.
    defender_guarantee : float
        Certified lower bound on ``min_j (x A)_j``: the accuracy the defender's strategy
        guarantees against every attacker, hence a lower bound on the game value.
    attacker_guarantee : float
        Certified upper bound on ``max_i (A y)_i``: no defender does better than this against
        the attacker's strategy, hence an upper bound on the game value. The game value lies
        in ``[defender_guarantee, attacker_guarantee]`` (:attr:`bounds`). When not given (old
        files), they default to ``value -/+ exploitability``.
    """

    defender_strategy: np.ndarray
    attacker_strategy: np.ndarray
    value: float
    exploitability: float
    method: str
    status: str
    select: str | None = None
    defenders: tuple[str, ...] = ()
    attackers: tuple[str, ...] = ()
    iterations: int | None = None
    defender_guarantee: float | None = None  # type: ignore[assignment]
    attacker_guarantee: float | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        x = _readonly(self.defender_strategy).reshape(-1)
        y = _readonly(self.attacker_strategy).reshape(-1)
        x.setflags(write=False)
        y.setflags(write=False)
        set_(self, "defender_strategy", x)
        set_(self, "attacker_strategy", y)
        set_(self, "value", float(self.value))
        set_(self, "exploitability", float(self.exploitability))
        defenders = tuple(self.defenders) or tuple(f"d{i}" for i in range(x.size))
        attackers = tuple(self.attackers) or tuple(f"a{j}" for j in range(y.size))
        if len(defenders) != x.size or len(attackers) != y.size:
            raise ValueError(
                f"strategies have lengths {x.size} and {y.size} but there are {len(defenders)} "
                f"defender and {len(attackers)} attacker names"
            )
        set_(self, "defenders", defenders)
        set_(self, "attackers", attackers)
        low = self.value - self.exploitability if self.defender_guarantee is None else self.defender_guarantee
        high = self.value + self.exploitability if self.attacker_guarantee is None else self.attacker_guarantee
        set_(self, "defender_guarantee", float(low))
        set_(self, "attacker_guarantee", float(high))

    @property
    def defender_support(self) -> tuple[str, ...]:
        """Names of the defenders played with positive probability."""
        return tuple(n for n, p in zip(self.defenders, self.defender_strategy) if p > 0)

    @property
    def attacker_support(self) -> tuple[str, ...]:
        """Names of the attackers played with positive probability."""
        return tuple(n for n, p in zip(self.attackers, self.attacker_strategy) if p > 0)

    @property
    def bounds(self) -> tuple[float, float]:
        """``(defender_guarantee, attacker_guarantee)``: the certified range of the game value.

        Its width is ``exploitability``; ``value`` lies inside it.
        """
        return (self.defender_guarantee, self.attacker_guarantee)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Equilibrium):
            return NotImplemented
        return (
            np.array_equal(self.defender_strategy, other.defender_strategy)
            and np.array_equal(self.attacker_strategy, other.attacker_strategy)
            and (self.value, self.exploitability, self.method, self.status, self.select)
            == (other.value, other.exploitability, other.method, other.status, other.select)
            and (self.defenders, self.attackers, self.iterations)
            == (other.defenders, other.attackers, other.iterations)
            and (self.defender_guarantee, self.attacker_guarantee)
            == (other.defender_guarantee, other.attacker_guarantee)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; strategies map every name (support or not) to its probability."""
        return {
            "value": self.value,
            "exploitability": self.exploitability,
            "defender_guarantee": self.defender_guarantee,
            "attacker_guarantee": self.attacker_guarantee,
            "method": self.method,
            "status": self.status,
            "select": self.select,
            "iterations": self.iterations,
            "defenders": list(self.defenders),
            "attackers": list(self.attackers),
            "defender_strategy": {n: float(p) for n, p in zip(self.defenders, self.defender_strategy)},
            "attacker_strategy": {n: float(p) for n, p in zip(self.attackers, self.attacker_strategy)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Equilibrium:
        """Rebuild an equilibrium written by :meth:`to_dict`.

        Raises
        ------
        ValueError
            Naming the missing key or the invalid field.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"an equilibrium must be a JSON object, got {type(d).__name__}")
        required = ("value", "exploitability", "method", "status", "defender_strategy", "attacker_strategy")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"equilibrium is missing key(s) {missing}; expected {list(required)}")
        value = _finite_number(d["value"], "value")
        gap = _finite_number(d["exploitability"], "exploitability")
        if gap < -1e-12:
            raise ValueError(f"exploitability must be >= 0, got {gap!r}")
        for key in ("method", "status"):
            if not isinstance(d[key], str) or not d[key]:
                raise ValueError(f"{key} must be a non-empty string, got {d[key]!r}")
        select = d.get("select")
        if select is not None and select not in SELECTIONS:
            raise ValueError(f"select must be null or one of {list(SELECTIONS)}, got {select!r}")
        iterations = d.get("iterations")
        if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)):
            raise ValueError(f"iterations must be null or an integer, got {iterations!r}")
        guarantees = {
            key: None if d.get(key) is None else _finite_number(d[key], key)
            for key in ("defender_guarantee", "attacker_guarantee")
        }
        x, defenders = _strategy_from_dict(d, "defender")
        y, attackers = _strategy_from_dict(d, "attacker")
        return cls(
            defender_strategy=x,
            attacker_strategy=y,
            value=value,
            exploitability=max(gap, 0.0),
            method=d["method"],
            status=d["status"],
            select=select,
            defenders=defenders,
            attackers=attackers,
            iterations=iterations,
            **guarantees,
        )


def _finite_number(v: Any, key: str) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
    try:
        ok = ok and math.isfinite(v)
    except OverflowError:  # an integer beyond float range (JSON allows them)
        ok = False
    if not ok:
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise ValueError(f"{key} must be a finite number, got {shown}")
    return float(v)


def _strategy_from_dict(d: Mapping[str, Any], kind: str) -> tuple[np.ndarray, tuple[str, ...]]:
    key = f"{kind}_strategy"
    probs = d[key]
    if not isinstance(probs, Mapping) or not probs:
        raise ValueError(f"{key} must be a non-empty object mapping each {kind} name to its probability")
    order = d.get(f"{kind}s")
    if order is None:
        order = list(probs)
    if not isinstance(order, Sequence) or isinstance(order, str) or not all(isinstance(n, str) for n in order):
        raise ValueError(f"{kind}s must be a list of names, got {order!r}")
    if len(set(order)) != len(order):
        raise ValueError(f"{kind}s contains duplicate names")
    if set(order) != set(probs):
        raise ValueError(
            f"{kind}s {sorted(order)[:5]} and the names in {key} {sorted(probs)[:5]} differ; "
            f"{key} must give every {kind} a probability"
        )
    p = np.array([_finite_number(probs[n], f"{key}[{n!r}]") for n in order])
    if p.min() < -1e-9 or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"{key} is not a probability distribution (min {p.min():.3g}, sum {p.sum():.9g})")
    p = np.clip(p, 0.0, None)
    return p / p.sum(), tuple(order)


# --------------------------------------------------------------------------- solver protocol


class SolverOutput(NamedTuple):
    """What a registered solver returns (a plain ``(x, y)`` tuple is accepted too)."""

    defender_strategy: np.ndarray
    attacker_strategy: np.ndarray
    status: str = OPTIMAL
    iterations: int | None = None


class SolverFn(Protocol):
    """``fn(A, *, tol, **options) -> SolverOutput | (x, y)``."""

    def __call__(self, values: np.ndarray, *, tol: float) -> Any: ...


SOLVERS: dict[str, Callable[..., Any]] = {}
"""Registry: method name -> solver callable ``fn(A, *, tol, **options)``."""


def register_solver(name: str, fn: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Add ``fn`` to :data:`SOLVERS` under ``name``.

    ``fn(A: np.ndarray, *, tol: float, **options)`` returns a :class:`SolverOutput` or a
    ``(defender_strategy, attacker_strategy)`` pair for the payoff matrix ``A`` (rows:
    maximizer). Set ``overwrite=True`` to replace an existing entry.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a solver name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise ValueError(f"solver {name!r} must be callable, got {type(fn).__name__}")
    if name in SOLVERS and not overwrite and SOLVERS[name] is not fn:
        raise ValueError(f"a solver named {name!r} is already registered; pass overwrite=True to replace it")
    SOLVERS[name] = fn


def _callable_name(fn: Callable[..., Any]) -> str:
    for registered, candidate in SOLVERS.items():
        if candidate is fn:
            return registered
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__name__", type(fn).__name__))


def resolve_method(method: str | Callable[..., Any]) -> tuple[str, Callable[..., Any]]:
    """``(name, callable)`` for a registry name or a callable; ValueError for unknown names."""
    if isinstance(method, str):
        if method not in SOLVERS:
            raise ValueError(f"unknown solver method {method!r}; choose from {', '.join(sorted(SOLVERS))}")
        return method, SOLVERS[method]
    if callable(method):
        return _callable_name(method), method
    raise ValueError(f"method must be a solver name or a callable, got {type(method).__name__}")


def check_options(name: str, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Raise ValueError if ``fn`` does not accept every keyword in ``options``."""
    if not options:
        return
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = {k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"tol"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"method {name!r} does not accept option(s) {unknown}; "
            f"it accepts {sorted(accepted) if accepted else 'none'}"
        )


def normalise_output(raw: Any, name: str) -> SolverOutput:
    """Accept a :class:`SolverOutput`, an object with strategy attributes, or an ``(x, y)`` pair."""
    if isinstance(raw, SolverOutput):
        return raw
    if hasattr(raw, "defender_strategy") and hasattr(raw, "attacker_strategy"):
        return SolverOutput(
            raw.defender_strategy,
            raw.attacker_strategy,
            str(getattr(raw, "status", OPTIMAL)),
            getattr(raw, "iterations", None),
        )
    if isinstance(raw, (tuple, list)) and len(raw) == 2:
        return SolverOutput(raw[0], raw[1])
    raise SolverError(
        f"method {name!r} returned {type(raw).__name__}; a solver must return SolverOutput or (x, y)"
    )

