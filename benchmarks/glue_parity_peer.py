"""Peer side of the GLUE parity benchmark: the official pyreft 0.1.0 (+ pyvene 0.1.8) on a plan written by
glue_parity.py. Run inside the peer venv (benchmarks/peer_env.sh), in its own process:

    benchmarks/.peer-venv/bin/python benchmarks/glue_parity_peer.py --plan plan.json --out pyreft.json

What the plan fixes for both libraries: the examples (train in file order, the held-out test half), the
batch order of every epoch, the initial interventions (R, W, b per layer) and head, the optimiser settings and
the seed. This side builds everything else the way pyreft's GLUE pipeline (examples/loreft/train.py) does:

* data: a ``pyreft.ReftDataset`` subclass like examples/loreft/dataset.py's ``LoReftGLUEDataset`` (tokenised
  with ``truncation=True``, one pad token appended, ``pad_mode="last"``, locations from pyreft's
  ``get_intervention_locations``), collated by ``pyreft.ReftDataCollator(DataCollatorWithPadding)``;
* model: ``pyreft.get_reft_model`` with one ``LoreftIntervention`` per layer on ``bert.encoder.layer[l].output``
  (the residual stream after block l, reft's ``block_output``), its own dropout; the classification head's
  gradients re-enabled as the script's ``--allow_cls_grad`` does;
* training: ``pyreft.ReftTrainerForSequenceClassification`` (its compute_loss: cross-entropy on the head's
  logits, MSE for one label), ``transformers.TrainingArguments`` as given in the plan.

Deviations, each needed to run the same experiment (also written to the JSON "notes"):
  * the classifier is BERT (MiniLM) + the RoBERTa-style head reft uses (dense → tanh → out_proj on [CLS], dropout
    before each), not ``BertForSequenceClassification`` (pooler + one linear layer): the same head on both sides;
  * pyreft's trainer passes only input_ids and attention_mask to the model, so a BERT pair task would lose its
    token types; the wrapper rebuilds them from the [SEP] positions (0 up to the first [SEP], 1 after, as the
    tokenizer sets them);
  * the tokenizer keeps its own [PAD] (examples/loreft/train.py sets pad = unk, a decoder convention: with
    BERT it would mask every real [UNK] token out of attention);
  * compute_loss accepts the ``num_items_in_batch`` keyword of transformers >= 4.46 (pyreft 0.1.0's does not);
  * the batch order is the plan's (the driver's seeded length-grouped order), through ``_get_train_sampler``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from importlib.metadata import version

import pyreft
import torch
import transformers
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, BertModel, DataCollatorWithPadding, TrainerCallback
from transformers.modeling_outputs import SequenceClassifierOutput

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _grad_groups import GradGroups  # noqa: E402

NOTES = [
    "classifier: BertModel + the RoBERTa-style head reft uses (dense-tanh-out_proj on [CLS]), as on the reft side",
    "token_type_ids rebuilt from [SEP] positions inside the wrapper: pyreft's trainer passes only input_ids and "
    "attention_mask",
    "initial R assigned through torch's orthogonal parametrization (weight = R): pyreft's "
    "LoreftIntervention.load_state_dict overwrites only the first r columns of the d×d base, which then is no "
    "longer orthogonal, and R leaves the unit sphere once trained (measured: |R| 0.996-1.0014 after 12 steps)",
    "tokenizer keeps its [PAD] token (pyreft's GLUE script sets pad = unk, which masks real [UNK] tokens on BERT)",
    "compute_loss shim: transformers>=4.46 passes num_items_in_batch; pyreft 0.1.0's compute_loss has no **kwargs",
    "batch order: the plan's (_get_train_sampler), the same as the reft side's",
]


class Head(nn.Module):
    """``W_o tanh(W_d dropout(h)) + b_o`` with dropout before each linear map: ``[B, d] → [B, num_labels]``."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(h)))))


class BertWithHead(nn.Module):
    """A BERT encoder (``.bert``) and the head (``.classifier``) on its first token, for pyvene to wrap."""

    def __init__(self, bert: BertModel, num_labels: int, head_dropout: float, sep_id: int) -> None:
        super().__init__()
        self.bert, self.classifier = bert, Head(bert.config.hidden_size, num_labels, head_dropout)
        self.config, self.num_labels, self.sep_id = bert.config, num_labels, sep_id
        self.config.problem_type = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        seps_before = torch.cumsum((input_ids == self.sep_id).long(), dim=1) - (input_ids == self.sep_id).long()
        token_type_ids = ((seps_before >= 1) & attention_mask.bool()).long()
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(hidden[:, 0]))


