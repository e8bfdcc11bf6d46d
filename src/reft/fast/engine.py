"""The training loss of a frozen causal LM with interventions, computing only what differs from work done elsewhere.

Attention is causal, so a token's hidden states depend only on the tokens up to it. Exact savings follow:

* vocabulary logits only where there is a label (:func:`reft.fast.loss.linear_cross_entropy`, no ``[N, V]``);
* a prefix shared by every row (a chat template's system prompt, a fixed instruction), in which every row is edited
  at the same positions, is the same computation in every row: it runs once. When it holds edits (and the model
  uses SDPA) it is an extra row of the same forward whose keys/values every other row attends to
  (:mod:`reft.fast.attention`); otherwise it runs first, for one row, and its KV cache is repeated for the batch
  (gradients flow back through the repeat); an unedited one is computed once across batches
  (:mod:`reft.fast.prefix_cache`);
* tokens before the first edited position ``c`` are the frozen model's computation: they run without autograd, so
  backward stops at ``c``;
* blocks below the lowest edited layer run once per example across epochs (:mod:`reft.fast.frozen_cache`).

The engine is handed the transformers LM, the hooks' context and the call's edit plan; it knows nothing of the
wrapper. Every path gives the plain forward's loss and gradients (tests compare them).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..model.hooks import InterventionContext, Plan, map_plan
from .attention import grouped_kv_attention, shared_prefix_attention, shared_prefix_mask, supports_shared_prefix
from .frozen_cache import FrozenBatch
from .loss import linear_cross_entropy
from .prefix_cache import PrefixCache
from .recompute import recompute_activations


def _prefix_edits(positions: torch.Tensor, shared: int) -> torch.Tensor:
    """Row 0's edits inside the shared prefix (``[1, K]``, ``-1`` elsewhere): alike in every row, applied once."""
    return positions[:1].masked_fill(positions[:1] >= shared, -1)


def _edits_after(positions: torch.Tensor, start: int) -> torch.Tensor:
    """Each row's edits from ``start`` on, relative to ``start`` (``-1`` before it)."""
    return torch.where(positions >= start, positions - start, -1)


def _reusing(frozen: FrozenBatch | None, index) -> contextlib.AbstractContextManager:
    """Around a base-model forward over ``index`` of the batch layout: replay or capture the frozen blocks."""
    return frozen.call(index) if frozen is not None else contextlib.nullcontext()


def _finish(frozen: FrozenBatch | None, shared: int) -> None:
    if frozen is not None:
        frozen.finish(shared)


def lm_loss(lm, ctx: InterventionContext, plan: Plan, input_ids, attention_mask, labels, num_items_in_batch=None, *,
            cache_key: str, chunk: bool = True, grouped_kv: bool = True, frozen: FrozenBatch | None = None,
            prefixes: PrefixCache | None = None) -> CausalLMOutputWithPast:
    """``Σ CE / num_items_in_batch`` over the label tokens (``labels`` shifted inside), ``logits=None``.

    Args:
        lm: a causal LM with a plain head (:func:`reft.fast.loss.has_plain_lm_head`), frozen.
        ctx, plan: the hooks' context and this call's edits (every placement covers all rows, in order).
        chunk: use the shared-prefix / frozen-prefix chunking (off under gradient checkpointing).
        grouped_kv: run masked SDPA on the grouped KV heads in place (:func:`reft.fast.attention.grouped_kv_attention`;
            off under gradient checkpointing, whose recomputation runs after this returns, on the model's attention).
        frozen: this batch's use of the frozen-block cache, or None.
        prefixes: the KV caches of unedited shared prefixes to reuse and fill, or None (valid only while the model
            is frozen and deterministic: the caller's check).
    """
    hidden, offset = decoder_hidden(lm.base_model, ctx, plan, input_ids, attention_mask, labels,
                                    cache_key=cache_key, chunk=chunk, grouped_kv=grouped_kv, frozen=frozen,
                                    prefixes=prefixes)
    targets = labels[:, offset + 1:]
    keep = targets != -100  # [B, T-1-offset]
    h = hidden[:, :-1][keep]  # [N, d]: only positions that predict a label
    head = lm.get_output_embeddings()
    loss = linear_cross_entropy(h, head.weight, targets[keep], head.bias)  # no [N, vocab] logits kept
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(loss.device)
    return CausalLMOutputWithPast(loss=loss / denom, logits=None)


