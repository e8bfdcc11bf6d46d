"""Reuse, across batches, of the KV cache of a prompt prefix that every row shares and no edit touches.

A chat template's system prompt opens every example. When every row of a batch starts with the same ``S`` tokens
and the first edit is at position ``c ≥ S``, the prefix's keys/values in every layer,

    K_l[:S], V_l[:S] = frozen model(x_<S),

depend on those tokens alone: the engine computes them for one row, without autograd, and repeats them for the
batch. :class:`PrefixCache` keeps that one-row KV cache (and block ``L``'s output there, for the frozen-block
cache) keyed by the prefix's tokens, so every later batch with the same prefix skips the prefix's forward: the
same computation in the same shapes, done once.

Valid while the base model's weights stay as they were (each lookup compares the weights' storage and in-place
version counters with those the entry was computed under) and the model is deterministic (no dropout in training
mode: the caller's check). A few entries (least recently used dropped), up to ``max_bytes``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


def weights_stamp(params: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Where each weight lives and how often it was changed in place: equal stamps ⇒ the same weights."""
    return tuple((p.data_ptr(), p._version) for p in params)


@dataclass
class PrefixEntry:
    cache: object  # the transformers KV cache of one row: [1, H_kv, S, D] per layer
    hidden: torch.Tensor | None  # [1, S, d] block `layer`'s output before its edits (for the frozen-block cache)
    layer: int | None
    nbytes: int


class PrefixCache:
    """One-row KV caches of shared, unedited prompt prefixes, keyed by their tokens.

    Args:
        params: the base model's weights (their stamp invalidates the entries).
        max_entries: distinct prefixes kept. Default: 4
        max_bytes: their total size. Default: 64 MiB
    """

    def __init__(self, params: Iterable[nn.Parameter], max_entries: int = 4, max_bytes: int = 2**26) -> None:
        self.params = list(params)
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[tuple, PrefixEntry] = OrderedDict()
        self._stamp = weights_stamp(self.params)
        self.nbytes = 0  # of every entry
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    @staticmethod
    def key(prefix_ids: torch.Tensor, config, replayed: int | None = None) -> tuple:
        """What an entry's cache depends on: the tokens, device, attention implementation, and (``replayed = L``)
        whether blocks ``≤ L`` were replayed from the frozen-block cache."""
        return (prefix_ids.cpu().numpy().tobytes(), str(prefix_ids.device),
                getattr(config, "_attn_implementation", None), replayed)

    def get(self, key: tuple, layer: int | None = None) -> PrefixEntry | None:
        """The entry for ``key``; with ``layer``, only one that also holds block ``layer``'s output."""
        stamp = weights_stamp(self.params)
        if stamp != self._stamp:  # the weights changed: nothing stored is theirs
            self.clear()
            self._stamp = stamp
        entry = self._entries.get(key)
        if entry is None or (layer is not None and entry.layer != layer):
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: tuple, cache, hidden: torch.Tensor | None = None, layer: int | None = None) -> None:
        """Keep a copy of ``cache`` (one row, computed without autograd) and, with ``layer``, block ``layer``'s
        output ``hidden`` (``[1, S, d]``)."""
        nbytes = sum(t.numel() * t.element_size() for t in _tensors(cache))
        nbytes += hidden.numel() * hidden.element_size() if hidden is not None else 0
        if key in self._entries:
            self.nbytes -= self._entries.pop(key).nbytes
        if nbytes > self.max_bytes:
            return
        while self._entries and (len(self._entries) >= self.max_entries or self.nbytes + nbytes > self.max_bytes):
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes
        self._entries[key] = PrefixEntry(copy.deepcopy(cache), None if hidden is None else hidden.detach().clone(),
                                         layer if hidden is not None else None, nbytes)
        self.nbytes += nbytes

    @staticmethod
    def for_batch(entry: PrefixEntry, rows: int):
        """A fresh cache holding the entry's prefix for each of ``rows`` rows (the stored one is left as it is)."""
        cache = copy.deepcopy(entry.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def _tensors(cache) -> list[torch.Tensor]:
    found = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                found.append(t)
    return found
