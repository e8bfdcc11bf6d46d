"""reft: Representation Finetuning (Wu, Arora et al., 2024) on plain PyTorch and transformers.

A frozen LM is adapted by interventions Φ on hidden states at chosen layers and prompt positions, e.g. LoReFT
``Φ(h) = h + Rᵀ(W h + b − R h)`` with R having orthonormal rows.
"""

from .config import ReftConfig, Representation
from .interventions import (
    INTERVENTIONS,
    ConsReFT,
    DiReFT,
    Intervention,
    LoBiReFT,
    LoReFT,
    NoReFT,
    OrthoDiReFT,
    register_intervention,
)
from .model import (
    BASE,
    ClassificationHead,
    ReftModel,
    ReftModelForSequenceClassification,
    UnknownAdapterError,
    get_reft_model,
    load_adapter,
    parse_composition,
)
from .positions import PositionSpec, parse_positions, prompt_positions, split_counts
from .pyreft_compat import import_pyreft
from .save_load import load_reft_state_dict, reft_state_dict, save_adapter

__version__ = "0.1.0"

__all__ = [
    "BASE",
    "INTERVENTIONS",
    "ClassificationHead",
    "ConsReFT",
    "DiReFT",
    "Intervention",
    "LoBiReFT",
    "LoReFT",
    "NoReFT",
    "OrthoDiReFT",
    "PositionSpec",
    "ReftConfig",
    "ReftModel",
    "ReftModelForSequenceClassification",
    "Representation",
    "UnknownAdapterError",
    "get_reft_model",
    "import_pyreft",
    "load_adapter",
    "load_reft_state_dict",
    "parse_composition",
    "parse_positions",
    "prompt_positions",
    "reft_state_dict",
    "register_intervention",
    "save_adapter",
    "split_counts",
]
