"""benchmarks/gpu.py runs only where a GPU is lent: its reft side runs here on a tiny model of the same shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("setting,interventions", [("a", 1), ("c", 8)])
def test_gpu_script_reft_run_on_cpu(tmp_path, setting, interventions):
    gpu = _gpu_script()
    out = tmp_path / "r.json"
    gpu.main(["--library", "reft", "--setting", setting, "--device", "cpu", "--tiny", "--batch", "1", "--steps", "2",
              "--warmup", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    d, r = 64, gpu.RANK
    assert result["trainable_params"] == interventions * (2 * d * r + r)  # LoReFT: 2·d·r + r each
    assert result["seq"] == gpu.PROMPT + gpu.RESPONSE and len(result["step_s"]) == 2
    assert result["tokens_per_s"] > 0 and all(loss > 0 for loss in result["losses"])