class GlueRows(pyreft.ReftDataset):
    """GLUE examples ``{"text", "label"}`` the way examples/loreft/dataset.py's LoReftGLUEDataset prepares them."""

    def preprocess(self, kwargs):
        self.raw_dataset, self.trigger_tokens, self.num_labels = None, None, None
        self.pad_mode = "last"  # one pad token appended: pyreft's sink for unused intervention slots
        self.fields_to_pad = ["input_ids"]

    def tokenize(self, data_item):
        text = data_item["text"]
        args = (text,) if isinstance(text, str) else tuple(text)
        ids = self.tokenizer(*args, max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt")["input_ids"][0]
        return {"input_ids": ids, "labels": data_item["label"]}, len(ids)


class PlanSampler(torch.utils.data.Sampler):
    """Yields the plan's order for epoch 1, 2, … on successive iterations (and records what it yielded)."""

    def __init__(self, orders: list[list[int]]) -> None:
        self.orders, self.epoch, self.yielded = orders, 0, []

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self):
        order = self.orders[min(self.epoch, len(self.orders) - 1)]
        self.epoch += 1
        self.yielded.append(list(order))
        return iter(order)


class Trainer(pyreft.ReftTrainerForSequenceClassification):
    plan_sampler: PlanSampler

    def _get_train_sampler(self, *args, **kwargs):
        return self.plan_sampler

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        return super().compute_loss(model, inputs, return_outputs=return_outputs)


