"""The encoder classification path against a plain length-grouped training loop, on MiniLM-L6 and SST-2.

    .venv/bin/python benchmarks/encoder_path.py [--examples 1024] [--rounds 3] [--out …/encoder_path.json]

Each variant trains one epoch over the same seeded SST-2 subset (../shared/data/glue/sst2/train.jsonl), batch 32,
fp32, 2 threads, in its own process, rounds alternating the order; reported: the median step time of each and the
ratios to the plain LoRA loop (the issue's target: the reft path ≤ 1.2× it).

* ``cli``: ``reft train --task sst2 --model minilm --no-eval`` (LoReFT rank 4, every layer, the CLI's defaults for
  GLUE: length-grouped batches, base dropout on): the Trainer's ``train_runtime`` less the model selection on the
  dev split at the epoch's end (reported apart: a per-epoch cost, ~0.6% of an epoch on the full SST-2 train split);
* ``reft_loop``: the same ReFT classifier (``get_reft_model(..., num_labels=2)``) in the plain loop below;
* ``lora_loop``: peft LoRA (r 8 on query/value) + a linear head on [CLS], the plain loop: batches of similar length
  (sorted within shuffled chunks of 50 batches, transformers' rule), AdamW, nothing else.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "glue" / "sst2" / "train.jsonl"
VARIANTS = ("cli", "reft_loop", "lora_loop")


def examples(n: int, seed: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return random.Random(seed).sample(rows, n)


def grouped_batches(lengths: list[int], size: int, seed: int) -> list[list[int]]:
    """Length-grouped batches: shuffle, then sort by length within mega-batches of 50 batches."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = 50 * size
    out = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i:i + mega], key=lambda j: -lengths[j])
        out += [chunk[k:k + size] for k in range(0, len(chunk), size)]
    return out


def loop(variant: str, n: int, batch: int) -> dict:
    import torch
    from torch import nn

    from reft.harness.models import load_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, tok = load_model("minilm")
    rows = examples(n)
    enc = [tok(r["sentence"], truncation=True, max_length=512)["input_ids"] for r in rows]
    labels = torch.tensor([r["label"] for r in rows])
    if variant == "lora_loop":
        from peft import LoraConfig, get_peft_model

        body = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
        head = nn.Linear(model.config.hidden_size, 2)

        def logits(ids, mask):
            return head(body(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])

        params = [p for p in body.parameters() if p.requires_grad] + list(head.parameters())
        body.train()
    else:
        from reft import ReftConfig, get_reft_model

        reft_model = get_reft_model(model, ReftConfig(layers="all", positions="f1+l1", rank=4), num_labels=2)
        reft_model.train()

        def logits(ids, mask):
            return reft_model(input_ids=ids, attention_mask=mask).logits

        params = [p for p in reft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=4e-3 if variant == "reft_loop" else 5e-4)
    steps = []
    for b in grouped_batches([len(e) for e in enc], batch, seed=0):
        t = time.perf_counter()
        width = max(len(enc[j]) for j in b)
        ids = torch.zeros(len(b), width, dtype=torch.long)
        mask = torch.zeros(len(b), width, dtype=torch.long)
        for i, j in enumerate(b):
            ids[i, :len(enc[j])], mask[i, :len(enc[j])] = torch.tensor(enc[j]), 1
        loss = nn.functional.cross_entropy(logits(ids, mask), labels[b])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append(time.perf_counter() - t)
    return {"steps": len(steps), "train_s": sum(steps), "step_s": sum(steps) / len(steps)}


def cli(n: int, batch: int) -> dict:
    """``reft train`` in this process; the model selection on the dev set at each epoch's end is timed apart."""
    import torch

    from reft.cli.main import main as reft_main
    from reft.harness import classification

    torch.set_num_threads(2)
    selection = []
    original = classification.SelectOnDev.on_epoch_end

    def on_epoch_end(self, *a, **k):
        t = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            selection.append(time.perf_counter() - t)

    classification.SelectOnDev.on_epoch_end = on_epoch_end
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        code = reft_main(["train", "--task", "sst2", "--model", "minilm", "--limit", str(n), "--epochs", "1",
                          "--batch-size", str(batch), "--no-eval", "--out", out])
        if code:
            raise SystemExit(f"reft train exited {code}")
        train = json.loads((Path(out) / "results.json").read_text())["train"]
    steps = train["steps"]
    training = train["train_runtime_s"] - sum(selection)
    return {"steps": steps, "train_s": training, "step_s": training / steps, "dev_selection_s": selection}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encoder_path.json"))
    args = ap.parse_args()
    if args.variant:  # one run, in this process
        result = cli(args.examples, args.batch_size) if args.variant == "cli" else \
            loop(args.variant, args.examples, args.batch_size)
        print(json.dumps(result))
        return 0
    runs = {v: [] for v in VARIANTS}
    for k in range(args.rounds):
        for v in VARIANTS[k % 3:] + VARIANTS[:k % 3]:
            proc = subprocess.run([sys.executable, __file__, "--variant", v, "--examples", str(args.examples),
                                   "--batch-size", str(args.batch_size)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{v}: {proc.stderr[-2000:]}")
            runs[v].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {k} {v:<10} {runs[v][-1]['step_s'] * 1000:7.1f} ms/step", flush=True)
    step = {v: statistics.median(r["step_s"] for r in rs) for v, rs in runs.items()}
    result = {"model": "all-MiniLM-L6-v2", "task": "sst2", "examples": args.examples, "batch_size": args.batch_size,
              "threads": 2, "median_step_s": step,
              "cli_over_lora_loop": step["cli"] / step["lora_loop"],
              "reft_loop_over_lora_loop": step["reft_loop"] / step["lora_loop"], "runs": runs}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_step_s", "cli_over_lora_loop", "reft_loop_over_lora_loop")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
