"""GLUE classification as text generation, for decoder models: ``sst2_gen``, ``cola_gen``, ``mrpc_gen``, ``rte_gen``.

The same examples and seeded dev/test halves as the encoder tasks (:mod:`reft.harness.tasks.glue`), so a decoder
run and an encoder run of one seed are scored on the same held-out rows. Prompt: the Alpaca no-input template
around a task instruction, the text and an ``Answer format: a/b`` line (the commonsense tasks' layout); target: the
label word (``positive`` / ``negative`` for SST-2). A generation is scored by the label word that occurs first in
it (whole words, case-insensitive); no label word scores 0.
"""

from __future__ import annotations

import re

from reft.harness.tasks._io import Example, alpaca_prompt
from reft.harness.tasks.glue import load_glue

#: task -> (instruction, label words by class id)
GLUE_GENERATION: dict[str, tuple[str, tuple[str, ...]]] = {
    "sst2": ("Is the sentiment of this movie-review sentence positive or negative?", ("negative", "positive")),
    "cola": ("Is this English sentence grammatically acceptable or unacceptable?", ("unacceptable", "acceptable")),
    "mrpc": ("Do these two sentences mean the same thing? Answer yes or no.", ("no", "yes")),
    "rte": ("Does the first sentence entail the second? Answer yes or no.", ("yes", "no")),
}


def generation_name(task: str) -> str:
    """Registry name of the generation form of GLUE task ``task`` (``sst2`` -> ``sst2_gen``)."""
    return f"{task}_gen"


def load_glue_generation(task: str, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """:func:`reft.harness.tasks.glue.load_glue` rows with ``choices`` (the label words) and ``answer`` (the gold
    word) added; ``seed`` selects the dev/test division as there."""
    if task not in GLUE_GENERATION:
        raise ValueError(f"no generation form of GLUE task {task!r}; known: {sorted(GLUE_GENERATION)}")
    words = GLUE_GENERATION[task][1]
    return [ex | {"choices": words, "answer": words[int(ex["label"])]} for ex in load_glue(task, split, limit, seed)]


def format_glue_generation(example: Example) -> tuple[str, str]:
    """``(prompt, target)``: the instruction, the text (pairs as ``Sentence 1:`` / ``Sentence 2:``), the answer
    format, in the Alpaca template; the target is the gold label word."""
    instruction, words = GLUE_GENERATION[example["task"]]
    text = example["text"]
    body = (f"Sentence: {text}" if isinstance(text, str)
            else f"Sentence 1: {text[0]}\nSentence 2: {text[1]}")
    return alpaca_prompt(f"{instruction}\n\n{body}\n\nAnswer format: {'/'.join(words)}"), example["answer"]


def extract_label_word(prediction: str, words: tuple[str, ...]) -> str | None:
    """The label word that occurs first in ``prediction`` as a whole word (case-insensitive), else None."""
    found = [(m.start(), w) for w in words if (m := re.search(rf"\b{re.escape(w)}\b", prediction, re.IGNORECASE))]
    return min(found)[1] if found else None


def score_glue_generation(prediction: str, example: Example) -> float:
    """1.0 if the first label word of ``prediction`` is the gold word, else 0.0."""
    return float(extract_label_word(prediction, tuple(example["choices"])) == example["answer"])
