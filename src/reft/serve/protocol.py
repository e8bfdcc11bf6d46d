"""OpenAI request schemas (the fields ``reft serve`` reads) and the response/chunk builders."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

MAX_N = 16
MAX_STOP = 4
MAX_LOGPROBS = 20  # alternatives per token (OpenAI: 5 for completions, 20 for chat)

#: one generated token's log-probability: ``(token id, log p(token), ((alternative id, log p), …))`` with the
#: alternatives in descending order; log p is of the model's distribution before temperature and top-p
TokenLogprob = tuple[int, float, tuple[tuple[int, float], ...]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints. Unknown fields are ignored (as OpenAI-compatible servers commonly do)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool = False  # vLLM's extension (benchmarks): generate max_tokens tokens whatever they are


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list | None = None


class LoadAdapterRequest(BaseModel):
    """``{"adapter_name", "adapter_path"}``; vLLM's ``{"lora_name", "lora_path"}`` is accepted too."""

    model_config = ConfigDict(extra="ignore")
    adapter_name: str = Field(min_length=1, validation_alias=AliasChoices("adapter_name", "lora_name"))
    adapter_path: str = Field(min_length=1, validation_alias=AliasChoices("adapter_path", "lora_path"))


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    adapter_name: str = Field(min_length=1, validation_alias=AliasChoices("adapter_name", "lora_name"))


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(entries: list[TokenLogprob], tokenizer, offset: int = 0) -> dict:
    """OpenAI's legacy ``logprobs`` object of a completion choice; ``offset``: characters of the choice's text
    before these tokens (``text_offset`` counts from the start of the completion)."""
    tokens, offsets = [], []
    for token, _, _ in entries:
        offsets.append(offset)
        tokens.append(tokenizer.decode([token]))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in alts} for _, _, alts in entries],
            "text_offset": offsets}


def chat_logprobs(entries: list[TokenLogprob], tokenizer) -> dict:
    """The chat ``logprobs`` object: ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}, …]}``."""

    def item(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [item(t, lp) | {"top_logprobs": [item(a, alp) for a, alp in alts]} for t, lp, alts in entries]}


def completion_response(rid: str, model: str, texts: list[str], reasons: list[str | None], use: dict,
                        logprobs: list[dict | None] | None = None) -> dict:
    logprobs = logprobs or [None] * len(texts)
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": t, "logprobs": lp, "finish_reason": r}
                        for i, (t, r, lp) in enumerate(zip(texts, reasons, logprobs))],
            "usage": use}


def chat_response(rid: str, model: str, texts: list[str], reasons: list[str | None], use: dict,
                  logprobs: list[dict | None] | None = None) -> dict:
    logprobs = logprobs or [None] * len(texts)
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": lp,
                         "finish_reason": r} for i, (t, r, lp) in enumerate(zip(texts, reasons, logprobs))],
            "usage": use}


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, reason: str | None,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}]}


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict, reason: str | None,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}


def usage_chunk(rid: str, model: str, created: int, chat: bool, use: dict) -> dict:
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}
