"""A quantized frozen base: the base's linear weights stored in 8 or 4 bits, the interventions in fp32.

ReFT never updates the base, so its linear layers can hold quantized weights ``Ŵ`` (one scale per row or
group). Each ``y = x Ŵᵀ`` dequantizes on the fly; the backward pass needs only ``∂L/∂x = ∂L/∂y · Ŵ``, so
gradients reach the hidden states ``h`` and through them the fp32 interventions ``Φ(h)``. Embeddings, norms
and the LM head stay in the load dtype (transformers' defaults), so the hidden states ``h`` are fp32 too.

An adapter does not depend on how the base is stored: ``reft_config.json`` + ``reft_model.safetensors`` hold
only the interventions, so one trained on a 4-bit base loads on the fp32 base and vice versa.

Backends (``pip install 'reft[quant]'``), all on CPU as well as CUDA:

==============  ========================================  ====================================
backend         ``"8bit"``                                ``"4bit"``
==============  ========================================  ====================================
bitsandbytes    LLM.int8 (``load_in_8bit``)                NF4, fp32 compute (``load_in_4bit``)
torchao         int8 weight-only (``Int8WeightOnlyConfig``)  —
quanto          int8 weights (``QuantoConfig("int8")``)    int4 weights (``QuantoConfig("int4")``)
==============  ========================================  ====================================
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

BITS = ("8bit", "4bit")
#: backend → (importable module, pip package) it needs
BACKENDS = {"bitsandbytes": ("bitsandbytes", "bitsandbytes"), "torchao": ("torchao", "torchao"),
            "quanto": ("optimum.quanto", "optimum-quanto")}


def quantization_config(bits: str, backend: str = "bitsandbytes", *,
                        compute_dtype: torch.dtype = torch.float32) -> Any:
    """The transformers ``quantization_config`` that loads a base with ``bits`` weights through ``backend``.

    Pass it to ``AutoModelForCausalLM.from_pretrained(path, quantization_config=…, device_map="cpu")``, or use
    ``reft.harness.models.load_model(name, quantize=bits, quantize_backend=backend)``.

    Args:
        bits: ``"8bit"`` or ``"4bit"``.
        backend: ``"bitsandbytes"`` (default), ``"torchao"`` (8bit only) or ``"quanto"``.
        compute_dtype: dtype of the dequantized matmul for bitsandbytes 4bit. Default: fp32

    Raises:
        ValueError: an unknown ``bits``/``backend``, or a pair no backend offers.
        ModuleNotFoundError: the backend's package is not installed (names the pip command).
    """
    if bits not in BITS:
        raise ValueError(f"quantize must be one of {list(BITS)}, got {bits!r}")
    if backend not in BACKENDS:
        raise ValueError(f"quantization backend must be one of {list(BACKENDS)}, got {backend!r}")
    module, package = BACKENDS[backend]
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{bits} quantization with {backend} needs the {package} package: "
                                  f"pip install 'reft[quant]' (or pip install {package})")
    from transformers import BitsAndBytesConfig, QuantoConfig, TorchAoConfig

    if backend == "bitsandbytes":
        if bits == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    if backend == "quanto":
        return QuantoConfig(weights="int8" if bits == "8bit" else "int4")
    if bits == "4bit":
        raise ValueError("torchao's int4 weight-only layouts need a CUDA/XPU kernel; on this backend use 8bit, or "
                         "4bit with bitsandbytes (nf4) or quanto (int4)")
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def quantization_of(model: nn.Module) -> dict[str, str] | None:
    """``{"backend": …, "bits": …}`` of a base loaded with a ``quantization_config``, or None for a plain one.

    Reads ``model.config.quantization_config`` (what transformers records on load), so it also describes a
    checkpoint that was saved quantized.
    """
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    as_dict = config if isinstance(config, dict) else config.to_dict()
    method = as_dict.get("quant_method", "unknown")
    backend = str(getattr(method, "value", method))  # an enum on a live config, its value once saved
    if backend == "bitsandbytes":
        bits = "8bit" if as_dict.get("load_in_8bit") else "4bit"
        if bits == "4bit":
            bits += f" ({as_dict.get('bnb_4bit_quant_type', 'fp4')})"
    elif backend == "quanto":
        bits = {"int8": "8bit", "int4": "4bit", "int2": "2bit", "float8": "8bit (float8)"}.get(
            str(as_dict.get("weights")), str(as_dict.get("weights")))
    elif backend == "torchao":
        quant_type = as_dict.get("quant_type")
        name = quant_type.get("default", quant_type) if isinstance(quant_type, dict) else quant_type
        name = name.get("_type", name) if isinstance(name, dict) else name
        bits = "8bit" if "Int8" in str(name) or "int8" in str(name) else str(name)
    else:
        bits = "unknown"
    return {"backend": backend, "bits": bits}


def describe_quantization(model: nn.Module) -> str | None:
    """One line for a model card, e.g. ``"bitsandbytes 4bit (nf4) weights (…)"``, or None for a plain base."""
    q = quantization_of(model)
    if q is None:
        return None
    return f"{q['backend']} {q['bits']} weights (interventions in fp32); the adapter also loads on the full base"


def stored_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in ``module.state_dict()`` as stored: a quantized tensor subclass (torchao, quanto)
    counts its inner tensors (``__tensor_flatten__``: data, scales, zero points), bitsandbytes' quantization
    state is in the state dict already, and a tensor two names share (tied embeddings) counts once.
    (``get_memory_footprint`` reports fp32 sizes for torchao and quanto weights.)"""
    seen: set[int] = set()

    def size(t: torch.Tensor) -> int:
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, n)) for n in names)
        key = t.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return t.numel() * t.element_size()

    return sum(size(t) for t in module.state_dict().values() if isinstance(t, torch.Tensor))
