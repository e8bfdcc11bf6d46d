"""A decoder task SmolLM2-135M-Instruct can learn (issue 16 §3): SST-2 as generation, LoReFT vs DiReFT vs LoRA.

    nice -n 10 python experiments/decoder_sst2.py                  # base model + 3 methods × 3 seeds (resumes)
    python experiments/decoder_sst2.py --smoke                     # every code path on tiny subsets

Task ``sst2_gen`` (:mod:`reft.harness.tasks.glue_generation`): the sentence in the Alpaca template with
``Answer format: negative/positive``; target the label word; a generation scores 1 when the first label word in
it is the gold one. Training: a seeded subset of the SST-2 train split (subset seed 0, the same for every method);
each seed (42, 43, 44) sets the adapter's initialisation and batch order and is reported on its held-out test half
of the GLUE dev file (the rows of the encoder table's test half of that seed); its dev half is scored too
(reported; it chose nothing: the rates are fixed a priori).

* LoReFT / DiReFT: the paper's commonsense recipe scaled to this model: rank 4 on 6 of the 30 layers, ``f7+l7``,
  tied, warm-up ratio 0.1, linear decay; 27,672 parameters;
* LoRA: rank 8, α 16, dropout 0.05 on ``q_proj`` / ``v_proj`` of all 30 layers (460,800 parameters, 16.7×);
* the base model's answer with the same prompt and no training, and the majority answer, as baselines.

Writes ``results/decoder_sst2/<method>-s<seed>.json`` (every prediction kept); finished runs are skipped.
"""

from __future__ import annotations

import argparse

from _common import RESULTS, RUNS, environment, run_once, setup

setup()

from reft import ReftConfig  # noqa: E402
from reft.harness.baselines import LoraSettings  # noqa: E402
from reft.harness.evaluate import evaluate_generation, summary  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.harness.recipe import TrainSettings  # noqa: E402
from reft.harness.suite import run_task  # noqa: E402

TASK = "sst2_gen"
METHODS = ("loreft", "lora", "direft")
SEEDS = (42, 43, 44)
TRAIN = 2000
EPOCHS = 1
BATCH = 8
MAX_NEW_TOKENS = 4
BASE_NEW_TOKENS = 16  # the untrained model answers in a sentence ("The sentiment of this sentence is ...")
LR = {"loreft": 4e-3, "direft": 4e-3, "lora": 2e-3}
REFT = ReftConfig(layers="3;8;13;18;23;28", positions="f7+l7", rank=4)
LORA = LoraSettings(rank=8, alpha=16, dropout=0.05)
SMOKE = {"train": 16, "eval": 8}
OUT = RESULTS / "decoder_sst2"


def run_dir(method: str, seed: int, smoke: bool):
    return (RUNS / "decoder_sst2_smoke" if smoke else RUNS / "decoder_sst2") / f"{method}-s{seed}"


def one_run(method: str, seed: int, smoke: bool) -> dict:
    model, tokenizer = load_model("smollm2")
    settings = TrainSettings(epochs=EPOCHS, lr=LR[method], batch_size=BATCH, warmup=0.1, max_length=256, seed=seed,
                             logging_steps=10, group_by_length=True)
    return run_task(model, tokenizer, TASK, method, run_dir(method, seed, smoke), settings=settings, reft_config=REFT,
                    lora=LORA, train_limit=SMOKE["train"] if smoke else TRAIN, subset_seed=0,
                    eval_limit=SMOKE["eval"] if smoke else None, max_new_tokens=MAX_NEW_TOKENS,
                    eval_batch_size=32, progress=False, model_name="smollm2")


def dev_score(method: str, seed: int, smoke: bool) -> dict:
    """The trained adapter reloaded and scored on the dev half (reported only)."""
    from reft import ReftModel
    from reft.harness.baselines import load_lora

    model, tokenizer = load_model("smollm2")
    folder = run_dir(method, seed, smoke) / "adapter"
    trained = load_lora(model, folder) if method == "lora" else ReftModel.from_pretrained(model, folder)
    ev = evaluate_generation(trained, tokenizer, TASK, "dev", seed=seed, limit=SMOKE["eval"] if smoke else None,
                             batch_size=32, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    return summary(ev)


def base_run(seed: int, smoke: bool) -> dict:
    model, tokenizer = load_model("smollm2")
    ev = evaluate_generation(model, tokenizer, TASK, "test", seed=seed, limit=SMOKE["eval"] if smoke else None,
                             batch_size=32, max_new_tokens=BASE_NEW_TOKENS, chat_template=False, progress=False)
    return {"task": TASK, "method": "base", "model": "smollm2", "eval": ev, "parameters": {"adapter": 0},
            "settings": {"seed": seed}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    out = RESULTS / "decoder_sst2_smoke" if args.smoke else OUT
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run_once(out / f"base-s{seed}.json", base_run, seed, args.smoke, keep_predictions=True)
        print(f"base seed {seed}: test accuracy {r['eval']['accuracy']:.4f}", flush=True)
        for method in args.methods.split(","):
            path = out / f"{method}-s{seed}.json"
            r = run_once(path, one_run, method, seed, args.smoke, keep_predictions=True)
            if "dev" not in r:
                import json

                from reft.save_load import atomic_write_text

                r["dev"] = dev_score(method, seed, args.smoke)
                r["environment"] = environment()
                atomic_write_text(path, json.dumps(r, indent=1) + "\n")
            print(f"{method} seed {seed}: test {r['eval']['accuracy']:.4f}, dev {r['dev']['accuracy']:.4f} "
                  f"({r['parameters']['adapter']} params, train {r['train']['train_runtime_s']:.0f} s, "
                  f"eval {r['eval']['generation_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
