"""Attention for a batch whose rows share a prefix that is computed once, in the same forward.

Row 0 of the batch holds the shared prefix (``S`` tokens), rows ``1..B`` hold each example's tokens after it. In every
layer the keys/values of row ``b ≥ 1`` become ``[K_0[:S] ; K_b]``: the prefix's keys, taken from row 0, then its own.

    scores_b = Q_b [K_0[:S] ; K_b]ᵀ / √d_h   (masked: row 0 sees only its own causal keys, rows b ≥ 1 all of the
                                               prefix and their own causal, non-padding keys)

The mask (``[B+1, 1, L, S+L]`` bool, built by :func:`shared_prefix_mask`) is passed to the model as a ready 4D
attention mask, which transformers hands to the attention function unchanged; ``S`` is read off its width. Gradients
reach the prefix through the expand of ``K_0``/``V_0``: the same values and gradients as running the prefix as its own
forward and repeating its KV cache for the batch, without that second pass (at batch 1 its small matmuls and per-op
overhead cost about twice its FLOPs on a CPU).

Packed: the model's input is one row of the ``T`` real tokens of that ``[B+1, L]`` layout (row-major, padding left
out), so its projections and MLPs do no work on padding. Only attention needs the rows: it scatters ``Q, K, V``
(``[1, H, T, D]``) into ``[B+1, H, L, D]`` at ``index`` (the flat positions of the real tokens), runs the above, and
gathers its output back to ``[1, T, H, D]``.

Grouped KV heads (``H_kv = H / g``): under a mask transformers' SDPA repeats ``K, V`` to ``H`` heads before the kernel
(and autograd keeps the repeats). On a CPU, :func:`_sdpa` instead hands the ``H_kv`` heads to torch's SDPA with
``enable_gqa`` (query head ``h`` reads KV head ``⌊h/g⌋`` in place): the same scores, ``g``× less KV in the saved
tensors. :func:`grouped_kv_attention` switches a model's plain SDPA to it for a block.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

GQA = "reft_sdpa_gqa"
NAME = "reft_shared_prefix"
PACKED = "reft_shared_prefix_packed"
# the active packed layout, per thread / task (set by shared_prefix_attention)
_index: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("reft_packed_index", default=None)


def _sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """``softmax(Q Kᵀ · scaling + mask) V`` → ``[B, L, H, D]``; ``Q``: ``[B, H, L, D]``, ``K, V``: ``[B, H_kv, S, D]``.

    A masked CPU call with grouped KV heads runs torch's SDPA with ``enable_gqa``; anything else (no mask: transformers
    already uses ``enable_gqa`` or ``is_causal``; other devices, where ``enable_gqa`` under a mask can fall back to the
    math kernel; position biases, softcapping) goes to transformers' SDPA unchanged.
    """
    if (attention_mask is None or getattr(module, "num_key_value_groups", 1) == 1 or query.device.type != "cpu"
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _shared_prefix_sdpa(module, query, key, value, attention_mask, **kwargs):
    prefix = attention_mask.shape[-1] - key.shape[2]
    rows = key.shape[0]
    key = torch.cat([key[:1, :, :prefix].expand(rows, -1, -1, -1), key], dim=2)
    value = torch.cat([value[:1, :, :prefix].expand(rows, -1, -1, -1), value], dim=2)
    return _sdpa(module, query, key, value, attention_mask, **kwargs)


def _unpack(x: torch.Tensor, index: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """``[1, H, T, D]`` → ``[rows, H, width, D]``, token ``t`` to flat slot ``index[t]``, zeros elsewhere."""
    heads, dim = x.shape[1], x.shape[3]
    flat = x.new_zeros(rows * width, heads, dim).index_copy(0, index, x[0].transpose(0, 1))
    return flat.view(rows, width, heads, dim).transpose(1, 2)


def _packed_shared_prefix_sdpa(module, query, key, value, attention_mask, **kwargs):
    index = _index.get()
    rows, width = attention_mask.shape[0], attention_mask.shape[2]
    query, key, value = (_unpack(x, index, rows, width) for x in (query, key, value))
    out, weights = _shared_prefix_sdpa(module, query, key, value, attention_mask, **kwargs)  # [rows, width, H, D]
    return out.reshape(rows * width, *out.shape[2:]).index_select(0, index)[None], weights


def _register() -> None:
    """Register the attention functions with transformers, once, the first time they are used (importing reft
    changes nothing global). :data:`GQA` builds its masks as SDPA does; the other two get ready 4D masks."""
    if PACKED not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(GQA, _sdpa)
        AttentionMaskInterface.register(GQA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        AttentionInterface.register(NAME, _shared_prefix_sdpa)
        AttentionInterface.register(PACKED, _packed_shared_prefix_sdpa)


def supports_shared_prefix(config) -> bool:
    """The model runs SDPA attention (the shared-prefix function delegates to it)."""
    return getattr(config, "_attn_implementation", None) in ("sdpa", GQA)


@contextlib.contextmanager
def grouped_kv_attention(config) -> Iterator[None]:
    """Within this block a model with SDPA attention uses :func:`_sdpa` (grouped KV heads read in place)."""
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    with _attention(config, GQA):
        yield


@contextlib.contextmanager
def _attention(config, name: str) -> Iterator[None]:
    """``config._attn_implementation = name`` for the block (registering reft's functions first)."""
    _register()
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


@contextlib.contextmanager
def shared_prefix_attention(config, index: torch.Tensor | None = None) -> Iterator[None]:
    """Within this block the model's attention layers use the shared-prefix attention.

    Args:
        config: the model's config (its ``_attn_implementation`` is switched for the block).
        index: ``[T]``, the flat ``row · L + column`` slot of each token of a packed input; default: not packed.
    """
    token = _index.set(index)
    try:
        with _attention(config, NAME if index is None else PACKED):
            yield
    finally:
        _index.reset(token)


def shared_prefix_mask(prefix: int, valid: torch.Tensor) -> torch.Tensor:
    """``[B+1, 1, L, prefix+L]`` bool mask for :func:`shared_prefix_attention`.

    Args:
        prefix: ``S``, the prefix length (row 0 holds it, padded to ``L``).
        valid: ``[B+1, L]`` bool, which keys of each row are real tokens (row 0: the first ``S``).
    """
    rows, length = valid.shape
    ar = torch.arange(length, device=valid.device)
    own = (ar[:, None] >= ar[None, :])[None] & valid[:, None, :]  # causal and not padding: [B+1, L, L]
    shared = torch.ones(rows, length, prefix, dtype=torch.bool, device=valid.device)
    shared[0] = False  # row 0 is the prefix itself: it sees only its own keys
    return torch.cat([shared, own], dim=2)[:, None]
