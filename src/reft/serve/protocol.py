"""OpenAI request schemas (the fields ``reft serve`` reads) and the response/chunk builders."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

MAX_N = 16
MAX_STOP = 4


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
    logprobs: int | None = None
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


def completion_response(rid: str, model: str, texts: list[str], reasons: list[str | None], use: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                        for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": use}


def chat_response(rid: str, model: str, texts: list[str], reasons: list[str | None], use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": use}


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]}


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict, reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}


def usage_chunk(rid: str, model: str, created: int, chat: bool, use: dict) -> dict:
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}
