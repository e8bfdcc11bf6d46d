"""What both sides of the benchmark share: the settings, the epoch timer and the machine-load probe."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import distributions
from pathlib import Path

import torch
import transformers

LAYERS = {"a": [15], "b": [3, 9, 15, 21], "c": [3, 9, 15, 21]}
POSITIONS = {"a": "l1", "b": "f7+l7", "c": "f7+l7"}
RANK = 4
DESCRIPTION = {
    "a": "pyreft quickstart: 1 LoReFT, layer 15, last prompt position",
    "b": "f7+l7 on layers 3;9;15;21, tied (4 interventions)",
    "c": "f7+l7 on layers 3;9;15;21, untied (8 interventions)",
}


class Timer(transformers.TrainerCallback):
    """Wall time of each epoch, and this process's CPU time over it (cpu/wall near --threads means no contention)."""

    def __init__(self):
        self.epoch_s: list[float] = []
        self.epoch_cpu_s: list[float] = []
        self._t0 = self._c0 = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_s.append(time.perf_counter() - self._t0)
        self.epoch_cpu_s.append(time.process_time() - self._c0)

    def figures(self, args, n: int, n_tokens: int) -> dict:
        """The run's settings and training-speed figures (medians over epochs), as both sides report them."""
        return {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
            "seed": args.seed, "epoch_s": self.epoch_s,
            "epoch_cpu_util": [c / w for c, w in zip(self.epoch_cpu_s, self.epoch_s)],
            # examples per second of this process's CPU time (× threads = the ideal wall rate)
            "examples_per_cpu_s": statistics.median(n / c for c in self.epoch_cpu_s),
            "examples_per_s": statistics.median(n / s for s in self.epoch_s),
            "tokens_per_s": statistics.median(n_tokens / s for s in self.epoch_s),
            "examples_per_s_best_epoch": n / min(self.epoch_s),  # least disturbed by other load on the machine
        }


def add_run_args(ap) -> None:
    """The options both sides take, with the benchmark's defaults (the same for both)."""
    ap.add_argument("--setting", choices="abc", required=True)
    ap.add_argument("--shape", default="extraction", help="the task's shape (benchmarks/shapes.py)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-heldout", type=int, default=None)
    ap.add_argument("--heldout", type=int, default=256,
                    help="held-out examples drawn (unseen names, cities, sentences; 1,024 possible). At 64, one "
                         "library's exact match varied by up to 9 points between seeds")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)


def training_args(args, output_dir: str, **extra) -> transformers.TrainingArguments:
    """The Trainer settings both sides train with: no logging, no saving, CPU, the run's seed."""
    return transformers.TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        **extra,
    )


def emit(result: dict, out: str) -> dict:
    """Print the result JSON, with the versions and environment both sides share, and write it to ``out``."""
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__} | result.get("versions", {})
    result = result | {"versions": versions,
                       "environment": {"venv": sys.prefix, "distributions": len(list(distributions())),
                                       "modules_loaded": len(sys.modules),
                                       "cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    text = json.dumps(result, indent=2)
    print(text)
    Path(out).write_text(text + "\n")
    return result


def machine_load() -> dict:
    """Load average and CPU pressure: other processes on this small machine skew every timing."""
    out = {"loadavg_1m": os.getloadavg()[0]}
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n")[0].split()
        out["cpu_pressure_some_avg60"] = float(some[2].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def time_generation(generate, texts: list[str], batch: int, max_new_tokens: int, repeats: int = 5) -> dict:
    """Seconds for ``batch`` prompts × ``max_new_tokens`` batched and one at a time, ReFT vs the bare model.

    ``generate(texts, max_new_tokens, bare)`` returns seconds. ReFT and bare calls alternate, so a burst of load
    elsewhere on the machine hits both. The batched call runs ``repeats`` times per kind: ``batch16_ratio`` is
    best ÷ best (the least disturbed calls), ``batch16_ratio_median`` the median of the adjacent pairs' ratios.
    """
    texts = texts[:batch]
    for bare in (False, True):
        generate(texts[:2], 4, bare)  # warm-up
    b = f"batch{batch}"
    runs = {"reft": [], "bare": []}
    for _ in range(repeats):
        for bare, name in ((False, "reft"), (True, "bare")):
            runs[name].append(generate(texts, max_new_tokens, bare))
    out = {f"{b}_reft_runs_s": runs["reft"], f"{b}_bare_runs_s": runs["bare"],
           f"{b}_reft_s": min(runs["reft"]), f"{b}_bare_s": min(runs["bare"]), "batch1_reft_s": 0.0,
           "batch1_bare_s": 0.0}
    for t in texts:
        for bare, name in ((False, "reft"), (True, "bare")):
            out[f"batch1_{name}_s"] += generate([t], max_new_tokens, bare)
    out[f"{b}_ratio"] = out[f"{b}_reft_s"] / out[f"{b}_bare_s"]
    out[f"{b}_ratio_median"] = statistics.median(r / s for r, s in zip(runs["reft"], runs["bare"]))
    out["batch1_ratio"] = out["batch1_reft_s"] / out["batch1_bare_s"]
    return {"max_new_tokens": max_new_tokens, "prompts": len(texts), "repeats": repeats, **out}
