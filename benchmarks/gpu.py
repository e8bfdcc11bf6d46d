"""GPU training throughput and memory, reft vs pyreft, on a ~1B Llama in bf16 (random weights), batch 16, length 512.

    python benchmarks/gpu.py --out gpu_results              # both libraries, settings a b c, one process per run
    python benchmarks/gpu.py --library reft --setting b --out r.json      # one run
    python benchmarks/gpu.py --device cpu --tiny --steps 2 --out /tmp/g  # smoke test of the script on a CPU

The model is TinyLlama-1.1B's architecture (22 layers, d = 2048, GQA 32/4 heads, vocabulary 32000) built from a
config with seeded random weights: throughput does not depend on the values. Each row is 512 random tokens: a
448-token prompt and a 64-token response that carries the labels. Both libraries train LoReFT rank 4 on the same
batches with AdamW (lr 4e-3) in a plain loop (forward, backward, step): pyreft through its intervenable model with
HF's ``labels=`` loss (as ``ReftTrainerForCausalLM`` computes it), reft through ``ReftModel(..., labels=)``. The
settings are the CPU benchmark's (common.py): (a) layer 11 (the middle; the CPU model's 15 of 30), last prompt
position; (b) f7+l7 on 3;9;15;21 tied; (c) untied. Random tokens share no prompt prefix, so reft's shared-prefix
saving does not apply here: what remains is response-only logits, no autograd below the lowest intervened layer's
first edited position, and the cheaper orthonormal R. Every step sees new batches, so the figures are an epoch-1
cost: reft's frozen-block cache only fills (it pays off from the second epoch on).

Figures per run: tokens/s over ``--steps`` timed steps after ``--warmup``, peak GPU memory (allocated) and the
weights' own bytes. reft is imported from this checkout's ``src``. ``--library pyreft`` needs pyreft and pyvene
importable; a GPU machine that lacks them takes wheels (pure Python) downloaded here:

    pip download --no-deps -d .whl pyreft==0.1.0 pyvene==0.1.8 datasets dill multiprocess
    # and reft's transformers when the machine's is older than pyproject's floor (the H200 image had 5.17):
    pip download --no-deps -d .whl --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
        transformers==5.24.0 tokenizers==0.23.3 huggingface_hub==2.4.0 safetensors==0.8.0
    # there: pip install --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python benchmarks/gpu.py ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]
from common import POSITIONS, RANK  # noqa: E402

LAYERS = {"a": [11], "b": [3, 9, 15, 21], "c": [3, 9, 15, 21]}  # (a): the middle of 22 layers
PROMPT, RESPONSE = 448, 64
DESCRIPTION = {"a": "1 LoReFT, layer 11, last prompt position", "b": "f7+l7 on layers 3;9;15;21, tied",
               "c": "f7+l7 on layers 3;9;15;21, untied"}


def build_model(tiny: bool, device: str) -> transformers.PreTrainedModel:
    size = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2) if tiny else \
        dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)
    config = transformers.LlamaConfig(vocab_size=32000, num_hidden_layers=22, max_position_embeddings=2048,
                                      tie_word_embeddings=False, attn_implementation="sdpa", **size)
    torch.manual_seed(0)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(dtype)
    return model.eval()


def batches(n: int, batch: int, device: str) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 32000, (batch, PROMPT + RESPONSE), generator=g)
        labels = ids.clone()
        labels[:, :PROMPT] = -100
        out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                    "labels": labels.to(device)})
    return out


def reft_step_fn(model, setting: str, batch: int):
    from reft import ReftConfig, get_reft_model

    reft_model = get_reft_model(model, ReftConfig(layers=LAYERS[setting], positions=POSITIONS[setting], rank=RANK,
                                                  tied=setting != "c", intervention="loreft"))
    lengths = torch.full((batch,), PROMPT, device=model.device)

    def loss(b):
        return reft_model(**b, prompt_lengths=lengths).loss

    return reft_model, loss


def pyreft_step_fn(model, setting: str, batch: int):
    from peer_pyreft import build_model, unit_locations  # the CPU benchmark's pyreft side (needs pyreft)

    reft_model, n = build_model(model, setting, LAYERS[setting], next(model.parameters()).dtype)
    reft_model.set_device(model.device)
    locations = unit_locations(setting, torch.ones(batch, PROMPT, dtype=torch.long), n)  # training: prompt only

    def loss(b):
        _, out = reft_model({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                            unit_locations={"sources->base": (None, locations)}, labels=b["labels"])
        return out.loss

    return reft_model, loss


def one_run(args) -> dict:
    device = args.device
    model = build_model(args.tiny, device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    make = reft_step_fn if args.library == "reft" else pyreft_step_fn
    wrapped, loss_fn = make(model, args.setting, args.batch)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=4e-3)
    data = batches(args.warmup + args.steps, args.batch, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i, b in enumerate(data):
        sync()
        t0 = time.perf_counter()
        loss = loss_fn(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    step = statistics.median(times)
    return {
        "library": args.library, "setting": args.setting, "device": torch.cuda.get_device_name() if
        device.startswith("cuda") else "cpu", "tiny": args.tiny, "batch": args.batch, "seq": PROMPT + RESPONSE,
        "trainable_params": sum(p.numel() for p in params), "steps": args.steps, "warmup": args.warmup,
        "step_s_median": step, "step_s": times, "tokens_per_s": args.batch * (PROMPT + RESPONSE) / step,
        "losses": losses, "weights_mib": weights / 2**20,
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def table(results: dict) -> str:
    rows = ["| setting | pyreft tok/s | reft tok/s | reft ÷ pyreft tok/s | pyreft peak MiB | reft peak MiB "
            "| reft ÷ pyreft memory |", "|---|---|---|---|---|---|---|"]
    for s, r in results.items():
        p, q = r["pyreft"], r["reft"]
        mem = (f"{p['peak_mem_mib']:.0f} | {q['peak_mem_mib']:.0f} | {q['peak_mem_mib'] / p['peak_mem_mib']:.2f}"
               if p["peak_mem_mib"] else "– | – | –")
        rows.append(f"| {s}: {DESCRIPTION[s]} | {p['tokens_per_s']:.0f} | {q['tokens_per_s']:.0f} | "
                    f"{q['tokens_per_s'] / p['tokens_per_s']:.2f} | {mem} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", choices=["reft", "pyreft"], help="one run of one library (default: the driver)")
    ap.add_argument("--setting", choices="abc", default="b")
    ap.add_argument("--settings", default="abc", help="driver: the settings to run")
    ap.add_argument("--out", required=True, help="one run: a JSON file; driver: a folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model of the same shape (smoke test)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    if args.library:
        result = one_run(args)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k not in ("step_s", "losses")}))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
              str(args.warmup)] + (["--tiny"] if args.tiny else [])
    results = {}
    for i, s in enumerate(args.settings):
        results[s] = {}
        for lib in ("pyreft", "reft") if i % 2 == 0 else ("reft", "pyreft"):  # alternate who goes first
            path = out / f"{lib}_{s}.json"
            subprocess.run([sys.executable, __file__, "--library", lib, "--setting", s, "--out", str(path)] + shared,
                           check=True)
            results[s][lib] = json.loads(path.read_text())
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
