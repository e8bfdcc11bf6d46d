"""The prompt format of training (chat template or not, which template) is part of the adapter and used by default."""

from __future__ import annotations

import json
import re
import warnings

import pytest
from _reliability_common import byte_tokenizer, one_thread, save_tiny_causal_lm, tiny_causal_lm  # noqa: F401
from conftest import tiny_llama

import reft.generation
import reft.harness.evaluate
from reft import ReftConfig, ReftModel, get_reft_model
from reft.cli.main import main as cli_main
from reft.config import CONFIG_NAME
from reft.generation import generate_texts, prompt_format, resolve_chat_template

DATA = b'{"prompt": "hello there", "response": "hi"}\n{"prompt": "good bye", "response": "bye now"}\n'


@pytest.fixture(scope="module")
def plain_adapter(tmp_path_factory):
    """A tiny model whose tokenizer has a chat template, and an adapter trained with --no-chat-template."""
    root = tmp_path_factory.mktemp("fmt")
    model = save_tiny_causal_lm(root / "tiny", context=2048)  # task prompts are long in bytes
    (root / "data.jsonl").write_bytes(DATA)
    assert cli_main(["train", "--model", model, "--data", str(root / "data.jsonl"), "--out", str(root / "run"),
                     "--layers", "1;2", "--positions", "f1+l1", "--epochs", "1", "--batch-size", "2",
                     "--max-length", "64", "--no-chat-template"]) == 0
    return model, str(root / "run" / "adapter")


def _spy(monkeypatch, module) -> list[list[str]]:
    """Record the prompt texts that reach generate_texts (as looked up in ``module``)."""
    seen: list[list[str]] = []
    real = reft.generation.generate_texts

    def spy(model, tokenizer, texts, **kwargs):
        seen.append(list(texts))
        return real(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(module, "generate_texts", spy)
    return seen


def test_generate_and_eval_use_the_adapters_prompt_format_and_warn_when_told_otherwise(plain_adapter, tmp_path,
                                                                                     monkeypatch, capsys):
    model, adapter = plain_adapter
    config = json.loads(open(f"{adapter}/{CONFIG_NAME}").read())
    assert config["prompt_format"] == {"chat_template": False, "template_sha256": None}
    seen = _spy(monkeypatch, reft.generation)
    base = ["generate", "--model", model, "--adapter", adapter, "--prompt", "hello there", "--max-new-tokens", "2"]
    assert cli_main(base) == 0
    assert seen[-1] == ["hello there"]  # plain, as in training (the tokenizer has a chat template)
    assert "warning" not in capsys.readouterr().err
    assert cli_main(base + ["--chat-template"]) == 0
    assert seen[-1] == ["<u>hello there</u><a>"]
    assert re.search(r"reft generate: warning: the adapter was trained without the chat template; prompts are now "
                     r"built with it and differ from training", capsys.readouterr().err)
    # reft eval (the README's line had no flag, and silently used the chat template on such an adapter)
    seen = _spy(monkeypatch, reft.harness.evaluate)
    out = str(tmp_path / "r.json")
    evaluate = ["eval", "--task", "boolq", "--model", model, "--adapter", adapter, "--limit", "2", "--out", out,
                "--max-new-tokens", "2"]
    assert cli_main(evaluate) == 0
    assert seen[-1] and not any("<u>" in t for t in seen[-1])
    assert json.loads(open(out).read())["chat_template"] is False
    assert "warning" not in capsys.readouterr().err
    assert cli_main(evaluate + ["--chat-template"]) == 0
    assert all(t.startswith("<u>") for t in seen[-1])
    assert "reft eval: warning: the adapter was trained without the chat template" in capsys.readouterr().err


def test_a_lora_adapter_records_its_prompt_format_and_eval_uses_it(plain_adapter, tmp_path, monkeypatch, capsys):
    """'reft train --method lora --no-chat-template' writes prompt_format.json; 'reft eval --lora' then builds plain
    prompts without being told, and warns when told otherwise."""
    from reft.harness.baselines import PROMPT_FORMAT_FILE

    model, _ = plain_adapter
    (tmp_path / "data.jsonl").write_bytes(DATA)
    run = tmp_path / "lora"
    assert cli_main(["train", "--model", model, "--data", str(tmp_path / "data.jsonl"), "--out", str(run),
                     "--method", "lora", "--epochs", "1", "--batch-size", "2", "--max-length", "64",
                     "--no-chat-template"]) == 0
    capsys.readouterr()
    recorded = json.loads((run / "adapter" / PROMPT_FORMAT_FILE).read_text())
    assert recorded == {"chat_template": False, "template_sha256": None}
    seen = _spy(monkeypatch, reft.harness.evaluate)
    evaluate = ["eval", "--task", "boolq", "--model", model, "--lora", str(run / "adapter"), "--limit", "2",
                "--out", str(tmp_path / "r.json"), "--max-new-tokens", "2"]
    assert cli_main(evaluate) == 0
    assert seen[-1] and not any("<u>" in t for t in seen[-1])
    assert "warning" not in capsys.readouterr().err
    assert cli_main(evaluate + ["--chat-template", "--out", str(tmp_path / "r2.json")]) == 0
    assert all(t.startswith("<u>") for t in seen[-1])
    assert "reft eval: warning: the adapter was trained without the chat template" in capsys.readouterr().err


def test_another_chat_template_than_in_training_warns():
    trained, other = byte_tokenizer(), byte_tokenizer("{{ messages[0]['content'] }}!")
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1", prompt_format=prompt_format(trained, True)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_chat_template(reft_model, trained, None) is True
    with pytest.warns(UserWarning, match="the tokenizer's chat template is not the one the adapter was trained with"):
        assert resolve_chat_template(reft_model, other, None) is True
    assert prompt_format(byte_tokenizer(None), True) == {"chat_template": False, "template_sha256": None}


def test_configs_without_a_prompt_format_still_load(tmp_path):
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1"))
    reft_model.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / CONFIG_NAME
    data = json.loads(path.read_text())
    del data["prompt_format"]  # as written before the field existed
    path.write_text(json.dumps(data))
    loaded = ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    assert loaded.reft_config.prompt_format is None
    assert resolve_chat_template(loaded, None, None, default=True) is True  # the old default, no warning
    with pytest.raises(ValueError, match="prompt_format must be null or an object with a boolean 'chat_template'"):
        ReftConfig(prompt_format={"chat_template": "yes"})
    with pytest.raises(ValueError, match="template_sha256 must be null or 64 hex digits"):
        ReftConfig(prompt_format={"chat_template": True, "template_sha256": "abc"})


def test_generate_texts_refuses_a_single_string():
    """A str is a sequence of characters: it would have been one prompt per character, answered in another order."""
    model, tokenizer = tiny_causal_lm()
    with pytest.raises(TypeError, match=r"got a single string .*pass \[prompt\]"):
        generate_texts(model, tokenizer, "hello", max_new_tokens=2, progress=False)
    with pytest.raises(TypeError, match="prompt 1 is a int, not a str"):
        generate_texts(model, tokenizer, ["hello", 3], max_new_tokens=2, progress=False)
    assert len(generate_texts(model, tokenizer, ["hello"], max_new_tokens=2, progress=False)) == 1
