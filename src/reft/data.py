"""Supervised (prompt, response) data: tokenisation with the prompt masked, and a padding collator.

Prompt and response are tokenised separately and concatenated, so the prompt length the positions are
computed from is exact (no merge across the boundary) and identical to what ``generate`` sees for the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .positions import check_positions_fit

IGNORE_INDEX = -100


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
    prompt_ids = tokenize_prompt(tokenizer, prompt, add_bos=add_bos)
    response_ids = _ids(tokenizer, response) + ([tokenizer.eos_token_id] if add_eos else [])
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_length={max_length}: "
                             "raise max_length or shorten the prompt")
        response_ids = response_ids[: max_length - len(prompt_ids)]
    if not response_ids:
        raise ValueError("empty response: nothing to learn from this example (all labels would be masked)")
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "prompt_lengths": len(prompt_ids),
    }


def make_supervised_dataset(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], *, positions: str | None = None, **kwargs
) -> list[dict[str, Any]]:
    """Tokenise parallel lists of prompts and responses (see :func:`tokenize_example`).

    Args:
        positions: the config's positions (e.g. ``"f7+l7"``); with ``max_length`` they are checked to fit a
            prompt (:func:`reft.positions.check_positions_fit`) before any tokenisation. Default: not checked.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: they must pair up")
    if positions is not None:
        check_positions_fit(positions, kwargs.get("max_length"))
    return [tokenize_example(tokenizer, p, r, **kwargs) for p, r in zip(prompts, responses)]


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