def decoder_hidden(base, ctx: InterventionContext, plan: Plan, input_ids, attention_mask, labels=None, *,
                   cache_key: str, chunk: bool = True, grouped_kv: bool = True, frozen: FrozenBatch | None = None,
                   prefixes: PrefixCache | None = None) -> tuple[torch.Tensor, int]:
    """Last hidden states from position ``offset`` on, and ``offset`` (where the last chunk starts)."""
    with grouped_kv_attention(base.config) if grouped_kv else contextlib.nullcontext(), recompute_activations():
        return _decoder_hidden(base, ctx, plan, input_ids, attention_mask, labels, cache_key=cache_key, chunk=chunk,
                               frozen=frozen, prefixes=prefixes)


def _decoder_hidden(base, ctx: InterventionContext, plan: Plan, input_ids, attention_mask, labels, *, cache_key: str,
                    chunk: bool, frozen: FrozenBatch | None, prefixes: PrefixCache | None) -> tuple[torch.Tensor, int]:
    shared, split = chunk_bounds(input_ids, attention_mask, plan, labels) if chunk and ctx.enabled else (0, 0)
    if max(shared, split) < 2:
        with ctx.using(plan), _reusing(frozen, (slice(None), slice(None))):
            out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        _finish(frozen, 0)
        return out.last_hidden_state, 0
    if shared >= 2 and split < shared and supports_shared_prefix(base.config):
        hidden = _prefix_row_hidden(base, ctx, plan, input_ids, attention_mask, shared, frozen)
        _finish(frozen, shared)
        return hidden, shared
    cache = None
    if shared >= 2:  # chunk 1: the shared prefix, once (and, unedited, once across batches)
        cache = _shared_prefix_cache(base, ctx, plan, input_ids, attention_mask, shared, split, cache_key, frozen,
                                     prefixes if shared <= split else None)
    start = shared if shared >= 2 else 0
    if split > start:  # chunk 2: the rest of the frozen part, without autograd or edits
        with torch.no_grad(), ctx.using(None), _reusing(frozen, (slice(None), slice(start, split))):
            cache = getattr(base(input_ids=input_ids[:, start:split], attention_mask=attention_mask[:, :split],
                                 use_cache=True, **{cache_key: cache}), cache_key)
        start = split
    with ctx.using(map_plan(plan, lambda p: _edits_after(p, start))), \
            _reusing(frozen, (slice(None), slice(start, None))):  # relative to the last chunk
        out = base(input_ids=input_ids[:, start:], attention_mask=attention_mask, use_cache=True,
                   **{cache_key: cache})
    _finish(frozen, shared if shared >= 2 else 0)
    return out.last_hidden_state, start


def _shared_prefix_cache(base, ctx: InterventionContext, plan: Plan, input_ids, attention_mask, shared: int,
                         split: int, cache_key: str, frozen: FrozenBatch | None, prefixes: PrefixCache | None):
    """The KV cache of the first ``shared`` tokens (alike in every row), repeated for the batch.

    Computed for one row (gradients flow back through the repeat when the prefix holds edits); an unedited prefix
    (``prefixes`` given) is looked up first and stored after (:mod:`reft.fast.prefix_cache`).
    """
    rows, where = input_ids.shape[0], (slice(0, 1), slice(0, shared))
    key = capturing = None
    if prefixes is not None:
        # a replayed forward's cache holds placeholders for blocks ≤ L: kept apart from a computed one
        replayed = frozen.layer if frozen is not None and frozen.replay else None
        capturing = frozen.layer if frozen is not None and not frozen.replay else None  # h_L is needed too
        key = prefixes.key(input_ids[0, :shared], base.config, replayed)
        entry = prefixes.get(key, capturing)
        if entry is not None:
            if capturing is not None:
                frozen.put(where, entry.hidden)
            return prefixes.for_batch(entry, rows)
    with ctx.using(map_plan(plan, lambda p: _prefix_edits(p, shared))), \
            torch.set_grad_enabled(torch.is_grad_enabled() and shared > split), _reusing(frozen, where):
        cache = getattr(base(input_ids=input_ids[:1, :shared], attention_mask=attention_mask[:1, :shared],
                             use_cache=True), cache_key)
    if key is not None:
        prefixes.put(key, cache, frozen.get(where) if capturing is not None else None, capturing)
    cache.batch_repeat_interleave(rows)
    return cache


