"""Adapter files: safetensors + JSON, atomic writes. (Building a model from them, and checking it fits the base
model, is :mod:`reft.model`'s: ``ReftModel.from_pretrained`` / ``load_adapter``; this module imports no model code.)

An adapter directory holds exactly two files:

* ``reft_config.json``: the :class:`ReftConfig`, including the base model's name, type, hidden size and layer count;
* ``reft_model.safetensors``: the intervention (and head) tensors, named ``<intervention key>.<parameter>``.

Loading never unpickles and never imports anything named in a file: the intervention type is looked up in the
registry (:func:`reft.register_intervention`). Saving never removes or replaces a file reft did not write: a save
creates a folder, or updates the adapter files of a folder that is a reft adapter; anything else is refused.
Non-finite weights (NaN/inf: a diverged run) are refused on saving and on loading.

The atomic-write helpers (:func:`atomic_write_file`, :func:`atomic_write_text`, :func:`atomic_directory`,
:func:`replace_directory`) serve every writer in reft: a reader sees the old file or folder or the new one, never
a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CONFIG_NAME, ReftConfig

WEIGHTS_NAME = "reft_model.safetensors"
#: the file names an adapter save writes (and the only ones it ever replaces)
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)


# ---- atomic writes ---------------------------------------------------------------------------------------------
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(directory: str | os.PathLike) -> None:
    """``fsync`` every file below ``directory`` (before it is renamed into place)."""
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(os.path.join(root, name))


def _refuse_non_folder(directory: str) -> None:
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"{directory} is a file, not a folder: nothing was written; choose another path "
                              "(or move the file away)")


def atomic_write_file(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` with a temp path in the folder of ``path``, then rename it onto ``path``.

    A crash at any moment leaves the old file or the new one, never a half-written one (the temp file is removed
    on an exception). The folder must exist.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: give a file path")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    os.close(fd)
    # the mode of the file it replaces, or what open() would give (not mkstemp's 0600); set after write(), which
    # may replace the temp file with one of its own (safetensors does)
    mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_UMASK
    try:
        write(tmp)
        os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (:func:`atomic_write_file`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write_file(path, write)


def replace_directory(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the complete folder ``src`` onto ``dst``: one rename, or (``dst`` exists) a swap and removal of the old.

    Both must be on the same file system. ``dst`` is replaced as a whole: callers check that it holds nothing
    they did not write (:func:`atomic_directory` does).
    """
    src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
    os.replace(dst, os.path.join(old, "x"))
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def atomic_directory(directory: str | os.PathLike, write: Callable[[str], None], *, owned: Iterable[str] = ()) -> None:
    """Call ``write(tmp)`` on a fresh sibling temp folder, then move it into place as ``directory``.

    A crash at any moment leaves either the old folder or the new one, never a half-written one. An existing
    ``directory`` is replaced only when every entry in it is one that ``write`` wrote again or a name in ``owned``
    (the names this kind of save writes): a folder holding anything else, and a path that is a file, are refused
    (``FileExistsError``) and left as they were.
    """
    directory = os.path.abspath(os.fspath(directory))
    _refuse_non_folder(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # as os.makedirs would, not mkdtemp's 0700
        write(tmp)
        fsync_tree(tmp)
        if os.path.isdir(directory):
            foreign = sorted(set(os.listdir(directory)) - set(os.listdir(tmp)) - set(owned))
            if foreign or os.path.islink(directory):
                what = f"holds {', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}" if foreign else "is a link"
                raise FileExistsError(f"{directory} {what}, which this save did not write: nothing was changed; "
                                      "save into a new or empty folder")
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- adapter state -----------------------------------------------------------------------------------------------
def reft_state_dict(reft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable state: interventions (``layer3.rotate.weight`` …) and, if present, the head (``head.…``)."""
    state = {k: v for k, v in reft_model.interventions.state_dict().items()}
    head = getattr(reft_model, "head", None)
    if isinstance(head, nn.Module):
        state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The floating-point tensors of ``state`` that hold a NaN or an infinity, e.g. ``["layer1.bias (nan)"]``."""
    bad = []
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(f"{key} ({'nan' if bool(torch.isnan(value).any()) else 'inf'})")
    return bad


def load_reft_state_dict(reft_model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the interventions (and head); every key must match in name and shape."""
    head = getattr(reft_model, "head", None)
    own = {"": reft_model.interventions} | ({"head.": head} if isinstance(head, nn.Module) else {})
    expected = {p + k: v for p, m in own.items() for k, v in m.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter weights do not match the config: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}: the weight file belongs to another adapter")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"adapter tensor {key} has shape {tuple(value.shape)}, the model needs "
                             f"{tuple(expected[key].shape)}")
    with torch.no_grad():
        for prefix, module in own.items():
            for key, tensor in module.state_dict(keep_vars=True).items():
                tensor.copy_(state[prefix + key].to(tensor.dtype))


# ---- saving ------------------------------------------------------------------------------------------------------
def _non_finite_refusal(state: dict[str, torch.Tensor]) -> None:
    bad = non_finite(state)
    if bad:
        raise ValueError(f"refusing to save an adapter with non-finite weights: {', '.join(bad[:3])}"
                         f"{' …' if len(bad) > 3 else ''}. Training diverged: lower the learning rate and resume from "
                         "the last good checkpoint")


def write_adapter_state(directory: str | os.PathLike, config: ReftConfig, state: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    """Write ``reft_config.json`` + ``reft_model.safetensors`` from a config and tensors into ``directory`` (created
    if needed), leaving any other file there alone.

    Each file is written to a temp name and renamed, weights first: a crash leaves old or new files, never a
    half-written one (a crash between the two renames leaves new weights beside the old config, which
    :func:`load_adapter` refuses when they do not match).

    Raises:
        ValueError: the weights hold NaN/inf (nothing is written).
    """
    directory = os.fspath(directory)
    _refuse_non_folder(directory)
    _non_finite_refusal(state)
    metadata = {"format": "pt", "reft": "1"} | (metadata or {})
    os.makedirs(directory, exist_ok=True)
    atomic_write_file(os.path.join(directory, WEIGHTS_NAME), lambda tmp: save_file(state, tmp, metadata=metadata))
    atomic_write_text(os.path.join(directory, CONFIG_NAME), config.to_json())


def write_adapter_files(reft_model: nn.Module, directory: str | os.PathLike) -> None:
    """Write the adapter of ``reft_model`` into ``directory`` (:func:`write_adapter_state`), leaving any other file
    there alone (a Trainer checkpoint or ``output_dir``)."""
    extra = {"num_labels": str(reft_model.num_labels)} if hasattr(reft_model, "head") else {}
    write_adapter_state(directory, reft_model.reft_config, reft_state_dict(reft_model), extra)


def is_adapter_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a reft adapter: it holds ``reft_config.json``, or sub-folders that do (named adapters,
    Trainer checkpoints)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return False
    return os.path.isfile(os.path.join(directory, CONFIG_NAME)) or bool(named_adapter_dirs(directory))


def named_adapter_dirs(directory: str | os.PathLike) -> list[str]:
    """The sub-folders of ``directory`` holding a ``reft_config.json`` (named adapters, checkpoints), sorted."""
    if not os.path.isdir(directory):
        return []
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")
                      and os.path.isfile(os.path.join(e.path, CONFIG_NAME)))


def save_adapter(reft_model: nn.Module, directory: str | os.PathLike, *, overwrite: bool = False,
                 adapter_name: str = "default", training: dict[str, Any] | None = None) -> None:
    """Write the adapter of ``reft_model`` to ``directory`` with a model card (``README.md``,
    :mod:`reft.model_card`; ``adapter_name`` and ``training`` go into it); never removes or replaces a file reft did
    not write (a README of the user's stays as it is).

    * a new or empty folder, or one holding only the two adapter files, gets the adapter as a whole (atomically);
    * a folder that is a reft adapter (:func:`is_adapter_dir`) and holds other files too (e.g. a Trainer
      ``output_dir`` with its ``checkpoint-*`` folders, a README) keeps them: only the two adapter files are
      replaced, each atomically;
    * any other folder is refused, unless ``overwrite=True``, which adds the two adapter files beside what is there
      (nothing else is touched); a path that is a file is always refused.

    Raises:
        FileExistsError: ``directory`` is a file, or a folder with other files that is not an adapter.
        ValueError: the weights hold NaN/inf.
    """
    from .model_card import CARD_NAME, may_write_card, render_model_card, write_model_card

    directory = os.fspath(directory)
    _refuse_non_folder(directory)
    entries = os.listdir(directory) if os.path.isdir(directory) else []
    modules = [reft_model.interventions, getattr(reft_model, "head", None)]
    card = render_model_card(reft_model.reft_config, adapter_name=adapter_name, training=training,
                             parameters=sum(p.numel() for m in modules if m is not None for p in m.parameters()),
                             num_labels=getattr(reft_model, "num_labels", None))
    card_ours = may_write_card(directory)
    owned = ADAPTER_FILES + ((CARD_NAME,) if card_ours else ())
    if set(entries) <= set(owned) and not os.path.islink(directory):
        def write(tmp: str) -> None:
            write_adapter_files(reft_model, tmp)
            write_model_card(tmp, card)

        atomic_directory(directory, write, owned=owned)
        return
    adapter_folder = is_adapter_dir(directory)
    if not (overwrite or adapter_folder):
        shown = ", ".join(sorted(entries)[:5]) + (" …" if len(entries) > 5 else "")
        raise FileExistsError(f"{directory} is not a reft adapter folder (it holds {shown}): nothing was written; "
                              "save into a new or empty folder, or pass overwrite=True to add the adapter files "
                              f"({', '.join(ADAPTER_FILES)}) beside them")
    write_adapter_files(reft_model, directory)
    if adapter_folder and card_ours:  # overwrite=True into a folder not an adapter's adds the two adapter files only
        write_model_card(directory, card)


# ---- loading -----------------------------------------------------------------------------------------------------
def read_adapter(directory: str | os.PathLike) -> tuple[ReftConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Read and validate an adapter directory without touching any model.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a corrupt file, or weights that hold NaN/inf.
    """
    config = ReftConfig.load(directory)
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}: the adapter is incomplete; re-save it")
    try:
        state = load_file(path)
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e}): re-save or re-download the adapter") from None
    bad = non_finite(state)
    if bad:
        raise ValueError(f"{path} holds non-finite weights ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}): "
                         "the run that wrote it diverged; use an earlier checkpoint or retrain with a lower "
                         "learning rate")
    return config, state, metadata
