"""GLUE classification tasks (RoBERTa experiments of the ReFT paper): loaders, the seeded dev split, metrics.

Tasks: ``sst2``, ``cola``, ``mrpc``, ``stsb`` (regression, ``num_labels == 1``), ``rte``, ``qnli``. Examples are
dicts ``{"task", "idx", "text", "label"}`` where ``text`` is a string (single sentence) or a ``(first, second)``
tuple (pairs), ``label`` is an int class id (RTE/QNLI: 0 = entailment, 1 = not_entailment, as in the GLUE
convention) or a float similarity score for STS-B, and ``idx`` is the row in the source file.

GLUE test labels are not public, so, as in the paper, the GLUE dev file is divided by a seed into two halves:
``load("dev", seed=s)`` (in-training dev set, for model selection) and ``load("test", seed=s)`` (held out, for
reporting). The halves are disjoint, cover the dev file, and depend only on the seed and the file length (the
order comes from SHA-256 hashes, so it is stable across Python/numpy versions). ``load("train")`` is the GLUE
train file; QNLI has none here.

:data:`PAPER_GLUE` holds the paper's fixed per-task settings (learning rate, dropout, warmup ratio, positions) and
:data:`PAPER_GLUE_SHARED` the ones common to every task (rank 1, all layers, untied, batch 32, AdamW, linear
schedule, weight decay 0, max length 256); ``reft train --paper-hparams`` and ``experiments/glue_paper.py`` use them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from reft.harness.tasks._io import Example, read_jsonl, take
from reft.harness.tasks.metrics import accuracy, f1_binary, matthews_corrcoef, pearson, spearman

#: task name -> (directory under glue/, text field names, label field)
GLUE_FIELDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "sst2": ("sst2", ("sentence",), "label"),
    "cola": ("cola", ("sentence",), "label"),
    "mrpc": ("mrpc", ("#1 String", "#2 String"), "Quality"),
    "stsb": ("stsb", ("sentence1", "sentence2"), "score"),
    "rte": ("rte", ("sentence1", "sentence2"), "label"),
    "qnli": ("qnli", ("question", "sentence"), "label"),
}
#: headline metric of each task (a key of the dict returned by :func:`glue_metric`)
GLUE_MAIN_METRIC = {
    "sst2": "accuracy",
    "cola": "mcc",
    "mrpc": "accuracy",
    "stsb": "pearson_spearman_mean",
    "rte": "accuracy",
    "qnli": "accuracy",
}
GLUE_SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class GlueHyperparameters:
    """One task's fixed LoReFT settings in the ReFT paper (RoBERTa, Tables 9–10 of arXiv 2404.03592).

    Attributes:
        lr: AdamW learning rate (peak of the linear schedule).
        dropout: dropout of the interventions (pyreft applies it to Φ(h); reft to the edit Φ(h) − h, see
            :class:`reft.interventions.base.Intervention`); the LoRA baseline uses it as ``lora_dropout``.
        warmup_ratio: linear warm-up over this fraction of all optimiser steps, then linear decay to 0.
        positions: intervened prompt positions (the paper's ``p3`` = ``f3``: the first three tokens, [CLS] first).
    """

    lr: float
    dropout: float
    warmup_ratio: float
    positions: str


#: the paper's per-task settings (MNLI ``f1`` and QQP ``f11`` are not in the shared data)
PAPER_GLUE: dict[str, GlueHyperparameters] = {
    "sst2": GlueHyperparameters(lr=6e-4, dropout=0.10, warmup_ratio=0.10, positions="f3"),
    "mrpc": GlueHyperparameters(lr=3e-4, dropout=0.05, warmup_ratio=0.0, positions="f3"),
    "cola": GlueHyperparameters(lr=4e-4, dropout=0.20, warmup_ratio=5e-3, positions="f3"),
    "rte": GlueHyperparameters(lr=9e-4, dropout=0.05, warmup_ratio=0.0, positions="f3"),
    "stsb": GlueHyperparameters(lr=6e-4, dropout=0.05, warmup_ratio=0.03, positions="f3"),
    "qnli": GlueHyperparameters(lr=9e-4, dropout=0.05, warmup_ratio=0.10, positions="f11"),
}
#: settings the paper shares across GLUE tasks (pyreft's examples/loreft: ``-l all -r 1 --batch_size 32
#: --max_length 256 --weight_decay 0``, linear schedule, ``adamw_torch``; positions by pyreft's
#: ``get_intervention_locations``: each part at most ⌊n/2⌋ tokens, :mod:`reft.positions` rule ``"half"``; R under
#: torch's orthogonal parametrisation, as pyreft holds it: ``rotation="householder"``)
PAPER_GLUE_SHARED: dict[str, object] = {"rank": 1, "layers": "all", "tied": False, "batch_size": 32,
                                        "weight_decay": 0.0, "scheduler": "linear", "max_length": 256,
                                        "position_rule": "half", "rotation": "householder"}


#: the LoRA baseline's published per-task learning rates (Hu et al. 2021, arXiv 2106.09685, Table 9, RoBERTa-base,
#: r 8 on W_q/W_v): the start point of its rate, as PAPER_GLUE's is LoReFT's
LORA_PAPER_LR: dict[str, float] = {"sst2": 5e-4, "mrpc": 4e-4, "cola": 4e-4, "rte": 5e-4, "stsb": 4e-4,
                                   "qnli": 4e-4}


def paper_rotation(intervention: str) -> str:
    """:data:`PAPER_GLUE_SHARED`'s rotation for an intervention with an orthonormal R, ``"qr"`` (no R) otherwise."""
    from reft.interventions import get_intervention_class

    has_r = getattr(get_intervention_class(intervention), "has_rotation", False)
    return str(PAPER_GLUE_SHARED["rotation"]) if has_r else "qr"


def paper_hyperparameters(task: str) -> GlueHyperparameters:
    """The paper's settings for ``task``.

    Raises:
        ValueError: a task without published settings here.
    """
    if task not in PAPER_GLUE:
        raise ValueError(f"no paper settings for {task!r}; known: {sorted(PAPER_GLUE)}")
    return PAPER_GLUE[task]


_NO_TRAIN = {"qnli": "QNLI's train split (104,743 rows) is not in the shared data (file too large); use dev/test"}
_STRING_LABELS = {"entailment": 0, "not_entailment": 1}


def num_labels(task: str) -> int:
    """Number of output classes; 1 for the STS-B regression task."""
    return 1 if task == "stsb" else 2


def split_dev_indices(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Divides ``range(n)`` into the seeded in-training dev half and the held-out test half.

    The rows are ordered by ``sha256(f"{seed}:{row}")``; the first ``n // 2`` form the dev half.

    Returns:
        ``(dev_rows, test_rows)``, each sorted ascending.
    """
    order = sorted(range(n), key=lambda row: hashlib.sha256(f"{seed}:{row}".encode()).digest())
    half = n // 2
    return sorted(order[:half]), sorted(order[half:])


def _label(task: str, value: object) -> int | float:
    if task == "stsb":
        return float(value)
    if isinstance(value, str):
        return _STRING_LABELS[value]
    return int(value)


def _to_example(task: str, row: int, record: Example) -> Example:
    _, text_fields, label_field = GLUE_FIELDS[task]
    texts = tuple(record[f] for f in text_fields)
    text = texts[0] if len(texts) == 1 else texts
    return {"task": task, "idx": row, "text": text, "label": _label(task, record[label_field])}


def load_glue(task: str, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """Loads a GLUE task split.

    Args:
        task: One of :data:`GLUE_FIELDS`.
        split: ``"train"`` (train file), ``"dev"`` or ``"test"`` (the two seeded halves of the GLUE dev file).
        limit: Keep only the first ``limit`` examples (file order within the split).
        seed: Selects the dev/test division; ignored for ``"train"``.

    Returns:
        Dicts ``{"task", "idx", "text", "label"}``.

    Raises:
        ValueError: For an unknown task or split, or ``"train"`` on QNLI.
    """
    if task not in GLUE_FIELDS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_FIELDS)}")
    if split not in GLUE_SPLITS:
        raise ValueError(f"GLUE task {task!r} has no split {split!r}; available: {list(GLUE_SPLITS)}")
    if split == "train" and task in _NO_TRAIN:
        raise ValueError(_NO_TRAIN[task])
    directory = GLUE_FIELDS[task][0]
    if split == "train":
        records = read_jsonl(f"glue/{directory}/train.jsonl")
        return [_to_example(task, row, r) for row, r in enumerate(take(records, limit))]
    records = read_jsonl(f"glue/{directory}/dev.jsonl")
    dev_rows, test_rows = split_dev_indices(len(records), seed)
    rows = take(dev_rows if split == "dev" else test_rows, limit)
    return [_to_example(task, row, records[row]) for row in rows]


def glue_metric(task: str, preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Computes the task's GLUE metrics.

    SST-2/RTE/QNLI: accuracy. CoLA: Matthews correlation (``mcc``) and accuracy. MRPC: F1 of the paraphrase
    class and accuracy. STS-B: Pearson, Spearman and their mean (``pearson_spearman_mean``).

    Args:
        task: GLUE task name.
        preds: Predicted class ids (or scores for STS-B).
        labels: Gold labels.

    Returns:
        Metric name -> value; :data:`GLUE_MAIN_METRIC` names the headline key.
    """
    if task == "stsb":
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": p, "spearman": s, "pearson_spearman_mean": (p + s) / 2}
    preds, labels = [int(x) for x in preds], [int(y) for y in labels]
    if task == "cola":
        return {"mcc": matthews_corrcoef(preds, labels), "accuracy": accuracy(preds, labels)}
    if task == "mrpc":
        return {"f1": f1_binary(preds, labels), "accuracy": accuracy(preds, labels)}
    if task in GLUE_FIELDS:
        return {"accuracy": accuracy(preds, labels)}
    raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_FIELDS)}")