def _prefix_row_hidden(base, ctx: InterventionContext, plan: Plan, input_ids, attention_mask, shared: int,
                       frozen: FrozenBatch | None = None) -> torch.Tensor:
    """Hidden states from ``shared`` on, with the edited shared prefix as an extra row 0 of the same forward.

    Row 0 = the prefix, rows ``1..B`` = each row after it (see :mod:`reft.fast.attention`); position ids continue
    after the prefix, and the prefix's edits are applied once, in row 0. The forward runs packed: one row of the
    real tokens of that layout (no padding), edits at their packed positions.
    """
    batch, length = input_ids.shape
    width = max(shared, length - shared)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[1]), value=value)

    ids = torch.cat([pad(input_ids[:1, :shared], 0), pad(input_ids[:, shared:], 0)])
    mask = attention_mask.bool()
    valid = torch.cat([pad(mask[:1, :shared], False), pad(mask[:, shared:], False)])  # [B+1, W]
    ar = torch.arange(width, device=input_ids.device)
    position_ids = torch.cat([ar[None], (ar + shared)[None].expand(batch, width)])
    # packed layout: token t of the one packed row is flat slot index[t] of the [B+1, W] layout
    index = valid.flatten().nonzero().squeeze(1)
    packed_at = (valid.flatten().long().cumsum(0) - 1).view(batch + 1, width)  # slot -> packed position

    def packed(positions: torch.Tensor) -> torch.Tensor:
        edits = torch.cat([_prefix_edits(positions, shared), _edits_after(positions, shared)])  # [B+1, K]
        return torch.where(edits >= 0, packed_at.gather(1, edits.clamp(min=0)), -1)

    rows = torch.zeros(batch + 1, dtype=torch.long, device=input_ids.device)  # every row edits packed row 0
    # the packed row's tokens in the [B, T] batch layout (for the frozen cache): row 0 is batch row 0's prefix
    layout_row, column = index // width, index % width
    batch_index = ((layout_row - 1).clamp(min=0)[None], torch.where(layout_row == 0, column, column + shared)[None])
    with ctx.using(map_plan(plan, packed, rows)), shared_prefix_attention(base.config, index), \
            _reusing(frozen, batch_index):
        out = base(input_ids=ids.flatten()[index][None], attention_mask=shared_prefix_mask(shared, valid),
                   position_ids=position_ids.flatten()[index][None], use_cache=False)
    h = out.last_hidden_state[0]  # [T, d]
    h = h.new_zeros(valid.numel(), h.shape[-1]).index_copy(0, index, h).view(batch + 1, width, -1)
    return h[1:, : length - shared]


def chunk_bounds(input_ids, attention_mask, plan: Plan, labels=None) -> tuple[int, int]:
    """``(shared, split)``: the shared-prefix length and the first edited position (0 when not applicable)."""
    columns = [p.positions for p in plan.values()]
    valid = torch.cat([c.flatten() for c in columns]) if columns else torch.empty(0, dtype=torch.long)
    valid = valid[valid >= 0]
    if not valid.numel():
        return 0, 0
    split = int(valid.min())
    # keep every row's first predicting position (the one before its first label) in the last chunk
    limit = int(attention_mask.sum(1).min()) - 1
    if labels is not None:
        labelled = labels != -100
        first = torch.where(labelled.any(1), labelled.long().argmax(1), labels.shape[1])
        limit = min(limit, int(first.min()) - 1)
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # [T]
    shared = int(same.long().cumprod(0).sum())
    for positions in columns:  # every row must be edited alike inside the shared prefix
        for slot in range(positions.shape[1]):
            column = positions[:, slot]
            inside = column < shared
            if inside.any() and not (column == column[0]).all():
                shared = min(shared, int(column[column >= 0].min()))
    return min(shared, limit), split
