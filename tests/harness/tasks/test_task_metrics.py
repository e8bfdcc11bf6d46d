"""Metric functions and answer extractors of reft.harness.tasks.metrics on hand-made inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reft.harness.tasks.metrics import (
    accuracy,
    average_ranks,
    commonsense_labels,
    extract_choice_letter,
    extract_commonsense_label,
    extract_last_number,
    f1_binary,
    matthews_corrcoef,
    numbers_match,
    parse_numbers,
    pearson,
    spearman,
)

# A 2x2 table: tp=3, tn=2, fp=1, fn=2 (positive class = 1).
LABELS = [1, 1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 0, 0, 0, 1]


def test_accuracy() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(5 / 8)
    assert accuracy(["a", "b"], ["a", "c"]) == 0.5


def test_metrics_reject_bad_lengths() -> None:
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    with pytest.raises(ValueError):
        pearson([], [])


def test_mcc_two_by_two_table() -> None:
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(PREDS, LABELS) == pytest.approx(expected)


def test_mcc_edge_cases() -> None:
    assert matthews_corrcoef(LABELS, LABELS) == pytest.approx(1.0)
    assert matthews_corrcoef([1 - y for y in LABELS], LABELS) == pytest.approx(-1.0)
    assert matthews_corrcoef([1] * len(LABELS), LABELS) == 0.0  # constant prediction: undefined -> 0


def test_f1_binary() -> None:
    precision, recall = 3 / 4, 3 / 5
    assert f1_binary(PREDS, LABELS) == pytest.approx(2 * precision * recall / (precision + recall))
    assert f1_binary([0, 0], [1, 0]) == 0.0


def test_pearson_matches_formula() -> None:
    xs, ys = [1.0, 2.0, 3.0, 4.0, 6.0], [2.0, 1.0, 4.0, 3.0, 7.0]
    mx, my = sum(xs) / 5, sum(ys) / 5
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    expected = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    assert pearson(xs, ys) == pytest.approx(expected)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_average_ranks_ties() -> None:
    assert average_ranks([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_with_ties_is_pearson_of_ranks() -> None:
    xs, ys = [10, 20, 20, 5, 20], [1.0, 3.0, 2.0, 0.5, 2.0]
    x_ranks, y_ranks = [2.0, 4.0, 4.0, 1.0, 4.0], [2.0, 5.0, 3.5, 1.0, 3.5]
    assert spearman(xs, ys) == pytest.approx(pearson(x_ranks, y_ranks))
    assert spearman([1, 2, 3], [10, 100, 1000]) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3)), min_size=3, max_size=40))
def test_correlations_match_scipy(pairs: list[tuple[int, int]]) -> None:
    stats = pytest.importorskip("scipy.stats")
    xs, ys = [float(p[0]) for p in pairs], [float(p[1]) for p in pairs]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return
    assert pearson(xs, ys) == pytest.approx(stats.pearsonr(xs, ys)[0], abs=1e-9)
    assert spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys)[0], abs=1e-9)
    assert average_ranks(xs).tolist() == pytest.approx(stats.rankdata(xs).tolist())


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        ("the correct answer is solution2. solution1 is wrong", "piqa", "solution2"),
        ("solution1 looks odd, but the correct answer is solution2", "piqa", "solution2"),
        ("The correct answer is True", "boolq", "true"),
        ("It is untrue that... the correct answer is false", "boolq", "false"),
        ("the correct answer is answer3", "siqa", "answer3"),
        ("the correct answer is answer4", "siqa", ""),  # SIQA has three options
        ("the correct answer is Answer 2", "social_i_qa", "answer2"),
        ("the correct answer is ending4</s>", "hellaswag", "ending4"),
        ("the correct answer is option1", "winogrande", "option1"),
        ("the correct answer is answer5", "arc_e", "answer5"),
        ("the correct answer is answer10", "obqa", ""),
        ("I think answer2. the correct answer is nothing", "arc_c", "answer2"),  # fallback: first anywhere
        ("no idea", "boolq", ""),
        ("İİ THE CORRECT ANSWER IS ending2, not ending1", "hellaswag", "ending2"),
    ],
)
def test_extract_commonsense_label(text: str, task: str, expected: str) -> None:
    assert extract_commonsense_label(text, task) == expected


def test_commonsense_label_sets() -> None:
    assert commonsense_labels("boolq") == ("true", "false")
    assert commonsense_labels("hellaswag") == ("ending1", "ending2", "ending3", "ending4")
    assert commonsense_labels("ARC-Easy")[-1] == "answer5"
    with pytest.raises(ValueError, match="known"):
        commonsense_labels("gsm8k")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(B)", "B"),
        ("A train leaves... The answer is (D).", "D"),
        ("The answer is: option C", "C"),
        ("Both A and B fail; The answer is E", "E"),
        ("Definitely not sure", ""),
        ("Answer: b", ""),
    ],
)
def test_extract_choice_letter(text: str, expected: str) -> None:
    assert extract_choice_letter(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 1,234.5", 1234.5),
        ("He has 3 apples and 1,000,000 dollars.", 1_000_000.0),
        ("So 5 - 8 = -3. The answer is -3.", -3.0),
        ("x=-2", -2.0),
        ("3-2", 2.0),
        ("The answer is 3/4.", 0.75),
        ("It costs $.5 now", 0.5),
        ("numbers 1, 234", 234.0),
        ("no digits", None),
    ],
)
def test_extract_last_number(text: str, expected: float | None) -> None:
    assert extract_last_number(text) == (None if expected is None else pytest.approx(expected))


def test_parse_numbers_order() -> None:
    assert parse_numbers("48/2 = 24 clips, then 48+24 = 72") == [24.0, 24.0, 48.0, 24.0, 72.0]


def test_numbers_match_tolerance() -> None:
    assert numbers_match("The answer is 1,080.", "1080.0")
    assert numbers_match("The answer is 0.3333", "0.3333333333333333")
    assert not numbers_match("The answer is 0.332", "0.3333333333333333")
    assert not numbers_match("no number", "4")
    assert numbers_match("-15", -15.0)
