"""TRL on the embedded SmolLM2-135M-Instruct: SFT a LoReFT adapter with ReftSFTTrainer, then DPO it with
ReftDPOTrainer against the bare base as reference (no second model copy).

    .venv/bin/python examples/trl_dpo.py [--out runs/trl] [--train 64] [--steps 32]

Task: the extraction task of demo.py (one-line JSON with the person and the city). SFT learns the format; DPO is
then shown pairs where the chosen answer is right and the rejected one swaps in a wrong city. The script prints the
held-out DPO reward margin (TRL's ``eval_rewards/margins``) and accuracy before and after DPO.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction_task import make_task  # noqa: E402

from reft import ReftConfig, get_reft_model  # noqa: E402
from reft.harness.models import load_model  # noqa: E402

ARGS = dict(use_cpu=True, bf16=False, activation_checkpointing=False, report_to=[], save_strategy="no",
            logging_steps=8, per_device_train_batch_size=8, disable_tqdm=True)


def conversational(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def wrong_city(response: str, cities: list[str]) -> str:
    item = json.loads(response)
    item["city"] = next(c for c in cities if c != item["city"])
    return json.dumps(item)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/trl")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32, help="steps of each of SFT and DPO (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from trl import DPOConfig, SFTConfig

    from reft.integrations.trl import ReftDPOTrainer, ReftSFTTrainer

    model, tokenizer = load_model("smollm2")
    reft_model = get_reft_model(model, ReftConfig(layers="8;16", positions="f3+l3", rank=4))
    train, heldout = make_task(0, args.train, args.heldout)
    cities = sorted({json.loads(e["response"])["city"] for e in train + heldout})

    sft_data = Dataset.from_list([{"prompt": conversational(e["prompt"]),
                                   "completion": [{"role": "assistant", "content": e["response"]}]} for e in train])
    ReftSFTTrainer(model=reft_model, train_dataset=sft_data, processing_class=tokenizer,
                   args=SFTConfig(output_dir=f"{args.out}/sft", max_steps=args.steps, learning_rate=4e-3,
                                  **ARGS)).train()

    def pairs(examples):
        return Dataset.from_list([{"prompt": conversational(e["prompt"]),
                                   "chosen": [{"role": "assistant", "content": e["response"]}],
                                   "rejected": [{"role": "assistant", "content": wrong_city(e["response"], cities)}]}
                                  for e in examples])

    dpo = ReftDPOTrainer(model=reft_model, train_dataset=pairs(train), eval_dataset=pairs(heldout),
                         processing_class=tokenizer,
                         args=DPOConfig(output_dir=f"{args.out}/dpo", max_steps=args.steps, learning_rate=2e-3,
                                        beta=0.1, **ARGS))
    before = dpo.evaluate()
    dpo.train()
    after = dpo.evaluate()
    report = {k: {"before": before[f"eval_rewards/{k}"], "after": after[f"eval_rewards/{k}"]}
              for k in ("margins", "accuracies")}
    print(json.dumps(report, indent=2))
    reft_model.save_pretrained(f"{args.out}/adapter", overwrite=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "dpo_heldout.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
