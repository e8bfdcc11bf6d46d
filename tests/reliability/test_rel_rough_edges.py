"""Small things a new user runs into: each is a clear error or a working default, and nothing is lost."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from _reliability_common import one_thread, save_tiny_causal_lm  # noqa: F401
from conftest import tiny_llama

from reft import ReftConfig, get_reft_model
from reft.cli.main import main as cli_main
from reft.data import ReftDataCollator
from reft.model.compose import MAX_NAME_LENGTH


def test_saved_adapter_files_are_readable_by_other_users(tmp_path):
    """Every file of a save has the mode open() would give under the umask (0644 under 022), the weights too:
    a server running under another uid can read them."""
    old = os.umask(0o022)
    try:
        reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1", positions="l1"))
        reft_model.save_pretrained(tmp_path / "a")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "a").iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), {k: oct(v) for k, v in modes.items()}


def test_the_collator_refuses_an_empty_batch_by_name():
    with pytest.raises(ValueError, match="no examples to collate: the batch is empty"):
        ReftDataCollator(0)([])


def test_adapter_names_are_bounded_when_added_and_the_longest_allowed_saves(tmp_path):
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1", positions="l1"))
    with pytest.raises(ValueError, match=rf"is 300 characters long: use at most {MAX_NAME_LENGTH}"):
        reft_model.add_adapter("a" * 300, ReftConfig(layers="1", positions="l1"))
    assert "a" * 300 not in reft_model.adapters
    longest = "b" * MAX_NAME_LENGTH
    reft_model.add_adapter(longest, ReftConfig(layers="1", positions="l1"))
    reft_model.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / longest).is_dir()


def test_reft_serve_without_the_serve_extra_names_the_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    model = save_tiny_causal_lm(tmp_path / "tiny")
    capsys.readouterr()
    assert cli_main(["serve", "--model", model]) == 2
    err = capsys.readouterr().err
    assert err == "reft serve: error: reft serve needs uvicorn, which is not installed: pip install 'reft[serve]'\n"


def test_reft_help_and_import_reft_load_neither_torch_nor_transformers():
    code = ("import sys, contextlib, io\n"
            "import reft\n"
            "from reft.cli.main import main\n"
            "for argv in (['--help'], ['train', '--help'], ['serve', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
            "reft.ReftConfig\n"  # the public names still import on first use
            "print('torch' in sys.modules, 'ReftConfig' in dir(reft))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True True"]


def test_generate_keeps_the_input_fields_and_never_replaces_a_file_unasked(tmp_path, capsys):
    model = save_tiny_causal_lm(tmp_path / "tiny")
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": 7, "prompt": "hello", "gold": "hi"}, {"id": "x", "prompt": "bye", "meta": {"k": [1]}}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    argv = ["generate", "--model", model, "--prompts", str(prompts), "--max-new-tokens", "3", "--out", str(out)]
    assert cli_main(argv) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in g.items() if k != "output"} for g in got] == rows
    assert all(isinstance(g["output"], str) for g in got)
    first = out.read_bytes()
    assert cli_main(argv) == 2  # the file exists now
    assert "exists: give a new path, or add --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert cli_main(argv + ["--overwrite"]) == 0
    assert out.read_bytes() == first  # greedy: the same answers again
    # a CSV of prompts works the same (cells are strings)
    (tmp_path / "p.csv").write_text("id,prompt\n1,hello\n")
    assert cli_main(argv[:4] + [str(tmp_path / "p.csv"), "--max-new-tokens", "3"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["id"] == "1" and line["prompt"] == "hello" and "output" in line
