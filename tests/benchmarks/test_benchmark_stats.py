"""benchmarks/run.py's exact-match difference: its across-seeds interval is Welch's, as scipy computes it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]


def _run_script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _library(em: list[float], n: int = 256) -> dict:
    return {"exact_match": sum(em) / len(em), "runs": [{"exact_match": e, "n_heldout": n} for e in em]}


def test_exact_match_difference_matches_welch_and_binomial():
    run = _run_script()
    reft, peer = [0.766, 0.703, 0.770, 0.734, 0.711, 0.656], [0.738, 0.727, 0.773, 0.820, 0.746, 0.734]
    out = run._em_difference(_library(reft), _library(peer))
    ci = stats.ttest_ind(reft, peer, equal_var=False).confidence_interval(0.95)
    assert out["exact_match_reft_minus_pyreft"] == pytest.approx((ci.low + ci.high) / 2)
    assert out["exact_match_difference_95_across_seeds"] == pytest.approx((ci.high - ci.low) / 2)
    p, q = sum(reft) / 6, sum(peer) / 6
    assert out["exact_match_difference_95"] == pytest.approx(1.96 * (p * (1 - p) / 1536 + q * (1 - q) / 1536) ** 0.5)


def test_one_seed_has_no_across_seeds_interval():
    out = _run_script()._em_difference(_library([0.8]), _library([0.7]))
    assert "exact_match_difference_95_across_seeds" not in out
    assert out["exact_match_reft_minus_pyreft"] == pytest.approx(0.1)
