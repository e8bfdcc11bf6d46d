"""Instruction-following tasks: AlpacaEval instructions, the UltraFeedback-1K training set, output writing.

``alpaca_eval`` (split ``"test"``) holds the 805 AlpacaEval instructions with the text-davinci-003 reference
outputs (the AlpacaEval 1 baseline); it has no local scorer -- generations are written with
:func:`write_alpaca_eval_outputs` and judged by the external ``alpaca_eval`` tool. ``ultrafeedback_1k`` (split
``"train"``) is the 1,000-example UltraFeedback subset used by pyreft; its ``input`` field is always empty.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from reft.generation import render_chat
from reft.harness.tasks._io import Example, alpaca_prompt, check_split, read_jsonl, take
from reft.save_load import atomic_write_text

ALPACA_EVAL_FILES = {"test": "instruction/alpaca_eval/test.jsonl"}
ULTRAFEEDBACK_FILES = {"train": "instruction/ultrafeedback_1k/train.jsonl"}
DEFAULT_DATASET = "alpaca_eval"


def format_instruction_prompt(instruction: str, tokenizer: Any | None = None) -> str:
    """Builds the generation prompt for an instruction.

    Args:
        instruction: The user instruction.
        tokenizer: Optional Hugging Face tokenizer. If it has a chat template, the prompt is a single user turn
            rendered with ``apply_chat_template(..., add_generation_prompt=True)``; otherwise (or when omitted)
            the Alpaca no-input template is used.

    Returns:
        The prompt text (not tokenized).
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return render_chat(tokenizer, instruction)
    return alpaca_prompt(instruction)


def load_alpaca_eval(split: str = "test", limit: int | None = None, seed: int = 0) -> list[Example]:
    """Loads the AlpacaEval instructions in file order.

    Args:
        split: Only ``"test"``.
        limit: Keep only the first ``limit`` instructions.
        seed: Unused; accepted for a uniform loader signature.

    Returns:
        Dicts ``{"task", "instruction", "dataset", "target", "reference_generator"}`` where ``target`` is the
        reference (text-davinci-003) output.
    """
    del seed
    records = read_jsonl(check_split("alpaca_eval", split, ALPACA_EVAL_FILES))
    return [
        {
            "task": "alpaca_eval",
            "instruction": r["instruction"],
            "dataset": r["dataset"],
            "target": r["output"],
            "reference_generator": r["generator"],
        }
        for r in take(records, limit)
    ]


def load_ultrafeedback(split: str = "train", limit: int | None = None, seed: int = 0) -> list[Example]:
    """Loads the UltraFeedback-1K training set in file order.

    Args:
        split: Only ``"train"``.
        limit: Keep only the first ``limit`` examples.
        seed: Unused; accepted for a uniform loader signature.

    Returns:
        Dicts ``{"task", "instruction", "input", "output", "target"}`` with ``target == output``.
    """
    del seed
    records = read_jsonl(check_split("ultrafeedback_1k", split, ULTRAFEEDBACK_FILES))
    return [{**r, "task": "ultrafeedback_1k", "target": r["output"]} for r in take(records, limit)]


def format_instruction(example: Example) -> tuple[str, str]:
    """Returns ``(prompt, target)`` with the Alpaca no-input prompt (see :func:`format_instruction_prompt`)."""
    return alpaca_prompt(example["instruction"]), example["target"]


def _output_record(record: Mapping[str, Any], generator_name: str) -> dict[str, str]:
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"each record needs a string {key!r}; got {record!r:.200}")
    return {
        "instruction": record["instruction"],
        "output": record["output"],
        "generator": generator_name,
        "dataset": str(record.get("dataset") or DEFAULT_DATASET),
    }


def write_alpaca_eval_outputs(
    path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], generator_name: str
) -> Path:
    """Writes model outputs as the JSON list read by ``alpaca_eval --model_outputs``.

    Each record needs ``instruction`` and ``output``; its ``dataset`` is kept (``"alpaca_eval"`` if absent) and
    ``generator`` is set to ``generator_name``. The file is written atomically
    (:func:`reft.save_load.atomic_write_text`), so readers never see a partial file.

    Args:
        path: Destination ``.json`` file; parent directories are created.
        records: Mappings with at least ``instruction`` and ``output``.
        generator_name: Model name shown on the leaderboard.

    Returns:
        The destination path.
    """
    rows = [_output_record(r, generator_name) for r in records]
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(destination, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    return destination
