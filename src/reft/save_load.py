"""Saving and loading adapters: safetensors + JSON, atomic writes, checked against the target model.

An adapter directory holds exactly two files:

* ``reft_config.json``: the :class:`ReftConfig`, including the base model's name, type, hidden size and layer count;
* ``reft_model.safetensors``: the intervention (and head) tensors, named ``<intervention key>.<parameter>``.

Loading never unpickles and never imports anything named in a file: the intervention type is looked up in the
registry (:func:`reft.register_intervention`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CONFIG_NAME, ReftConfig
from .model.layers import model_dims

WEIGHTS_NAME = "reft_model.safetensors"


def reft_state_dict(reft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable state: interventions (``layer3.rotate.weight`` …) and, if present, the head (``head.…``)."""
    state = {k: v for k, v in reft_model.interventions.state_dict().items()}
    head = getattr(reft_model, "head", None)
    if isinstance(head, nn.Module):
        state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


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


def atomic_directory(directory: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a fresh sibling temp dir, then move it into place as ``directory``.

    A crash at any moment leaves either the old directory or the new one, never a half-written one.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        write(tmp)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
            os.replace(directory, os.path.join(old, "x"))
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temp file in the same folder + ``os.replace`` (never half-written)."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _adapter_payload(reft_model: nn.Module) -> tuple[ReftConfig, dict[str, torch.Tensor], dict[str, str]]:
    config: ReftConfig = reft_model.reft_config
    extra = {"num_labels": str(reft_model.num_labels)} if hasattr(reft_model, "head") else {}
    return config, reft_state_dict(reft_model), {"format": "pt", "reft": "1"} | extra


def write_adapter_files(reft_model: nn.Module, directory: str | os.PathLike) -> None:
    """Write the two adapter files into ``directory`` (created if needed), leaving any other file there alone.

    Each file is written to a temp name and renamed, weights first: a crash leaves old or new files, never a
    half-written one (a crash between the two renames leaves new weights beside the old config, which
    :func:`load_adapter` refuses when they do not match).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config, state, metadata = _adapter_payload(reft_model)
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", dir=directory)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, WEIGHTS_NAME))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    atomic_write_text(os.path.join(directory, CONFIG_NAME), config.to_json())


def save_adapter(reft_model: nn.Module, directory: str | os.PathLike) -> None:
    """Write the adapter of ``reft_model`` to ``directory``.

    A new directory, or one holding only an adapter, is replaced as a whole (atomically). A directory that holds
    other files too (e.g. a Trainer ``output_dir`` with its ``checkpoint-*`` folders) keeps them: only the two
    adapter files are replaced, each atomically.
    """
    directory = os.fspath(directory)
    foreign = os.path.isdir(directory) and any(
        name not in (CONFIG_NAME, WEIGHTS_NAME) and not name.startswith(".") for name in os.listdir(directory)
    )
    if foreign:
        write_adapter_files(reft_model, directory)
    else:
        atomic_directory(directory, lambda tmp: write_adapter_files(reft_model, tmp))


def check_compatible(config: ReftConfig, model: nn.Module) -> None:
    """Refuse a base model whose architecture, hidden size or depth differs from the checkpoint's."""
    hidden, layers = model_dims(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    problems = []
    if config.hidden_size is not None and config.hidden_size != hidden:
        problems.append(f"hidden size {config.hidden_size} (checkpoint) vs {hidden} (model)")
    if config.num_layers is not None and config.num_layers != layers:
        problems.append(f"{config.num_layers} layers (checkpoint) vs {layers} (model)")
    if config.model_type is not None and model_type is not None and config.model_type != model_type:
        problems.append(f"architecture {config.model_type!r} (checkpoint) vs {model_type!r} (model)")
    if problems:
        raise ValueError(
            f"this adapter was trained on {config.base_model or 'another model'}; it does not fit the given model: "
            + "; ".join(problems) + ". Load the base model it was trained on."
        )


def read_adapter(directory: str | os.PathLike) -> tuple[ReftConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Read and validate an adapter directory without touching any model."""
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
    return config, state, metadata


def load_adapter(model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False) -> nn.Module:
    """Rebuild the ReftModel saved in ``directory`` on top of ``model``.

    Args:
        model: the base model the adapter was trained on (checked: architecture, hidden size, depth).
        directory: an adapter directory written by ``save_pretrained``.
        is_trainable: keep the interventions trainable (e.g. to continue training). Default: False (eval mode).
    """
    from .model import get_reft_model

    config, state, metadata = read_adapter(directory)
    check_compatible(config, model)
    num_labels = int(metadata["num_labels"]) if "num_labels" in metadata else None
    reft_model = get_reft_model(model, config, num_labels=num_labels)
    load_reft_state_dict(reft_model, state)
    if not is_trainable:
        reft_model.eval()
        for p in reft_model.parameters():
            p.requires_grad_(False)
    return reft_model
