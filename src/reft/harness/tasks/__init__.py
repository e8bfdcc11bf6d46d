"""The ReFT paper's task suite as plain Python: a registry of :class:`TaskSpec` objects keyed by task name.

Families: ``commonsense`` (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/-c, OBQA), ``math`` (AQuA, GSM8K,
MAWPS, SVAMP, AddSub, MultiArith, SingleEq, MathQA + training sets), ``glue`` (SST-2, CoLA, MRPC, STS-B, RTE,
QNLI), ``glue_generation`` (``sst2_gen`` etc.: the same rows with label words, for decoders) and ``instruction``
(AlpacaEval, UltraFeedback-1K). Data is read from :func:`data_root` (env ``REFT_DATA``).

Example::

    spec = get_task("gsm8k")
    examples = spec.load("test", limit=8)
    prompt, target = spec.format(examples[0])
    correct = spec.score("... The answer is 18.", examples[0])

Data caveats: hellaswag's test split is ``test_reconstructed.jsonl``, an approximate rebuild (WikiHow markup
missing; dev = the ReFT 4k dev set); ``math_data_3k`` is the LLM-Adapters 3.2K set, not MATH10K (about 23% of its
rationales end in a wrong answer); ``math_10k`` is the ReFT hyper-parameter dev set (919 items of MATH10K); gsm8k's
train split is the original OpenAI train set converted to rationale + "The answer is n."; qnli has no train split;
alpaca_eval has no local scorer (write outputs with ``write_alpaca_eval_outputs`` and run ``alpaca_eval``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from reft.harness.tasks import alpaca, commonsense, glue, glue_generation
from reft.harness.tasks import math as math_tasks
from reft.harness.tasks._io import ALPACA_NO_INPUT_TEMPLATE, Example, alpaca_prompt, data_root

__all__ = [
    "ALPACA_NO_INPUT_TEMPLATE",
    "TASKS",
    "Example",
    "TaskSpec",
    "alpaca_prompt",
    "data_root",
    "get_task",
    "task_names",
]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the engine needs to train on or evaluate one task.

    Attributes:
        name: Registry key.
        family: ``"commonsense"``, ``"math"``, ``"glue"`` or ``"instruction"``.
        splits: Split names accepted by ``load``.
        load: ``load(split, limit=None, seed=0) -> list[Example]``; examples are dicts.
        format: Generation tasks: ``format(example) -> (prompt, target)``.
        score: Generation tasks with a local scorer: ``score(prediction, example) -> float`` (1.0 = correct).
        num_labels: GLUE: number of classes (1 = regression).
        metric: GLUE: ``metric(preds, labels) -> dict[str, float]``.
        main_metric: GLUE: the headline key of ``metric``'s result.
    """

    name: str
    family: str
    splits: tuple[str, ...]
    load: Callable[..., list[Example]]
    format: Callable[[Example], tuple[str, str]] | None = None
    score: Callable[[str, Example], float] | None = None
    num_labels: int | None = None
    metric: Callable[[Sequence[float], Sequence[float]], dict[str, float]] | None = None
    main_metric: str | None = None


def _build_registry() -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    generation_families = (
        ("commonsense", commonsense.COMMONSENSE_FILES, commonsense.load_commonsense, commonsense.format_commonsense,
         commonsense.score_commonsense),
        ("math", math_tasks.MATH_FILES, math_tasks.load_math, math_tasks.format_math, math_tasks.score_math),
    )
    for family, table, load, fmt, score in generation_families:
        for name, files in table.items():
            tasks[name] = TaskSpec(name=name, family=family, splits=tuple(files), load=partial(load, name),
                                   format=fmt, score=score)
    for name in glue.GLUE_FIELDS:
        tasks[name] = TaskSpec(
            name=name,
            family="glue",
            splits=("dev", "test") if name == "qnli" else glue.GLUE_SPLITS,
            load=partial(glue.load_glue, name),
            num_labels=glue.num_labels(name),
            metric=partial(glue.glue_metric, name),
            main_metric=glue.GLUE_MAIN_METRIC[name],
        )
    for name in glue_generation.GLUE_GENERATION:
        tasks[glue_generation.generation_name(name)] = TaskSpec(
            name=glue_generation.generation_name(name),
            family="glue_generation",
            splits=glue.GLUE_SPLITS,
            load=partial(glue_generation.load_glue_generation, name),
            format=glue_generation.format_glue_generation,
            score=glue_generation.score_glue_generation,
        )
    tasks["alpaca_eval"] = TaskSpec(
        name="alpaca_eval",
        family="instruction",
        splits=tuple(alpaca.ALPACA_EVAL_FILES),
        load=alpaca.load_alpaca_eval,
        format=alpaca.format_instruction,
    )
    tasks["ultrafeedback_1k"] = TaskSpec(
        name="ultrafeedback_1k",
        family="instruction",
        splits=tuple(alpaca.ULTRAFEEDBACK_FILES),
        load=alpaca.load_ultrafeedback,
        format=alpaca.format_instruction,
    )
    return tasks


#: name -> TaskSpec for every task of the suite
TASKS: dict[str, TaskSpec] = _build_registry()


def task_names(family: str | None = None) -> list[str]:
    """Registered task names, optionally restricted to one family, in registry order."""
    return [name for name, spec in TASKS.items() if family is None or spec.family == family]


def get_task(name: str) -> TaskSpec:
    """Looks up a task by name.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the known names.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
