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
import torch.nn.functional as F
from torch import nn

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


def spec_key(composition: Composition | None) -> str:
    """A canonical text for a composition (``"0.5*a+b"``; ``"__base__"`` for the bare model), for logs and grouping."""
    if not composition:
        return BASE
    terms = []
    for name, w in composition:
        sign = "-" if w < 0 else ("+" if terms else "")
        terms.append(f"{sign}{'' if abs(w) == 1 else f'{abs(w):g}*'}{name}")
    return "".join(terms)


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
        return out.logits[:, -1].float().cpu(), getattr(out, self.cache_key)

    @torch.inference_mode()
    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               cache) -> torch.Tensor:
        """One decode step of the bare model: ``input_ids [B, 1]``, ``attention_mask [B, T+1]``, ``position_ids
        [B, 1]``; appends to ``cache`` in place and returns the logits ``[B, V]`` (fp32, on the CPU)."""
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                         position_ids=position_ids.to(self.device), use_cache=True, **{self.cache_key: cache})
        return out.logits[:, -1].float().cpu()


# ---- KV cache surgery ---------------------------------------------------------------------------------------------
def _layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cannot batch a {type(cache).__name__}: the server needs a transformers DynamicCache")
    for layer in layers:
        if type(layer).__name__ != "DynamicLayer":
            raise TypeError(f"cannot batch a cache with {type(layer).__name__} layers (sliding-window or "
                            "quantised): the server supports full-attention models (Llama, Qwen2, GPT-2, …)")
    return layers


def cache_length(cache) -> int:
    """Columns of the cache (the same for every row; shorter rows are left-padded)."""
    return cache.get_seq_length()


def cache_select(cache, index: torch.Tensor) -> None:
    """Keep (or reorder, or repeat) rows ``index`` of ``cache``, in place."""
    for layer in _layers(cache):
        if layer.is_initialized:
            layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))
            layer.values = layer.values.index_select(0, index.to(layer.values.device))


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-2] == width else F.pad(x, (0, 0, width - x.shape[-2], 0))


def cache_merge(cache, other) -> None:
    """Append ``other``'s rows to ``cache`` in place, left-padding the shorter of the two along the sequence axis."""
    width = max(cache_length(cache), cache_length(other))
    for a, b in zip(_layers(cache), _layers(other), strict=True):
        a.keys = torch.cat([_left_pad(a.keys, width), _left_pad(b.keys, width)])
        a.values = torch.cat([_left_pad(a.values, width), _left_pad(b.values, width)])


def cache_trim(cache, columns: int) -> None:
    """Drop the first ``columns`` columns (padding that no row attends to any more), in place."""
    if columns <= 0:
        return
    for layer in _layers(cache):
        if layer.is_initialized:
            layer.keys = layer.keys[:, :, columns:]
            layer.values = layer.values[:, :, columns:]
