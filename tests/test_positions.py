"""The position convention: ⌊n/2⌋ rule, padding sides, empty slots, errors."""

from __future__ import annotations

import pytest
import torch

from reft import ReftConfig, parse_positions, prompt_positions, split_counts
from reft.positions import PositionSpec


def _loop(n: int, p: int, s: int) -> list[int]:
    """Direct transcription of the rule: relative positions, -1 for empty slots."""
    if p and s and n < p + s:
        pp, ss = min(p, n // 2), min(s, -(-n // 2))
    else:
        pp, ss = min(p, n), min(s, n)
    first = list(range(pp)) + [-1] * (p - pp)
    last = list(range(n - ss, n)) + [-1] * (s - ss)
    return first + last


@pytest.mark.parametrize("spec,expect", [("f7+l7", (7, 7)), ("l1", (0, 1)), ("f3", (3, 0)), (" f2 + l5 ", (2, 5))])
def test_parse(spec, expect):
    assert (parse_positions(spec).first, parse_positions(spec).last) == expect
    assert parse_positions(str(parse_positions(spec))) == parse_positions(spec)


@pytest.mark.parametrize("bad", ["", "x7", "l7+f7", "f7+", "7", "f0", "f0+l0", "first7"])
def test_parse_errors(bad):
    with pytest.raises(ValueError, match="positions"):
        parse_positions(bad)


@pytest.mark.parametrize("n,expect", [(1, (0, 1)), (2, (1, 1)), (3, (1, 2)), (5, (2, 3)), (13, (6, 7)),
                                      (14, (7, 7)), (40, (7, 7))])
def test_half_rule(n, expect):
    assert split_counts(n, 7, 7) == expect
    p, s = expect
    assert p + s <= n  # never overlapping


def test_one_sided_specs_clip_to_n():
    assert split_counts(3, 5, 0) == (3, 0)
    assert split_counts(3, 0, 5) == (0, 3)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="empty prompt"):
        split_counts(0, 1, 1)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="row 1 has an empty prompt"):
        prompt_positions(mask, None, "l1")


@pytest.mark.parametrize("spec", ["f7+l7", "f2+l3", "l1", "f3", "f1+l1"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_table_matches_loop(spec, side):
    sp = parse_positions(spec)
    lengths = [1, 2, 3, 5, 9, 14, 20]
    width = 24
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "left":
            mask[i, width - n:] = 1
        else:
            mask[i, :n] = 1
    got = prompt_positions(mask, None, spec)
    assert got.shape == (len(lengths), sp.width)
    for i, n in enumerate(lengths):
        start = width - n if side == "left" else 0
        expect = [start + j if j >= 0 else -1 for j in _loop(n, sp.first, sp.last)]
        assert got[i].tolist() == expect


def test_prompt_lengths_inside_longer_rows():
    # training rows: prompt of n tokens followed by the response; positions stay inside the prompt
    mask = torch.ones(2, 10, dtype=torch.long)
    got = prompt_positions(mask, torch.tensor([4, 1]), "f1+l2")
    assert got.tolist() == [[0, 2, 3], [-1, 0, -1]]
    with pytest.raises(ValueError, match="exceeds"):
        prompt_positions(mask, torch.tensor([11, 1]), "l1")


def test_same_relative_positions_left_and_right():
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    left = right.flip(1)
    shift = (right == 0).sum(1, keepdim=True)
    r, ll = prompt_positions(right, None, "f2+l2"), prompt_positions(left, None, "f2+l2")
    assert torch.equal(torch.where(r >= 0, r + shift, -1), ll)


def test_tied_and_untied_keys():
    assert ReftConfig(layers=[1, 3], positions="f7+l7", tied=True).keys() == ["layer1", "layer3"]
    assert ReftConfig(layers=[1], positions="f7+l7", tied=False).keys() == ["layer1_first", "layer1_last"]
    # with one part only, untied has nothing to untie
    assert ReftConfig(layers=[2], positions="l1", tied=False).keys() == ["layer2"]
    assert isinstance(parse_positions("f1"), PositionSpec)
