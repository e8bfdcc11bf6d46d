"""The position convention: ⌊n/2⌋ rule, padding sides, empty slots, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import position_loop as _loop

from reft import ReftConfig, parse_positions, prompt_positions, split_counts
from reft.positions import PositionSpec


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


@pytest.mark.parametrize("rule", ["split", "half"])
@pytest.mark.parametrize("spec", ["f7+l7", "f2+l3", "l1", "f3", "f1+l1"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_table_matches_loop(spec, side, rule):
    sp = parse_positions(spec)
    lengths = [1, 2, 3, 5, 9, 14, 20]
    width = 24
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "left":
            mask[i, width - n:] = 1
        else:
            mask[i, :n] = 1
    got = prompt_positions(mask, None, spec, rule)
    assert got.shape == (len(lengths), sp.width)
    for i, n in enumerate(lengths):
        start = width - n if side == "left" else 0
        expect = [start + j if j >= 0 else -1 for j in _loop(n, sp.first, sp.last, rule)]
        assert got[i].tolist() == expect
        counts = (int((got[i, :sp.first] >= 0).sum()), int((got[i, sp.first:] >= 0).sum()))
        assert counts == split_counts(n, sp.first, sp.last, rule)


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


@pytest.mark.parametrize("n,expect", [(1, (0, 0)), (2, (1, 1)), (3, (1, 1)), (5, (2, 2)), (13, (6, 6)),
                                      (14, (7, 7)), (40, (7, 7))])
def test_pyreft_half_rule(n, expect):
    assert split_counts(n, 7, 7, "half") == expect
    # one part is halved too: pyreft's f3 edits 2 tokens of a 4-token [CLS] a b [SEP], reft's default 3
    assert split_counts(4, 3, 0, "half") == (2, 0) and split_counts(4, 3, 0) == (3, 0)


def test_unknown_rule_is_refused_naming_both():
    with pytest.raises(ValueError, match="position_rule 'pyreft'.*'split'.*'half'"):
        split_counts(3, 1, 1, "pyreft")
    with pytest.raises(ValueError, match="position_rule"):
        prompt_positions(torch.ones(1, 3), None, "l1", "halve")
    with pytest.raises(ValueError, match="position_rule"):
        ReftConfig(position_rule="halve")


def test_positions_fit_check_follows_the_rule():
    from reft.positions import check_positions_fit

    assert check_positions_fit("f3", 5).width == 3  # 4 prompt tokens hold f3 under split
    with pytest.raises(ValueError, match=r"ask for 3 prompt tokens \(position_rule 'half' gives them to prompts "
                                         r"of ≥ 6\).*fits: f2"):
        check_positions_fit("f3", 5, "half")
    assert check_positions_fit("f3", 7, "half").width == 3


def test_config_carries_the_rule_per_spec_and_round_trips():
    cfg = ReftConfig(layers=[0, 1], positions="f3", position_rule="half",
                     representations=[{"layers": [0]}, {"layers": [1], "position_rule": "split"}])
    assert [s.position_rule for s in cfg.specs] == ["half", "split"]
    assert ReftConfig.from_json(cfg.to_json()) == cfg
    # a config written before the field existed reads as the rule it was trained with
    old = {k: v for k, v in ReftConfig(positions="f3").to_dict().items() if k != "position_rule"}
    assert ReftConfig.from_dict(old).position_rule == "split"


def test_plan_uses_each_specs_rule():
    from reft.model.plan import build_plan

    mask = torch.ones(2, 6, dtype=torch.long)
    lengths = torch.tensor([4, 6])
    cfg = ReftConfig(layers=[0, 1], positions="f3",
                     representations=[{"layers": [0], "position_rule": "half"}, {"layers": [1]}])
    plan = build_plan({"a": cfg}, {"a": ([0, 1], [1.0, 1.0])}, mask, lengths)
    assert plan[("a", 0)].positions.tolist() == [[0, 1, -1], [0, 1, 2]]
    assert plan[("a", 1)].positions.tolist() == [[0, 1, 2], [0, 1, 2]]
