"""``README.md`` beside a saved adapter: a Hugging Face model card (YAML front matter + Markdown) that says what
the adapter is (base model, interventions in words and as JSON, trainable parameters), what it was trained on and
scored when that is known, and how to load it.

The card is reft's own only while its marker line is in it: a README the user wrote, or edited and removed the
marker from, is never replaced (:func:`may_write_card`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from .config import ReftConfig
from .positions import parse_positions

CARD_NAME = "README.md"
MARKER = "<!-- written by reft's save_pretrained: it replaces this file on the next save; delete this line to keep "\
         "your edits -->"
NAMES = {"loreft": "LoReFT", "direft": "DiReFT", "noreft": "NoReFT", "consreft": "ConsReFT",
         "lobireft": "LoBiReFT", "orthodireft": "orthonormal DiReFT"}
FORMULAS = {"loreft": "Φ(h) = h + Rᵀ(W h + b − R h), R with orthonormal rows",
            "direft": "Φ(h) = h + W₂ᵀ(W₁ h + b)"}


def _positions_in_words(positions: str, tied: bool) -> str:
    spec = parse_positions(positions)
    parts = [f"the first {spec.first}" if spec.first else "", f"the last {spec.last}" if spec.last else ""]
    where = " and ".join(p for p in parts if p) + " prompt positions"
    if spec.first and spec.last:
        where += " (one Φ per layer for both, tied)" if tied else " (one Φ each for the first and the last, untied)"
    return where


def describe(config: ReftConfig) -> list[str]:
    """One sentence per representation spec, e.g. "LoReFT of rank 4 on the block output of layers 3, 9 (of 30), at
    the first 7 and last 7 prompt positions (tied)"."""
    of = f" (of {config.num_layers})" if config.num_layers else ""
    out = []
    for spec in config.specs:
        name = NAMES.get(spec.intervention, spec.intervention)
        layers = spec.layers if isinstance(spec.layers, str) else ", ".join(map(str, spec.layers))
        extra = [f"dropout {spec.dropout}"] * bool(spec.dropout) + [f"activation {spec.act}"] * bool(spec.act)
        formula = f"; {FORMULAS[spec.intervention]}" if spec.intervention in FORMULAS else ""
        out.append(f"{name} of rank {spec.rank} on the {spec.component.replace('_', ' ')} of layer(s) {layers}{of}, "
                   f"at {_positions_in_words(spec.positions, spec.tied)}"
                   + (f", {', '.join(extra)}" if extra else "") + formula)
    return out


def render_model_card(config: ReftConfig, *, parameters: int, adapter_name: str = "default",
                      num_labels: int | None = None, training: dict[str, Any] | None = None) -> str:
    """The card's text.

    Args:
        parameters: trainable parameters of the adapter (interventions and head).
        adapter_name: ``"default"`` for the folder's top level, else the sub-folder's name (how to load it differs).
        num_labels: classes of a classification head, or None for a language-model adapter.
        training: what is known of the run, e.g. ``{"data": "train.jsonl (1,000 examples)", "metrics": {...}}``;
            every key becomes a line, ``metrics`` a table.
    """
    base = config.base_model or "the base model it was trained on"
    tags = ["reft", "representation-finetuning", config.specs[0].intervention]
    front = ["---", "library_name: reft"] + ([f"base_model: {config.base_model}"] if config.base_model else []) \
        + ["tags:"] + [f"- {t}" for t in tags] + ["---", MARKER, ""]
    kind = f"a classifier over {num_labels} labels" if num_labels else "a language-model adapter"
    title = f"# ReFT adapter `{adapter_name}` for {base}" if adapter_name != "default" else \
        f"# ReFT adapter for {base}"
    what = [title, "",
            f"A Representation Finetuning (ReFT) adapter, {kind}: the base model stays frozen and interventions edit "
            f"its hidden states. {parameters:,} trainable parameters.", ""]
    what += [f"- {s}" for s in describe(config)]
    fmt = config.prompt_format
    if fmt is not None:
        what.append("- prompts built " + ("with the tokenizer's chat template" if fmt["chat_template"]
                                          else "as plain text (no chat template)"))
    what.append("")
    if training:
        what += ["## Training", ""]
        for key, value in training.items():
            if key != "metrics":
                what.append(f"- {key}: {value}")
        metrics = training.get("metrics") or {}
        if metrics:
            what += ["", "| metric | value |", "|---|---|"]
            what += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        what.append("")
    base_arg = json.dumps(config.base_model or "path/to/base-model")
    if adapter_name == "default":
        load = "model = ReftModel.from_pretrained(base, \"path/to/this/folder\")"
    else:
        load = (f"model = ReftModel.from_pretrained(base, \"path/to/this/folder\", adapter_name={adapter_name!r})\n"
                f"# or beside other adapters: model.load_adapter(\"path/to/parent/{adapter_name}\", "
                f"adapter_name={adapter_name!r})")
    base_cls = "AutoModel" if num_labels else "AutoModelForCausalLM"
    use = ["## How to load", "", "```python", f"from transformers import {base_cls}", "from reft import ReftModel", "",
           f"base = {base_cls}.from_pretrained({base_arg})", load, "```", ""]
    if not num_labels:
        use += ["or from the command line: `reft generate --model " + (config.base_model or "BASE") +
                " --adapter path/to/this/folder --prompt \"...\"`", ""]
    as_json = ["## Config (`reft_config.json`)", "", "```json", config.to_json().strip(), "```", ""]
    return "\n".join(front + what + use + as_json)


def is_reft_card(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a card reft wrote and may replace (it holds the marker line)."""
    try:
        with open(path, encoding="utf-8") as f:
            return any(line.strip() == MARKER for _, line in zip(range(40), f))
    except (OSError, UnicodeDecodeError):
        return False


def may_write_card(directory: str | os.PathLike) -> bool:
    """No ``README.md`` in ``directory`` yet, or one reft wrote."""
    path = os.path.join(directory, CARD_NAME)
    return not os.path.lexists(path) or is_reft_card(path)


def write_model_card(directory: str | os.PathLike, text: str) -> None:
    """Write ``README.md`` atomically (the caller has checked :func:`may_write_card`)."""
    from .save_load import atomic_write_text

    atomic_write_text(os.path.join(directory, CARD_NAME), text)
