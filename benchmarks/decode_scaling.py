"""How batched generation scales with the batch on this machine: the ceiling of mixed ÷ grouped serving.

    .venv/bin/python benchmarks/decode_scaling.py [--threads 1] [--out benchmarks/results/decode_scaling.json]

SmolLM2-135M-Instruct fp32, the bare model's ``generate`` (greedy, exactly 32 new tokens) on B chat prompts of the
load test (~40 tokens) for B in 1 … 64, best of 3. With C clients spread over k models (8 adapters + the base in
``benchmarks/serve_load.py``), a mixed server runs one batch of C rows while a grouped one runs one model's ~C/k rows
at a time, so mixed ÷ grouped ≤ tokens/s(C) ÷ tokens/s(C/k) whatever the scheduler does: reported per C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the load test's servers use 1)")
    ap.add_argument("--batches", default="1,2,4,7,8,14,16,32,64")
    ap.add_argument("--models", type=int, default=9, help="models the clients spread over (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_scaling.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from serve_load import prompts

    from reft.generation import encode_prompts
    from reft.harness.models import load_model

    model, tok = load_model("smollm2")
    texts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
             for t in prompts(64)]
    speed = {}
    for b in map(int, args.batches.split(",")):
        enc = encode_prompts(tok, texts[:b])
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            with torch.inference_mode():
                model.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                               pad_token_id=tok.pad_token_id)
            best = min(best, time.perf_counter() - t)
        speed[b] = b * 32 / best
        print(f"batch {b:>3}: {speed[b]:6.1f} tok/s", flush=True)

    def at(rows: float) -> float:  # tokens/s at a (fractional) batch size, linear between measured ones
        sizes = sorted(speed)
        lo = max([s for s in sizes if s <= rows], default=sizes[0])
        hi = min([s for s in sizes if s >= rows], default=sizes[-1])
        return speed[lo] if hi == lo else speed[lo] + (speed[hi] - speed[lo]) * (rows - lo) / (hi - lo)

    ceiling = {c: at(c) / at(c / args.models) for c in (16, 32, 64) if c in speed}
    for c, r in ceiling.items():
        print(f"{c} clients over {args.models} models: mixed ÷ grouped ≤ {r:.2f}")
    result = {"model": "SmolLM2-135M-Instruct", "threads": args.threads, "new_tokens": 32, "tokens_per_s": speed,
              "models": args.models, "mixed_over_grouped_ceiling": ceiling}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
