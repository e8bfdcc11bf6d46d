"""Training data in every form a user keeps it: JSONL, CSV, TSV, Parquet, a ``save_to_disk`` folder, a
``datasets.Dataset``, chat ``messages``; and TensorBoard logs written offline. The same rows in any form train the
same run (the same computation in the same shapes: equal losses)."""

from __future__ import annotations

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _reliability_common import byte_tokenizer, make_trainer, one_thread, save_tiny_causal_lm  # noqa: F401

from reft.cli.main import main as cli_main
from reft.data import IGNORE_INDEX, make_supervised_dataset
from reft.data_files import load_examples, split_chat, supervised_dataset
from reft.generation import render_chat

ROLE_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
ROWS = [{"prompt": "hello there", "response": "hi", "id": "a"},
        {"prompt": "good bye, 3", "response": "bye now", "id": "b"},
        {"prompt": 'a "quoted", comma', "response": "12", "id": "c"}]  # numbers stay text in CSV
CHAT = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                      {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and now?"},
                      {"role": "assistant", "content": "bye"}]},
        {"messages": [{"role": "user", "content": "one turn"}, {"role": "assistant", "content": "ok"}]}]


def _write(folder, kind: str, rows: list[dict]) -> str:
    """``rows`` saved as ``kind``; chat turns go into CSV cells as JSON text."""
    if kind == "jsonl":
        path = folder / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind in ("csv", "tsv"):
        path = folder / f"d.{kind}"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if kind == "csv" else "\t")
            w.writeheader()
            w.writerows([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
    elif kind == "parquet":
        path = folder / "d.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = folder / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


KINDS = ["jsonl", "csv", "tsv", "parquet", "folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_the_same_examples(tmp_path, kind):
    examples = load_examples(_write(tmp_path, kind, ROWS))
    assert examples.prompts == [r["prompt"] for r in ROWS]
    assert examples.responses == [r["response"] for r in ROWS]
    assert [r["id"] for r in examples.rows] == ["a", "b", "c"]  # other fields kept
    assert examples.sources[1].endswith(":2" if kind == "jsonl" else ":row 2")


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "folder"])
def test_chat_messages_in_every_format(tmp_path, kind):
    examples = load_examples(_write(tmp_path, kind, CHAT))
    assert examples.responses == ["bye", "ok"]
    assert examples.prompts[0] == CHAT[0]["messages"][:-1]
    tok = byte_tokenizer(ROLE_TEMPLATE)
    assert examples.rendered_prompts(tok) == ["<system>be brief<user>hello<assistant>hi<user>and now?<assistant>",
                                              "<user>one turn<assistant>"]
    # without a template, only a lone user turn is plain text; the error names the row
    with pytest.raises(ValueError, match=r":(row )?1: a prompt of 4 chat turns .*needs a chat template"):
        examples.rendered_prompts(tok, chat_template=False)
    assert load_examples(CHAT[1:]).rendered_prompts(byte_tokenizer(None)) == ["one turn"]


def test_dataset_objects_and_lists_tokenise_as_the_lists_do():
    tok = byte_tokenizer()
    expect = make_supervised_dataset(tok, [render_chat(tok, r["prompt"]) for r in ROWS], [r["response"] for r in ROWS],
                                     max_length=64)
    assert supervised_dataset(tok, datasets.Dataset.from_list(ROWS), max_length=64) == expect
    assert supervised_dataset(tok, ROWS, max_length=64) == expect
    chat = supervised_dataset(tok, datasets.Dataset.from_list(CHAT))
    response = tok("ok", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert chat[1]["labels"][-len(response):] == response  # only the last assistant turn is learnt
    assert all(t == IGNORE_INDEX for t in chat[1]["labels"][:-len(response)])


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "user", "content": "x"}]}], r"row 1: the last message .* must be the assistant's"),
    ([{"messages": [{"role": "assistant", "content": "x"}]}], r"no user message before"),
    ([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}], r"reply .* empty"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], r"messages\[0\] must be \{\"role\": one of"),
    ([{"messages": "not json"}], r"'messages' is text but not JSON"),
    ([{"question": "x", "answer": "y"}], r"has fields \['answer', 'question'\]: an example needs 'prompt' and"),
    ([{"prompt": "x", "response": ""}], r"row 1: empty 'response'"),
    ([], r"holds no examples"),
])
def test_bad_rows_are_named(rows, message):
    with pytest.raises(ValueError, match=message):
        load_examples(rows)


