"""Evaluation metrics and answer extractors for the ReFT task suite (pure Python + numpy, no model code).

Classification metrics (GLUE): :func:`accuracy`, :func:`matthews_corrcoef`, :func:`f1_binary`, :func:`pearson`,
:func:`spearman`. Generation scorers: :func:`extract_commonsense_label` (LLM-Adapters label convention after
the trigger ``"the correct answer is"``), :func:`extract_choice_letter` (AQuA / MathQA), and
:func:`extract_last_number` / :func:`numbers_match` (GSM8K, MAWPS, SVAMP, AddSub, MultiArith, SingleEq).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

COMMONSENSE_TRIGGER = "the correct answer is"
MATH_TRIGGER = "The answer is"
NUMBER_TOLERANCE = 1e-3

# (label stem, first index, last index); the stem "" with no indices means the boolean labels true/false.
_LABEL_SETS: dict[str, tuple[str, int, int]] = {
    "boolq": ("", 0, 0),
    "piqa": ("solution", 1, 2),
    "siqa": ("answer", 1, 3),
    "hellaswag": ("ending", 1, 4),
    "winogrande": ("option", 1, 2),
    "arc_e": ("answer", 1, 5),
    "arc_c": ("answer", 1, 5),
    "obqa": ("answer", 1, 5),
}
_TASK_ALIASES = {
    "social_i_qa": "siqa",
    "arc-easy": "arc_e",
    "arc_easy": "arc_e",
    "arc-challenge": "arc_c",
    "arc_challenge": "arc_c",
    "openbookqa": "obqa",
}
_THOUSANDS_SEP = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"(?<![\w.])(-?)(\d+(?:\.\d+)?|\.\d+)(?:/(\d+(?:\.\d+)?))?")
_COMMONSENSE_TRIGGER_RE = re.compile(re.escape(COMMONSENSE_TRIGGER), re.IGNORECASE)
_MATH_TRIGGER_RE = re.compile(re.escape(MATH_TRIGGER), re.IGNORECASE)
_LETTER = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")


def _check_pair(preds: Sequence, labels: Sequence) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"preds and labels differ in length: {len(preds)} != {len(labels)}")
    if len(preds) == 0:
        raise ValueError("cannot compute a metric on zero examples")


def accuracy(preds: Sequence, labels: Sequence) -> float:
    """Fraction of positions where ``preds[i] == labels[i]``."""
    _check_pair(preds, labels)
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA), multiclass form; 0.0 when it is undefined (a constant column).

    For two classes this equals ``(tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))``.
    """
    _check_pair(preds, labels)
    classes = sorted(set(preds) | set(labels))
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for p, y in zip(preds, labels):
        confusion[index[y], index[p]] += 1
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    total, correct = confusion.sum(), np.trace(confusion)
    numerator = correct * total - pred_counts @ true_counts
    denominator = math.sqrt((total**2 - pred_counts @ pred_counts) * (total**2 - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def f1_binary(preds: Sequence[int], labels: Sequence[int], pos_label: int = 1) -> float:
    """F1 of the positive class (MRPC); 0.0 when there is no true positive."""
    _check_pair(preds, labels)
    tp = sum(p == pos_label and y == pos_label for p, y in zip(preds, labels))
    fp = sum(p == pos_label and y != pos_label for p, y in zip(preds, labels))
    fn = sum(p != pos_label and y == pos_label for p, y in zip(preds, labels))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either input is constant (the coefficient is undefined there)."""
    _check_pair(xs, ys)
    x = np.asarray(xs, dtype=np.float64) - np.mean(xs)
    y = np.asarray(ys, dtype=np.float64) - np.mean(ys)
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denominator) if denominator > 0 else 0.0


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (like ``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks."""
    _check_pair(xs, ys)
    return pearson(average_ranks(xs), average_ranks(ys))


def _canonical_task(task: str) -> str:
    key = task.lower()
    key = _TASK_ALIASES.get(key, key)
    if key not in _LABEL_SETS:
        raise ValueError(f"no commonsense label set for task {task!r}; known: {sorted(_LABEL_SETS)}")
    return key


def commonsense_labels(task: str) -> tuple[str, ...]:
    """The label strings a commonsense task can take, e.g. ``("solution1", "solution2")`` for PIQA."""
    stem, first, last = _LABEL_SETS[_canonical_task(task)]
    if not stem:
        return ("true", "false")
    return tuple(f"{stem}{i}" for i in range(first, last + 1))


def _first_label(task: str, text: str) -> str:
    """First label of ``task``'s label set in ``text``, canonicalised to lower case, or ``""``."""
    stem, first, last = _LABEL_SETS[_canonical_task(task)]
    if not stem:
        match = re.search(r"\b(true|false)\b", text, re.IGNORECASE)
        return match.group(1).lower() if match else ""
    match = re.search(rf"\b{stem}\s?([{first}-{last}])\b", text, re.IGNORECASE)
    return f"{stem}{match.group(1)}" if match else ""


def extract_commonsense_label(text: str, task: str) -> str:
    """Extracts the predicted label from a commonsense generation.

    Looks for the first label of the task's label set after the first ``"the correct answer is"``
    (case-insensitive); if there is none there, takes the first label anywhere in the text.

    Args:
        text: Model generation (the response part only).
        task: Task name (``boolq``, ``piqa``, ``siqa``, ``hellaswag``, ``winogrande``, ``arc_e``, ``arc_c``,
            ``obqa``; the data-directory spellings such as ``social_i_qa`` are accepted too).

    Returns:
        The label in canonical lower-case form (e.g. ``"answer3"``, ``"true"``), or ``""`` if none is found.
    """
    trigger = _COMMONSENSE_TRIGGER_RE.search(text)
    if trigger is not None:
        found = _first_label(task, text[trigger.end() :])
        if found:
            return found
    return _first_label(task, text)


def extract_choice_letter(text: str) -> str:
    """Extracts a multiple-choice letter A-E (AQuA, MathQA).

    Takes the first standalone capital letter A-E after the first ``"The answer is"`` (case-insensitive) when
    the trigger is present and followed by one, else the first standalone A-E anywhere. ``"(B)"`` gives ``"B"``.

    Returns:
        The letter, or ``""`` if none is found.
    """
    trigger = _MATH_TRIGGER_RE.search(text)
    if trigger is not None:
        match = _LETTER.search(text, trigger.end())
        if match:
            return match.group(1)
    match = _LETTER.search(text)
    return match.group(1) if match else ""


def parse_numbers(text: str) -> list[float]:
    """All numbers in ``text`` in order: thousands separators (``1,000``), signs, decimals and ``a/b`` fractions.

    A minus sign counts only when it does not follow a word character, so ``"3-2"`` gives ``[3, 2]`` while
    ``"x = -2"`` gives ``[-2]``. A fraction with a zero denominator yields its numerator.
    """
    numbers = []
    for sign, value, denominator in _NUMBER.findall(_THOUSANDS_SEP.sub("", text)):
        number = float(value)
        if denominator and float(denominator) != 0:
            number /= float(denominator)
        numbers.append(-number if sign else number)
    return numbers


def extract_last_number(text: str) -> float | None:
    """The last number in ``text`` (see :func:`parse_numbers`), or None if there is none."""
    numbers = parse_numbers(text)
    return numbers[-1] if numbers else None


def numbers_match(prediction: str, gold: str | float, tol: float = NUMBER_TOLERANCE) -> bool:
    """True if the last number of ``prediction`` is within ``tol`` (strictly) of the gold answer."""
    predicted = extract_last_number(prediction)
    if predicted is None:
        return False
    gold_value = float(str(gold).replace(",", "")) if isinstance(gold, str) else float(gold)
    return abs(predicted - gold_value) < tol
