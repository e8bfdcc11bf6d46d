"""LoReFT on a 4-bit SmolLM2-135M-Instruct (bitsandbytes NF4, interventions fp32), then the same adapter on the
full fp32 base.

    .venv/bin/python examples/quantized_base.py [--bits 4bit] [--backend bitsandbytes] [--out runs/quantized]

The task is demo.py's (one-line JSON with the person and the city). Prints the base's weight bytes in each form,
held-out exact match of the bare and the adapted 4-bit base, and of the adapter moved to the fp32 base unchanged.
Side-by-side figures for every backend: benchmarks/quantized_base.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction_task import exact_match, make_task  # noqa: E402

from reft import ReftConfig, ReftModel  # noqa: E402
from reft.generation import generate_texts, prompt_format, render_chat  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.harness.recipe import TrainSettings, train_reft  # noqa: E402
from reft.quantization import quantization_of, stored_bytes  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", default="4bit", choices=["8bit", "4bit"])
    ap.add_argument("--backend", default="bitsandbytes", choices=["bitsandbytes", "torchao", "quanto"])
    ap.add_argument("--out", default="runs/quantized")
    ap.add_argument("--epochs", type=float, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)

    model, tokenizer = load_model("smollm2", quantize=args.bits, quantize_backend=args.backend)
    q = quantization_of(model)
    print(f"base: {q['backend']} {q['bits']}, {stored_bytes(model) / 2**20:.0f} MiB of weights")
    train, heldout = make_task(seed=0, n_train=96, n_heldout=32)
    prompts = [render_chat(tokenizer, ex["prompt"]) for ex in heldout]
    gen = {"batch_size": 16, "max_new_tokens": 24, "progress": False}

    def score(m) -> float:
        answers = generate_texts(m, tokenizer, prompts, **gen)
        return sum(exact_match(a, ex["response"]) for a, ex in zip(answers, heldout)) / len(heldout)

    print(f"bare {args.bits} base, held-out exact match: {score(model):.2f}")
    config = ReftConfig(layers="3;9;15;21", positions="f7+l7", tied=True, rank=4, intervention="loreft")
    t0 = time.time()
    reft_model, metrics = train_reft(
        model, tokenizer, config, [render_chat(tokenizer, ex["prompt"]) for ex in train],
        [ex["response"] for ex in train], args.out, TrainSettings(epochs=args.epochs, lr=4e-3, batch_size=8),
        progress=False, prompt_format=prompt_format(tokenizer, chat_template=True))
    curve = metrics["loss_curve"]
    print(f"trained on the {args.bits} base in {time.time() - t0:.0f} s: loss {curve[0][1]:.3f} → {curve[-1][1]:.3f}")
    print(f"LoReFT on the {args.bits} base, held-out exact match: {score(reft_model.eval()):.2f}")
    del reft_model, model

    full, _ = load_model("smollm2")
    print(f"fp32 base: {stored_bytes(full) / 2**20:.0f} MiB of weights")
    moved = ReftModel.from_pretrained(full, Path(args.out) / "adapter").eval()
    print(f"the same adapter on the fp32 base, held-out exact match: {score(moved):.2f}")
    print(f"adapter and its model card: {args.out}/adapter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
