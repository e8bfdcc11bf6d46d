"""benchmarks/shapes.py (the benchmark's task shapes) and shape_ceiling.py's work count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import shape_ceiling  # noqa: E402
import shapes  # noqa: E402


class Template:
    """A chat-template stand-in: the turns' roles and contents joined."""

    def apply_chat_template(self, turns, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(f"<{t['role']}>{t['content']}" for t in turns) + "<assistant>"


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_shape_keeps_the_extraction_answer_and_the_held_out_split(shape):
    task = shapes.task(shape)
    train, heldout = task.make_task(n_train=64, n_heldout=16)
    assert len(train) == 64 and len(heldout) == 16
    base_train, base_heldout = shapes.base.make_task(n_train=64, n_heldout=16)
    for item, base in zip(train + heldout, base_train + base_heldout):
        fields = json.loads(base["response"])
        sentence = base["prompt"].removeprefix(shapes.base.INSTRUCTION)
        assert item["prompt"].endswith(sentence)  # the sentence to extract from is the prompt's last part
        assert fields["name"] in item["response"] and fields["city"] in item["response"]
    assert not {json.loads(b["response"])["name"] for b in base_heldout} & set(shapes.base.NAMES_TRAIN)
    rendered = task.render(Template(), train[0]["prompt"])
    assert rendered.startswith("<system>") == (shape in ("short", "long_response"))
    long = {"long_prompt": ("prompt", 1000), "long_response": ("response", 700)}
    if shape in long:
        key, chars = long[shape]
        assert min(len(x[key]) for x in train) > chars
    assert task.answer_tokens >= (200 if shape == "long_response" else 16)


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="unknown shape 'tiny': one of extraction, short"):
        shapes.task("tiny")


def test_the_exact_floor_is_below_pyreft_and_shrinks_with_reuse_and_a_shared_prefix():
    rows = [(30, 14), (28, 15), (33, 12)]
    for setting in "abc":
        lowest = min(shape_ceiling.LAYERS[setting])
        alone = shape_ceiling.batch_flops(rows, 0, lowest, setting)
        shared = shape_ceiling.batch_flops(rows, 12, lowest, setting)
        assert alone["floor_epoch2"] < alone["floor_epoch1"] < alone["pyreft"]
        assert shared["floor_epoch1"] < alone["floor_epoch1"] and shared["pyreft"] == alone["pyreft"]
    late = shape_ceiling.batch_flops(rows, 0, 15, "a")
    early = shape_ceiling.batch_flops(rows, 0, 3, "b")
    assert late["floor_epoch1"] < early["floor_epoch1"]  # backward from the last prompt token, above block 15
