"""The wrapper and what it is made of: layer discovery, hooks and edit plans, adapters, compositions, heads."""

from __future__ import annotations

import copy
import os

from torch import nn

from ..config import ReftConfig
from .classification import ClassificationHead, ReftModelForSequenceClassification
from .compose import BASE, UnknownAdapterError, check_adapter_name, parse_composition
from .reft_model import ReftModel


def get_reft_model(model: nn.Module, config: ReftConfig | None = None, *, num_labels: int | None = None,
                   freeze_base: bool = True, adapter_name: str = "default") -> ReftModel:
    """Freeze ``model`` and attach the interventions ``config`` describes as adapter ``adapter_name``.

    Args:
        model: a transformers model (``AutoModelForCausalLM`` or an encoder such as ``BertModel``), or a peft
            ``PeftModel`` (e.g. LoRA) to co-train with the interventions: its adapter stays trainable.
        config: the first adapter; None = no adapter yet (add them with ``add_adapter`` / ``load_adapter``).
        num_labels: give it to get a :class:`ReftModelForSequenceClassification` with a fresh head per adapter.
        freeze_base: see :class:`ReftModel`. Default: True
        adapter_name: the first adapter's name. Default: ``"default"``
    """
    config = copy.deepcopy(config)
    if num_labels is not None:
        return ReftModelForSequenceClassification(model, config, num_labels, adapter_name=adapter_name,
                                                  freeze_base=freeze_base)
    return ReftModel(model, config, adapter_name=adapter_name, freeze_base=freeze_base)


def load_adapter(model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False) -> ReftModel:
    """Wrap ``model`` with the adapter saved in ``directory`` (:meth:`ReftModel.from_pretrained`).

    Args:
        model: the base model the adapter was trained on (checked: architecture, hidden size, depth).
        directory: an adapter directory written by ``save_pretrained``.
        is_trainable: keep the interventions trainable (e.g. to continue training). Default: False (eval mode).
    """
    return ReftModel.from_pretrained(model, directory, is_trainable=is_trainable)


__all__ = ["BASE", "ClassificationHead", "ReftModel", "ReftModelForSequenceClassification", "UnknownAdapterError",
           "check_adapter_name", "get_reft_model", "load_adapter", "parse_composition"]
