"""GLUE on the embedded MiniLM-L6 encoder: LoReFT vs DiReFT vs LoRA, 3 seeds, small training subsets.

    nice -n 10 python experiments/glue_minilm.py            # tune (SST-2 dev half) if needed, then the sweep
    nice -n 10 python experiments/glue_minilm.py --tune-only

Protocol (the ReFT paper's GLUE protocol, scaled down for a 2-core CPU): train on a fixed random subset of the
train split (the same subset for every method and seed), pick the epoch on the in-training dev half (first
``DEV_CAP`` examples), report the task metric on the whole held-out test half; the dev/test division uses the
run's seed. The learning rate of each method was chosen on the SST-2 dev half (seed 0) only, never on test, in
runs with 600 training examples and batch 16 (an earlier, larger plan that did not fit the CPU budget); the
sweep uses the chosen rates with the smaller subsets and batch 8 below.
Every run writes results/glue_minilm/<task>-<method>-s<seed>.json; finished runs are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json

from _common import RESULTS, RUNS, run_once, setup

setup()

from reft import ReftConfig  # noqa: E402
from reft.harness.baselines import LoraSettings  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.harness.recipe import TrainSettings  # noqa: E402
from reft.harness.suite import run_task  # noqa: E402

TASKS = ("sst2", "cola", "stsb", "mrpc", "rte")
TRAIN_SIZES = {"sst2": 300, "cola": 300, "stsb": 200, "mrpc": 150, "rte": 150}
TUNE_SIZE = 600  # SST-2 training subset of the learning-rate selection runs
SEEDS = (0, 1, 2)
EPOCHS = 2
BATCH = 8
TUNE_BATCH = 16
MAX_LENGTH = 128
DEV_CAP = 200
METHODS = ("loreft", "direft", "lora")
REFT = ReftConfig(layers="all", positions="f1", rank=1)  # f1 = the [CLS] token, every layer
LORA = LoraSettings(rank=8, alpha=16, dropout=0.05)  # query and value of every layer
LR_GRID = {"loreft": (2e-3, 6e-3, 2e-2), "direft": (2e-3, 6e-3, 2e-2), "lora": (5e-4, 2e-3, 6e-3)}
OUT = RESULTS / "glue_minilm"


def one_run(task: str, method: str, seed: int, lr: float, *, dev_only: bool = False) -> dict:
    model, tokenizer = load_model("minilm")
    settings = TrainSettings(epochs=EPOCHS, lr=lr, batch_size=TUNE_BATCH if dev_only else BATCH,
                             max_length=MAX_LENGTH, seed=seed, logging_steps=5, group_by_length=True)
    # one folder per run (reft refuses a run folder of another run): tuning runs apart, by learning rate
    name = f"tune/{task}-{method}-s{seed}-lr{lr:g}" if dev_only else f"{task}-{method}-s{seed}"
    run_dir = RUNS / "glue_minilm" / name
    return run_task(model, tokenizer, task, method, run_dir, settings=settings, reft_config=REFT, lora=LORA,
                    train_limit=TUNE_SIZE if dev_only else TRAIN_SIZES[task], subset_seed=0, dev_limit=DEV_CAP,
                    evaluate=not dev_only, progress=False, model_name="minilm")


def tune() -> dict[str, float]:
    """Pick each method's learning rate by the SST-2 dev-half score (seed 0)."""
    chosen = {}
    for method in METHODS:
        scores = {}
        for lr in LR_GRID[method]:
            r = run_once(OUT / "tune" / f"sst2-{method}-lr{lr:g}.json", one_run, "sst2", method, 0, lr, dev_only=True)
            scores[lr] = r["train"]["best_dev"]
            print(f"tune {method} lr={lr:g}: dev {scores[lr]:.4f}", flush=True)
        chosen[method] = max(scores, key=lambda k: (scores[k], -k))
    (OUT / "tune" / "chosen.json").write_text(json.dumps(chosen, indent=1) + "\n")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tune-only", action="store_true")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    args = parser.parse_args()
    lrs = tune()
    print("learning rates:", lrs, flush=True)
    if args.tune_only:
        return
    for seed in map(int, args.seeds.split(",")):
        for task in args.tasks.split(","):
            for method in METHODS:
                r = run_once(OUT / f"{task}-{method}-s{seed}.json", one_run, task, method, seed, lrs[method])
                print(f"{task} {method} seed {seed}: {r['eval']['main_metric']} {r['eval']['score']:.4f} "
                      f"({r['parameters']['adapter']} params, {r['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
