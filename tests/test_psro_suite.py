"""benchmarks/psro_suite.py: joining disjoint image chunks per example."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("psro_suite", ROOT / "benchmarks" / "psro_suite.py")
psro_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(psro_suite)


def _chunk(per_example, clean, attack):
    return {"n": len(per_example), "clean": clean, "attacks": {"pgd-ce": attack}, "per_example": per_example,
            "seconds": 1.0}


def test_merge_weights_rates_by_chunk_size_and_joins_examples():
    a = {"m": _chunk([1.0, 0.0, 0.0, 1.0], clean=1.0, attack=0.5)}
    b = {"m": _chunk([0.0], clean=0.0, attack=0.0)}
    out = psro_suite.merge([a, b])["m"]
    assert out["n"] == 5
    assert out["per_example"] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert out["worst_case_accuracy"] == pytest.approx(0.4)
    assert out["clean"] == pytest.approx(0.8)  # (4 x 1.0 + 1 x 0.0) / 5, not the mean of the two rates
    assert out["attacks"]["pgd-ce"] == pytest.approx(0.4)
    assert out["seconds"] == pytest.approx(2.0)
