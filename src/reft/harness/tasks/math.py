"""Arithmetic-reasoning tasks of the ReFT paper (LLM-Adapters format): loaders, prompt formatting, scoring.

Test sets (split ``"test"``): ``aqua``, ``gsm8k``, ``mawps``, ``svamp``, ``addsub``, ``multiarith``, ``singleeq``
and, beyond the paper, ``mathqa``. In these files ``output`` is a model-generated chain of thought that can be
wrong (or is empty for MAWPS/MathQA), so it is ignored: the target is just ``"The answer is <answer>."`` and
generations are scored against ``answer`` -- a letter A-E for AQuA/MathQA (:func:`extract_choice_letter`), else a
number compared within 1e-3 with the last number of the generation (:func:`numbers_match`).

Training sets (split ``"train"``): ``math_data_3k`` (LLM-Adapters' 3.2K set; target = its ``output`` rationale,
rows with an empty rationale are dropped) and ``gsm8k`` (the original OpenAI train file; target = the rationale
with its ``<<calc>>`` annotations removed, followed by ``"The answer is <n>."``). ``math_10k`` split ``"dev"`` is
the ReFT hyper-parameter dev set (919 MATH10K items, rationale targets). MATH10K's training file is not available.
"""

from __future__ import annotations

import re

from reft.harness.tasks._io import Example, alpaca_prompt, check_split, read_jsonl, take
from reft.harness.tasks.metrics import MATH_TRIGGER, extract_choice_letter, numbers_match

#: task name -> split -> file relative to the data root
MATH_FILES: dict[str, dict[str, str]] = {
    "aqua": {"test": "math/AQuA/test.jsonl"},
    "gsm8k": {"train": "math/gsm8k/train_openai.jsonl", "test": "math/gsm8k/test.jsonl"},
    "mawps": {"test": "math/mawps/test.jsonl"},
    "svamp": {"test": "math/SVAMP/test.jsonl"},
    "addsub": {"test": "math/AddSub/test.jsonl"},
    "multiarith": {"test": "math/MultiArith/test.jsonl"},
    "singleeq": {"test": "math/SingleEq/test.jsonl"},
    "mathqa": {"test": "math/mathqa/test.jsonl"},
    "math_data_3k": {"train": "math/math_data_3k/train.jsonl"},
    "math_10k": {"dev": "math/math_10k/dev.jsonl"},
}

#: (task, split) pairs whose ``output`` field is a trusted rationale used as the training target
_RATIONALE_SPLITS = {("math_data_3k", "train"), ("math_10k", "dev")}

_CALC_ANNOTATION = re.compile(r"<<[^>]*>>")
_LETTERS = frozenset("ABCDE")


def _is_letter(answer: str) -> bool:
    return answer.strip() in _LETTERS


def _answer_statement(answer: str) -> str:
    return f"{MATH_TRIGGER} {answer.strip()}."


def _from_openai_gsm8k(record: Example) -> Example:
    """Converts an OpenAI GSM8K record (``question``, ``answer`` ending in ``#### n``) to the common layout."""
    rationale, final = record["answer"].rsplit("####", 1)
    final = final.strip().replace(",", "")
    rationale = _CALC_ANNOTATION.sub("", rationale).strip()
    return {"instruction": record["question"], "input": "", "output": rationale, "answer": final}


def _to_example(record: Example, task: str, split: str) -> Example:
    example = dict(record)
    example["task"] = task
    if (task, split) in _RATIONALE_SPLITS:
        example["target"] = record["output"].strip()
    elif task == "gsm8k" and split == "train":
        example["target"] = f"{record['output']}\n{_answer_statement(record['answer'])}"
    else:
        example["target"] = _answer_statement(record["answer"])
    return example


def load_math(task: str, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """Loads an arithmetic task split in file order.

    Args:
        task: One of :data:`MATH_FILES`.
        split: ``"test"``, ``"train"`` or ``"dev"`` as listed in :data:`MATH_FILES`.
        limit: Keep only the first ``limit`` examples.
        seed: Unused (fixed files); accepted for a uniform loader signature.

    Returns:
        Dicts with ``instruction``, ``input``, ``output``, ``answer`` (string) plus ``task`` and ``target``.
    """
    del seed
    if task not in MATH_FILES:
        raise ValueError(f"unknown math task {task!r}; known: {sorted(MATH_FILES)}")
    records = read_jsonl(check_split(task, split, MATH_FILES[task]))
    if task == "gsm8k" and split == "train":
        records = [_from_openai_gsm8k(r) for r in records]
    if (task, split) in _RATIONALE_SPLITS:
        records = [r for r in records if r["output"].strip()]
    return [_to_example(r, task, split) for r in take(records, limit)]


def format_math(example: Example) -> tuple[str, str]:
    """Returns ``(prompt, target)``: the Alpaca no-input prompt and the rationale or answer statement."""
    return alpaca_prompt(example["instruction"]), example["target"]


def score_math(prediction: str, example: Example) -> float:
    """1.0 if ``prediction`` gets the example's ``answer`` right (letter match or numeric within 1e-3)."""
    gold = example["answer"]
    if _is_letter(gold):
        return float(extract_choice_letter(prediction) == gold.strip())
    return float(numbers_match(prediction, gold))
