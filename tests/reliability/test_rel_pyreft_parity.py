"""Parity with the real pyreft 0.1.0: a model built and saved by pyreft, converted by reft, gives pyreft's logits.

pyreft runs in its own venv (it pins old dependencies) through a subprocess: REFT_PYREFT_PYTHON, else
benchmarks/.peer-venv (benchmarks/peer_env.sh) or /tmp/pyreft-venv. Without one the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_batch, tiny_llama
from safetensors.torch import load_file

from reft import ReftModel, import_pyreft

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CANDIDATES = [os.environ.get("REFT_PYREFT_PYTHON"), ROOT / "benchmarks/.peer-venv/bin/python",
              "/tmp/pyreft-venv/bin/python"]

# name, pyreft class, untied, act, extra kwargs, f/l positions, reft type
CASES = [
    ("loreft_tied", "LoreftIntervention", False, None, {}, (2, 2), "loreft"),
    ("loreft_untied_gelu", "LoreftIntervention", True, "gelu", {}, (2, 3), "loreft"),
    ("noreft_bias", "NoreftIntervention", False, None, {"add_bias": True}, (0, 1), "noreft"),
    ("consreft", "ConsreftIntervention", False, None, {}, (1, 1), "consreft"),
    ("lobireft_untied", "LobireftIntervention", True, None, {}, (1, 2), "lobireft"),
    ("direft", "DireftIntervention", False, "relu", {}, (2, 2), "orthodireft"),
    ("nodireft", "NodireftIntervention", False, None, {"add_bias": True}, (3, 0), "direft"),
]


def _peer_python() -> str | None:
    for candidate in CANDIDATES:
        if candidate and Path(candidate).is_file():
            probe = subprocess.run([str(candidate), "-c", "import pyreft"], capture_output=True, text=True)
            if probe.returncode == 0:
                return str(candidate)
    return None


def test_converted_pyreft_models_match_pyreft_logits(tmp_path):
    python = _peer_python()
    if python is None:
        pytest.skip("no python with pyreft 0.1.0 found (set REFT_PYREFT_PYTHON or run benchmarks/peer_env.sh); "
                    f"looked at {[str(c) for c in CANDIDATES if c]}")
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    ids, _ = random_batch([10, 10], seed=4)
    cases = [{"name": name, "pyreft_class": cls, "untied": untied, "act": act, "positions": pos, "seed": i,
              "rank": 4, "layers": [1, 3], "input_ids": ids.tolist()} | extra
             for i, (name, cls, untied, act, extra, pos, _) in enumerate(CASES)]
    run = subprocess.run([python, str(HERE / "_pyreft_peer.py"), str(tmp_path / "base"), str(tmp_path / "out"),
                          json.dumps(cases)], capture_output=True, text=True, timeout=300,
                         env=os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    print("peer:", run.stdout.strip().splitlines()[-1], file=sys.stderr)
    for name, _, untied, act, _, (first, last), kind in CASES:
        spec = "+".join(p for p in (first and f"f{first}", last and f"l{last}") if p)
        config = import_pyreft(tmp_path / "out" / name / "pyreft", tmp_path / "conv" / name, base,
                               positions=spec, act=act)
        assert config.intervention == kind and config.tied == (not untied) and config.layers == [1, 3]
        reft_model = ReftModel.from_pretrained(tiny_llama(), tmp_path / "conv" / name)
        ours = reft_model(ids).logits
        theirs = load_file(tmp_path / "out" / name / "logits.safetensors")["logits"]
        with reft_model.disable_interventions():
            plain = reft_model(ids).logits
        assert (theirs - plain).abs().max() > 1e-3, f"{name}: pyreft's interventions changed nothing"
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=f"{name}: logits differ from pyreft")
