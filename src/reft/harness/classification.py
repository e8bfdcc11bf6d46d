"""Sentence and sentence-pair classification (GLUE) with a frozen encoder: data, collator, prediction, training.

The classifier is any module whose ``forward(input_ids, attention_mask, token_type_ids, labels)`` returns
``.loss`` / ``.logits``: a :class:`reft.ReftModelForSequenceClassification` (interventions + head) or the LoRA
baseline :class:`reft.harness.baselines.LoraForSequenceClassification` (LoRA + the same head). The head reads the first
token (``[CLS]``):

    logits = W_o tanh(W_d h_CLS + b_d) + b_o,    p(y | x) = softmax(logits)

trained with cross-entropy, or for ``num_labels == 1`` (STS-B) the scalar ``logits`` regressed on the gold
score with the squared error ``(logits − y)²``.

Model selection follows the ReFT paper's GLUE protocol: train on the train split, evaluate the task metric on
the in-training dev half after every epoch, keep the parameters of the best epoch, report on the held-out test
half (``task.load("dev" | "test", seed=s)``; see :mod:`reft.harness.tasks.glue`).

Two choices of the protocol are explicit here:

* batching: ``TrainSettings(group_by_length=True)`` batches rows of similar length (transformers'
  ``LengthGroupedSampler``: a seeded permutation cut into mega-batches of ``50 × batch`` rows, each sorted by
  length), so a batch pads to about its own length instead of the longest row of a random batch; every example
  is still seen once per epoch;
* ``base_dropout``: whether the frozen base model's dropout is active while the adapter trains (pyreft: yes,
  ``Trainer`` puts the whole model in train mode; here: :data:`BASE_DROPOUT`, off). Off sets the base's
  ``nn.Dropout`` probabilities to 0 for the run (:func:`base_dropout`); the head's, the interventions' and LoRA's
  own dropout stay.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PrinterCallback, Trainer, TrainerCallback

from ..trainer import FiniteGuard, ReftTrainer, training_fingerprint
from .interrupt import stop_on_interrupt
from .recipe import TrainSettings, loss_curve, reporting_callbacks, training_arguments
from .runs import claim, run_folder

Example = dict[str, Any]
#: the protocol's default for the frozen base's dropout during training: off (see :func:`base_dropout`). pyreft
#: trains with it on; on SST-2 (2,000 examples, 3 epochs, the paper's settings, seed 42) off scored 75.0 on the dev
#: half against 73.9 (test half 76.1 vs 72.7), within noise of one run, with a lower training loss and 6% less
#: time; the frozen base then computes in training what it computes at test time (docs/results.md)
BASE_DROPOUT = False


def encode_text(tokenizer, text: str | Sequence[str], max_length: int | None = 128) -> dict[str, list[int]]:
    """Token ids of one sentence, or of a ``(first, second)`` pair through the tokenizer's pair encoding.

    A pair becomes ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` 0/1 for BERT (each tokenizer's own
    template); pairs longer than ``max_length`` lose tokens from the longer side first (``longest_first``).
    """
    truncate = max_length is not None
    if isinstance(text, str):
        enc = tokenizer(text, truncation=truncate, max_length=max_length)
    elif isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, str) for t in text):
        enc = tokenizer(text[0], text[1], truncation="longest_first" if truncate else False, max_length=max_length)
    else:
        raise ValueError(f"a classification example's text must be a string or a (first, second) pair of strings, "
                         f"got {text!r:.120}")
    return {k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc}


def make_classification_dataset(tokenizer, examples: Sequence[Example], max_length: int | None = 128,
                                *, with_labels: bool = True) -> list[dict[str, Any]]:
    """Tokenise GLUE examples (``{"text", "label"}``) into rows ``{"input_ids", ["token_type_ids"], "labels"}``."""
    rows = []
    for ex in examples:
        row: dict[str, Any] = encode_text(tokenizer, ex["text"], max_length)
        if with_labels:
            if "label" not in ex:
                raise ValueError(f"example without a 'label': {ex!r:.120}")
            row["labels"] = ex["label"]
        rows.append(row)
    return rows


@dataclass
class ClassificationCollator:
    """Right-pads tokenised rows into ``input_ids``, ``attention_mask``, ``token_type_ids`` (if present), ``labels``.

    Args:
        pad_token_id: the tokenizer's pad id.
        regression: labels as float32 (``num_labels == 1``) instead of int64 class ids.

    ``slots`` counts the padded tokens of the batches it built (``fit_classifier`` reports it per epoch).
    """

    pad_token_id: int
    regression: bool = False
    #: token slots (batch width × rows) of every batch built so far: the padded size of what the model ran on
    slots: int = 0

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token before building the collator")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        self.slots += width * len(rows)
        batch: dict[str, torch.Tensor] = {
            "input_ids": torch.tensor([r["input_ids"] + [self.pad_token_id] * (width - len(r["input_ids"]))
                                       for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                            for r in rows]),
        }
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = torch.tensor([r["token_type_ids"] + [0] * (width - len(r["token_type_ids"]))
                                                    for r in rows])
        if "labels" in rows[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        return batch


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Cross-entropy over classes, or the mean squared error for ``num_labels == 1`` (regression)."""
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


@torch.no_grad()
def predict_classification(model: nn.Module, tokenizer, examples: Sequence[Example], *, num_labels: int,
                           batch_size: int = 64, max_length: int | None = 128, progress: bool = False) -> list:
    """Predicted class ids (argmax of the logits), or the scalar score when ``num_labels == 1``.

    Examples are batched by length (less padding) and the predictions returned in input order. The model is put
    in eval mode for the call and given back in the mode it had.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    rows = make_classification_dataset(tokenizer, examples, max_length, with_labels=False)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    collate = ClassificationCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list = [None] * len(rows)
    with torch.no_grad():  # no autograd graph: the interventions and head require grad while training
        try:
            for start in tqdm(range(0, len(order), batch_size), desc="classify", disable=not progress, leave=False):
                idx = order[start:start + batch_size]
                batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
                logits = model(**batch).logits.float()
                values = logits.squeeze(-1).tolist() if num_labels == 1 else logits.argmax(-1).tolist()
                for i, v in zip(idx, values):
                    preds[i] = v
        finally:
            model.train(was_training)
    return preds


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter that requires grad."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`trainable_state`) back into the model's parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class SelectOnDev(TrainerCallback):
    """After every epoch, score the model on a dev set and remember the best epoch's trainable parameters.

    Args:
        score: ``score(model) -> float``; higher is better.
    """

    def __init__(self, score: Callable[[nn.Module], float]) -> None:
        self.score = score
        self.history: list[dict[str, float]] = []
        self.best: float | None = None
        self.best_epoch: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        value = float(self.score(model))
        self.history.append({"epoch": round(float(state.epoch), 3), "dev": value})
        if self.best is None or value > self.best:
            self.best, self.best_epoch, self.best_state = value, round(float(state.epoch), 3), trainable_state(model)

    def restore_best(self, model: nn.Module) -> None:
        if self.best_state is not None:
            restore_state(model, self.best_state)


@contextlib.contextmanager
def base_dropout(model: nn.Module, active: bool) -> Iterator[int]:
    """Run the block with the frozen base model's dropout on (``active``) or off.

    The base is ``model.model`` (the encoder of a :class:`reft.ReftModelForSequenceClassification`, a
    :class:`~reft.harness.baselines.LoraForSequenceClassification` or a
    :class:`~reft.harness.baselines.ProbeForSequenceClassification`). Off sets ``p = 0`` on its dropout modules
    (BERT's attention reads ``self.dropout.p`` too) except peft's ``lora_dropout``, and restores them on exit; the
    head and the interventions are not under ``model.model`` and keep theirs. In eval mode nothing changes.

    Yields:
        The number of dropout modules switched off (0 when ``active``).
    """
    if active:
        yield 0
        return
    base = getattr(model, "model", None)
    if not isinstance(base, nn.Module):
        raise ValueError(f"{type(model).__name__} has no base model at .model: base_dropout=False needs a classifier "
                         "wrapping its encoder as .model")
    changed = [(m, m.p) for name, m in base.named_modules()
               if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and "lora_" not in name]
    for m, _ in changed:
        m.p = 0.0
    try:
        yield len(changed)
    finally:
        for m, p in changed:
            m.p = p


def fit_classifier(
    model: nn.Module,
    tokenizer,
    task,
    train_examples: Sequence[Example],
    dev_examples: Sequence[Example] | None,
    out_dir: str | os.PathLike,
    settings: TrainSettings,
    *,
    trainer_cls: type[Trainer] = Trainer,
    eval_batch_size: int = 64,
    progress: bool = True,
    base_dropout_active: bool = BASE_DROPOUT,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train a classifier (its trainable parameters only) and keep the epoch that scores best on ``dev_examples``.

    Args:
        model: the classifier (see the module docstring); its ``num_labels`` must equal ``task.num_labels``.
        task: a GLUE :class:`reft.harness.tasks.TaskSpec` (``num_labels``, ``metric``, ``main_metric``).
        dev_examples: model-selection set; None trains for ``settings.epochs`` and keeps the last epoch.
        settings: ``group_by_length=True`` batches by length (the protocol's choice; see the module docstring).
        trainer_cls: the `Trainer` class (``ReftTrainer`` for ReFT, plain ``Trainer`` for LoRA and the probe).
        base_dropout_active: keep the frozen base's dropout on during training (:func:`base_dropout`).
        callbacks: more `TrainerCallback` objects (e.g. to record the batches).

    Returns:
        ``train_runtime_s``, ``loss_curve``, ``dev_history`` (``[{epoch, dev}]``), ``best_epoch``, ``best_dev``,
        ``examples``, ``steps``, ``padded_tokens_per_epoch`` (batch width × rows of the training batches, per
        epoch), ``tokens_per_epoch`` (real tokens) and ``base_dropout``.
    """
    if task.num_labels is None or task.metric is None:
        raise ValueError(f"task {task.name!r} is not a classification task (no num_labels/metric): "
                         "use the generation path (reft.harness.recipe.train_reft / "
                         "reft.harness.evaluate.evaluate_generation)")
    if getattr(model, "num_labels", task.num_labels) != task.num_labels:
        raise ValueError(f"the model has {model.num_labels} outputs but {task.name} needs {task.num_labels}")
    if not train_examples:
        raise ValueError(f"no training examples for {task.name}")
    dataset = make_classification_dataset(tokenizer, train_examples, settings.max_length)
    args = training_arguments(settings, os.path.join(out_dir, "checkpoints"), progress=progress, save_strategy="no")
    callbacks = [*([] if issubclass(trainer_cls, ReftTrainer) else [FiniteGuard()]), *callbacks,
                 *reporting_callbacks(settings, out_dir)]
    selector = None
    if dev_examples:
        labels = [e["label"] for e in dev_examples]

        def dev_score(m: nn.Module) -> float:
            preds = predict_classification(m, tokenizer, dev_examples, num_labels=task.num_labels,
                                           batch_size=eval_batch_size, max_length=settings.max_length)
            return task.metric(preds, labels)[task.main_metric]

        selector = SelectOnDev(dev_score)
        callbacks.append(selector)
    collator = ClassificationCollator(tokenizer.pad_token_id, task.num_labels == 1)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, callbacks=callbacks, data_collator=collator)
    if not progress:
        trainer.remove_callback(PrinterCallback)  # the logs go to the loss curve instead
    claim(out_dir, training_fingerprint(args, dataset, model) | {"dev_examples": len(dev_examples or ()),
                                                                  "base_dropout": base_dropout_active})
    start = time.perf_counter()
    with base_dropout(model, base_dropout_active), stop_on_interrupt(trainer):
        trainer.train()
    runtime = time.perf_counter() - start
    if selector is not None:
        selector.restore_best(model)
    model.eval()
    return {
        "train_runtime_s": round(runtime, 2),
        "loss_curve": loss_curve(trainer.state),
        "dev_history": selector.history if selector else [],
        "best_epoch": selector.best_epoch if selector else None,
        "best_dev": selector.best if selector else None,
        "examples": len(dataset),
        "steps": int(trainer.state.global_step),
        "tokens_per_epoch": sum(len(r["input_ids"]) for r in dataset),
        # what the collator padded, averaged over the epochs run (the last one may be partial)
        "padded_tokens_per_epoch": round(collator.slots / max(float(trainer.state.epoch or 1), 1e-9)),
        "base_dropout": base_dropout_active,
    }


def train_reft_classifier(model: nn.Module, tokenizer, config, task, train_examples: Sequence[Example],
                          dev_examples: Sequence[Example] | None, out_dir: str | os.PathLike,
                          settings: TrainSettings | None = None, *, progress: bool = True,
                          base_dropout_active: bool = BASE_DROPOUT):
    """ReFT on a GLUE task: ``get_reft_model(model, config, num_labels=task.num_labels)`` trained with
    :class:`reft.trainer.ReftTrainer` and :func:`fit_classifier`; the selected adapter (interventions + head) is
    saved to ``out_dir/adapter``. ``base_dropout_active``: see :func:`base_dropout`.

    Returns:
        ``(reft_model, info)`` with ``info`` as in :func:`fit_classifier`.
    """
    from ..model import get_reft_model

    settings = settings or TrainSettings()
    with run_folder(out_dir) as out_dir:
        torch.manual_seed(settings.seed)
        reft_model = get_reft_model(model, config, num_labels=task.num_labels)
        info = fit_classifier(reft_model, tokenizer, task, train_examples, dev_examples, out_dir, settings,
                              trainer_cls=ReftTrainer, progress=progress, base_dropout_active=base_dropout_active)
        reft_model.save_pretrained(os.path.join(out_dir, "adapter"))
    return reft_model, info
