"""Batched text generation with a ReftModel: left padding, prompt-only interventions, a progress bar.

The prompt format (plain text or the tokenizer's chat template) is part of an adapter
(``ReftConfig.prompt_format``): :func:`prompt_format` records it at training time, :func:`resolve_chat_template`
reads it back at evaluation time (and warns when told otherwise), :func:`format_prompts` applies it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import ExampleError, ReftDataCollator, model_context_length, tokenize_prompt


def _chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: hash them all, in a stable order
        return json.dumps(template, sort_keys=True)
    return template or None


def render_chat(tokenizer, prompt: str | Sequence[dict[str, str]]) -> str:
    """``prompt`` (a user message, or chat turns ``[{"role", "content"}, …]`` ending before the reply) through the
    tokenizer's chat template with the assistant's turn opened; a plain user message stays plain text if the
    tokenizer has no chat template.

    Raises:
        ValueError: chat turns for a tokenizer without a chat template (only a lone user turn can be plain text).
    """
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if _chat_template(tokenizer):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return plain_prompt(turns, "the tokenizer has no chat template")


def plain_prompt(turns: Sequence[dict[str, str]], why: str) -> str:
    """The text of a lone user turn, for prompts built without a chat template; refuses anything else (``why``
    says why there is no template)."""
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    roles = ", ".join(t["role"] for t in turns)
    raise ValueError(f"a prompt of {len(turns)} chat turns ({roles}) needs a chat template, but {why}: use a "
                     "tokenizer with one, or give prompt/response pairs")


def format_prompts(tokenizer, prompts: Sequence[str | Sequence[dict[str, str]]], chat_template: bool) -> list[str]:
    """``prompts`` through :func:`render_chat` when ``chat_template``, else as plain text (chat turns: a lone user
    turn only, see :func:`plain_prompt`)."""
    if chat_template:
        return [render_chat(tokenizer, p) for p in prompts]
    return [p if isinstance(p, str) else plain_prompt(p, "the chat template is off (--no-chat-template)")
            for p in prompts]


def prompt_format(tokenizer, chat_template: bool) -> dict[str, Any]:
    """The prompt format to record in ``ReftConfig.prompt_format`` for prompts built by :func:`format_prompts`.

    ``chat_template`` is recorded as what took effect: a tokenizer without a chat template gives plain text.
    """
    template = _chat_template(tokenizer) if chat_template else None
    sha = hashlib.sha256(template.encode("utf-8")).hexdigest() if template else None
    return {"chat_template": template is not None, "template_sha256": sha}


def recorded_prompt_format(model) -> dict[str, Any] | None:
    """The prompt format ``model`` was trained with: a ReFT model's ``reft_config.prompt_format``, a LoRA model's
    ``prompt_format`` (:func:`reft.harness.baselines.load_lora`), or None when not recorded."""
    recorded = getattr(getattr(model, "reft_config", None), "prompt_format", None)
    return recorded if recorded is not None else getattr(model, "prompt_format", None)


def resolve_chat_template(model, tokenizer, requested: bool | None, *, default: bool = True) -> bool:
    """Whether to wrap prompts in the chat template for ``model``: ``requested``, else what the adapter was trained
    with (:func:`recorded_prompt_format`), else ``default``.

    Warns (``UserWarning``) when ``requested`` contradicts the recorded format, or when the tokenizer's chat
    template is not the one the adapter was trained with: the prompts then differ from training.
    """
    recorded = recorded_prompt_format(model)
    if recorded is None:
        return default if requested is None else requested
    trained = recorded["chat_template"]
    use = trained if requested is None else requested
    if use != trained:
        warnings.warn(f"the adapter was trained {'with' if trained else 'without'} the chat template; prompts are "
                      f"now built {'with' if use else 'without'} it and differ from training (omit the option to "
                      "use the adapter's format)", stacklevel=2)
    elif use and prompt_format(tokenizer, True)["template_sha256"] != recorded.get("template_sha256"):
        warnings.warn("the tokenizer's chat template is not the one the adapter was trained with (its SHA-256 "
                      "differs): prompts differ from training; use the tokenizer of the training run", stacklevel=2)
    return use


def encode_prompts(tokenizer, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tokenise prompts exactly as :func:`reft.data.tokenize_example` does, left-padded for generation."""
    rows = [{"input_ids": tokenize_prompt(tokenizer, p)} for p in prompts]
    return ReftDataCollator(tokenizer.pad_token_id, padding_side="left")(rows)


def _check_prompts(prompts: Sequence[str], batch_size: int, max_new_tokens: int) -> None:
    if isinstance(prompts, (str, bytes)):
        raise TypeError("generate_texts takes a list of prompts, got a single string (which would be read as one "
                        "prompt per character): pass [prompt]")
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"prompt {bad} is a {type(prompts[bad]).__name__}, not a str: pass a list of strings")
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


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

    Raises:
        TypeError: ``prompts`` is a single string (pass ``[prompt]``) or holds something other than strings.
        ValueError: ``batch_size`` or ``max_new_tokens`` below 1.
        ExampleError: an empty prompt, or one that leaves no room for ``max_new_tokens`` in the model's context
            (checked for all prompts before generating any).
    """
    _check_prompts(prompts, batch_size, max_new_tokens)
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for {len(prompts)} prompts: give one "
                         "per prompt")
    prompt_ids = []
    context = model_context_length(model)
    for i, p in enumerate(prompts):
        try:
            prompt_ids.append(tokenize_prompt(tokenizer, p))
        except ValueError as e:
            raise ExampleError(i, str(e)) from None
        if context is not None and len(prompt_ids[-1]) + max_new_tokens > context:
            raise ExampleError(i, f"the prompt has {len(prompt_ids[-1])} tokens; with max_new_tokens="
                                  f"{max_new_tokens} that is more than the model's context of {context} tokens: "
                                  "shorten the prompt or lower max_new_tokens")
    collate = ReftDataCollator(tokenizer.pad_token_id, padding_side="left")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    kwargs = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id} | generate_kwargs
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts), desc="generate", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([{"input_ids": prompt_ids[i]} for i in idx])
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
