"""Wall time and exploitability of every zero-sum solver on random games (not a test).

Games are ``n x n`` from ``numpy.random.default_rng(seed)``, in three families (``--families``):

- ``uniform``: i.i.d. uniform [0, 1] entries (large equilibrium supports, about n/2);
- ``accuracy``: built like accuracies of defenders under attacks: each defender has a clean
  accuracy and a robustness to each of 6 attack types, each attack a type and a strength,
  plus noise of 0.01, rounded to 1/1000 (a 1000-image test set: many ties); low-rank plus
  noise, with small supports;
- ``lowrank``: a rank-5 product of uniform factors plus noise of 0.01, rescaled to [0, 1].

``highs-ds`` and ``highs-ipm`` are ``lp`` with ``algorithm`` fixed to one HiGHS method (one
solve); ``lp`` chooses by itself (``algorithm="auto"``).
Each method runs through ``solve_zero_sum`` (so the time includes validation, clean-up and
the independent certificate) next to nashpy's ``linear_program`` in the same process; the
table gives the best wall time of ``--repeat`` runs (the repeats interleave the methods, so
that on a shared machine every method sees the same load), the certificate, the status, the
speed-up over nashpy where nashpy ran at that size and, for ``lp``, over the faster of the
two single HiGHS solves. Exact methods are asked for
exploitability 1e-9, iterative ones for ``--iterative-tol`` (default 1e-4) within
``--time-limit`` seconds. Methods that cannot finish in reasonable time at a size are
printed as ``skipped (reason)``.

Targets (2-core CPU, ``OMP_NUM_THREADS=2``): ``lp`` at least 3x faster than nashpy's
``linear_program`` at 1000 x 1000 with exploitability <= 1e-9, and at least as fast as the
best single HiGHS solve (``vs best HiGHS`` >= 1) on every family; an iterative method at
exploitability <= 1e-4 on 3000 x 3000 in under 5 s and on 10000 x 10000 in under 60 s.

Examples::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/solvers.py --sizes 10 100 1000 3000 10000
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/solvers.py --families uniform accuracy lowrank \\
        --sizes 100 300 1000 --methods nashpy-lp highs-ds highs-ipm lp pdhg --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from typing import Any

import numpy as np

from gametheory_defense.errors import GTDError
from gametheory_defense.solvers import (
    ITERATIVE_METHODS,
    LEMKE_HOWSON_MAX_STRATEGIES,
    SOLVERS,
    SUPPORT_ENUMERATION_MAX_STRATEGIES,
    VERTEX_ENUMERATION_MAX_STRATEGIES,
    solve_zero_sum,
)

# Pseudo-methods: ``lp`` with one HiGHS algorithm forced (a single plain solve).
FIXED_LP = {"highs-ds": "highs-ds", "highs-ipm": "highs-ipm"}

DEFAULT_METHODS = [
    "nashpy-lp",
    "highs-ds",
    "highs-ipm",
    "lp",
    "cvxpy",
    "support-enumeration",
    "vertex-enumeration",
    "lemke-howson",
    "fictitious-play",
    "regret-matching",
    "pdhg",
]

# Largest n (per side) at which each method is run; the reason is printed above it.
LIMITS: dict[str, tuple[int, str]] = {
    "nashpy-lp": (1000, "two dense simplex LPs, many minutes"),
    "highs-ds": (1000, "dense simplex, many minutes"),
    "highs-ipm": (3000, "dense LP; use pdhg"),
    "lp": (3000, "dense LP; use pdhg"),
    "cvxpy": (1000, "dense LP through CVXPY, many minutes"),
    "support-enumeration": (SUPPORT_ENUMERATION_MAX_STRATEGIES // 2, "exponential"),
    "vertex-enumeration": (VERTEX_ENUMERATION_MAX_STRATEGIES // 2, "exponential"),
    "lemke-howson": (LEMKE_HOWSON_MAX_STRATEGIES // 2, "exponential, float overflow"),
    "fictitious-play": (1000, "sublinear convergence"),
    "regret-matching": (1000, "sublinear convergence"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 3000, 10000])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted([*SOLVERS, *FIXED_LP]))
    parser.add_argument("--families", nargs="+", default=["uniform"], choices=sorted(FAMILIES))
    parser.add_argument("--repeat", type=int, default=1, help="runs per (size, method), interleaved; the best is shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterative-tol", type=float, default=1e-4)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds, iterative methods")
    return parser.parse_args(argv)


def uniform_game(n: int, rng: np.random.Generator) -> np.ndarray:
    """I.i.d. uniform [0, 1] payoffs."""
    return rng.uniform(size=(n, n))


def accuracy_game(n: int, rng: np.random.Generator, *, types: int = 6, test_set: int = 1000) -> np.ndarray:
    """Accuracy-like payoffs: clean accuracy x robustness to the attack's type, noise, ties."""
    robustness = rng.beta(0.7, 0.7, size=(n, types))
    clean = rng.uniform(0.85, 0.99, size=(n, 1))
    kind = rng.integers(types, size=n)
    mixture = np.eye(types)[kind] * 0.8 + 0.2 / types
    strength = rng.uniform(0.2, 1.0, size=(1, n))
    a = clean * (1 - strength * (1 - robustness @ mixture.T)) + rng.normal(0, 0.01, size=(n, n))
    return np.clip(np.round(a * test_set) / test_set, 0.0, 1.0)


