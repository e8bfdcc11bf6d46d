"""Property-based tests (hypothesis) of the position rule and of ReftConfig's JSON round trip."""

from __future__ import annotations

import warnings

import torch
from conftest import position_loop as _loop
from hypothesis import given, settings
from hypothesis import strategies as st

from reft import ReftConfig, prompt_positions
from reft.config import COMPONENTS
from reft.interventions import INTERVENTIONS
from reft.positions import PositionSpec

SETTINGS = settings(max_examples=200, deadline=None)


@st.composite
def batches(draw):
    """Rows of (prompt length n ≥ 1, extra response tokens, padding), a spec, and a padding side."""
    rows = draw(st.lists(st.tuples(st.integers(1, 24), st.integers(0, 6), st.integers(0, 5)), min_size=1,
                         max_size=5))
    first, last = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    if first + last == 0:
        last = 1
    return rows, PositionSpec(first, last)


def _mask(rows, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """attention_mask [B, T], prompt lengths [B], index of each row's first real token [B]."""
    width = max(n + extra + pad for n, extra, pad in rows)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    starts = []
    for i, (n, extra, _) in enumerate(rows):
        start = width - (n + extra) if side == "left" else 0
        mask[i, start:start + n + extra] = 1
        starts.append(start)
    return mask, torch.tensor([n for n, _, _ in rows]), torch.tensor(starts)




@SETTINGS
@given(batches(), st.sampled_from(["left", "right"]), st.sampled_from(["split", "half"]))
def test_positions_in_range_inside_the_prompt_and_equal_to_a_loop(batch, side, rule):
    rows, spec = batch
    mask, lengths, starts = _mask(rows, side)
    got = prompt_positions(mask, lengths, spec, rule)
    assert got.shape == (len(rows), spec.width) and got.dtype == torch.long
    for i, (n, _, _) in enumerate(rows):
        row = got[i].tolist()
        start = int(starts[i])
        real = [p for p in row if p >= 0]
        assert all(start <= p < start + n for p in real)  # inside the prompt, never the response or padding
        assert all(p < mask.shape[1] and bool(mask[i, p]) for p in real)
        assert row == [start + r if r >= 0 else -1 for r in _loop(n, spec.first, spec.last, rule)]
        prefix = [p for p in row[: spec.first] if p >= 0]
        suffix = [p for p in row[spec.first:] if p >= 0]
        assert not set(prefix) & set(suffix)  # prefix and suffix never overlap
        assert len(set(prefix)) == len(prefix) and len(set(suffix)) == len(suffix)
        assert real or (rule == "half" and n == 1)  # every prompt but pyreft's 1-token one gets a position


@SETTINGS
@given(batches())
def test_left_and_right_padding_agree_after_the_shift(batch):
    rows, spec = batch
    right_mask, lengths, _ = _mask(rows, "right")
    left_mask, _, shift = _mask(rows, "left")
    right = prompt_positions(right_mask, lengths, spec)
    left = prompt_positions(left_mask, lengths, spec)
    assert torch.equal(torch.where(right >= 0, right + shift[:, None], -1), left)


_names = st.sampled_from(sorted(INTERVENTIONS))


@st.composite
def configs(draw):
    hidden = draw(st.one_of(st.none(), st.integers(8, 4096)))
    num_layers = draw(st.one_of(st.none(), st.integers(1, 64)))
    if num_layers is None:
        layers = draw(st.one_of(st.just("all"), st.lists(st.integers(0, 100), min_size=1, max_size=6)))
    else:
        layers = draw(st.one_of(st.just("all"),
                                st.lists(st.integers(-num_layers, num_layers - 1), min_size=1, max_size=6)))
    first, last = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    return ReftConfig(
        layers=layers, component=draw(st.sampled_from(COMPONENTS)),
        positions=str(PositionSpec(first, last or (0 if first else 1))), tied=draw(st.booleans()),
        rank=draw(st.integers(1, hidden or 64)), intervention=draw(_names),
        dropout=draw(st.floats(0.0, 0.99, allow_nan=False)),
        act=draw(st.sampled_from([None, "relu", "gelu", "silu", "tanh", "sigmoid", "linear"])),
        dtype=draw(st.sampled_from(["float32", "bfloat16", "float64", "float16"])),
        layers_path=draw(st.sampled_from([None, "model.layers", "transformer.h"])),
        base_model=draw(st.one_of(st.none(), st.text(max_size=30))),
        model_type=draw(st.one_of(st.none(), st.sampled_from(["llama", "gpt2", "bert"]))),
        hidden_size=hidden, num_layers=num_layers,
        prompt_format=draw(st.one_of(st.none(), st.fixed_dictionaries({
            "chat_template": st.booleans(),
            "template_sha256": st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64))}))),
    )


@SETTINGS
@given(configs())
def test_config_json_round_trip(config):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a round trip must not produce "unknown key" warnings
        again = ReftConfig.from_json(config.to_json())
    assert again == config
    assert again.to_json() == config.to_json()
    assert ReftConfig.from_dict(again.to_dict()) == config
    if config.layers != "all":
        assert again.keys() == config.keys()
