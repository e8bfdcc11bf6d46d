"""What the subcommands share: a one-line-error parser, checked argument types, model and path checks, data reading.

A user error is one line on stderr naming the flag, file, line or value and the fix, exit status 2; Ctrl-C is one
line and exit status 130 (:mod:`reft.cli.main`).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..data import ExampleError, read_jsonl_rows


class UserError(ValueError):
    """An error the user can fix; the CLI prints its message as one line and exits 2."""


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (no usage block) pointing at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---- argument types ----------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


# ---- shared options and checks -----------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, *, chat_default: str) -> None:
    p.add_argument("--model", default="smollm2",
                   help="base model: 'smollm2' (embedded SmolLM2-135M-Instruct), 'minilm', or a local folder "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="base model dtype; interventions stay fp32 (default: %(default)s)")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat-template", dest="chat_template", action="store_true", default=None,
                      help=f"wrap prompts in the tokenizer's chat template (default: {chat_default})")
    chat.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                      help="feed prompts as plain text")


def check_model(name: str, *, causal: bool, command: str) -> str:
    """The architecture of ``--model`` (read from its config, no weights); refuses an encoder where a causal LM is
    needed."""
    from ..harness.models import ENCODER_TYPES, model_type_of

    try:
        model_type = model_type_of(name)
    except FileNotFoundError as e:
        raise UserError(f"--model {name}: {e}") from None
    if causal and model_type in ENCODER_TYPES:
        raise UserError(f"--model {name} is an encoder ({model_type}): {command} needs a causal language model, "
                        "e.g. --model smollm2 (encoders train GLUE tasks: reft train --task sst2 --model minilm)")
    return model_type


def check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file path that cannot be written (a folder, under a file, not writable) before any work."""
    if path is None:
        return
    from ..harness.runs import RunFolderError, check_writable_path

    try:
        check_writable_path(path, folder=False)
    except RunFolderError as e:
        raise UserError(f"{flag} {path}: {e}") from None


def write_output_file(path: str, text: str) -> None:
    """Write an output file atomically, creating its folder."""
    from ..save_load import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)


def read_rows(path: str, flag: str, fields: tuple[str, ...], *, nonempty: Sequence[str] = ()) -> tuple[list[dict],
                                                                                                       list[str]]:
    """The rows of a JSONL file and where each came from (``file:line``, for error messages)."""
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file" + (" (it is a folder)" if Path(path).is_dir() else ""))
    rows = read_jsonl_rows(path, fields, nonempty=nonempty)
    return [row for _, row in rows], [f"{path}:{n}" for n, _ in rows]


def read_examples(source: str, flag: str = "--data"):
    """The examples of a data file or folder (:func:`reft.data_files.load_examples`); errors name ``flag``."""
    from ..data_files import load_examples

    try:
        return load_examples(source)
    except FileNotFoundError as e:
        raise UserError(f"{flag} {e}") from None
    except ImportError as e:
        raise UserError(f"{flag}: {e}") from None


def located(error: ExampleError, sources: Sequence[str]) -> UserError:
    """An :class:`ExampleError` restated with the file and line (or flag) its example came from."""
    where = sources[error.index] if 0 <= error.index < len(sources) else f"example {error.index}"
    return UserError(f"{where}: {error.reason}")


def dtype_of(name: str):
    import torch

    return getattr(torch, name)
