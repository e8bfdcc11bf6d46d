"""Finding a model's transformer blocks and their sub-modules, generically.

Known layouts are tried first (Llama/Mistral/Qwen2/Gemma ``model.layers``, GPT-2 ``transformer.h``, BERT/RoBERTa
``encoder.layer``, …); otherwise the unique ``nn.ModuleList`` whose length is the configured layer count is used.
When neither works, ``ReftConfig(layers_path="…")`` names the list by hand.
"""

from __future__ import annotations

from torch import nn

_KNOWN_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "layers",
    "h",
)
_COMPONENT_CHILDREN = {
    "attention_output": ("self_attn", "attn", "attention", "self_attention"),
    "mlp_output": ("mlp", "feed_forward", "ffn"),
}


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def model_dims(model: nn.Module) -> tuple[int, int]:
    """``(hidden_size, num_layers)`` read from the model's (text) config."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config: pass a transformers model")
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if hasattr(config, k)), None)
    layers = next(
        (getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(config, k)), None
    )
    if hidden is None or layers is None:
        raise ValueError(f"cannot read hidden size / layer count from {type(config).__name__}")
    return int(hidden), int(layers)


def find_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """The list of transformer blocks of ``model``.

    Raises:
        ValueError: the layout is unknown (names the architecture and how to set ``layers_path``).
    """
    _, num_layers = model_dims(model)
    if layers_path is not None:
        found = _get(model, layers_path)
        if not isinstance(found, nn.ModuleList):
            raise ValueError(f"layers_path {layers_path!r} does not name an nn.ModuleList in {type(model).__name__}")
        return found
    for path in _KNOWN_LAYER_PATHS:
        found = _get(model, path)
        if isinstance(found, nn.ModuleList) and len(found) == num_layers:
            return found
    candidates = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers
    ]
    if len(candidates) == 1:
        return candidates[0][1]
    arch = type(model).__name__
    raise ValueError(
        f"cannot find the {num_layers} transformer blocks of {arch} "
        f"({'several candidates: ' + ', '.join(n for n, _ in candidates) if candidates else 'no candidate'}): "
        "set ReftConfig(layers_path='dotted.path.to.layers')"
    )


def component_module(layer: nn.Module, component: str) -> nn.Module:
    """The module whose output (or input, for ``block_input``) is the chosen representation."""
    if component in ("block_output", "block_input"):
        return layer
    for name in _COMPONENT_CHILDREN[component]:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module):
            return child
    raise ValueError(
        f"{type(layer).__name__} has no {component.replace('_output', '')} sub-module "
        f"(looked for {', '.join(_COMPONENT_CHILDREN[component])}): use component='block_output'"
    )


def is_peft_model(model: nn.Module) -> bool:
    """A peft ``PeftModel`` (recognised by its attributes; peft is never imported here)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model that runs the forward: ``model`` itself, or the one inside a ``PeftModel``."""
    return model.get_base_model() if is_peft_model(model) else model


def cache_name(model: nn.Module) -> str:
    """The KV-cache argument and output field: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def model_name(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None
