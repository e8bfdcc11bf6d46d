"""Batched text generation with a ReftModel: left padding, prompt-only interventions, a progress bar."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .data import ReftDataCollator, tokenize_prompt


def render_chat(tokenizer, prompt: str) -> str:
    """``prompt`` as a single user turn through the tokenizer's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    return prompt


def encode_prompts(tokenizer, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tokenise prompts exactly as :func:`reft.data.tokenize_example` does, left-padded for generation."""
    rows = [{"input_ids": tokenize_prompt(tokenizer, p)} for p in prompts]
    return ReftDataCollator(tokenizer.pad_token_id, padding_side="left")(rows)


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    progress: bool = True,
    adapter_names: Sequence | None = None,
    **generate_kwargs,
) -> list[str]:
    """Greedy (by default) completions for ``prompts``, decoded without special tokens.

    Works with a :class:`reft.ReftModel` (interventions at the prompt positions) or a bare model. Prompts are
    sorted by length into batches to cut padding and returned in the input order. ``adapter_names`` (one entry
    per prompt: a name, a composition such as ``"a+b"``, or None for the bare model) mixes adapters in a batch.
    """
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for {len(prompts)} prompts: give one "
                         "per prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    kwargs = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id} | generate_kwargs
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts), desc="generate", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encode_prompts(tokenizer, [prompts[i] for i in idx])
        names = {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in idx]}
        out = model.generate(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, **names, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        for i, ids in zip(idx, new):
            outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return outputs
