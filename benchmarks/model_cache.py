"""SmolLM2-135M-Instruct for both benchmark sides, through the library's own loader (`src/reft/models.py`).

The peer venv has no `reft` installed, so the module is loaded from its file: it needs only torch and transformers.
Both sides thus read the same de-quantised safetensors cache (`~/.cache/reft/smollm2-135m-instruct`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "src" / "reft" / "models.py"
_spec = importlib.util.spec_from_file_location("_reft_models", _PATH)
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


def load():
    """(model, tokenizer) in eval mode, fp32, checked (tied lm_head, `<|im_end|>` as eos and pad)."""
    return models.load_model("smollm2")


if __name__ == "__main__":
    print(models.smollm2_path())