def lowrank_game(n: int, rng: np.random.Generator, *, rank: int = 5) -> np.ndarray:
    """A rank-``rank`` product of uniform factors plus noise, rescaled to [0, 1]."""
    a = rng.uniform(size=(n, rank)) @ rng.uniform(size=(rank, n)) + rng.normal(0, 0.01, size=(n, n))
    return (a - a.min()) / np.ptp(a)


FAMILIES = {"uniform": uniform_game, "accuracy": accuracy_game, "lowrank": lowrank_game}


def run_one(a: np.ndarray, method: str, args: argparse.Namespace) -> tuple[float, Any]:
    """(seconds, equilibrium) of one run of ``method`` on ``a``."""
    options: dict[str, object] = {}
    tol = 1e-9
    if method in FIXED_LP:
        method, options = "lp", {"algorithm": FIXED_LP[method]}
    if method in ITERATIVE_METHODS:
        tol = args.iterative_tol
        options = {"time_limit": args.time_limit, "max_iterations": 10**7}
    gc.collect()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eq = solve_zero_sum(a, method, tol=tol, **options)
    return time.perf_counter() - start, eq


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = (
        f"| {'family':<8} | {'n x n':>11} | {'method':<19} | {'time (s)':>9} | {'exploitability':>14} | "
        f"{'status':<14} | {'iterations':>10} | {'vs nashpy':>9} | {'vs best HiGHS':>13} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    methods = list(args.methods)
    warm = np.random.default_rng(args.seed).uniform(size=(3, 3))
    for method in methods:  # imports and first-call set-up are not timed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solve_zero_sum(warm, "lp" if method in FIXED_LP else method, tol=1e-3)
    order = ["nashpy-lp", *FIXED_LP]  # the references first in the table
    methods = [m for m in order if m in methods] + [m for m in methods if m not in order]
    for family in args.families:
        for n in args.sizes:
            a = FAMILIES[family](n, np.random.default_rng(args.seed))
            label = f"{n} x {n}"
            runnable = [m for m in methods if n <= LIMITS.get(m, (sys.maxsize, ""))[0]]
            times: dict[str, list[float]] = {m: [] for m in runnable}
            results: dict[str, Any] = {}
            # Repeats interleave the methods, so that all of them see the same machine load.
            for _ in range(args.repeat):
                for method in runnable:
                    if isinstance(results.get(method), GTDError):
                        continue
                    try:
                        seconds, eq = run_one(a, method, args)
                    except GTDError as exc:
                        results[method] = exc
                        continue
                    times[method].append(seconds)
                    results[method] = eq
            best = {m: min(t) for m, t in times.items() if t}
            highs = [best[m] for m in FIXED_LP if m in best]
            for method in methods:
                limit, reason = LIMITS.get(method, (sys.maxsize, ""))
                if method not in runnable:
                    print(f"| {family:<8} | {label:>11} | {method:<19} | skipped ({reason}, n > {limit})")
                    continue
                if isinstance(results[method], GTDError):
                    print(f"| {family:<8} | {label:>11} | {method:<19} | failed: {results[method]}")
                    continue
                eq, seconds = results[method], best[method]
                reference = best.get("nashpy-lp")
                speedup = f"{reference / seconds:.1f}x" if reference is not None else "-"
                vs_highs = f"{min(highs) / seconds:.2f}x" if method == "lp" and len(highs) == len(FIXED_LP) else "-"
                iterations = "-" if eq.iterations is None else eq.iterations
                print(
                    f"| {family:<8} | {label:>11} | {method:<19} | {seconds:>9.3f} | {eq.exploitability:>14.2e} | "
                    f"{eq.status:<14} | {iterations:>10} | {speedup:>9} | {vs_highs:>13} |",
                    flush=True,
                )
            del a
            gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
