"""GLUE as generation (``sst2_gen`` …): the encoder task's rows and halves, the prompt layout, label-word scoring."""

from __future__ import annotations

import pytest

from reft.harness.tasks import get_task
from reft.harness.tasks.glue_generation import GLUE_GENERATION, extract_label_word


@pytest.mark.parametrize("task", sorted(GLUE_GENERATION))
def test_same_rows_and_halves_as_the_encoder_task(task: str) -> None:
    gen, enc = get_task(f"{task}_gen"), get_task(task)
    assert gen.family == "glue_generation"
    for split in ("dev", "test"):
        rows = gen.load(split, seed=42)
        assert [r["idx"] for r in rows] == [r["idx"] for r in enc.load(split, seed=42)]
        words = GLUE_GENERATION[task][1]
        assert all(r["answer"] == words[r["label"]] for r in rows)
    prompt, target = gen.format(gen.load("train", limit=1)[0])
    assert target in GLUE_GENERATION[task][1]
    assert f"Answer format: {'/'.join(GLUE_GENERATION[task][1])}" in prompt
    assert ("Sentence 1:" in prompt) == isinstance(enc.load("train", limit=1)[0]["text"], tuple)


@pytest.mark.parametrize(("prediction", "expected"), [
    ("positive", "positive"), ("Negative.", "negative"), ("the answer is positive, not negative", "positive"),
    ("negative rather than positive", "negative"), ("positively", None), ("", None)])
def test_extract_label_word_takes_the_first_whole_word(prediction: str, expected: str | None) -> None:
    assert extract_label_word(prediction, ("negative", "positive")) == expected


def test_acceptable_inside_unacceptable_is_not_a_match() -> None:
    words = GLUE_GENERATION["cola"][1]
    assert extract_label_word("unacceptable", words) == "unacceptable"
    assert extract_label_word("acceptable", words) == "acceptable"
    ex = get_task("cola_gen").load("dev", seed=0, limit=1)[0]
    score = get_task("cola_gen").score
    assert score(ex["answer"], ex) == 1.0
    assert score(next(w for w in words if w != ex["answer"]), ex) == 0.0
