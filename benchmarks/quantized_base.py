"""A quantized frozen base vs the fp32 base, on SmolLM2-135M-Instruct (CPU): memory, speed, held-out answers.

Each base runs in a process of its own (so its peak RSS is that base's alone), one after the other: load → the bare
base's held-out answers → train LoReFT with the demo's settings (examples/demo.py: 96 examples, 3 epochs, layers
3;9;15;21, f7+l7, rank 4) → held-out exact match → save the adapter. Then adapters cross over: the fp32 adapter is
evaluated on every quantized base, and every quantized base's adapter on the fp32 base.

Per base, in the JSON:

* ``weight_bytes``: the base's parameters and buffers as stored (quantized data, scales, zero points);
* ``rss_loaded_mb`` right after loading (after gc and ``malloc_trim``): ``anon`` (heap) and ``file`` (mapped files:
  the checkpoint's pages, which the kernel can drop), and ``rss_peak_mb`` (the process's peak: load + train + eval);
* ``train_s_per_step`` and ``generate_tokens_per_s``, and both as ratios to the fp32 base (same run, same machine);
* ``heldout_exact_match`` of the bare base and of the adapter; ``same_answers_as_fp32``: held-out answers equal to
  the fp32 adapter's on the fp32 base; ``cross``: exact match of the adapter trained on the other kind of base.

    .venv/bin/python benchmarks/quantized_base.py [--out benchmarks/results/quantized_base_smollm2.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples"))

BASES = ["fp32", "bitsandbytes:8bit", "bitsandbytes:4bit", "torchao:8bit", "quanto:8bit", "quanto:4bit"]


def rss_mb() -> dict[str, float]:
    """This process's resident memory now: ``anon`` (heap: tensors, libraries) and ``file`` (mapped files, e.g. the
    safetensors checkpoint: clean pages the kernel can drop and re-read), in MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
    return {"anon": int(fields["RssAnon"].split()[0]) / 1024, "file": int(fields["RssFile"].split()[0]) / 1024}


