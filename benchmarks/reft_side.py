"""reft side of the benchmark, mirroring peer_pyreft.py measurement for measurement.

    .venv/bin/python benchmarks/reft_side.py --setting a --out result.json           # ReFT training + generation
    .venv/bin/python benchmarks/reft_side.py --setting a --floor --out floor.json    # the frozen-model floor

Same model weights (the de-quantised SmolLM2 cache), task, example order (no shuffle), batch size 8, lr 4e-3,
linear schedule, 2 epochs, threads and seed as the peer. `--floor` times one forward + backward of the frozen model
per batch with gradients only from the loss down to the lowest intervened layer and no intervention, twice: with
vocabulary logits at every position (a plain `labels=` call) and only at the response positions.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import transformers

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "examples")]
import shapes  # noqa: E402
from common import LAYERS, POSITIONS, RANK, Timer, add_run_args, emit, machine_load, time_generation, training_args  # noqa: E402

from reft import ReftConfig, get_reft_model  # noqa: E402
from reft.data import ReftDataCollator, make_supervised_dataset  # noqa: E402
from reft.generation import encode_prompts  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.trainer import ReftTrainer  # noqa: E402


class Trainer(ReftTrainer):
    """Fixed batch order (the task's), and the loss of every step recorded per epoch."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = out[0] if return_outputs else out
        self.epoch_losses.setdefault(int(self.state.epoch or 0), []).append(float(loss.detach()))
        return out


def _batches(dataset, collator, size):
    return [collator(dataset[i : i + size]) for i in range(0, len(dataset), size)]


def floor(model, tokenizer, dataset, setting, batch_size) -> dict:
    """Seconds per epoch of forward + backward of the frozen model, gradients from the loss to the lowest layer."""
    lowest = min(LAYERS[setting])
    layer = model.model.layers[lowest]
    handle = layer.register_forward_hook(lambda m, a, out: out.detach().requires_grad_(True))
    batches = _batches(dataset, ReftDataCollator(tokenizer.pad_token_id), batch_size)
    out = {}
    for name in ("full_logits", "response_logits"):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            for b in batches:
                if name == "full_logits":
                    loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
                else:
                    h = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
                    keep = b["labels"][:, 1:] != -100
                    logits = model.lm_head(h[:, :-1][keep])
                    loss = torch.nn.functional.cross_entropy(logits, b["labels"][:, 1:][keep])
                loss.backward()
            times.append(time.perf_counter() - t0)
        out[f"{name}_epoch_s"] = statistics.median(times)
        out[f"{name}_examples_per_s"] = len(dataset) / statistics.median(times)
    handle.remove()
    return out


def generate(reft_model, tokenizer, texts, max_new_tokens, bare=False):
    enc = encode_prompts(tokenizer, texts)
    kw = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    t0 = time.perf_counter()
    target = reft_model.model if bare else reft_model  # bare: the base model's own generate, hooks idle
    out = target.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kw)
    return out[:, enc["input_ids"].shape[1] :], time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--floor", action="store_true", help="measure the frozen-model floor instead")
    add_run_args(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    t_start, load_start = time.perf_counter(), machine_load()

    model, tokenizer = load_model("smollm2")
    task = shapes.task(args.shape)
    train, heldout = task.make_task(n_heldout=args.heldout)
    train = train[: args.limit_train] if args.limit_train else train
    heldout = heldout[: args.limit_heldout or task.heldout]
    dataset = make_supervised_dataset(
        tokenizer, [task.render(tokenizer, e["prompt"]) for e in train], [e["response"] for e in train]
    )
    n_tokens = sum(len(e["input_ids"]) for e in dataset)
    common = {"library": "reft", "shape": args.shape, "setting": args.setting, "n_train": len(train),
              "train_tokens_per_epoch": n_tokens}
    if args.floor:
        for p in model.parameters():
            p.requires_grad_(False)
        result = common | floor(model, tokenizer, dataset, args.setting, args.batch_size)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return result

    cfg = ReftConfig(
        layers=LAYERS[args.setting],
        positions=POSITIONS[args.setting],
        tied=args.setting != "c",
        rank=RANK,
        intervention="loreft",
    )
    reft_model = get_reft_model(model, cfg)
    targs = training_args(args, "/tmp/reft_bench_out", remove_unused_columns=False)
    timer = Timer()
    trainer = Trainer(
        model=reft_model,
        args=targs,
        train_dataset=dataset,
        callbacks=[timer],
        data_collator=ReftDataCollator(tokenizer.pad_token_id),
    )
    trainer.epoch_losses = {}
    trainer.train()
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    reft_model.eval()
    texts = [task.render(tokenizer, e["prompt"]) for e in heldout]
    n_ok, samples = 0, []
    for i in range(0, len(texts), args.gen_batch):
        kw = dict(max_new_tokens=task.answer_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        enc = encode_prompts(tokenizer, texts[i : i + args.gen_batch])
        out = reft_model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kw)
        for j, row in enumerate(out[:, enc["input_ids"].shape[1] :]):
            text = tokenizer.decode(row, skip_special_tokens=False)
            n_ok += task.exact_match(text, heldout[i + j]["response"])
            if len(samples) < 3:
                samples.append(text.split(task.EOS)[0])

    gen = time_generation(lambda t, n, bare: generate(reft_model, tokenizer, t, n, bare)[1], texts, args.gen_batch,
                          args.max_new_tokens)

    n = len(train)
    losses = [statistics.fmean(trainer.epoch_losses[k]) for k in sorted(trainer.epoch_losses)]
    result = common | {
        "layers": LAYERS[args.setting],
        "positions": POSITIONS[args.setting],
        "tied": args.setting != "c",
        "num_interventions": len(reft_model.interventions),
        "rank": RANK,
        "trainable_params": sum(p.numel() for p in reft_model.parameters() if p.requires_grad),
        "n_heldout": len(heldout),
        **timer.figures(args, n, n_tokens),
        "epoch_mean_loss": losses,
        "final_epoch_loss": losses[-1],
        "exact_match": n_ok / len(heldout),
        "heldout_samples": samples,
        "generation": gen,
        "peak_rss_mib_after_train": rss_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_s": time.perf_counter() - t_start,
        "machine_load": {"start": load_start, "end": machine_load()},
        "versions": {"reft": version("reft")},  # + python, torch, transformers (emit)
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
