"""SmolLM2-135M-Instruct for both benchmark sides, through the library's own loader (`reft.harness.models`).

`src/` is put on the path (any venv can run this file): importing reft changes nothing global (no registration or
patching at import), and the loader needs only torch, transformers and safetensors. `python model_cache.py` builds
the cache if missing and prints its folder (run.py does so before its first timed run). Both sides thus
read the same de-quantised safetensors cache (`~/.cache/reft/smollm2-135m-instruct`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reft.harness import models  # noqa: E402


def load():
    """(model, tokenizer) in eval mode, fp32, checked (tied lm_head, `<|im_end|>` as eos and pad)."""
    return models.load_model("smollm2")


if __name__ == "__main__":
    print(models.smollm2_path())
