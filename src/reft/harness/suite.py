"""One training + evaluation run on a task of the suite, for ReFT or the LoRA baseline, with a results JSON.

``run_task`` is what ``reft train --task`` and the scripts in ``experiments/`` call:

* generation tasks (commonsense, math, instruction): train on ``train_task``'s train split (default: the task
  itself; e.g. ``math_data_3k`` for SVAMP), evaluate generations on ``task``'s ``eval_split``;
* GLUE: train on the train split, select the epoch on the in-training dev half, report on the held-out test
  half, the halves drawn with the run's seed (the paper's protocol). Methods: the ReFT interventions, ``lora``
  and ``probe`` (the head alone on the frozen encoder). :func:`paper_glue_setup` gives the paper's per-task
  settings (:data:`reft.harness.tasks.glue.PAPER_GLUE`).

Subsets: ``train_limit`` takes a seeded random sample (``subset_seed``) of the training split, the same for every
method and training seed; ``eval_limit`` keeps the first examples of the evaluation split (file order).
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

from torch import nn

from ..config import ReftConfig
from ..generation import format_prompts, prompt_format
from .baselines import LoraSettings, count_parameters, lora_parameters
from .evaluate import evaluate_classification, evaluate_generation, summary, write_results
from .recipe import TrainSettings
from .runs import run_folder
from .tasks import TaskSpec, get_task

REFT_METHODS = ("loreft", "direft", "noreft", "consreft", "lobireft", "orthodireft")
METHODS = (*REFT_METHODS, "lora", "probe")


def paper_glue_setup(task: str, method: str = "loreft", *, seed: int = 42, epochs: float = 10.0,
                     lr: float | None = None, eval_batch_size: int = 64
                     ) -> tuple[TrainSettings, ReftConfig | None, LoraSettings | None]:
    """``(settings, reft_config, lora)`` of the paper's GLUE protocol for ``task`` (Tables 9–10 of the paper).

    Shared: batch 32, AdamW, linear schedule with the task's warm-up ratio, weight decay 0, max length 256,
    length-grouped batches; ReFT: rank 1 on every layer, untied, ``block_output``, the task's positions (pyreft's
    ⌊n/2⌋ rule, ``position_rule="half"``), R as pyreft holds it (``rotation="householder"``) and dropout; LoRA:
    rank 8, α 16 on query/value with the task's dropout as ``lora_dropout``; the probe: the head only. ``lr``
    overrides the paper's rate (the paper's rates are LoReFT's; other methods should pick theirs on the dev half).
    """
    from .tasks.glue import PAPER_GLUE_SHARED, paper_hyperparameters, paper_rotation

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {list(METHODS)}")
    hp = paper_hyperparameters(task)
    shared = PAPER_GLUE_SHARED
    settings = TrainSettings(epochs=epochs, lr=hp.lr if lr is None else lr, batch_size=int(shared["batch_size"]),
                             weight_decay=float(shared["weight_decay"]), warmup=hp.warmup_ratio,
                             scheduler=str(shared["scheduler"]), max_length=int(shared["max_length"]), seed=seed,
                             logging_steps=10, group_by_length=True)
    reft_config = lora = None
    if method in REFT_METHODS:
        reft_config = ReftConfig(layers=str(shared["layers"]), positions=hp.positions, rank=int(shared["rank"]),
                                 tied=bool(shared["tied"]), intervention=method, dropout=hp.dropout,
                                 position_rule=str(shared["position_rule"]), rotation=paper_rotation(method))
    elif method == "lora":
        lora = LoraSettings(rank=8, alpha=16, dropout=hp.dropout)
    return settings, reft_config, lora


def subsample(examples: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """A seeded random subset of ``limit`` examples in their original order (all of them if ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def _train_split(spec: TaskSpec) -> str:
    if "train" not in spec.splits:
        raise ValueError(f"task {spec.name!r} has no train split (splits: {list(spec.splits)}): pick a training set "
                         "with train_task, e.g. math_data_3k for the arithmetic test sets")
    return "train"


def run_task(
    model: nn.Module,
    tokenizer,
    task: str,
    method: str,
    out_dir: str | os.PathLike,
    *,
    settings: TrainSettings | None = None,
    reft_config: ReftConfig | None = None,
    lora: LoraSettings | None = None,
    train_task: str | None = None,
    train_limit: int | None = None,
    subset_seed: int = 0,
    eval_split: str = "test",
    eval_limit: int | None = None,
    dev_limit: int | None = None,
    evaluate: bool = True,
    chat_template: bool = False,
    max_new_tokens: int | None = None,
    eval_batch_size: int = 16,
    model_name: str | None = None,
    progress: bool = True,
    base_dropout: bool | None = None,
) -> dict[str, Any]:
    """Train ``method`` on a task, evaluate it, and write ``out_dir/results.json`` (with per-example records).

    Args:
        model: a freshly loaded base model (LoRA mutates it; ReFT hooks it): load one per run.
        task: the task evaluated (and trained on unless ``train_task``).
        method: ``"lora"`` or an intervention type (``"loreft"``, ``"direft"``, …), which overrides
            ``reft_config.intervention``.
        settings: optimisation settings; ``settings.seed`` also seeds the GLUE dev/test division.
        reft_config: where to intervene (ReFT methods). Default: ``ReftConfig()`` (``l1``, all layers, rank 4).
        lora: LoRA hyper-parameters (``method="lora"``).
        dev_limit: GLUE: select the epoch on the first ``dev_limit`` examples of the dev half. Default: all
        chat_template: wrap prompts in the tokenizer's chat template (training and evaluation alike).
        base_dropout: GLUE: keep the frozen base model's dropout active while training (pyreft does); False
            switches it off for the run (:func:`reft.harness.classification.base_dropout`). Default:
            :data:`reft.harness.classification.BASE_DROPOUT`

    Returns:
        The results dict (also written to ``out_dir/results.json``): ``task``, ``method``, ``model``, ``config``,
        ``settings``, ``train_examples``, ``parameters`` (``adapter``, ``head``, ``base``), ``train``, ``eval``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {list(METHODS)}")
    settings = settings or TrainSettings()
    spec, train_spec = get_task(task), get_task(train_task or task)
    with run_folder(out_dir) as out_dir:
        base_parameters = count_parameters(model, trainable=False)
        train_examples = subsample(train_spec.load(_train_split(train_spec)), train_limit, subset_seed)
        result: dict[str, Any] = {
            "task": spec.name,
            "train_task": train_spec.name,
            "method": method,
            "model": model_name or getattr(model.config, "_name_or_path", None),
            "settings": dataclasses.asdict(settings),
            "train_examples": len(train_examples),
            "subset_seed": subset_seed,
            "chat_template": chat_template,
        }
        if method == "probe":
            if spec.family != "glue":
                raise ValueError(f"method 'probe' (the head alone) is a classification baseline; {spec.name} is a "
                                 f"{spec.family} task: use a ReFT method or lora")
            result["config"] = {"head_only": True}
        elif method == "lora":
            lora = lora or LoraSettings()
            result["config"] = dataclasses.asdict(lora)
        else:
            fmt = None if spec.family == "glue" else prompt_format(tokenizer, chat_template)
            reft_config = dataclasses.replace(reft_config or ReftConfig(), intervention=method, prompt_format=fmt)
            result["config"] = reft_config.to_dict()

        if spec.family == "glue":
            if train_spec is not spec:
                raise ValueError("GLUE runs train and evaluate on the same task: drop train_task")
            from .classification import BASE_DROPOUT

            seed = settings.seed
            dev = spec.load("dev", limit=dev_limit, seed=seed)
            base_dropout = BASE_DROPOUT if base_dropout is None else base_dropout
            result["base_dropout"] = base_dropout
            if method == "lora":
                from .baselines import train_lora_classifier

                trained, info = train_lora_classifier(model, tokenizer, spec, train_examples, dev, out_dir, settings,
                                                      lora, progress=progress, base_dropout_active=base_dropout)
                adapter = lora_parameters(trained)
            elif method == "probe":
                from .baselines import train_probe_classifier

                trained, info = train_probe_classifier(model, tokenizer, spec, train_examples, dev, out_dir,
                                                       settings, progress=progress, base_dropout_active=base_dropout)
                adapter = 0
            else:
                from .classification import train_reft_classifier

                trained, info = train_reft_classifier(model, tokenizer, reft_config, spec, train_examples, dev,
                                                      out_dir, settings, progress=progress,
                                                      base_dropout_active=base_dropout)
                adapter = sum(p.numel() for p in trained.interventions.parameters())
            head = sum(p.numel() for p in trained.head.parameters())
            result["parameters"] = {"adapter": adapter, "head": head, "trainable": count_parameters(trained),
                                    "base": base_parameters}
            result["train"] = info
            result["dev_examples"] = len(dev)
            if evaluate:
                result["eval"] = evaluate_classification(trained, tokenizer, spec, eval_split, seed=seed,
                                                         limit=eval_limit, max_length=settings.max_length,
                                                         progress=progress)
        else:
            pairs = [train_spec.format(ex) for ex in train_examples]
            prompts = format_prompts(tokenizer, [p for p, _ in pairs], chat_template)
            responses = [t for _, t in pairs]
            if method == "lora":
                from .baselines import train_lora_causal

                trained, metrics = train_lora_causal(model, tokenizer, prompts, responses, out_dir, settings, lora,
                                                     progress=progress)
                adapter = lora_parameters(trained)
            else:
                from .recipe import train_reft

                trained, metrics = train_reft(model, tokenizer, reft_config, prompts, responses, out_dir, settings,
                                              progress=progress)
                adapter = sum(p.numel() for p in trained.interventions.parameters())
            trained.eval()
            result["parameters"] = {"adapter": adapter, "head": 0, "trainable": adapter, "base": base_parameters}
            result["train"] = {"train_runtime_s": metrics.get("train_runtime"), "loss_curve": metrics["loss_curve"],
                               "examples": metrics["examples"]}
            if evaluate:
                result["eval"] = evaluate_generation(trained, tokenizer, spec, eval_split, limit=eval_limit,
                                                     batch_size=eval_batch_size, max_new_tokens=max_new_tokens,
                                                     chat_template=chat_template, progress=progress,
                                                     seed=settings.seed)
        write_results(os.path.join(out_dir, "results.json"), result, generator=f"{result['model']}-{method}")
    return result


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a :func:`run_task` result without curves and per-example records."""
    out = {k: v for k, v in result.items() if k not in ("train", "eval")}
    if "train" in result:
        out["train"] = {k: v for k, v in result["train"].items() if k != "loss_curve"}
    if "eval" in result:
        out["eval"] = summary(result["eval"])
    return out
