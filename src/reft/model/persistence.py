"""Saving and loading a wrapper's adapters: peft's folder layout over :mod:`reft.save_load`'s files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..config import ReftConfig
from .adapter import AdapterView
from .layers import model_dims

_CLASSIFIER: list[type] = []  # filled by reft.model.classification (a registry, not an import cycle)


class SaveLoadMixin:
    """``save_pretrained`` / ``load_adapter`` / ``from_pretrained`` of :class:`reft.ReftModel`."""

    def _view(self, name: str) -> AdapterView:
        return AdapterView(self.adapters[name], getattr(self, "num_labels", None))

    def save_pretrained(self, directory: str | os.PathLike, selected_adapters: Sequence[str] | None = None,
                        is_main_process: bool = True, *, overwrite: bool = False,
                        training: dict[str, Any] | None = None, **_: object) -> None:
        """Write each adapter as ``reft_config.json`` + ``reft_model.safetensors`` (see :mod:`reft.save_load`) + a
        model card ``README.md`` (:mod:`reft.model_card`; ``training``, e.g. ``{"data": …, "metrics": {…}}``, goes
        into every card): ``default`` in ``directory`` itself, every other adapter in ``directory/<name>`` (peft's
        layout). A folder that is not a reft adapter is refused unless ``overwrite`` (which adds the files beside
        what is there)."""
        from ..save_load import save_adapter

        if not is_main_process:
            return
        names = list(self.adapters) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise ValueError(f"unknown adapter {unknown[0]!r}: loaded adapters are {list(self.adapters)}")
        for name in sorted(names, key=lambda n: n != "default"):  # the top level first: it may replace the folder
            target = directory if name == "default" else os.path.join(directory, name)
            save_adapter(self._view(name), target, overwrite=overwrite, adapter_name=name, training=training)

    def load_adapter(self, directory: str | os.PathLike, adapter_name: str = "default", *,
                     is_trainable: bool = False) -> None:
        """Add the adapter saved in ``directory`` under ``adapter_name``; refuses one trained on another base model.
        It is frozen unless ``is_trainable``; it becomes active only if no adapter is active yet."""
        from ..save_load import load_reft_state_dict, read_adapter

        config, state, metadata = read_adapter(directory)
        check_compatible(config, self.model)
        if ("num_labels" in metadata) != hasattr(type(self), "head"):
            kind = f"a classifier adapter (a head for {metadata['num_labels']} labels)" if "num_labels" in metadata \
                else "a language-model adapter (no classification head)"
            raise ValueError(f"{directory} holds {kind}, which does not fit this {type(self).__name__}: load it with "
                             "ReftModel.from_pretrained(model, dir), which picks the right class")
        self.add_adapter(adapter_name, config, trainable=is_trainable)
        try:
            load_reft_state_dict(self._view(adapter_name), state)
        except BaseException:
            self.delete_adapter(adapter_name)
            raise
        if not is_trainable:
            self.adapters[adapter_name].eval()

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default", *,
                        is_trainable: bool = False, **kwargs) -> SaveLoadMixin:
        """Wrap ``model`` with the adapter saved in ``directory`` (named ``adapter_name``); a classifier adapter
        gives a :class:`reft.ReftModelForSequenceClassification`. Refuses a mismatched base model."""
        from ..config import CONFIG_NAME
        from ..save_load import named_adapter_dirs, read_adapter

        named = [] if os.path.isfile(os.path.join(directory, CONFIG_NAME)) else named_adapter_dirs(directory)
        if named:
            raise FileNotFoundError(
                f"{directory} holds named adapters in sub-folders ({', '.join(named)}) but no top-level adapter: load "
                f"one with ReftModel.from_pretrained(model, {os.path.join(os.fspath(directory), named[0])!r}, "
                f"adapter_name={named[0]!r}), then the others with .load_adapter(folder, adapter_name=name)")
        _, _, metadata = read_adapter(directory)
        if "num_labels" in metadata and not hasattr(cls, "head"):
            cls = _CLASSIFIER[0]
            kwargs["num_labels"] = int(metadata["num_labels"])
        wrapper = cls(model, **kwargs)
        wrapper.load_adapter(directory, adapter_name, is_trainable=is_trainable)
        if not is_trainable:
            wrapper.eval()
        return wrapper


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
