"""Training examples from where people keep them: JSON Lines, CSV, Parquet, a 🤗 ``datasets`` folder
(``save_to_disk``), or in Python a ``datasets.Dataset`` or a list of dicts.

An example is ``{"prompt": str, "response": str}`` or a chat ``{"messages": [{"role", "content"}, …]}``: the last
turn is the response and must be the assistant's; the turns before it are the prompt, rendered through the chat
template (:func:`reft.generation.render_chat`). Other fields are kept (``Examples.rows``). Every error names where
the example came from (``train.jsonl:7``, ``train.csv:row 7``, ``dataset row 7``) and what to fix.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import check_fields, make_supervised_dataset, read_jsonl_rows

ROLES = ("system", "user", "assistant")
Turns = list[dict[str, str]]


@dataclass
class Examples:
    """Prompt/response pairs with the rows they came from.

    ``prompts[i]`` is a string or chat turns (``[{"role", "content"}, …]``, the reply excluded); ``sources[i]``
    says where example i came from (for error messages); ``rows[i]`` is its row with every field."""

    prompts: list[str | Turns]
    responses: list[str]
    sources: list[str]
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.prompts)

    def rendered_prompts(self, tokenizer, chat_template: bool = True) -> list[str]:
        """The prompts as model input (:func:`reft.generation.format_prompts`); an error names the example."""
        from .generation import format_prompts

        out = []
        for prompt, where in zip(self.prompts, self.sources):
            try:
                out += format_prompts(tokenizer, [prompt], chat_template)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return out


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{what} needs the 'datasets' package: pip install 'reft[data]'") from None
    return datasets


def is_hf_dataset(obj: Any) -> bool:
    """Whether ``obj`` comes from the 🤗 ``datasets`` package (told without importing it)."""
    return type(obj).__module__.split(".")[0] == "datasets"


def _check_split(obj: Any, where: str) -> None:
    if isinstance(obj, dict) and is_hf_dataset(obj):  # a DatasetDict
        splits = list(obj)
        pick = f"{where}/{splits[0]}" if os.path.isdir(where) else f"dataset[{splits[0]!r}]"
        raise ValueError(f"{where} holds splits {splits}, not one dataset: give one split, e.g. {pick}")


def _csv_rows(path: str, delimiter: str) -> Iterable[tuple[str, dict]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            for n, row in enumerate(reader, 1):
                if None in row:
                    raise ValueError(f"{path}:row {n} (line {reader.line_num}) has more cells than the header "
                                     f"{reader.fieldnames}: quote cells that hold a {delimiter!r}")
                yield f"{path}:row {n}", row
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text: save the file as UTF-8") from None


def _parquet_rows(path: str) -> Iterable[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install 'reft[data]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid & co. for a damaged or non-Parquet file
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    for n, row in enumerate(table.to_pylist(), 1):
        yield f"{path}:row {n}", row


def _folder_rows(path: str) -> Iterable[tuple[str, dict]]:
    marks = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any(os.path.isfile(os.path.join(path, m)) for m in marks):
        raise ValueError(f"{path} is a folder but not a saved dataset (no {' / '.join(marks)}): give a .jsonl, "
                         ".csv or .parquet file, or a folder written by datasets' Dataset.save_to_disk")
    dataset = _datasets(f"{path} (a datasets folder)").load_from_disk(path)
    _check_split(dataset, path)
    for n, row in enumerate(dataset, 1):
        yield f"{path}:row {n}", row


def _jsonl_rows(path: str) -> Iterable[tuple[str, dict]]:
    return ((f"{path}:{n}", row) for n, row in read_jsonl_rows(path))


#: file suffix → reader; any other file is read as JSON Lines
READERS = {".csv": lambda p: _csv_rows(p, ","), ".tsv": lambda p: _csv_rows(p, "\t"), ".parquet": _parquet_rows,
           ".pq": _parquet_rows}


def read_records(source: str | os.PathLike | Any) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of ``source``: a JSON Lines / CSV / TSV / Parquet file (by suffix; other files
    are JSON Lines), a ``save_to_disk`` folder, a ``datasets.Dataset`` or an iterable of dicts.

    Raises:
        FileNotFoundError: no such path. ValueError: unreadable data, a row that is not an object, no rows.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or folder")
        reader = _folder_rows if os.path.isdir(path) else READERS.get(Path(path).suffix.lower(), _jsonl_rows)
        records = list(reader(path))
        name = path
    else:
        _check_split(source, "the DatasetDict")
        if isinstance(source, (str, bytes, dict)) or not isinstance(source, Iterable):
            raise TypeError(f"examples come from a path, a datasets.Dataset or a list of dicts, got "
                            f"{type(source).__name__}")
        records = [(f"dataset row {n}", row) for n, row in enumerate(source, 1)]
        name = "the dataset"
        bad = next(((w, r) for w, r in records if not isinstance(r, dict)), None)
        if bad:
            raise ValueError(f"{bad[0]} is a {type(bad[1]).__name__}, not a dict with 'prompt' and 'response' (or "
                             "'messages')")
    if not records:
        raise ValueError(f"{name} holds no examples")
    return records


def split_chat(messages: Any, where: str) -> tuple[Turns, str]:
    """Chat turns → (the prompt's turns, the reply): the last turn must be a non-empty assistant turn and some user
    turn must come before it. A JSON string (as a CSV cell holds it) is parsed first."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: 'messages' is text but not JSON ({e.msg}): write a JSON list of "
                             '{"role", "content"} objects') from None
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} turns, got "
                         f"{type(messages).__name__}")
    turns = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: messages[{i}] must be {{\"role\": one of {list(ROLES)}, \"content\": text}}, "
                             f"got {json.dumps(m, default=repr)[:120]}")
        turns.append({"role": m["role"], "content": m["content"]})
    if turns[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message is the response to learn and must be the assistant's, got "
                         f"role {turns[-1]['role']!r}: end each conversation with the assistant's reply")
    if not turns[-1]["content"].strip():
        raise ValueError(f"{where}: the assistant's reply (the last message) is empty: fill it in or drop the row")
    if not any(t["role"] == "user" for t in turns[:-1]):
        raise ValueError(f"{where}: no user message before the assistant's reply: the prompt would be empty")
    return turns[:-1], turns[-1]["content"]


def load_examples(source: str | os.PathLike | Any) -> Examples:
    """Prompt/response pairs from ``source`` (see :func:`read_records`): each row holds ``prompt`` and ``response``
    (non-empty strings) or ``messages`` (see :func:`split_chat`).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_records`; a row with neither shape (its place named).
    """
    prompts, responses, sources, rows = [], [], [], []
    for where, row in read_records(source):
        if "messages" in row and "prompt" not in row:
            prompt, response = split_chat(row["messages"], where)
        else:
            if "prompt" not in row and "response" not in row:
                raise ValueError(f"{where} has fields {sorted(row)}: an example needs 'prompt' and 'response', or "
                                 "'messages' (chat turns ending with the assistant's reply)")
            check_fields(row, where, nonempty=("prompt", "response"))
            prompt, response = row["prompt"], row["response"]
        prompts.append(prompt)
        responses.append(response)
        sources.append(where)
        rows.append(row)
    return Examples(prompts, responses, sources, rows)


def supervised_dataset(tokenizer, source: str | os.PathLike | Any, *, chat_template: bool = True,
                       **kwargs) -> list[dict[str, Any]]:
    """:func:`load_examples` → prompts rendered (:meth:`Examples.rendered_prompts`) → tokenised
    (:func:`reft.data.make_supervised_dataset`, which takes ``kwargs``: positions, max_length, …).

    Raises:
        ValueError: an unusable example, named by where it came from.
    """
    from .data import ExampleError

    examples = load_examples(source)
    try:
        return make_supervised_dataset(tokenizer, examples.rendered_prompts(tokenizer, chat_template),
                                       examples.responses, **kwargs)
    except ExampleError as e:
        raise ValueError(f"{examples.sources[e.index]}: {e.reason}") from None

