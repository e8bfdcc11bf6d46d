"""The server's model-facing calls, in one place: adapters, prefill with per-row adapters, decode steps, KV cache.

The scheduler (:mod:`reft.serve.scheduler`) never touches the model or its cache except through :class:`Engine`:

* :meth:`Engine.prefill`: one left-padded forward over the joining prompts, row ``i`` edited by its own adapter
  (or none) at its own prompt positions; returns the last position's logits and the KV cache;
* :meth:`Engine.decode`: one step of the bare base model over the running batch (the edits reach decoded tokens
  through the cache, as in ``ReftModel.generate``);
* :func:`cache_select`, :func:`cache_merge`, :func:`cache_trim`: drop rows, join two batches (left-padding the
  shorter along the sequence axis), drop leading columns that no row attends to.

Interim implementation on the single-adapter API: each adapter is its own ``ReftModel`` on the shared base model
(hooks of all of them stay attached; every call disables all but the one it runs), and prefill runs one forward per
adapter present among the joining rows. When the multi-adapter core lands, :meth:`prefill` becomes a single
``reft_model(..., adapter_names=...)`` call and compositions (``"a+b"``) become valid.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.reft_model import ReftModel
from ..save_load import load_adapter

BASE = "__base__"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")


class AdapterConflict(ValueError):
    """An adapter of that name is already loaded."""


@dataclass(frozen=True)
class AdapterInfo:
    """What ``GET /v1/models`` says about a loaded adapter."""

    name: str
    path: str
    positions: str
    layers: tuple[int, ...]
    rank: int
    intervention: str
    parameters: int
    created: int
    load_seconds: float


def _cache_key(model: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
        tokenizer: its tokenizer (used for the EOS ids only; the server tokenises).
        model_id: the id under which the bare model is served (``GET /v1/models``).
        aliases: other ids accepted for the bare model (e.g. ``"smollm2"``).
    """

    def __init__(self, model: nn.Module, tokenizer, model_id: str, *, aliases: tuple[str, ...] = ()) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.base_ids = {model_id, BASE, *aliases}
        self.cache_key = _cache_key(self.model)
        self.context_length = _context_length(self.model.config)
        self.device = next(self.model.parameters()).device
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        eos = getattr(self.model.generation_config, "eos_token_id", None) or self.model.config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self._adapters: dict[str, ReftModel] = {}
        self._info: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()  # guards the adapter tables (read by HTTP handlers, written by the scheduler)

    # ---- adapters ----------------------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, AdapterInfo]:
        """Loaded adapters, in load order."""
        with self._lock:
            return dict(self._info)

    def load_adapter(self, name: str, path: str | os.PathLike) -> AdapterInfo:
        """Load the adapter folder ``path`` as ``name``.

        Raises:
            ValueError: a bad or taken name, or an adapter that does not fit the base model.
            FileNotFoundError: no adapter at ``path``.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"adapter name {name!r} is not valid: use letters, digits, '_' and '.', starting with "
                             "a letter or '_' (no '+', '-', '*' or spaces: those compose adapters in 'model')")
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
        reft_model = load_adapter(self.model, path)  # checks the base model; raises ValueError on a mismatch
        if getattr(reft_model, "head", None) is not None:
            reft_model.unload()
            raise ValueError(f"{path} is a classification adapter (it has a head): only causal-LM adapters can "
                             "be served")
        seconds = time.perf_counter() - t0
        cfg = reft_model.reft_config
        info = AdapterInfo(name=name, path=os.path.abspath(path), positions=cfg.positions, layers=tuple(cfg.layers),
                           rank=cfg.rank, intervention=cfg.intervention,
                           parameters=sum(p.numel() for p in reft_model.interventions.parameters()),
                           created=int(time.time()), load_seconds=seconds)
        with self._lock:
            self._adapters[name] = reft_model
            self._info[name] = info
        return info

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name``; rows already prefilled with it keep its edit (it lives in their KV cache)."""
        with self._lock:
            if name not in self._info:
                raise KeyError(self._unknown(name))
            reft_model = self._adapters.pop(name)
            del self._info[name]
        reft_model.unload()

    def _unknown(self, name: str) -> str:
        loaded = ", ".join(sorted(self._info)) or "none"
        return (f"the model {name!r} does not exist: use the base model {self.model_id!r} or a loaded adapter "
                f"(loaded: {loaded}); GET /v1/models lists them")

    def resolve(self, spec: str | None) -> str | None:
        """Validate a request's ``model`` and return the adapter key the batch uses (``None`` = the bare model).

        Raises:
            LookupError: an unknown adapter (the message names it and what is loaded).
            ValueError: a composition string that is not well formed, or not supported yet.
        """
        if spec is None or spec in self.base_ids:
            return None
        if not isinstance(spec, str):
            raise ValueError(f"model must be a string, got {type(spec).__name__}")
        spec = spec.strip()
        if any(c in spec for c in "+*") or spec.startswith("-"):
            raise ValueError(f"composition {spec!r} is not supported by this build: name one adapter")
        with self._lock:
            if spec not in self._info:
                raise LookupError(self._unknown(spec))
        return spec

    # ---- model calls -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _only(self, name: str | None):
        """Inside: only adapter ``name``'s hooks act (``None``: none do)."""
        with contextlib.ExitStack() as stack:
            for other, reft_model in self._adapters.items():
                if other != name:
                    stack.enter_context(reft_model.disable_interventions())
            yield

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                adapters: list[str | None]) -> tuple[torch.Tensor, object]:
        """Run the prompts (left-padded ``[B, T]``) with row ``i`` edited by ``adapters[i]``.

        Returns ``(logits [B, V] at the last position (fp32), KV cache of batch B and length T)``.

        Raises:
            LookupError: an adapter was unloaded after the request was accepted.
        """
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(adapters):
            groups.setdefault(name, []).append(i)
        with self._lock:
            missing = [n for n in groups if n is not None and n not in self._adapters]
            runners = {n: (self._adapters[n] if n is not None else None) for n in groups if n not in missing}
        if missing:
            raise LookupError(f"adapter {missing[0]!r} was unloaded before this request ran")
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        parts = []
        for name, rows in groups.items():
            index = torch.tensor(rows, device=self.device)
            ids, mask, pos = input_ids[index], attention_mask[index], position_ids[index]
            with self._only(name):
                runner = runners[name] if name is not None else self.model
                out = runner(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
            parts.append((index, out.logits[:, -1].float(), getattr(out, self.cache_key)))
        if len(parts) == 1:
            return parts[0][1], parts[0][2]
        order = torch.cat([p[0] for p in parts])
        logits = torch.cat([p[1] for p in parts])
        cache = parts[0][2]
        for _, _, other in parts[1:]:
            cache_merge(cache, other)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        cache_select(cache, inverse)
        return logits[inverse], cache

    @torch.inference_mode()
    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               cache) -> torch.Tensor:
        """One decode step of the bare model: ``input_ids [B, 1]``, ``attention_mask [B, T+1]``, ``position_ids
        [B, 1]``; appends to ``cache`` in place and returns the logits ``[B, V]`` (fp32)."""
        with self._only(None):
            out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                             position_ids=position_ids.to(self.device), use_cache=True, **{self.cache_key: cache})
        return out.logits[:, -1].float()


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
