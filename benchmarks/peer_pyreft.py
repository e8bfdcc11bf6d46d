"""Peer side of the benchmark: the official pyreft 0.1.0 (+ pyvene 0.1.8) on the shared task.

Run inside benchmarks/.peer-venv (see peer_env.sh):

    benchmarks/.peer-venv/bin/python benchmarks/peer_pyreft.py --setting a --out result.json

Settings (SmolLM2-135M-Instruct, fp32, CPU, LoReFT rank 4 on block_output):
  a  pyreft README quickstart: one intervention on layer 15 at the last prompt position (l1),
     data from `pyreft.make_last_position_supervised_data_module`;
  b  f7+l7 on layers 3;9;15;21, tied (one intervention per layer serves prefix and suffix: 4 interventions),
     data from `pyreft.make_multiple_position_supervised_data_module(share_weights=True)`;
  c  the same untied (8 interventions: layers listed twice, first half prefix, second half suffix, as
     pyreft's examples/loreft/train.py builds them).

Training is `pyreft.ReftTrainerForCausalLM` with `transformers.TrainingArguments` as in the README. The same
examples in the same order as the reft side: `get_train_dataloader` is overridden to call pyreft's own
`make_dataloader(..., shuffle=False)` (pyreft's version passes shuffle=True, drawing the order from torch's
global RNG), so batches are task order, 8 at a time.

Measured: per-epoch wall time (Trainer callbacks) -> examples/s and tokens/s (non-pad tokens, prompt included),
median over epochs; mean loss of the final epoch; peak RSS; held-out exact match with greedy generation through
`reft_model.generate` (batches of 16, left padding, pyreft's location convention); generation time for 16
prompts x 32 new tokens batched and one at a time, ReFT vs the bare model.

pyreft / pyvene quirks worked around (also written to the JSON "notes"):
  * transformers >= 4.46 calls compute_loss(model, inputs, num_items_in_batch=...): pyreft's signature has no
    **kwargs -> shim subclass; transformers 5 removed Trainer(tokenizer=) -> processing_class=.
  * LoreftIntervention makes its learned_source Linear bfloat16 unless dtype= is given -> pass dtype=float32.
  * ReftTrainerForCausalLM always shuffles -> overridden for a fixed order (see above).
  * pyreft tokenizes with max_length=tokenizer.model_max_length; this tokenizer's saved value (1e30) overflows the
    fast tokenizer -> set to 2048, as the README's from_pretrained(model_max_length=2048) does.
  * not triggered here (prompts are >= 47 tokens): for prompts shorter than 2 x 7 tokens,
    make_multiple_position_supervised_data_module pads the location lists with prompt_len (pad_mode="last"),
    i.e. the first response token, a position that does not exist when generating.
Generation timing forces exactly --max-new-tokens tokens (min_new_tokens) so ReFT and bare do the same work.
  * pyreft's batched-generation examples find left-padding offsets through BOS tokens; this tokenizer's BOS is
    <|im_start|>, which occurs several times per chat prompt -> offsets are taken from the attention mask.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pyreft
import torch
import transformers
from pyreft.reft_trainer import make_dataloader

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "examples")]
import model_cache  # noqa: E402
import shapes  # noqa: E402
from common import LAYERS, POSITIONS, RANK, Timer, add_run_args, emit, machine_load, time_generation, training_args  # noqa: E402

NOTES = [
    "compute_loss shim: transformers>=4.46 passes num_items_in_batch; pyreft 0.1.0's compute_loss has no **kwargs",
    "Trainer(tokenizer=) is gone in transformers 5: processing_class= used",
    "LoreftIntervention defaults learned_source to bfloat16: dtype=torch.float32 passed explicitly",
    "ReftTrainerForCausalLM.get_train_dataloader always shuffles: overridden with pyreft.make_dataloader("
    "shuffle=False) so batches follow task order",
    "generation: left padding; intervention offsets from the attention mask (pyreft examples use BOS positions, "
    "but this tokenizer's BOS <|im_start|> occurs several times per prompt)",
    "tokenizer.model_max_length set to 2048 as in pyreft's README: pyreft tokenizes with "
    "max_length=model_max_length, and the saved default (1e30) overflows the fast tokenizer",
    "make_last_position_supervised_data_module intervenes at prompt_len-1 (the last prompt token, '\\n' after "
    "'assistant'); generation uses the same position",
]


class Trainer(pyreft.ReftTrainerForCausalLM):
    """pyreft's trainer with a fixed batch order and a compute_loss that accepts new transformers kwargs."""

    epoch_losses: list[list[float]]

    def get_train_dataloader(self):
        return make_dataloader(self.train_dataset, self._train_batch_size, self.data_collator, shuffle=False)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs)
        loss = out[0].loss if return_outputs else out
        step = int(self.state.global_step)
        steps_per_epoch = -(-len(self.train_dataset) // self._train_batch_size)
        epoch = step // steps_per_epoch
        while len(self.epoch_losses) <= epoch:
            self.epoch_losses.append([])
        self.epoch_losses[epoch].append(float(loss.detach()))
        return out


def build_model(model, setting: str, layers: list[int] | None = None, dtype: torch.dtype = torch.float32):
    """pyreft's intervenable model for ``setting`` (on ``layers``, default the CPU benchmark's), and its size."""
    layers = layers or LAYERS[setting]
    if setting == "c":
        layers = layers + layers  # untied: one intervention per (layer, prefix|suffix)
    reps = [
        {
            "layer": layer,
            "component": "block_output",
            "low_rank_dimension": RANK,
            "intervention": pyreft.LoreftIntervention(
                embed_dim=model.config.hidden_size, low_rank_dimension=RANK, dtype=dtype
            ),
        }
        for layer in layers
    ]
    config = pyreft.ReftConfig(representations=reps if len(reps) > 1 else reps[0])
    reft_model = pyreft.get_reft_model(model, config)
    return reft_model, len(layers)


def data_module(tokenizer, model, setting, prompts, responses, n_interventions):
    if setting == "a":
        return pyreft.make_last_position_supervised_data_module(
            tokenizer, model, prompts, responses, num_interventions=n_interventions
        )
    return pyreft.make_multiple_position_supervised_data_module(
        tokenizer,
        model,
        prompts,
        responses,
        positions=POSITIONS[setting],
        num_interventions=n_interventions,
        share_weights=setting == "b",
    )


def unit_locations(setting, attention_mask, n_interventions):
    """[intervention][batch][positions] for a left-padded batch, in pyreft's training convention."""
    pads = (attention_mask == 0).sum(dim=1).tolist()
    lengths = attention_mask.sum(dim=1).tolist()
    per_example = []
    for pad, n in zip(pads, lengths):
        if setting == "a":
            locs = [[n - 1]] * n_interventions
        else:
            first_n, last_n = pyreft.parse_positions(POSITIONS[setting])
            locs = pyreft.get_intervention_locations(
                last_position=n,
                first_n=first_n,
                last_n=last_n,
                pad_mode="last",
                num_interventions=n_interventions,
                share_weights=setting == "b",
            )
        per_example.append([[p + pad for p in row] for row in locs])
    return [[ex[i] for ex in per_example] for i in range(n_interventions)]


def generate(reft_model, tokenizer, setting, n_interventions, texts, max_new_tokens, bare=False, force=False):
    """Greedy generation for a batch of rendered prompts; returns (new token ids, seconds)."""
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    kw["eos_token_id"] = tokenizer.eos_token_id
    if force:
        kw["min_new_tokens"] = max_new_tokens
    t0 = time.perf_counter()
    with torch.no_grad():
        if bare:
            out = reft_model.model.generate(**enc, **kw)
        else:
            locs = unit_locations(setting, enc["attention_mask"], n_interventions)
            _, out = reft_model.generate(
                dict(enc), unit_locations={"sources->base": (None, locs)}, intervene_on_prompt=True, **kw
            )
    return out[:, enc["input_ids"].shape[1] :], time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(ap)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    t_start = time.perf_counter()
    load_start = machine_load()

    model, tokenizer = model_cache.load()
    task = shapes.task(args.shape)
    train, heldout = task.make_task(n_heldout=args.heldout)
    if args.limit_train:
        train = train[: args.limit_train]
    heldout = heldout[: args.limit_heldout or task.heldout]
    prompts = [task.render(tokenizer, ex["prompt"]) for ex in train]
    responses = [ex["response"] for ex in train]

    reft_model, n_int = build_model(model, args.setting)
    trainable = sum(p.numel() for p in reft_model.parameters() if p.requires_grad)
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = 2048  # as the README loads it; pyreft truncates to model_max_length (1e30 overflows)
    dm = data_module(tokenizer, model, args.setting, prompts, responses, n_int)
    n_tokens = sum(len(ids) for ids in dm["train_dataset"]["input_ids"])

    targs = training_args(args, "/tmp/peer_pyreft_out")
    timer = Timer()
    trainer = Trainer(model=reft_model, processing_class=tokenizer, args=targs, callbacks=[timer], **dm)
    trainer.epoch_losses = []
    trainer.train()
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # held-out exact match (left padding, greedy, stop at eos)
    reft_model.model.eval()
    for iv in reft_model.interventions.values():
        (iv[0] if isinstance(iv, (list, tuple)) else iv).eval()
    tokenizer.padding_side = "left"
    texts = [task.render(tokenizer, ex["prompt"]) for ex in heldout]
    n_ok, samples = 0, []
    for i in range(0, len(texts), args.gen_batch):
        ids, _ = generate(reft_model, tokenizer, args.setting, n_int, texts[i : i + args.gen_batch],
                          task.answer_tokens)
        for j, row in enumerate(ids):
            text = tokenizer.decode(row, skip_special_tokens=False)
            n_ok += task.exact_match(text, heldout[i + j]["response"])
            if len(samples) < 3:
                samples.append(text.split(task.EOS)[0])

    # generation speed: 16 prompts x max_new_tokens (forced with min_new_tokens), batched and one at a time.
    # ReFT and bare runs alternate (bare = the same model with no pyvene hooks), so a burst of load elsewhere on
    # the machine hits both; the batched call is run twice per kind and the faster kept.
    def timed(t, n, bare):
        return generate(reft_model, tokenizer, args.setting, n_int, t, n, bare=bare, force=True)[1]

    gen = time_generation(timed, texts, args.gen_batch, args.max_new_tokens)

    n = len(train)
    result = {
        "peer": "pyreft",
        "shape": args.shape,
        "setting": args.setting,
        "layers": LAYERS[args.setting],
        "positions": POSITIONS[args.setting],
        "tied": args.setting != "c",
        "num_interventions": n_int,
        "rank": RANK,
        "trainable_params": trainable,
        "n_train": n,
        "n_heldout": len(heldout),
        "train_tokens_per_epoch": n_tokens,
        **timer.figures(args, n, n_tokens),
        "epoch_mean_loss": [statistics.fmean(v) for v in trainer.epoch_losses],
        "final_epoch_loss": statistics.fmean(trainer.epoch_losses[-1]),
        "exact_match": n_ok / len(heldout),
        "heldout_samples": samples,
        "generation": gen,
        "peak_rss_mib_after_train": rss_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_s": time.perf_counter() - t_start,
        "machine_load": {"start": load_start, "end": machine_load(), "cpus": os.cpu_count()},
        "versions": {"pyreft": version("pyreft"), "pyvene": version("pyvene")},  # + python, torch, transformers (emit)
        "notes": NOTES,
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
