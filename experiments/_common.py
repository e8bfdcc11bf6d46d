"""Shared helpers of the experiment scripts: one process thread, resumable runs, compact result files."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RUNS = ROOT / "runs"


def setup(threads: int = 1) -> None:
    """Use ``threads`` CPU threads (env ``REFT_THREADS`` overrides; the machine is shared) and make the package
    importable from a checkout."""
    torch.set_num_threads(int(os.environ.get("REFT_THREADS", threads)))
    sys.path.insert(0, str(ROOT / "src"))


def environment() -> dict:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": torch.cuda.is_available()}


def _cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``): wall times of runs
    made on different machines are not comparable."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def compact(result: dict, keep_predictions: bool) -> dict:
    """A run's result without loss curves and prompts; generation predictions kept (answer, prediction, correct)."""
    out = {k: v for k, v in result.items() if k not in ("train", "eval")}
    train = dict(result.get("train", {}))
    curve = train.pop("loss_curve", [])
    train["first_loss"], train["final_loss"] = (curve[0][1], curve[-1][1]) if curve else (None, None)
    out["train"] = train
    ev = {k: v for k, v in result.get("eval", {}).items() if k != "records"}
    if keep_predictions and "records" in result.get("eval", {}):
        ev["predictions"] = [{"answer": r.get("answer"), "prediction": r["prediction"], "correct": r.get("correct")}
                             for r in result["eval"]["records"]]
    out["eval"] = ev
    return out


def run_once(path: Path, fn, *args, keep_predictions: bool = False, **kwargs) -> dict:
    """``fn(*args, **kwargs)`` unless ``path`` holds its result already (an interrupted sweep resumes).

    The result is saved compactly (:func:`compact`) with the wall time and the environment."""
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    result = compact(result, keep_predictions) | {"wall_s": round(time.perf_counter() - start, 1),
                                                  "environment": environment()}
    path.parent.mkdir(parents=True, exist_ok=True)
    from reft.save_load import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    return result