class ZeroModelGrads(TrainerCallback):
    """After each optimiser step, clear the gradients of the wrapped model's trainable parameters (the head).

    pyvene's ``IntervenableModel.zero_grad()`` clears only the interventions' gradients, and `Trainer` calls
    ``model.zero_grad()`` after each step: the head's gradient is never cleared, so in pyreft's GLUE pipeline it
    is the running sum of every step's gradient. ``--peer-variant fixed`` adds this callback."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        for p in model.model.parameters():
            p.grad = None


class EpochTimer(TrainerCallback):
    def __init__(self) -> None:
        self.epoch_s: list[float] = []
        self._t0 = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_s.append(time.perf_counter() - self._t0)


def build(plan: dict):
    tokenizer = AutoTokenizer.from_pretrained(plan["model_path"], model_max_length=plan["max_length"])
    tokenizer.padding_side = "right"
    bert = BertModel.from_pretrained(plan["model_path"], dtype=torch.float32, add_pooling_layer=False)
    model = BertWithHead(bert, plan["num_labels"], plan["head_dropout"], tokenizer.sep_token_id)
    init = load_file(plan["init_file"])
    model.classifier.load_state_dict({k[len("head."):]: v for k, v in init.items() if k.startswith("head.")})
    layers = list(range(bert.config.num_hidden_layers))
    reps = [{"component": f"bert.encoder.layer[{layer}].output", "low_rank_dimension": plan["rank"],
             "intervention": pyreft.LoreftIntervention(embed_dim=bert.config.hidden_size,
                                                       low_rank_dimension=plan["rank"], dropout=plan["dropout"],
                                                       dtype=torch.float32)} for layer in layers]
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps))
    with torch.no_grad():
        for layer, key in zip(layers, reft_model.interventions):  # the plan's initial R, W, b: exactly reft's
            iv = reft_model.interventions[key]
            iv = iv[0] if isinstance(iv, (list, tuple)) else iv
            iv.learned_source.weight.copy_(init[f"layer{layer}.W"])
            iv.learned_source.bias.copy_(init[f"layer{layer}.b"])
            # torch's assignment to an orthogonal parametrization (right_inverse): completes R to an orthogonal
            # d×d base and zeroes the trivialization, as a fresh init does. (pyreft's own load_state_dict only
            # overwrites the base's first r columns, so the base stops being orthogonal and R drifts off the
            # unit sphere once training moves it.)
            iv.rotate_layer.weight = init[f"layer{layer}.R"]
            assert torch.allclose(iv.rotate_layer.weight, init[f"layer{layer}.R"], atol=1e-6)
    for p in reft_model.model.classifier.parameters():  # examples/loreft/train.py --allow_cls_grad
        p.requires_grad = True
    return reft_model, tokenizer, len(layers)


def dataset(tokenizer, examples: list[dict], plan: dict, n_interventions: int) -> GlueRows:
    raw = Dataset.from_list([{"text": e["text"], "label": e["label"]} for e in examples])
    return GlueRows("glue", plan["task"], tokenizer, data_split="train", dataset=raw, position=plan["positions"],
                    num_interventions=n_interventions, share_weights=False)


@torch.no_grad()
def predict(reft_model, collator, rows: GlueRows, num_labels: int, batch_size: int = 64) -> list:
    reft_model.model.eval()
    for iv in reft_model.interventions.values():
        (iv[0] if isinstance(iv, (list, tuple)) else iv).eval()
    preds: list = []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        locations = batch["intervention_locations"].permute(1, 0, 2).tolist()
        _, out = reft_model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                            unit_locations={"sources->base": (None, locations)})
        logits = out.logits.float()
        preds += logits.squeeze(-1).tolist() if num_labels == 1 else logits.argmax(-1).tolist()
    return preds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", choices=["shipped", "fixed"], default="shipped",
                    help="shipped: pyreft/pyvene as released; fixed: also clear the head's gradient every step")
    args = ap.parse_args(argv)
    plan = json.loads(open(args.plan).read())
    torch.set_num_threads(plan["threads"])
    transformers.set_seed(plan["seed"])
    start = time.perf_counter()
    reft_model, tokenizer, n_int = build(plan)
    train_rows = dataset(tokenizer, plan["train"], plan, n_int)
    test_rows = dataset(tokenizer, plan["test"], plan, n_int)
    collator = pyreft.ReftDataCollator(data_collator=DataCollatorWithPadding(tokenizer=tokenizer, padding="longest"))
    targs = transformers.TrainingArguments(output_dir=os.path.join(os.path.dirname(args.out), "peer_trainer"),
                                           report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no",
                                           remove_unused_columns=False, **plan["training_arguments"])
    timer, grads = EpochTimer(), GradGroups()
    callbacks = [timer, grads] + ([ZeroModelGrads()] if args.variant == "fixed" else [])
    trainer = Trainer(model=reft_model, args=targs, train_dataset=train_rows, data_collator=collator,
                      processing_class=tokenizer, callbacks=callbacks)
    trainer.plan_sampler = PlanSampler(plan["orders"])
    if not plan["base_dropout"]:
        # the same switch as reft's base_dropout(False): p = 0 on the frozen encoder's dropout modules
        for m in reft_model.model.bert.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    trainer.train()
    train_s = sum(timer.epoch_s)
    final = {f"head.{k}": v.detach().contiguous() for k, v in reft_model.model.classifier.state_dict().items()}
    for layer, key in enumerate(reft_model.interventions):
        iv = reft_model.interventions[key]
        iv = iv[0] if isinstance(iv, (list, tuple)) else iv
        final[f"layer{layer}.R"] = iv.rotate_layer.weight.detach().contiguous()
        final[f"layer{layer}.W"] = iv.learned_source.weight.detach().contiguous()
        final[f"layer{layer}.b"] = iv.learned_source.bias.detach().contiguous()
    save_file(final, args.out.removesuffix(".json") + ".safetensors")
    preds = predict(reft_model, collator, test_rows, plan["num_labels"])
    curve = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    result = {
        "library": "pyreft" if args.variant == "shipped" else "pyreft_fixed",
        "variant": args.variant,
        "seed": plan["seed"],
        "loss_curve": curve,
        "grad_groups": grads.records,
        "grad_norms": [float(e["grad_norm"]) for e in trainer.state.log_history if "grad_norm" in e],
        "predictions": preds,
        "train_s": train_s,
        "epoch_s": timer.epoch_s,
        "examples_per_s": len(train_rows) * len(timer.epoch_s) / train_s,
        "locations": [train_rows[i]["intervention_locations"][0] for i in range(len(train_rows))],
        "input_ids": [train_rows[i]["input_ids"].tolist() for i in range(len(train_rows))],
        "yielded_orders": trainer.plan_sampler.yielded,
        "trainable_params": sum(p.numel() for p in reft_model.parameters() if p.requires_grad),
        "optimizer": {k: getattr(targs, k) for k in ("optim", "max_grad_norm", "adam_beta1", "adam_beta2",
                                                     "adam_epsilon", "lr_scheduler_type", "warmup_steps",
                                                     "weight_decay", "learning_rate")},
        "total_s": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "pyreft": version("pyreft"),
                     "pyvene": version("pyvene")},
        "notes": NOTES,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
