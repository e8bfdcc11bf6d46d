"""Supervised (prompt, response) data: JSON Lines reading, tokenisation with the prompt masked, a padding collator.

Prompt and response are tokenised separately and concatenated, so the prompt length the positions are
computed from is exact (no merge across the boundary) and identical to what ``generate`` sees for the prompt.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .positions import check_positions_fit

IGNORE_INDEX = -100


class ExampleError(ValueError):
    """An example that cannot be used; ``index`` is its position in the input list, ``reason`` the message."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"example {index}: {reason}")
        self.index, self.reason = index, reason


def read_jsonl_rows(path: str | os.PathLike, fields: Sequence[str] = (), *,
                    nonempty: Sequence[str] = ()) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines file.

    Every line must be UTF-8 JSON holding an object whose ``fields`` are strings, the ``nonempty`` ones with
    some non-blank text. Errors name the file and line (``data.jsonl:7: …``) and say what to fix.

    Raises:
        FileNotFoundError: no such file. ValueError: a line that breaks the rules above, or no line at all.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file" + (" (it is a folder)" if os.path.isdir(path) else ""))
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}): "
                                 "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                need = list(dict.fromkeys([*fields, *nonempty])) or ["prompt"]
                raise ValueError(f"{path}:{n}: a JSON {type(row).__name__} where an object is expected: write one "
                                 "object per line, e.g. " + json.dumps(dict.fromkeys(need, "…")))
            check_fields(row, f"{path}:{n}", fields, nonempty)
            rows.append((n, row))
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def check_fields(row: dict[str, Any], where: str, fields: Sequence[str] = (), nonempty: Sequence[str] = ()) -> None:
    """Refuse (``ValueError`` starting with ``where``) a row whose ``fields`` are not strings or whose ``nonempty``
    fields hold no text."""
    need = list(dict.fromkeys([*fields, *nonempty]))
    missing = [k for k in need if not isinstance(row.get(k), str)]
    if missing:
        raise ValueError(f"{where} lacks string field(s) {missing}: each example needs {need}")
    empty = [k for k in nonempty if not row[k].strip()]
    if empty:
        raise ValueError(f"{where}: empty {', '.join(map(repr, empty))}: every example needs text there; fill it in "
                         "or drop the example")


def read_jsonl(path: str | os.PathLike, fields: Sequence[str] = (), *,
               nonempty: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file (see :func:`read_jsonl_rows`, which also gives their line numbers)."""
    return [row for _, row in read_jsonl_rows(path, fields, nonempty=nonempty)]


def model_context_length(model) -> int | None:
    """The most tokens ``model`` takes (``max_position_embeddings`` / ``n_positions`` of its config), or None."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits_context(dataset: Sequence[dict[str, Any]], model) -> None:
    """Refuse (:class:`ExampleError`) an example longer than the model's context (:func:`model_context_length`)."""
    context = model_context_length(model)
    if context is None:
        return
    for i, example in enumerate(dataset):
        n = len(example["input_ids"])
        if n > context:
            raise ExampleError(i, f"{n} tokens, more than the model's context of {context}: set max_length "
                                  f"(--max-length) to at most {context}, or shorten the example")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_prompt(tokenizer, prompt: str, *, add_bos: bool | None = None) -> list[int]:
    """Prompt token ids, the same for training and generation.

    Args:
        add_bos: prepend the BOS token; default: when the tokenizer adds one by itself.

    Raises:
        ValueError: the prompt has no tokens.
    """
    prompt_ids = _ids(tokenizer, prompt)
    if add_bos is None:
        probe = tokenizer("a")["input_ids"]
        add_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    if add_bos:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    if not prompt_ids:
        raise ValueError("empty prompt: every example needs at least one prompt token to intervene on")
    return prompt_ids


def _tokenize(tokenizer, prompt: str, response: str, max_length: int | None, add_eos: bool,
              add_bos: bool | None) -> tuple[dict[str, Any], int]:
    """The example of :func:`tokenize_example` and how many response tokens ``max_length`` cut away."""
    prompt_ids = tokenize_prompt(tokenizer, prompt, add_bos=add_bos)
    response_ids = _ids(tokenizer, response) + ([tokenizer.eos_token_id] if add_eos else [])
    full = len(response_ids)
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_length={max_length}: "
                             "raise max_length or shorten the prompt")
        response_ids = response_ids[: max_length - len(prompt_ids)]
    if not response_ids:
        raise ValueError("empty response: nothing to learn from this example (all labels would be masked)")
    example = {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "prompt_lengths": len(prompt_ids),
    }
    return example, full - len(response_ids)


