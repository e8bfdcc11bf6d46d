"""Commonsense-reasoning tasks of the ReFT paper (LLM-Adapters format): loaders, prompt formatting, scoring.

Tasks: ``boolq``, ``piqa``, ``siqa`` (Social IQa), ``hellaswag``, ``winogrande``, ``arc_e``, ``arc_c``, ``obqa``.
Every record holds ``instruction`` (question, options and an ``Answer format: a/b/...`` line), an empty
``input``, ``output`` and ``answer``. In all these files ``output`` is exactly ``"the correct answer is " +
answer``, which is the training target; a generation is scored by exact match of the label extracted with
:func:`reft.harness.tasks.metrics.extract_commonsense_label` against ``answer``.

HellaSwag ``test`` is ``test_reconstructed.jsonl``, an approximate rebuild of the LLM-Adapters test file (WikiHow
items lack their markup; see the data MANIFEST), so HellaSwag numbers are not exactly comparable with the paper.
HellaSwag ``dev`` is the ReFT hyper-parameter dev set (4,000 HellaSwag *train* items).
"""

from __future__ import annotations

import re

from reft.harness.tasks._io import Example, alpaca_prompt, check_split, read_jsonl, take
from reft.harness.tasks.metrics import COMMONSENSE_TRIGGER, commonsense_labels, extract_commonsense_label

#: task name -> split -> file relative to the data root
COMMONSENSE_FILES: dict[str, dict[str, str]] = {
    "boolq": {"train": "commonsense/boolq/train.jsonl", "test": "commonsense/boolq/test.jsonl"},
    "piqa": {"test": "commonsense/piqa/test.jsonl"},
    "siqa": {"test": "commonsense/social_i_qa/test.jsonl"},
    "hellaswag": {
        "dev": "commonsense/hellaswag/dev.jsonl",
        "test": "commonsense/hellaswag/test_reconstructed.jsonl",
    },
    "winogrande": {"test": "commonsense/winogrande/test.jsonl"},
    "arc_e": {"train": "commonsense/ARC-Easy/train.jsonl", "test": "commonsense/ARC-Easy/test.jsonl"},
    "arc_c": {"train": "commonsense/ARC-Challenge/train.jsonl", "test": "commonsense/ARC-Challenge/test.jsonl"},
    "obqa": {"train": "commonsense/openbookqa/train.jsonl", "test": "commonsense/openbookqa/test.jsonl"},
}

_ANSWER_FORMAT = re.compile(r"Answer format:\s*(\S+)\s*$")


def _choices(instruction: str, task: str) -> tuple[str, ...]:
    """The per-item options named on the ``Answer format:`` line (ARC items have 3, 4 or 5 options)."""
    match = _ANSWER_FORMAT.search(instruction)
    if match is None:
        return commonsense_labels(task)
    return tuple(match.group(1).split("/"))


def _to_example(record: Example, task: str) -> Example:
    example = dict(record)
    example["task"] = task
    example["choices"] = _choices(record["instruction"], task)
    example["target"] = record.get("output") or f"{COMMONSENSE_TRIGGER} {record['answer']}"
    return example


def load_commonsense(task: str, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """Loads a commonsense task split in file order.

    Args:
        task: One of :data:`COMMONSENSE_FILES`.
        split: ``"test"``, ``"train"`` (BoolQ, ARC-e, ARC-c, OBQA only) or ``"dev"`` (HellaSwag only).
        limit: Keep only the first ``limit`` examples.
        seed: Unused (these splits are fixed files); accepted for a uniform loader signature.

    Returns:
        Dicts with the file's fields plus ``task``, ``choices`` (the item's label options) and ``target``.
    """
    del seed
    if task not in COMMONSENSE_FILES:
        raise ValueError(f"unknown commonsense task {task!r}; known: {sorted(COMMONSENSE_FILES)}")
    records = read_jsonl(check_split(task, split, COMMONSENSE_FILES[task]))
    return [_to_example(r, task) for r in take(records, limit)]


def format_commonsense(example: Example) -> tuple[str, str]:
    """Returns ``(prompt, target)``: the Alpaca no-input prompt and ``"the correct answer is <label>"``."""
    return alpaca_prompt(example["instruction"]), example["target"]


def score_commonsense(prediction: str, example: Example) -> float:
    """1.0 if the label extracted from ``prediction`` equals the example's gold ``answer``, else 0.0."""
    return float(extract_commonsense_label(prediction, example["task"]) == example["answer"].lower())
