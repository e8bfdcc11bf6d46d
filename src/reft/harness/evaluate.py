"""Evaluation on the task suite (:mod:`reft.harness.tasks`): generation tasks, GLUE classification, results files.

* :func:`evaluate_generation`: batched greedy generation (:func:`reft.generation.generate_texts`) from the task's
  prompts, each output scored with ``task.score`` (1 = correct); ``accuracy = mean(score)``. Tasks without a
  local scorer (AlpacaEval) get outputs only; write them with :func:`write_results` (which also writes the
  ``alpaca_eval`` outputs file).
* :func:`evaluate_classification`: class predictions (argmax) or STS-B scores from a classifier, scored with the
  task's GLUE metric (accuracy, Matthews correlation, F1, Pearson/Spearman).

Works with a :class:`reft.ReftModel`, a peft LoRA model, or a bare model (generation only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..generation import format_prompts, generate_texts, resolve_chat_template
from ..save_load import atomic_write_text
from .classification import predict_classification
from .tasks import TaskSpec, get_task

#: default ``max_new_tokens`` per task family (commonsense targets are ~6 tokens; math targets are rationales)
MAX_NEW_TOKENS = {"commonsense": 32, "glue_generation": 8, "math": 256, "instruction": 512}


def _spec(task: str | TaskSpec) -> TaskSpec:
    return get_task(task) if isinstance(task, str) else task


def _examples(spec: TaskSpec, split: str, limit: int | None, seed: int, examples: Sequence[dict] | None):
    """``examples``, or the split loaded; never empty."""
    if examples is None:
        examples = spec.load(split, limit=limit, seed=seed)
    if not examples:
        raise ValueError(f"no examples to evaluate in {spec.name}/{split} (limit={limit})")
    return examples


def evaluate_generation(
    model: nn.Module,
    tokenizer,
    task: str | TaskSpec,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    chat_template: bool | None = None,
    *,
    seed: int = 0,
    examples: Sequence[dict] | None = None,
    progress: bool = True,
    **generate_kwargs,
) -> dict[str, Any]:
    """Generate answers for a task split and score them.

    Args:
        model: a ReftModel, peft model or bare causal LM (anything with ``generate``).
        tokenizer: its tokenizer (``pad_token`` set).
        task: task name or :class:`reft.harness.tasks.TaskSpec` with a ``format``.
        split: the split to load. Default: ``"test"``
        limit: first ``limit`` examples of the split. Default: all
        batch_size: prompts per ``generate`` call.
        max_new_tokens: default :data:`MAX_NEW_TOKENS` of the task family.
        chat_template: wrap each prompt in the tokenizer's chat template. Default: what the adapter was trained
            with (``ReftConfig.prompt_format``), else False; a value that contradicts the adapter's warns
            (:func:`reft.generation.resolve_chat_template`).
        seed: passed to ``task.load`` (only seeded splits use it).
        examples: evaluate these instead of loading ``split``.

    Returns:
        ``{"task", "family", "split", "n", "accuracy" (None without a scorer), "correct", "max_new_tokens",
        "chat_template", "generation_s", "records": [{"index", "prompt", "target", "answer", "prediction",
        "correct"}]}``.
    """
    spec = _spec(task)
    if spec.format is None:
        raise ValueError(f"{spec.name} is a classification task: use evaluate_classification (or 'reft eval' with an "
                         "adapter that has a head)")
    examples = _examples(spec, split, limit, seed, examples)
    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS.get(spec.family, 64)
    pairs = [spec.format(ex) for ex in examples]
    chat_template = resolve_chat_template(model, tokenizer, chat_template, default=False)
    texts = format_prompts(tokenizer, [p for p, _ in pairs], chat_template)
    start = time.perf_counter()
    outputs = generate_texts(model, tokenizer, texts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             progress=progress, **generate_kwargs)
    elapsed = time.perf_counter() - start
    records = []
    for i, (ex, (prompt, target), out) in enumerate(zip(examples, pairs, outputs)):
        rec: dict[str, Any] = {"index": i, "prompt": prompt, "target": target, "answer": ex.get("answer"),
                               "prediction": out}
        if spec.score is not None:
            rec["correct"] = float(spec.score(out, ex))
        if spec.family == "instruction":
            rec |= {"instruction": ex["instruction"], "dataset": ex.get("dataset", spec.name)}
        records.append(rec)
    correct = sum(r["correct"] for r in records) if spec.score is not None else None
    return {
        "task": spec.name,
        "family": spec.family,
        "split": split,
        "n": len(records),
        "accuracy": correct / len(records) if correct is not None else None,
        "correct": correct,
        "max_new_tokens": max_new_tokens,
        "chat_template": chat_template,
        "generation_s": round(elapsed, 2),
        "records": records,
    }


def evaluate_classification(
    model: nn.Module,
    tokenizer,
    task: str | TaskSpec,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 64,
    max_length: int | None = 128,
    *,
    examples: Sequence[dict] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a classifier on a GLUE split with the task's metric.

    Args:
        model: a classifier whose output has ``.logits`` ``[B, num_labels]`` (ReFT or LoRA classifier).
        task: GLUE task name or spec.
        split: ``"test"`` (held-out dev half, for reporting), ``"dev"`` (selection half) or ``"train"``.
        seed: the seed of the dev/test division (must be the one used for model selection).
        limit: first ``limit`` examples of the split.
        max_length: tokens per input (pairs truncated longest-first).

    Returns:
        ``{"task", "family", "split", "seed", "n", "metrics", "main_metric", "score", "eval_s", "records":
        [{"idx", "label", "prediction"}]}`` where ``score = metrics[main_metric]``.
    """
    spec = _spec(task)
    if spec.metric is None or spec.num_labels is None:
        raise ValueError(f"{spec.name} is not a classification task: use evaluate_generation")
    if getattr(model, "num_labels", spec.num_labels) != spec.num_labels:
        raise ValueError(f"the model has {model.num_labels} outputs but {spec.name} needs {spec.num_labels}: "
                         "load the adapter trained on this task")
    examples = _examples(spec, split, limit, seed, examples)
    start = time.perf_counter()
    preds = predict_classification(model, tokenizer, examples, num_labels=spec.num_labels, batch_size=batch_size,
                                   max_length=max_length, progress=progress)
    labels = [ex["label"] for ex in examples]
    metrics = spec.metric(preds, labels)
    return {
        "task": spec.name,
        "family": spec.family,
        "split": split,
        "seed": seed,
        "n": len(examples),
        "metrics": metrics,
        "main_metric": spec.main_metric,
        "score": metrics[spec.main_metric],
        "eval_s": round(time.perf_counter() - start, 2),
        "records": [{"idx": ex.get("idx", i), "label": y, "prediction": p}
                    for i, (ex, y, p) in enumerate(zip(examples, labels, preds))],
    }


def write_results(path: str | os.PathLike, results: dict[str, Any], *, generator: str = "reft") -> Path:
    """Write ``results`` as indented JSON, atomically (:func:`reft.save_load.atomic_write_text`); parents are created.

    For AlpacaEval results (records with ``instruction``) the outputs are also written, in the format read by
    ``alpaca_eval --model_outputs``, to ``<path stem>.alpaca_eval_outputs.json`` with ``generator`` as the model
    name; ``results["alpaca_eval_outputs"]`` names that file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    evaluation = results.get("eval", results)
    if evaluation.get("family") == "instruction":
        from .tasks.alpaca import write_alpaca_eval_outputs

        outputs = path.with_name(f"{path.stem}.alpaca_eval_outputs.json")
        rows = [{"instruction": r["instruction"], "output": r["prediction"], "dataset": r.get("dataset")}
                for r in evaluation["records"]]
        write_alpaca_eval_outputs(outputs, rows, generator)
        results = results | {"alpaca_eval_outputs": str(outputs)}
    atomic_write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation (no per-example records)."""
    return {k: v for k, v in results.items() if k != "records"}
