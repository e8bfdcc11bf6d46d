"""A synthetic stand-in for ``../shared/data``: every file the task loaders read, in its format, a few rows each.

The rows are made up here (no copy of the benchmark data): they exercise the loaders' logic (fields, splits, the
seeded GLUE halves, prompt formats, scoring) on a clone without the data folder. Tests that assert facts of the
real files (row counts, particular rows) carry ``@pytest.mark.needs_data`` and skip when this stand-in is used
(see ``tests/conftest.py``; ``REFT_REQUIRE_DATA=1`` turns the missing data into an error, as CI sets it).
"""

from __future__ import annotations

import json
from pathlib import Path

from reft.harness.tasks.alpaca import ALPACA_EVAL_FILES, ULTRAFEEDBACK_FILES
from reft.harness.tasks.commonsense import COMMONSENSE_FILES
from reft.harness.tasks.glue import GLUE_FIELDS
from reft.harness.tasks.math import MATH_FILES

ROWS = 400  # enough for the GLUE tests' 400-example subsets
_FOUR = ("answer1", "answer2", "answer3", "answer4")
_OPTIONS = {"boolq": ("true", "false"), "piqa": ("solution1", "solution2"),
            "siqa": ("answer1", "answer2", "answer3"), "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
            "winogrande": ("option1", "option2"), "arc_e": _FOUR, "arc_c": _FOUR, "obqa": _FOUR}


def _commonsense(task: str, i: int) -> dict:
    options = _OPTIONS[task]
    answer = options[i % len(options)]
    listed = " ".join(f"{o.capitalize()}: choice {k} of item {i}." for k, o in enumerate(options)) \
        if task != "boolq" else ""
    instruction = (f"Please answer the following question about item {i}: is {i} even?\n\n{listed}\n\n"
                   f"Answer format: {'/'.join(options)}")
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _math(task: str, split: str, i: int) -> dict:
    if task == "gsm8k" and split == "train":
        return {"question": f"Ana has {i} apples and buys {i + 2} more. How many apples does she have?",
                "answer": f"She has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
    if task == "aqua":
        letter = "ABCDE"[i % 5]
        options = " ".join(f"({c}) {k + i}" for k, c in enumerate("ABCDE"))
        return {"instruction": f"What is {i} + {'ABCDE'.index(letter)}? Answer Choices: {options}", "input": "",
                "output": f"\nThe sum is {i + 'ABCDE'.index(letter)}. The answer is ({letter}).", "answer": letter}
    return {"instruction": f"Tom has {i} pens and gets {i + 3} more. How many pens does he have?", "input": "",
            "output": f"Tom has {i} + {i + 3} = {2 * i + 3} pens. The answer is {2 * i + 3}.",
            "answer": f"{2 * i + 3}.0"}


def _glue(task: str, i: int) -> dict:
    filler = " very" * ((i * 7) % 47)  # lengths vary, as real sentences do (length-grouped batching is tested)
    a, b = f"sentence {i} says the{filler} big cat sat on mat {i % 7}.", f"and sentence {i} agrees about mat {i % 5}."
    label = (i * 5 // 3) % 2
    if task == "mrpc":
        return {"Quality": label, "#1 ID": str(1000 + i), "#2 ID": str(2000 + i), "#1 String": a, "#2 String": b}
    if task == "stsb":
        return {"index": i, "genre": "main", "sentence1": a, "sentence2": b, "score": round((i * 0.37) % 5, 2)}
    if task in ("rte", "qnli"):
        first = "question" if task == "qnli" else "sentence1"
        second = "sentence" if task == "qnli" else "sentence2"
        return {"index": i, first: a, second: b, "label": ("entailment", "not_entailment")[label]}
    return {"sentence": a, "label": label}  # sst2, cola


def write_mini_data(root: Path, rows: int = ROWS) -> Path:
    """Write the stand-in under ``root`` (created) and return it."""
    files: dict[str, list[dict]] = {}
    for task, splits in COMMONSENSE_FILES.items():
        for path in splits.values():
            files[path] = [_commonsense(task, i) for i in range(rows)]
    for task, splits in MATH_FILES.items():
        for split, path in splits.items():
            files[path] = [_math(task, split, i) for i in range(rows)]
    for task, (directory, _, _) in GLUE_FIELDS.items():
        for split in ("train", "dev") if task != "qnli" else ("dev",):
            files[f"glue/{directory}/{split}.jsonl"] = [_glue(task, i) for i in range(rows)]
    files[ALPACA_EVAL_FILES["test"]] = [{"dataset": "mini", "instruction": f"Write a line about the number {i}.",
                                         "output": f"{i} is a number.", "generator": "mini"} for i in range(rows)]
    files[ULTRAFEEDBACK_FILES["train"]] = [{"instruction": f"Say {i} politely.", "input": "",
                                            "output": f"Certainly: {i}."} for i in range(rows)]
    for relative, records in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (root / "MANIFEST.md").write_text("# synthetic stand-in written by tests/mini_data.py\n", encoding="utf-8")
    return root
