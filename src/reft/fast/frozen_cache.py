"""Reuse, across epochs, of what the frozen blocks below the lowest edit compute.

With every intervention at a block output of layer ≥ L, block L's output before its edit,

    h_L(x)_t = f_L ∘ … ∘ f_0(embed(x))_t,

depends on the tokens ``x_≤t`` alone: the frozen model's work, the same in every epoch. :class:`FrozenCache` keeps
``h_L`` of each example it has trained on (``[n, d]``, keyed by the example's token ids) and, once every row of a
batch is known, runs the forward with blocks ``0..L`` replaced by a lookup: block 0 returns ``h_L`` in that forward's
layout, blocks ``1..L`` hand it on, and block L's hooks (the edits) run as before. The embeddings still run (a table
lookup). Blocks that would write a KV cache write a one-float placeholder per token instead, so the cache's length
stays right for the chunks that follow (the placeholders are never attended to: blocks ``≤ L`` never run).

Valid while the base model is frozen (the caller's check) and blocks ``≤ L`` are deterministic: no cache while a
dropout module there is in training mode. Rows must be right-padded (every example starts at column 0); a batch
that is not is simply computed. Stored in the model's dtype, up to ``max_bytes`` (then new examples are computed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

Index = tuple[slice | torch.Tensor, slice | torch.Tensor]  # (rows, columns) of the batch layout a forward sees


def stochastic_modules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Those of ``modules`` (each itself, not its children) whose output is random in training mode: dropout, and
    attention modules with an ``attention_dropout`` rate."""
    found = []
    for m in modules:
        p = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "attention_dropout", 0.0)
        if isinstance(p, float) and p > 0:
            found.append(m)
    return found


def _find_cache(args: tuple, kwargs: dict):
    for value in (*args, *kwargs.values()):
        if hasattr(value, "get_seq_length") and hasattr(value, "update"):
            return getattr(value, "self_attention_cache", value)  # an encoder-decoder cache: its self-attention half
    return None


class FrozenBatch:
    """One batch's use of the cache: ``replay`` (every row known) or capture (compute, then store the rows)."""

    def __init__(self, owner: FrozenCache, keys: list[bytes], lengths: list[int], width: int,
                 full: torch.Tensor | None) -> None:
        self.owner, self.keys, self.lengths = owner, keys, lengths
        self.full = full  # [B, T, d] h_L in the batch layout; allocated at the first capture when not replaying
        self.replay = full is not None
        self._shape = (len(keys), width)  # T: the batch's width, padding included

    @contextlib.contextmanager
    def call(self, index: Index) -> Iterator[None]:
        """Around one base-model forward whose tokens are ``full[index]`` of the batch layout."""
        block = self.owner.blocks[self.owner.layer]
        if self.replay:
            with self.owner.skipping(self.full[index]):
                yield
            return

        def capture(module, args, output):
            if not isinstance(output, torch.Tensor):  # a block that returns a tuple: not supported, stop using the
                self.full = None                      # cache for this batch
                self.keys = []
                return None
            self.put(index, output)
            return None

        handle = block.register_forward_hook(capture, prepend=True)  # before the edit hooks
        try:
            yield
        finally:
            handle.remove()

    @property
    def layer(self) -> int:
        return self.owner.layer

    def put(self, index: Index, h: torch.Tensor) -> None:
        """Capturing: ``h`` is ``h_L`` at ``index`` of the batch layout (computed elsewhere, e.g. a stored prefix)."""
        if self.replay or not self.keys:
            return
        if self.full is None:
            self.full = h.new_zeros(*self._shape, h.shape[-1])
        self.full[index] = h.detach()

    def get(self, index: Index) -> torch.Tensor | None:
        """``h_L`` at ``index``, as captured or replayed so far (``None`` before the first capture)."""
        return None if self.full is None else self.full[index]

    def finish(self, shared: int = 0) -> None:
        """After the batch's forwards: store the rows (``shared`` leading columns were computed in row 0 only)."""
        if self.replay or self.full is None or not self.keys:
            return
        if shared:
            self.full[1:, :shared] = self.full[:1, :shared]
        for key, n, h in zip(self.keys, self.lengths, self.full):
            self.owner.store(key, h[:n])


class FrozenCache:
    """``h_L`` (block ``layer``'s output before its edits) of every example seen, and the forward that reuses it.

    Args:
        blocks: the model's decoder blocks.
        layer: ``L``, the lowest block whose output is edited.
        stochastic: modules below ``L`` (embeddings included) that are random in training mode.
        max_bytes: stop storing new examples beyond this size. Default: 1 GiB
    """

    def __init__(self, blocks: nn.ModuleList, layer: int, stochastic: list[nn.Module], max_bytes: int = 2**30) -> None:
        self.blocks, self.layer, self.stochastic, self.max_bytes = blocks, layer, stochastic, max_bytes
        self._store: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0
        self.replays = 0  # batches that skipped blocks 0..L (kept across clear())

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()
        self.nbytes = 0

    def store(self, key: bytes, h: torch.Tensor) -> None:
        if key in self._store or self.nbytes + h.numel() * h.element_size() > self.max_bytes:
            return
        self._store[key] = h.clone()
        self.nbytes += h.numel() * h.element_size()

    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FrozenBatch | None:
        """The batch's plan: replay when every row is stored, capture when some are not, ``None`` when not usable."""
        if any(m.training for m in self.stochastic):
            return None
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
            return None  # not right-padded
        ids, lengths = input_ids.cpu(), lengths.tolist()
        keys = [ids[b, :n].numpy().tobytes() for b, n in enumerate(lengths)]
        stored = [self._store.get(k) for k in keys]
        if any(h is None for h in stored):
            return FrozenBatch(self, keys, lengths, mask.shape[1], None) if self.nbytes < self.max_bytes else None
        self.replays += 1
        full = stored[0].new_zeros(len(keys), mask.shape[1], stored[0].shape[-1])
        for b, h in enumerate(stored):
            full[b, : h.shape[0]] = h
        return FrozenBatch(self, keys, lengths, mask.shape[1], full.to(input_ids.device))

    @contextlib.contextmanager
    def skipping(self, h: torch.Tensor) -> Iterator[None]:
        """Within this block, block 0 returns ``h`` (shaped as the forward's hidden states) and blocks ``1..L`` their
        input: their forward is replaced on the instance, so their hooks still run."""
        blocks = self.blocks[: self.layer + 1]

        def forward_for(i: int):
            def forward(hidden_states, *args, **kwargs):
                cache = _find_cache(args, kwargs)
                if cache is not None:
                    placeholder = hidden_states.new_zeros(*hidden_states.shape[:2], 1, 1).transpose(1, 2)
                    cache.update(placeholder, placeholder, i)
                return h.view_as(hidden_states) if i == 0 else hidden_states

            return forward

        # an instance attribute shadows the class's forward; one set by someone else (accelerate's device hooks)
        # is put back afterwards, not deleted
        previous = [block.__dict__.get("forward") for block in blocks]
        for i, block in enumerate(blocks):
            block.forward = forward_for(i)
        try:
            yield
        finally:
            for block, forward in zip(blocks, previous):
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward
