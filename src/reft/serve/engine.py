"""The server's model-facing calls, in one place: adapters, prefill with per-row adapters, decode steps, KV cache.

The scheduler (:mod:`reft.serve.scheduler`) never touches the model or its cache except through :class:`Engine`:

* :meth:`Engine.prefill`: one left-padded forward of the multi-adapter ``ReftModel`` over the joining prompts,
  ``adapter_names=[...]``: row ``i`` is edited by its own adapter or composition (or none) at its own prompt
  positions; returns the last position's logits and the KV cache;
* :meth:`Engine.decode`: one step of the bare base model (``reft_model.model``, outside a ``ReftModel`` call the
  hooks do nothing) over the running batch: the edits reach decoded tokens through the cache, as in
  ``ReftModel.generate``;
* :func:`cache_select`, :func:`cache_merge`, :func:`cache_trim`: drop rows, join two batches (left-padding the
  shorter along the sequence axis), drop leading columns that no row attends to.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from ..model.compose import BASE, Composition, check_adapter_name, parse_composition
from ..model.reft_model import ReftModel
from ..save_load import read_adapter


class AdapterConflict(ValueError):
    """An adapter of that name is already loaded."""


@dataclass(frozen=True)
class AdapterInfo:
    """What ``GET /v1/models`` says about a loaded adapter."""

    name: str
    path: str
    specs: tuple[dict, ...]  # per representation spec: layers, component, positions, intervention, rank
    parameters: int
    created: int
    load_seconds: float

    @property
    def positions(self) -> str:
        return "; ".join(s["positions"] for s in self.specs)


def _context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Engine:
    """A frozen causal LM with named ReFT adapters, called by one thread (the scheduler's) at a time.

    Args:
        model: a transformers causal LM (eval mode; its parameters are frozen here).
        tokenizer: its tokenizer (used for the EOS and pad ids; the server tokenises).
        model_id: the id under which the bare model is served (``GET /v1/models``).
        aliases: other ids accepted for the bare model (e.g. ``"smollm2"``).
    """

    def __init__(self, model: nn.Module, tokenizer, model_id: str, *, aliases: tuple[str, ...] = ()) -> None:
        self.reft_model = ReftModel(model.eval())  # no adapter yet: the bare model
        self.reft_model.eval()
        self.model = self.reft_model.model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.base_ids = {model_id, BASE, *aliases}
        self.cache_key = self.reft_model.cache_key
        self.context_length = _context_length(self.model.config)
        self.device = next(self.model.parameters()).device
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        eos = getattr(self.model.generation_config, "eos_token_id", None) or self.model.config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else 0
        self._info: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()  # guards _info (read by HTTP handlers, written by the scheduler thread)

    # ---- adapters ----------------------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, AdapterInfo]:
        """Loaded adapters, in load order."""
        with self._lock:
            return dict(self._info)

    def load_adapter(self, name: str, path: str | os.PathLike) -> AdapterInfo:
        """Load the adapter folder ``path`` as ``name`` (call on the scheduler thread, between steps).

        Raises:
            AdapterConflict: the name is taken.
            ValueError: a bad name, or an adapter that does not fit the base model.
            FileNotFoundError: no adapter at ``path``.
        """
        check_adapter_name(name)
        if name in self.base_ids:
            raise ValueError(f"adapter name {name!r} is the base model's id: choose another name")
        with self._lock:
            if name in self._info:
                raise AdapterConflict(f"an adapter named {name!r} is already loaded: unload it first or pick another "
                                      "name")
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no adapter folder at {path!r} (on the server's disk): give the folder that "
                                    "holds reft_config.json and reft_model.safetensors")
        t0 = time.perf_counter()
        _, _, metadata = read_adapter(path)
        if "num_labels" in metadata:
            raise ValueError(f"{path} is a classification adapter (it has a head): only causal-LM adapters can "
                             "be served")
        self.reft_model.load_adapter(path, adapter_name=name)  # checks the base model: ValueError on a mismatch
        seconds = time.perf_counter() - t0
        adapter = self.reft_model.adapters[name]
        specs = tuple({"layers": list(s.layers), "component": s.component, "positions": s.positions,
                       "intervention": s.intervention, "rank": s.rank, "tied": s.tied}
                      for s in adapter.config.specs)
        info = AdapterInfo(name=name, path=os.path.abspath(path), specs=specs,
                           parameters=sum(p.numel() for p in adapter.parameters()), created=int(time.time()),
                           load_seconds=seconds)
        with self._lock:
            self._info[name] = info
        return info

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name``; rows already prefilled with it keep its edit (it lives in their KV cache)."""
        with self._lock:
            if name not in self._info:
                raise KeyError(self._unknown(name))
            del self._info[name]
        self.reft_model.delete_adapter(name)

    def _unknown(self, name: str) -> str:
        loaded = ", ".join(self._info) or "none"
        return (f"the model {name!r} does not exist: use the base model {self.model_id!r} or a loaded adapter "
                f"(loaded: {loaded}), or a composition of them such as 'a+b'; GET /v1/models lists them")

    def resolve(self, spec: str | None) -> Composition | None:
        """Validate a request's ``model``: ``None`` for the bare model, else the composition the batch applies.

        Raises:
            LookupError: an unknown adapter (the message names it and what is loaded).
            ValueError: a composition string that is not well formed.
        """
        if spec is None or spec in self.base_ids:
            return None
        if not isinstance(spec, str):
            raise ValueError(f"model must be a string, got {type(spec).__name__}")
        try:
            composition = parse_composition(spec)
        except ValueError as e:
            raise ValueError(f"'model' is neither the base model {self.model_id!r}, an adapter, nor a composition: "
                             f"{e}") from None
        with self._lock:
            unknown = [n for n, _ in composition if n not in self._info]
            if unknown:
                raise LookupError(self._unknown(unknown[0]))
        return composition or None

    def unavailable(self, composition: Composition | None) -> str | None:
        """The first adapter of ``composition`` that is no longer loaded (``None``: all are)."""
        with self._lock:
            return next((n for n, _ in composition or () if n not in self._info), None)

    # ---- model calls -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                adapters: list[Composition | None]) -> tuple[torch.Tensor, object]:
        """Run the prompts (left-padded ``[B, T]``) with row ``i`` edited by ``adapters[i]`` (``None``: no edit).

        Returns ``(logits [B, V] at the last position (fp32, on the CPU, where sampling runs), KV cache of batch B
        and length T)``.

        Raises:
            LookupError: an adapter was unloaded after the request was accepted.
        """
        gone = next((n for n in map(self.unavailable, adapters) if n is not None), None)
        if gone is not None:
            raise LookupError(f"adapter {gone!r} was unloaded after the request was accepted")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        names = [list(c) if c else None for c in adapters]
        out = self.reft_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              adapter_names=names, use_cache=True, **extra)
        return out.logits[:, -1].float().cpu(), adopt(getattr(out, self.cache_key))

    @torch.inference_mode()
    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               cache) -> torch.Tensor:
        """One decode step of the bare model: ``input_ids [B, 1]``, ``attention_mask [B, T+1]``, ``position_ids
        [B, 1]``; appends to ``cache`` in place and returns the logits ``[B, V]`` (fp32, on the CPU)."""
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                         position_ids=position_ids.to(self.device), use_cache=True, **{self.cache_key: cache})
        return out.logits[:, -1].float().cpu()