def run_one(base: str, out_dir: Path, extra_adapters: list[str], threads: int) -> dict:
    from extraction_task import exact_match, make_task

    from reft import ReftConfig, ReftModel
    from reft.generation import generate_texts, prompt_format, render_chat
    from reft.harness.models import load_model
    from reft.harness.recipe import TrainSettings, train_reft
    from reft.quantization import quantization_of, stored_bytes

    torch.set_num_threads(threads)
    backend, _, bits = base.partition(":")
    t0 = time.perf_counter()
    if base == "fp32":
        model, tokenizer = load_model("smollm2")
    else:
        model, tokenizer = load_model("smollm2", quantize=bits, quantize_backend=backend)
    load_s = time.perf_counter() - t0
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed load-time buffers back to the OS before measuring
    figures = {"base": base, "quantization": quantization_of(model), "load_s": load_s,
               "weight_bytes": stored_bytes(model), "rss_loaded_mb": rss_mb()}
    train, heldout = make_task(seed=0, n_train=96, n_heldout=32)
    prompts = [render_chat(tokenizer, ex["prompt"]) for ex in heldout]
    gen = {"batch_size": 16, "max_new_tokens": 24, "progress": False}

    def score(answers: list[str]) -> float:
        return sum(exact_match(a, ex["response"]) for a, ex in zip(answers, heldout)) / len(heldout)

    figures["heldout_exact_match_bare"] = score(generate_texts(model, tokenizer, prompts, **gen))
    config = ReftConfig(layers="3;9;15;21", positions="f7+l7", tied=True, rank=4, intervention="loreft")
    adapter_dir = out_dir / base.replace(":", "-")
    reft_model, metrics = train_reft(
        model, tokenizer, config, [render_chat(tokenizer, ex["prompt"]) for ex in train],
        [ex["response"] for ex in train], adapter_dir, TrainSettings(epochs=3, lr=4e-3, batch_size=8, logging_steps=4),
        progress=False, prompt_format=prompt_format(tokenizer, chat_template=True))
    steps = metrics["loss_curve"][-1][0]
    figures["train_s_per_step"] = metrics["train_runtime"] / steps
    figures["loss_first_last"] = [metrics["loss_curve"][0][1], metrics["loss_curve"][-1][1]]
    reft_model.eval()
    times, answers = [], []
    for _ in range(2):  # the first call also warms caches; the median of two is reported
        t = time.perf_counter()
        answers = generate_texts(reft_model, tokenizer, prompts, **gen)
        times.append(time.perf_counter() - t)
    new_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)  # + eos
    figures["generate_tokens_per_s"] = new_tokens / statistics.median(times)
    figures["heldout_exact_match"] = score(answers)
    figures["answers"] = answers
    bare = reft_model.unload()
    figures["cross"] = {}
    for path in extra_adapters:
        other = ReftModel.from_pretrained(bare, os.path.join(path, "adapter")).eval()
        figures["cross"][Path(path).name] = score(generate_texts(other, tokenizer, prompts, **gen))
        bare = other.unload()
    figures["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quantized_base_smollm2.json"))
    ap.add_argument("--work", default="runs/quantized_base", help="adapters and runs (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bases", default=",".join(BASES), help="(default: %(default)s)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one base, print its JSON
    ap.add_argument("--cross", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, work, [p for p in args.cross.split(",") if p], args.threads)))
        return 0
    bases = args.bases.split(",")
    if bases[0] != "fp32":
        raise SystemExit("--bases must start with fp32 (the reference)")
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: remove it or pass another --work")

    def child(base: str, cross: list[str]) -> dict:
        cmd = [sys.executable, __file__, "--one", base, "--work", str(work), "--threads", str(args.threads),
               "--cross", ",".join(cross)]
        print("running", base, flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    dirs = {b: str(work / b.replace(":", "-")) for b in bases}
    results = {"fp32": child("fp32", [])}
    for base in bases[1:]:
        results[base] = child(base, [dirs["fp32"]])  # the fp32 adapter on this base
    fp32_again = child("fp32", [dirs[b] for b in bases[1:]])  # each quantized base's adapter on the fp32 base
    results["fp32"]["cross"] = fp32_again["cross"]
    ref = results["fp32"]
    for r in results.values():
        r["train_time_vs_fp32"] = r["train_s_per_step"] / ref["train_s_per_step"]
        r["generate_speed_vs_fp32"] = r["generate_tokens_per_s"] / ref["generate_tokens_per_s"]
        r["weight_bytes_vs_fp32"] = r["weight_bytes"] / ref["weight_bytes"]
        r["same_answers_as_fp32"] = sum(a == b for a, b in zip(r["answers"], ref["answers"])) / len(ref["answers"])
    report = {"model": "SmolLM2-135M-Instruct", "device": "cpu", "threads": args.threads,
              "torch": torch.__version__, "task": "examples/extraction_task.py, 96 train / 32 held-out",
              "bases": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'base':20} {'weights MiB':>11} {'anon':>6} {'file':>6} {'RSS peak':>9} {'train ×':>8} {'gen ×':>6} "
          f"{'EM bare':>8} {'EM reft':>8} {'=fp32':>6}  cross")
    for name, r in results.items():
        print(f"{name:20} {r['weight_bytes'] / 2**20:11.0f} {r['rss_loaded_mb']['anon']:6.0f} "
              f"{r['rss_loaded_mb']['file']:6.0f} {r['rss_peak_mb']:9.0f} "
              f"{r['train_time_vs_fp32']:8.2f} {r['generate_speed_vs_fp32']:6.2f} "
              f"{r['heldout_exact_match_bare']:8.2f} {r['heldout_exact_match']:8.2f} "
              f"{r['same_answers_as_fp32']:6.2f}  {r['cross']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
