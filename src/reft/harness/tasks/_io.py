"""Shared plumbing for the task loaders: locating the data directory, reading JSON Lines, the prompt template.

Nothing here knows about a particular benchmark; the per-family modules build on these helpers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reft.data import read_jsonl as _read_jsonl

DATA_ENV_VAR = "REFT_DATA"

#: The Alpaca "no input" template used by the ReFT paper (pyreft ``examples/loreft``) and LLM-Adapters.
ALPACA_NO_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

Example = dict[str, Any]


def _candidate_roots() -> list[tuple[str, Path]]:
    """Lists the places searched for the data directory, in priority order."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return [(f"${DATA_ENV_VAR}", Path(env).expanduser())]
    # src/reft/tasks/_io.py -> parents: tasks, reft, src, <repo>, <repo's parent>
    repo_sibling = Path(__file__).resolve().parents[5] / "shared" / "data"
    return [("repo sibling", repo_sibling), ("working directory", Path.cwd() / "shared" / "data")]


def data_root() -> Path:
    """Returns the root of the shared benchmark data directory.

    The ``REFT_DATA`` environment variable wins when set. Otherwise ``shared/data`` next to the repository
    checkout (``src/reft/tasks/../../../../shared/data``) is used, then ``./shared/data``.

    Returns:
        The resolved data directory.

    Raises:
        FileNotFoundError: If no candidate directory exists.
    """
    candidates = _candidate_roots()
    for _, path in candidates:
        if path.is_dir():
            return path.resolve()
    tried = ", ".join(f"{label}: {path}" for label, path in candidates)
    raise FileNotFoundError(
        f"ReFT benchmark data directory not found (tried {tried}). "
        f"Set the {DATA_ENV_VAR} environment variable to the directory that holds MANIFEST.md."
    )


def data_path(relative: str) -> Path:
    """Resolves a file inside the data directory, failing with a clear message when it is absent.

    Args:
        relative: Path relative to :func:`data_root`, e.g. ``"glue/sst2/dev.jsonl"``.

    Returns:
        The absolute path.

    Raises:
        FileNotFoundError: If the data directory or the file does not exist.
    """
    path = data_root() / relative
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file missing: {path} (check {DATA_ENV_VAR} / MANIFEST.md)")
    return path


def read_jsonl(relative: str) -> list[Example]:
    """Reads a JSON Lines file from the data directory.

    Args:
        relative: Path relative to :func:`data_root`.

    Returns:
        One dict per non-empty line, in file order.

    Raises:
        ValueError: a line that is not a JSON object (file and line named).
    """
    return _read_jsonl(data_path(relative))


def take(records: list[Example], limit: int | None) -> list[Example]:
    """Returns the first ``limit`` records (all of them when ``limit`` is None).

    Raises:
        ValueError: If ``limit`` is negative.
    """
    if limit is None:
        return records
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return records[:limit]


def check_split(task: str, split: str, files: dict[str, str]) -> str:
    """Maps a split name to its file, raising a ValueError that lists the available splits.

    Args:
        task: Task name, for the error message.
        split: Requested split.
        files: Split name -> file path relative to the data root.

    Returns:
        The relative file path of ``split``.
    """
    if split not in files:
        raise ValueError(f"task {task!r} has no split {split!r}; available: {sorted(files)}")
    return files[split]


def alpaca_prompt(instruction: str) -> str:
    """Wraps an instruction in the Alpaca no-input template; the result ends with ``"### Response:\\n"``."""
    return ALPACA_NO_INPUT_TEMPLATE.format(instruction=instruction)
