"""Wall time and exploitability of every zero-sum solver on random games (not a test).

Games are ``n x n`` with i.i.d. uniform [0, 1] entries from ``numpy.random.default_rng(seed)``.
Each method runs through ``solve_zero_sum`` (so the time includes validation, clean-up and
the independent certificate) next to nashpy's ``linear_program`` in the same process; the
table gives the median wall time over ``--repeat`` runs, the certificate, the status and
the speed-up over nashpy where nashpy ran at that size. Exact methods are asked for
exploitability 1e-9, iterative ones for ``--iterative-tol`` (default 1e-4) within
``--time-limit`` seconds. Methods that cannot finish in reasonable time at a size are
printed as ``skipped (reason)``.

Targets (2-core CPU, ``OMP_NUM_THREADS=2``): ``lp`` at least 3x faster than nashpy's
``linear_program`` at 1000 x 1000 with exploitability <= 1e-9; an iterative method at
exploitability <= 1e-4 on 3000 x 3000 in under 5 s and on 10000 x 10000 in under 60 s.

Example::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/solvers.py --sizes 10 100 1000 3000 10000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings

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

DEFAULT_METHODS = [
    "nashpy-lp",
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
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(SOLVERS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per (size, method); the median is shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterative-tol", type=float, default=1e-4)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds, iterative methods")
    return parser.parse_args(argv)


def run_one(a: np.ndarray, method: str, args: argparse.Namespace) -> tuple[float, float, str, int | None]:
    """(median seconds, exploitability, status, iterations) of ``method`` on ``a``."""
    options: dict[str, object] = {}
    tol = 1e-9
    if method in ITERATIVE_METHODS:
        tol = args.iterative_tol
        options = {"time_limit": args.time_limit, "max_iterations": 10**7}
    times = []
    eq = None
    for _ in range(args.repeat):
        gc.collect()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eq = solve_zero_sum(a, method, tol=tol, **options)
        times.append(time.perf_counter() - start)
    assert eq is not None
    return statistics.median(times), eq.exploitability, eq.status, eq.iterations


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = f"| {'n x n':>13} | {'method':<19} | {'time (s)':>9} | {'exploitability':>14} | {'status':<14} | {'iterations':>10} | {'vs nashpy':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    methods = list(args.methods)
    warm = np.random.default_rng(args.seed).uniform(size=(3, 3))
    for method in methods:  # imports and first-call set-up are not timed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solve_zero_sum(warm, method, tol=1e-3)
    if "nashpy-lp" in methods:  # the reference runs first at every size
        methods.remove("nashpy-lp")
        methods.insert(0, "nashpy-lp")
    for n in args.sizes:
        a = np.random.default_rng(args.seed).uniform(size=(n, n))
        reference: float | None = None
        for method in methods:
            limit, reason = LIMITS.get(method, (sys.maxsize, ""))
            label = f"{n} x {n}"
            if n > limit:
                print(f"| {label:>13} | {method:<19} | skipped ({reason}, n > {limit})")
                continue
            try:
                seconds, gap, status, iterations = run_one(a, method, args)
            except GTDError as exc:
                print(f"| {label:>13} | {method:<19} | failed: {exc}")
                continue
            if method == "nashpy-lp":
                reference = seconds
            speedup = f"{reference / seconds:.1f}x" if reference is not None else "-"
            print(
                f"| {label:>13} | {method:<19} | {seconds:>9.3f} | {gap:>14.2e} | {status:<14} | "
                f"{'-' if iterations is None else iterations:>10} | {speedup:>9} |",
                flush=True,
            )
        del a
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
