"""What mixing ReFT adapters costs inside vLLM (reft.integrations.vllm), on SmolLM2-135M-Instruct (fp32, CPU).

Run with the plugin's venv (``make venv-vllm``):

    .venv-vllm/bin/python benchmarks/vllm_mixed.py [--rounds 3] [--out benchmarks/results/vllm_mixed.json]

One vLLM engine in this process (eager, prefix caching off so every round computes the same), 8 random LoReFT
adapters of the demo's shape (layers 3;9;15;21, f7+l7, rank 4). Per round, interleaved so drift hits all alike:

* ``bare``: 32 prompts (~50 tokens) × 32 new tokens (``ignore_eos``), no adapter;
* ``mixed``: the same, 28 rows spread over the 8 adapters and 4 bare rows, in one ``generate`` call;
* ``single``: the same, every row on one adapter.

Reported: medians of generated tokens/s, ``mixed ÷ bare`` and ``mixed ÷ single`` (same run, same machine).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ADAPTERS = 8
CONFIG = dict(layers="3;9;15;21", positions="f7+l7", rank=4)


def make_adapters(model_dir: Path, work: Path) -> dict[str, str]:
    from transformers import AutoModelForCausalLM

    from reft import ReftConfig, get_reft_model

    dirs = {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for i in range(ADAPTERS):
        reft_model = get_reft_model(model, ReftConfig(**CONFIG))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in reft_model.interventions.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / p.shape[-1] ** 0.5)
        dirs[f"a{i}"] = str(work / f"a{i}")
        reft_model.save_pretrained(dirs[f"a{i}"], overwrite=True)
        model = reft_model.unload()
    return dirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="runs/vllm_mixed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/vllm_mixed.json"))
    args = ap.parse_args()
    from reft.harness.models import smollm2_path

    model_dir = smollm2_path()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dirs = make_adapters(model_dir, work)
    os.environ["REFT_VLLM_ADAPTERS"] = ",".join(f"{k}={v}" for k, v in dirs.items())
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    subjects = ["a lighthouse keeper", "the history of glass", "a robot learning to paint", "coffee in Ethiopia",
                "the moons of Jupiter", "a lost umbrella", "volcanoes in Iceland", "the first bicycle"]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Write a short story about {s} ({i})."}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for i, s in enumerate(subjects * 4)]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) else list(p) for p in prompts]
    llm = vllm.LLM(model=str(model_dir), dtype="float32", enforce_eager=True, compilation_config=0, max_model_len=512,
                   max_num_seqs=32, seed=0, enable_prefix_caching=False)
    rows = {"bare": [None] * 32, "mixed": [f"a{i % ADAPTERS}" for i in range(28)] + [None] * 4, "single": ["a0"] * 32}

    def run(names) -> float:
        params = [vllm.SamplingParams(temperature=0, max_tokens=32, ignore_eos=True,
                                      extra_args={"reft_adapter": n} if n else None) for n in names]
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        elapsed = time.perf_counter() - t
        return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed

    run(rows["bare"])  # warm-up
    speeds = {k: [] for k in rows}
    for _ in range(args.rounds):
        for kind, names in rows.items():
            speeds[kind].append(run(names))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    report = {"model": "SmolLM2-135M-Instruct", "device": "cpu", "vllm": vllm.__version__, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "prompts": len(prompts),
              "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts), "new_tokens": 32,
              "adapters": ADAPTERS, "tokens_per_s": speeds, "median_tokens_per_s": med,
              "mixed_over_bare": med["mixed"] / med["bare"], "mixed_over_single": med["mixed"] / med["single"]}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("median_tokens_per_s", "mixed_over_bare", "mixed_over_single")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
