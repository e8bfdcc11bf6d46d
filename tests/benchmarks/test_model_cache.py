"""benchmarks/model_cache.py finds the library's loader (both benchmark sides load SmolLM2 through it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_model_cache_imports_the_loader():
    spec = importlib.util.spec_from_file_location("_model_cache", ROOT / "benchmarks" / "model_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.load) and callable(module.models.smollm2_path)
