"""What the subcommands share: a one-line-error parser, checked argument types, model and path checks, data reading.

A user error is one line on stderr naming the flag, file, line or value and the fix, exit status 2; Ctrl-C is one
line and exit status 130 (:mod:`reft.cli.main`).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data import ExampleError


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
def add_base_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype`` and how the frozen base is stored (``--quantize``, ``--quantize-backend``)."""
    p.add_argument("--model", default="smollm2",
                   help="base model: 'smollm2' (embedded SmolLM2-135M-Instruct), 'minilm', or a local folder "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="base model dtype; interventions stay fp32 (default: %(default)s)")
    p.add_argument("--quantize", choices=["8bit", "4bit"], default=None,
                   help="store the frozen base's linear weights in 8 or 4 bits (needs reft[quant]); adapters load "
                        "on the full base too (default: off)")
    p.add_argument("--quantize-backend", choices=["bitsandbytes", "torchao", "quanto"], default="bitsandbytes",
                   help="bitsandbytes (LLM.int8 / nf4), torchao (8bit), quanto (int8 / int4) (default: %(default)s)")


def add_model_args(p: argparse.ArgumentParser, *, chat_default: str) -> None:
    add_base_args(p)
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


def require_extra(extra: str, modules: Sequence[str], command: str) -> None:
    """Refuse, with the install command, to run ``command`` when a package of reft's ``extra`` is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UserError(f"{command} needs {', '.join(missing)}, which {verb} not installed: "
                        f"pip install 'reft[{extra}]'")


def check_output_file(path: str | None, flag: str, *, inputs: dict[str, str | None] | None = None,
                      overwrite: bool = True) -> None:
    """Refuse, before any work, an output file path that cannot be written (a folder, under a file, not writable),
    that is one of the ``inputs`` (flag → path), or, unless ``overwrite``, that exists."""
    if path is None:
        return
    from ..harness.runs import RunFolderError, check_writable_path

    for other_flag, other in (inputs or {}).items():
        if other is not None and os.path.exists(other) and os.path.exists(path) and os.path.samefile(path, other):
            raise UserError(f"{flag} {path} is the {other_flag} file: writing there would replace your input; "
                            "give another path")
    try:
        check_writable_path(path, folder=False)
    except RunFolderError as e:
        raise UserError(f"{flag} {path}: {e}") from None
    if not overwrite and os.path.lexists(path):
        raise UserError(f"{flag} {path} exists: give a new path, or add --overwrite to replace it")


def write_output_file(path: str, text: str) -> None:
    """Write an output file atomically, creating its folder."""
    from ..save_load import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)


def read_prompt_rows(source: str, flag: str) -> tuple[list[dict], list[str]]:
    """The rows of a prompts file or datasets folder (:func:`reft.data_files.read_records`), each with a non-empty
    string ``prompt``, and where each came from (``file:line``, for error messages)."""
    from ..data import check_fields
    from ..data_files import read_records

    with _reading(flag):
        records = read_records(source)
    for where, row in records:
        check_fields(row, where, ("prompt",), nonempty=("prompt",))
    return [row for _, row in records], [where for where, _ in records]


def read_examples(source: str, flag: str = "--data"):
    """The examples of a data file or folder (:func:`reft.data_files.load_examples`); errors name ``flag``."""
    from ..data_files import load_examples

    with _reading(flag):
        return load_examples(source)


@contextmanager
def _reading(flag: str) -> Iterator[None]:
    """A missing path or reader package while reading ``flag``'s data, as a :class:`UserError` naming the flag."""
    try:
        yield
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


def load_base(args: argparse.Namespace):
    """``(model, tokenizer)`` for ``--model``/``--dtype``/``--quantize``; an unusable quantization is a UserError
    raised before any weight loads."""
    from ..harness.models import load_model

    quantize, backend = getattr(args, "quantize", None), getattr(args, "quantize_backend", "bitsandbytes")
    if quantize is not None:
        from ..quantization import quantization_config

        try:
            quantization_config(quantize, backend)
        except (ModuleNotFoundError, ValueError) as e:
            raise UserError(f"--quantize {quantize} --quantize-backend {backend}: {e}") from None
    return load_model(args.model, dtype=dtype_of(args.dtype), quantize=quantize, quantize_backend=backend)
