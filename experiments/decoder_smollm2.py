"""Generation tasks on the embedded SmolLM2-135M-Instruct: LoReFT vs DiReFT vs LoRA, one seed, small subsets.

    nice -n 10 python experiments/decoder_smollm2.py

Tasks (train split → test split): BoolQ → BoolQ, ARC-Easy → ARC-Easy, math_data_3k (rationales) → SVAMP. Each run
trains on a fixed random subset of the training split (the same for every method), evaluates greedy generations
on the first examples of the test file with the task's scorer, and writes
results/decoder_smollm2/<task>-<method>.json (with every prediction); finished runs are skipped on a rerun.
Prompts are the paper's Alpaca template without the chat template. No hyper-parameter was tuned (no dev split
was run for these tasks): learning rates are fixed a priori (ReFT 4e-3 as in reft's defaults, LoRA 2e-3).
"""

from __future__ import annotations

import argparse

from _common import RESULTS, RUNS, run_once, setup

setup()

from reft import ReftConfig  # noqa: E402
from reft.harness.baselines import LoraSettings  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.harness.recipe import TrainSettings  # noqa: E402
from reft.harness.suite import run_task  # noqa: E402

#: task evaluated -> (training task, training subset size, test examples, max_new_tokens)
TASKS = {
    "boolq": ("boolq", 200, 200, 12),
    "arc_e": ("arc_e", 100, 100, 12),
    "svamp": ("math_data_3k", 80, 40, 128),
}
METHODS = ("loreft", "lora", "direft")  # DiReFT last: the first to drop if the CPU budget runs out
SEED = 0
EPOCHS = 1
BATCH = 8
MAX_LENGTH = 384
LR = {"loreft": 4e-3, "direft": 4e-3, "lora": 2e-3}
# 6 of the 30 layers, rank 4, first and last 7 prompt tokens: 6 · (2·576·4 + 4) = 27,672 parameters,
# 16.7× fewer than LoRA r = 8 on q_proj/v_proj of all 30 layers (460,800)
REFT = ReftConfig(layers="3;8;13;18;23;28", positions="f7+l7", rank=4)
LORA = LoraSettings(rank=8, alpha=16, dropout=0.05)
OUT = RESULTS / "decoder_smollm2"


def one_run(task: str, method: str) -> dict:
    train_task, n_train, n_test, max_new = TASKS[task]
    model, tokenizer = load_model("smollm2")
    settings = TrainSettings(epochs=EPOCHS, lr=LR[method], batch_size=BATCH, max_length=MAX_LENGTH, seed=SEED,
                             logging_steps=5, group_by_length=True)
    return run_task(model, tokenizer, task, method, RUNS / "decoder_smollm2" / f"{task}-{method}", settings=settings,
                    reft_config=REFT, lora=LORA, train_task=train_task, train_limit=n_train, subset_seed=0,
                    eval_limit=n_test, max_new_tokens=max_new, eval_batch_size=16, chat_template=False,
                    progress=False, model_name="smollm2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    for task in args.tasks.split(","):
        for method in args.methods.split(","):
            r = run_once(OUT / f"{task}-{method}.json", one_run, task, method, keep_predictions=True)
            print(f"{task} {method}: accuracy {r['eval']['accuracy']:.4f} ({r['parameters']['adapter']} params, "
                  f"train {r['train']['train_runtime_s']:.0f} s, eval {r['eval']['generation_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
