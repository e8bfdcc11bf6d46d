"""The model card beside a saved adapter (reft.model_card): what it says, and that a user's README is kept."""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_llama

from reft import ReftConfig, ReftModel, get_reft_model
from reft.config import CONFIG_NAME
from reft.model_card import CARD_NAME, MARKER


def _front_matter(text: str) -> dict[str, object]:
    head = text.split("---\n")[1]
    out: dict[str, object] = {}
    for line in head.splitlines():
        if line.startswith("- "):
            out.setdefault("tags", []).append(line[2:])
        elif ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip() or []
    return out


def test_every_adapter_of_a_save_gets_a_card_that_says_what_it_is(tmp_path):
    model = tiny_llama()
    model.config._name_or_path = "org/tiny-llama"
    reft_model = get_reft_model(model, ReftConfig(layers="1;2", positions="f3+l2", tied=False, rank=2))
    reft_model.add_adapter("style", ReftConfig(layers="0", positions="l1", intervention="direft", rank=3))
    reft_model.save_pretrained(tmp_path, training={"data": "train.jsonl", "metrics": {"train_loss": 0.12345}})
    for name, folder in (("default", tmp_path), ("style", tmp_path / "style")):
        card = (folder / CARD_NAME).read_text()
        meta = _front_matter(card)
        assert meta["library_name"] == "reft" and meta["base_model"] == "org/tiny-llama"
        assert MARKER in card.splitlines()
        params = sum(p.numel() for p in reft_model.adapters[name].parameters())
        assert f"{params:,} trainable parameters" in card
        block = re.search(r"```json\n(.*?)\n```", card, re.S).group(1)
        assert json.loads(block) == json.loads((folder / CONFIG_NAME).read_text())
        assert "- data: train.jsonl" in card and "| train_loss | 0.1235 |" in card
        assert 'from_pretrained("org/tiny-llama")' in card
    default = (tmp_path / CARD_NAME).read_text()
    assert "LoReFT of rank 2 on the block output of layer(s) 1, 2 (of 4), at the first 3 and the last 2 prompt " \
           "positions (one Φ each for the first and the last, untied)" in default
    style = (tmp_path / "style" / CARD_NAME).read_text()
    assert "DiReFT of rank 3 on the block output of layer(s) 0 (of 4), at the last 1 prompt positions" in style
    assert "adapter_name='style'" in style and "`style`" in style


def test_a_readme_of_the_users_is_never_replaced_and_reft_s_own_is(tmp_path):
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1", positions="l1"))
    reft_model.save_pretrained(tmp_path / "a")
    card = tmp_path / "a" / CARD_NAME
    first = card.read_text()
    reft_model.save_pretrained(tmp_path / "a", training={"epochs": 2})  # reft's card: replaced
    assert card.read_text() != first and "- epochs: 2" in card.read_text()
    card.write_text(card.read_text().replace(MARKER + "\n", "") + "\nmy notes\n")  # edited, marker removed
    mine = card.read_text()
    reft_model.save_pretrained(tmp_path / "a", training={"epochs": 3})
    assert card.read_text() == mine
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / CARD_NAME).write_text("# my project\n")
    reft_model.save_pretrained(tmp_path / "b", overwrite=True)
    assert (tmp_path / "b" / CARD_NAME).read_text() == "# my project\n"
    assert (tmp_path / "b" / CONFIG_NAME).is_file()


def test_from_pretrained_on_named_adapters_without_a_top_level_one_lists_them(tmp_path):
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1", positions="l1"))
    reft_model.add_adapter("b_task", ReftConfig(layers="1", positions="l1"))
    reft_model.add_adapter("a_style", ReftConfig(layers="0", positions="l1"))
    reft_model.save_pretrained(tmp_path, selected_adapters=["b_task", "a_style"])
    with pytest.raises(FileNotFoundError, match=r"holds named adapters in sub-folders \(a_style, b_task\) but no "
                                                r"top-level adapter: load one with ReftModel\.from_pretrained\(model, "
                                                r"'.*a_style', adapter_name='a_style'\)"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path)
    loaded = ReftModel.from_pretrained(tiny_llama(), tmp_path / "a_style", adapter_name="a_style")
    loaded.load_adapter(tmp_path / "b_task", adapter_name="b_task")
    assert sorted(loaded.adapters) == ["a_style", "b_task"]