def tokenize_example(
    tokenizer, prompt: str, response: str, *, max_length: int | None = None, add_eos: bool = True,
    add_bos: bool | None = None,
) -> dict[str, Any]:
    """One training example: ``input_ids = prompt ⊕ response ⊕ eos``, labels ``-100`` on the prompt.

    Args:
        tokenizer: a transformers tokenizer.
        prompt: the (already templated) prompt text.
        response: the target text.
        max_length: cut the response (never the prompt) so the example fits. Default: no limit.
        add_eos: end the response with ``tokenizer.eos_token_id``. Default: True
        add_bos: see :func:`tokenize_prompt`.

    Raises:
        ValueError: an empty prompt or response, or a prompt that alone exceeds ``max_length``.
    """
    return _tokenize(tokenizer, prompt, response, max_length, add_eos, add_bos)[0]


def make_supervised_dataset(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], *, positions: str | None = None,
    position_rule: str = "split", max_length: int | None = None, add_eos: bool = True, add_bos: bool | None = None,
) -> list[dict[str, Any]]:
    """Tokenise parallel lists of prompts and responses (see :func:`tokenize_example`).

    Args:
        positions: the config's positions (e.g. ``"f7+l7"``); with ``max_length`` they are checked to fit a
            prompt (:func:`reft.positions.check_positions_fit`) before any tokenisation. Default: not checked.
        position_rule: the config's ``position_rule``, for that check. Default: ``"split"``
        max_length, add_eos, add_bos: see :func:`tokenize_example`.

    Raises:
        ExampleError: an example that cannot be used (its index named).

    Warns:
        UserWarning: responses cut to fit ``max_length``, with their count (their end, EOS included, is not learnt).
    """
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("prompts and responses must be lists of strings, got a single string: wrap it in a list")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: they must pair up")
    if positions is not None:
        check_positions_fit(positions, max_length, position_rule)
    dataset, cut = [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        try:
            example, lost = _tokenize(tokenizer, p, r, max_length, add_eos, add_bos)
        except ValueError as e:
            raise ExampleError(i, str(e)) from None
        dataset.append(example)
        if lost:
            cut.append(lost)
    if cut:
        warnings.warn(f"{len(cut)} of {len(dataset)} responses were cut to fit max_length={max_length} (up to "
                      f"{max(cut)} tokens lost, the EOS token with them, so the model does not learn to stop there): "
                      "raise max_length (--max-length) or shorten those responses", stacklevel=2)
    return dataset


@dataclass
class ReftDataCollator:
    """Pads a list of examples into a batch.

    Fields: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` on padding) and ``prompt_lengths``; any
    other scalar field (e.g. a classification ``labels`` int) is stacked as a tensor.

    Args:
        pad_token_id: id used for padding.
        padding_side: ``"right"`` (training default) or ``"left"``.
        pad_to_multiple_of: round the padded length up. Default: None
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to the eos token)")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("no examples to collate: the batch is empty (is the dataset empty, or did filtering "
                             "drop every example?)")
        length = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
        sequence_labels = isinstance(examples[0].get("labels"), list)
        if sequence_labels:
            batch["labels"] = []
        for e in examples:
            n, pad = len(e["input_ids"]), length - len(e["input_ids"])
            row = {"input_ids": list(e["input_ids"]), "attention_mask": [1] * n}
            if sequence_labels:
                row["labels"] = list(e["labels"])
            fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
            for key, values in row.items():
                padding = [fill[key]] * pad
                batch[key].append(padding + values if self.padding_side == "left" else values + padding)
        out = {k: torch.tensor(v) for k, v in batch.items()}
        for key in examples[0]:
            if key not in out:
                out[key] = torch.tensor([e[key] for e in examples])
        if sequence_labels and bool((out["labels"] == IGNORE_INDEX).all()):
            raise ValueError("every label in this batch is masked (-100): check the responses are not empty "
                             "and max_length does not cut them away")
        return out