# ---- KV cache surgery ---------------------------------------------------------------------------------------------
class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers with spare columns.

    A decode step writes its token into the next free column instead of ``torch.cat``-ing the whole history (which
    copies every row's cache once per step); when the spare columns run out the buffer doubles. ``keys`` / ``values``
    are views of the filled part, so attention and ``get_seq_length`` see a plain layer. Padding columns made by
    :func:`cache_merge` are zeros (masked out, and finite, so that masked attention weights × values stay 0).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 64) -> None:
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self._fill(keys, values, spare)

    def _fill(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        b, h, t, d = keys.shape
        self._k = keys.new_empty(b, h, t + spare, d)
        self._v = values.new_empty(b, values.shape[1], t + spare, values.shape[-1])
        self._k[:, :, :t], self._v[:, :, :t] = keys, values
        self._set_length(t)

    def _set_length(self, length: int) -> None:
        self._len = length
        self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if self._len + n > self._k.shape[-2]:
            self._fill(self.keys, self.values, max(64, self._len + n))
        self._k[:, :, self._len:self._len + n] = key_states
        self._v[:, :, self._len:self._len + n] = value_states
        self._set_length(self._len + n)
        return self.keys, self.values

    def select(self, index: torch.Tensor) -> None:
        self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)
        self._set_length(self._len)

    def trim(self, columns: int) -> None:
        self._k, self._v = self._k[:, :, columns:], self._v[:, :, columns:]
        self._set_length(self._len - columns)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.select(torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.select(beam_idx.to(self._k.device))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self._set_length(self._len + tokens_to_remove)
        elif tokens_to_remove > 0:
            raise ValueError("crop takes a negative count (tokens to remove from the end)")


def _layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cannot batch a {type(cache).__name__}: the server needs a transformers DynamicCache")
    for layer in layers:
        if type(layer) not in (DynamicLayer, GrowingLayer):
            raise TypeError(f"cannot batch a cache with {type(layer).__name__} layers (sliding-window or "
                            "quantised): the server supports full-attention models (Llama, Qwen2, GPT-2, …)")
    return layers


def adopt(cache) -> object:
    """Give every layer of a freshly prefilled ``DynamicCache`` spare columns (:class:`GrowingLayer`), in place."""
    layers = _layers(cache)
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            layers[i] = GrowingLayer(layer.keys, layer.values)
    return cache


def cache_length(cache) -> int:
    """Columns of the cache (the same for every row; shorter rows are left-padded)."""
    return cache.get_seq_length()


def cache_select(cache, index: torch.Tensor) -> None:
    """Keep (or reorder, or repeat) rows ``index`` of ``cache``, in place."""
    for layer in adopt(cache).layers:
        layer.select(index.to(layer.keys.device))


def cache_merge(cache, other) -> None:
    """Append ``other``'s rows to ``cache`` in place, left-padding the shorter of the two along the sequence axis
    (with zeros, which the attention mask hides)."""
    width = max(cache_length(cache), cache_length(other))
    for a, b in zip(adopt(cache).layers, adopt(other).layers, strict=True):
        rows = a.keys.shape[0] + b.keys.shape[0]
        spare = max(a._k.shape[-2] - a._len, 64)
        keys = a.keys.new_zeros(rows, a.keys.shape[1], width + spare, a.keys.shape[-1])
        values = a.values.new_zeros(rows, a.values.shape[1], width + spare, a.values.shape[-1])
        for buf, x, y in ((keys, a.keys, b.keys), (values, a.values, b.values)):
            buf[:x.shape[0], :, width - x.shape[-2]:width] = x
            buf[x.shape[0]:, :, width - y.shape[-2]:width] = y
        a._k, a._v = keys, values
        a._set_length(width)


def cache_trim(cache, columns: int) -> None:
    """Drop the first ``columns`` columns (padding that no row attends to any more), in place."""
    if columns <= 0:
        return
    for layer in adopt(cache).layers:
        layer.trim(columns)
