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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "reft_shared_prefix"


def _shared_prefix_sdpa(module, query, key, value, attention_mask, **kwargs):
    prefix = attention_mask.shape[-1] - key.shape[2]
    rows = key.shape[0]
    key = torch.cat([key[:1, :, :prefix].expand(rows, -1, -1, -1), key], dim=2)
    value = torch.cat([value[:1, :, :prefix].expand(rows, -1, -1, -1), value], dim=2)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, _shared_prefix_sdpa)


def supports_shared_prefix(config) -> bool:
    """The model runs SDPA attention (the shared-prefix function delegates to it)."""
    return getattr(config, "_attn_implementation", None) == "sdpa"


@contextlib.contextmanager
def shared_prefix_attention(config) -> Iterator[None]:
    """Within this block the model's attention layers use the shared-prefix attention."""
    previous = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous


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
