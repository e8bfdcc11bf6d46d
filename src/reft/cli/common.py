"""Options shared by several subcommands, and JSONL reading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="base model: 'smollm2' (embedded SmolLM2-135M-Instruct), 'minilm', or a local folder "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="base model dtype; interventions stay fp32 (default: %(default)s)")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                   help="feed prompts as plain text instead of wrapping them in the tokenizer's chat template")


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON Lines file; each must carry ``fields`` (a clear error names the line otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON ({e.msg})") from None
            missing = [k for k in fields if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{n} lacks string field(s) {missing}: each line needs {list(fields)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def dtype_of(name: str):
    import torch

    return getattr(torch, name)
