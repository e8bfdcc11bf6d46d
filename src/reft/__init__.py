"""reft: Representation Finetuning (Wu, Arora et al., 2024) on plain PyTorch and transformers.

A frozen LM is adapted by interventions Φ on hidden states at chosen layers and prompt positions, e.g. LoReFT
``Φ(h) = h + Rᵀ(W h + b − R h)`` with R having orthonormal rows.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → the submodule defining it; imported on first use (PEP 562), so that ``import reft`` and
#: ``reft --help`` do not load torch and transformers
_EXPORTS = {
    name: module
    for module, names in {
        "config": ("ReftConfig", "Representation"),
        "interventions": ("INTERVENTIONS", "ConsReFT", "DiReFT", "Intervention", "LoBiReFT", "LoReFT", "NoReFT",
                          "OrthoDiReFT", "register_intervention"),
        "model": ("BASE", "ClassificationHead", "ReftModel", "ReftModelForSequenceClassification",
                  "UnknownAdapterError", "get_reft_model", "load_adapter", "parse_composition"),
        "positions": ("PositionSpec", "parse_positions", "prompt_positions", "split_counts"),
        "pyreft_compat": ("import_pyreft",),
        "save_load": ("load_reft_state_dict", "reft_state_dict", "save_adapter"),
    }.items()
    for name in names
}

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