def test_bad_files_and_folders(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"holds splits \['train', 'test'\], not one dataset: .*dd/train"):
        load_examples(tmp_path / "dd")
    assert load_examples(tmp_path / "dd" / "train").responses == [r["response"] for r in ROWS]
    with pytest.raises(ValueError, match=r"holds splits"):
        load_examples(dd)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"a folder but not a saved dataset"):
        load_examples(tmp_path / "plain")
    (tmp_path / "ragged.csv").write_text("prompt,response\na,b,c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ragged.csv:row 1 .*more cells than the header"):
        load_examples(tmp_path / "ragged.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"not a readable Parquet file"):
        load_examples(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.csv")
    system_first = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                  {"role": "assistant", "content": "a"}]}]
    with pytest.raises(ValueError, match=r"dataset row 1: a prompt of 2 chat turns \(system, user\)"):
        supervised_dataset(byte_tokenizer(None), system_first)


def test_trainer_takes_a_datasets_dataset(tmp_path):
    from _reliability_common import token_examples

    examples = token_examples(8)
    bad = [dict(e, labels=[IGNORE_INDEX] * len(e["labels"])) if i == 5 else e for i, e in enumerate(examples)]
    with pytest.raises(ValueError, match="training example 5 has every label masked"):
        make_trainer(tmp_path / "bad", data=datasets.Dataset.from_list(bad))
    trainer = make_trainer(tmp_path / "ok", data=datasets.Dataset.from_list(examples), num_train_epochs=1,
                           save_strategy="no")
    assert trainer.train().global_step == 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("m") / "tiny")


def _train(model_dir, data: str, out, *extra: str) -> dict:
    argv = ["train", "--model", model_dir, "--data", data, "--out", str(out), "--layers", "1;2", "--positions",
            "f1+l1", "--epochs", "2", "--batch-size", "2", "--max-length", "64", *extra]
    assert cli_main(argv) == 0
    return json.loads((out / "train_metrics.json").read_text())


def test_cli_trains_the_same_run_from_every_format(tmp_path, model_dir):
    curves = {kind: _train(model_dir, _write(tmp_path, kind, ROWS), tmp_path / f"run-{kind}")["loss_curve"]
              for kind in ("jsonl", "parquet", "csv")}
    assert curves["parquet"] == curves["jsonl"] == curves["csv"]  # same tokens, same shapes: the same losses


def test_cli_trains_on_chat_messages_and_reports_to_tensorboard(tmp_path, model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = _train(model_dir, _write(tmp_path, "folder", CHAT * 2), tmp_path / "run", "--report-to", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in losses] == [s for s, _ in metrics["loss_curve"]]
    assert [v for _, v in losses] == pytest.approx([v for _, v in metrics["loss_curve"]], rel=1e-6)


def test_cli_chat_turns_without_template_is_one_line(tmp_path, model_dir, capsys):
    data = _write(tmp_path, "jsonl", CHAT)
    code = cli_main(["train", "--model", model_dir, "--data", data, "--out", str(tmp_path / "r"),
                     "--no-chat-template"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "d.jsonl:1: a prompt of 4 chat turns (system, user, assistant, user) needs a chat template" in err


def test_split_chat_parses_json_cells():
    turns, reply = split_chat(json.dumps(CHAT[1]["messages"]), "x")
    assert (turns, reply) == ([{"role": "user", "content": "one turn"}], "ok")
