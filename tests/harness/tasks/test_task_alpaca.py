"""Instruction-following helpers: prompt building and the atomic AlpacaEval output writer."""

from __future__ import annotations

import json

import pytest

from reft.harness.tasks import get_task
from reft.harness.tasks.alpaca import format_instruction_prompt, write_alpaca_eval_outputs


class FakeChatTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_prompt_uses_alpaca_template_by_default() -> None:
    prompt = format_instruction_prompt("Say hi.")
    assert prompt.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_prompt_uses_chat_template_when_given() -> None:
    tokenizer = FakeChatTokenizer()
    assert format_instruction_prompt("Say hi.", tokenizer) == "<user>Say hi.</user><assistant>"
    assert tokenizer.calls == [([{"role": "user", "content": "Say hi."}], False, True)]


def test_prompt_falls_back_without_chat_template() -> None:
    tokenizer = FakeChatTokenizer()
    tokenizer.chat_template = None
    assert format_instruction_prompt("Say hi.", tokenizer).endswith("### Response:\n")


def test_write_outputs_roundtrip(tmp_path) -> None:
    examples = get_task("alpaca_eval").load("test", limit=3)
    records = [{**e, "output": f"reply {i}"} for i, e in enumerate(examples)]
    path = write_alpaca_eval_outputs(tmp_path / "sub" / "out.json", records, "reft-test")
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert [set(r) for r in rows] == [{"instruction", "output", "generator", "dataset"}] * 3
    assert rows[0]["instruction"] == examples[0]["instruction"]
    assert rows[0]["dataset"] == examples[0]["dataset"]
    assert {r["generator"] for r in rows} == {"reft-test"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]  # no temp file left


def test_write_outputs_failure_keeps_old_file(tmp_path) -> None:
    path = write_alpaca_eval_outputs(tmp_path / "out.json", [{"instruction": "a", "output": "b"}], "g")
    before = path.read_text(encoding="utf-8")
    assert json.loads(before)[0]["dataset"] == "alpaca_eval"
    with pytest.raises(ValueError, match="output"):
        write_alpaca_eval_outputs(path, [{"instruction": "a"}], "g")
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.needs_data
def test_instruction_tasks_load() -> None:
    alpaca = get_task("alpaca_eval").load("test")
    assert len({e["instruction"] for e in alpaca}) == 805
    assert get_task("alpaca_eval").score is None
    uf = get_task("ultrafeedback_1k").load("train", limit=2)
    assert uf[0]["target"] == uf[0]["output"] and uf[0]["input"] == ""
