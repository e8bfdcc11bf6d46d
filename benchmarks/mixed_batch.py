"""What a mixed-adapter batch costs: 16 prompts × 32 new tokens on SmolLM2-135M (fp32, CPU), 8 adapters + base rows.

Compared, on the same prompts and in the same process, interleaved round by round (so drift of the machine hits all
alike), medians over rounds:

* ``mixed``: one ``generate`` call, ``adapter_names`` = one entry per row (14 adapter rows over 8 adapters, 2 base);
* ``single``: the same batch, every row on one adapter (the cost a mixed batch must match: target ≤ 1.05);
* ``bare``: the same batch on the base model, no intervention;
* ``sub_batches``: peft-style: one ``generate`` per adapter over its rows (all adapters resident);
* ``swapping``: one adapter slot; for each adapter its weights are copied in, then its rows are generated.

    .venv/bin/python benchmarks/mixed_batch.py [--rounds 5] [--out benchmarks/results/mixed_batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reft import ReftConfig, get_reft_model  # noqa: E402
from reft.generation import encode_prompts, render_chat  # noqa: E402
from reft.harness.models import load_model  # noqa: E402

ADAPTERS = 8
CONFIG = dict(layers="3;9;15;21", positions="f7+l7", rank=4)  # the demo's adapter shape
ROW_ADAPTERS = [f"a{i % ADAPTERS}" for i in range(14)] + [None, None]
SUBJECTS = ["a lighthouse keeper", "the history of glass", "a robot learning to paint", "coffee in Ethiopia",
            "the moons of Jupiter", "a lost umbrella", "volcanoes in Iceland", "the first bicycle",
            "a quiet library", "how bees dance", "a storm at sea", "the Silk Road", "a chess prodigy",
            "bread baking at dawn", "an old clockmaker", "the northern lights"]


def prompts() -> list[str]:
    return [f"Write two sentences about {s}, in a calm and friendly tone, for a short children's book page."
            for s in SUBJECTS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "mixed_batch.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2")
    reft_model = get_reft_model(model, None)
    torch.manual_seed(0)
    for i in range(ADAPTERS):
        reft_model.add_adapter(f"a{i}", ReftConfig(**CONFIG))
        for p in reft_model.adapters[f"a{i}"].parameters():
            torch.nn.init.normal_(p, std=0.02)
    reft_model.add_adapter("slot", ReftConfig(**CONFIG))  # for swapping: one resident slot
    reft_model.eval()
    batch = encode_prompts(tok, [render_chat(tok, p) for p in prompts()])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
               pad_token_id=tok.pad_token_id)
    groups: dict[str | None, list[int]] = {}
    for row, name in enumerate(ROW_ADAPTERS):
        groups.setdefault(name, []).append(row)

    def mixed():
        return reft_model.generate(ids, attention_mask=mask, adapter_names=ROW_ADAPTERS, **gen)

    def single():
        return reft_model.generate(ids, attention_mask=mask, adapter_names=["a0"] * len(ROW_ADAPTERS), **gen)

    def bare():
        return reft_model.generate(ids, attention_mask=mask, adapter_names=[None] * len(ROW_ADAPTERS), **gen)

    def sub_batches():
        for name, rows in groups.items():
            sub_ids, sub_mask = _trim(ids[rows], mask[rows])
            reft_model.generate(sub_ids, attention_mask=sub_mask, adapter_names=[name] * len(rows), **gen)

    def swapping():
        for name, rows in groups.items():
            if name is not None:
                reft_model.adapters["slot"].load_state_dict(reft_model.adapters[name].state_dict())
            sub_ids, sub_mask = _trim(ids[rows], mask[rows])
            entry = "slot" if name is not None else None
            reft_model.generate(sub_ids, attention_mask=sub_mask, adapter_names=[entry] * len(rows), **gen)

    # the check that the mixed batch is right: each row equals its own adapter's batch (greedy, token for token)
    out = mixed()
    for name, rows in groups.items():
        alone = reft_model.generate(ids, attention_mask=mask, adapter_names=[name] * len(ROW_ADAPTERS), **gen)
        assert torch.equal(out[rows], alone[rows]), name
    ways = {"mixed": mixed, "single": single, "bare": bare, "sub_batches": sub_batches, "swapping": swapping}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for fn in ways.values():  # warm-up
        fn()
    for r in range(args.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            t0 = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in ways), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": "SmolLM2-135M-Instruct fp32 (CPU)", "threads": args.threads, "prompts": len(ROW_ADAPTERS),
        "prompt_tokens": int(mask.sum(1).float().mean()), "new_tokens": args.new_tokens, "adapters": ADAPTERS,
        "row_adapters": ROW_ADAPTERS, "adapter_config": CONFIG, "rounds": args.rounds, "seconds": times,
        "median_s": med,
        "ratios": {"mixed / single": med["mixed"] / med["single"], "mixed / bare": med["mixed"] / med["bare"],
                   "sub_batches / mixed": med["sub_batches"] / med["mixed"],
                   "swapping / mixed": med["swapping"] / med["mixed"]},
        "tokens_per_s": {k: len(ROW_ADAPTERS) * args.new_tokens / v for k, v in med.items()},
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {args.out}")


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns that are padding in every row of a sub-batch (left padding)."""
    start = int((mask.sum(0) == 0).long().cumprod(0).sum())
    return ids[:, start:], mask[:, start:]


if __name__ == "__main__":
    main()
