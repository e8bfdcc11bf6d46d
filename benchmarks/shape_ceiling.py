"""The least work exact training must do per task shape and setting (a FLOP count), and how close reft comes to it.

    .venv/bin/python benchmarks/shape_ceiling.py [--limit-train 64] [--profiles benchmarks/results/profile]

For the benchmark's batches (256 training examples of each shape, task order, 8 per batch, SmolLM2-135M: 30 blocks of
P = 3.54 M weights, d = 576, tied head V·d = 28.3 M), matmul FLOPs per epoch (2 per multiply-add; attention scores
and values 4·ctx·d per token and block; backward = the forward's cost again for the activations, frozen weights get
no gradient; attention backward twice its forward):

* pyreft: every token of the right-padded batch through all blocks with autograd, backward from the head down to
  the lowest edited block L, vocabulary logits (and their backward) at every position;
* the exact floor (what any implementation must compute, reft's engine included): every real token forward once
  per epoch, a prefix shared by every row once per batch; backward only from the first edited position on (tokens
  before it do not depend on any edit), blocks above L; logits at label positions only; from epoch 2 on blocks ≤ L
  are the frozen model's (reused, :mod:`reft.fast.frozen_cache`).

pyreft's count is a lower bound of its work: its full-vocabulary logits also cost memory traffic (``[B·T, V]``
log-softmax and its gradient) that FLOPs do not show. So the bound used is empirical: the machine's matmul rate at
these shapes (``peak``, measured here: ``[tokens, 576] @ [576, 1536]``, the blocks' commonest product) and the epoch
times ``benchmarks/profile_step.py`` wrote (``--profiles``): reft's efficiency = floor FLOPs ÷ (time × peak), and
the best ratio any exact implementation could reach = pyreft's measured time ÷ (floor FLOPs ÷ peak).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import LAYERS  # noqa: E402

BLOCKS, P, D, HEAD = 30, 3.54e6, 576, 28.3e6
FIRST_EDIT = {"a": "last", "b": 0, "c": 0}  # l1 edits the last prompt token; f7+l7 the first


def batch_flops(rows: list[tuple[int, int]], shared: int, lowest: int, setting: str) -> dict:
    """FLOPs of one batch: ``rows`` = (prompt length, response length) per example."""
    width = max(n + m for n, m in rows)
    above = BLOCKS - 1 - lowest

    def attn(t: int) -> float:  # one token at position t, one block: scores + values against t+1 keys
        return 4 * (t + 1) * D

    def token(t: int, blocks: int) -> float:
        return blocks * (2 * P + attn(t))

    peer = sum(token(t, BLOCKS) + token(t, above) + attn(t) * above + 2 * 2 * HEAD for t in range(width)) * len(rows)
    floor1 = floor2 = 0.0
    for i, (n, m) in enumerate(rows):
        first = n - 1 if FIRST_EDIT[setting] == "last" else 0
        start = shared if i else 0  # the shared prefix: once per batch (row 0)
        for t in range(start, n + m):
            floor1 += token(t, BLOCKS)
            floor2 += token(t, above)  # blocks ≤ L: reused from epoch 1
            if t >= first:
                back = token(t, above) + attn(t) * above
                floor1, floor2 = floor1 + back, floor2 + back
        floor1 += m * 2 * 2 * HEAD
        floor2 += m * 2 * 2 * HEAD
    return {"pyreft": peer, "floor_epoch1": floor1, "floor_epoch2": floor2}


def matmul_rate(threads: int) -> float:
    """FLOP/s of ``[512, 576] @ [576, 1536]`` (fp32), best of 5 rounds of 50."""
    import time

    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(512, D), torch.randn(D, 1536)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 50 * 2 * 512 * D * 1536 / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit-train", type=int, default=64, help="the first N training examples (profile_step's)")
    ap.add_argument("--profiles", default=str(HERE / "results" / "profile"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "shape_ceiling.json"))
    args = ap.parse_args()
    import shapes
    from transformers import AutoTokenizer

    from reft.harness.models import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    peak = matmul_rate(args.threads)
    print(f"matmul rate, {args.threads} threads: {peak / 1e9:.0f} GFLOP/s")
    result = {"peak_flop_per_s": peak, "limit_train": args.limit_train, "shapes": {}}
    for shape in shapes.SHAPES:
        task = shapes.task(shape)
        train, _ = task.make_task()
        train = train[:args.limit_train]
        prompts = [tok(task.render(tok, e["prompt"]), add_special_tokens=False)["input_ids"] for e in train]
        responses = [len(tok(e["response"] + task.EOS, add_special_tokens=False)["input_ids"]) for e in train]
        for setting in "abc":
            total = {"pyreft": 0.0, "floor_epoch1": 0.0, "floor_epoch2": 0.0}
            for i in range(0, len(train), 8):
                ids = prompts[i:i + 8]
                shared = 0
                while all(len(p) > shared and p[shared] == ids[0][shared] for p in ids):
                    shared += 1
                flops = batch_flops([(len(p), r) for p, r in zip(ids, responses[i:i + 8])], shared,
                                    min(LAYERS[setting]), setting)
                for k in total:
                    total[k] += flops[k]
            key = f"{shape}/{setting}"
            r = result["shapes"][key] = {"pyreft_tflop_per_epoch": total["pyreft"] / 1e12,
                                         "floor_tflop_epochs": [total["floor_epoch1"] / 1e12,
                                                                total["floor_epoch2"] / 1e12]}
            floor_s = [total["floor_epoch1"] / peak, total["floor_epoch2"] / peak]
            line = f"{key:>16}: floor {floor_s[0]:5.1f} / {floor_s[1]:5.1f} s at peak"
            runs = {lib: Path(args.profiles) / f"{lib}_{shape}_{setting}.json" for lib in ("reft", "pyreft")}
            if all(p.exists() for p in runs.values()):
                epochs = {lib: json.loads(p.read_text())["epoch_s"][:2] for lib, p in runs.items()}
                # the benchmark's examples/s is the median (= mean) of the two epochs' rates
                speed = lambda ts: sum(1 / t for t in ts) / len(ts)  # noqa: E731
                r |= {"epoch_s": epochs, "floor_s_at_peak": floor_s,
                      "reft_over_pyreft": speed(epochs["reft"]) / speed(epochs["pyreft"]),
                      "reft_efficiency": [f / t for f, t in zip(floor_s, epochs["reft"])],
                      "best_exact_over_pyreft": speed(floor_s) / speed(epochs["pyreft"])}
                line += (f"; reft {epochs['reft'][0]:.1f} / {epochs['reft'][1]:.1f} s (efficiency "
                         f"{r['reft_efficiency'][0]:.0%} / {r['reft_efficiency'][1]:.0%}), pyreft "
                         f"{epochs['pyreft'][0]:.1f} / {epochs['pyreft'][1]:.1f} s: reft ÷ pyreft "
                         f"{r['reft_over_pyreft']:.2f}, best exact ÷ pyreft {r['best_exact_over_pyreft']:.2f}")
            print(line)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
