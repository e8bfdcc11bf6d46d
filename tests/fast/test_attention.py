"""Grouped-KV SDPA (reft.fast.attention): the same attention as transformers' SDPA, without repeating K and V."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from reft.fast.attention import _sdpa, grouped_kv_attention


class _Module(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _inputs(seed: int = 0, rows: int = 3, heads: int = 6, groups: int = 3, length: int = 9, keys: int = 13):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, length, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(rows, heads // groups, keys, 8, generator=g, requires_grad=True) for _ in range(2))
    mask = torch.rand(rows, 1, length, keys, generator=g) > 0.4
    mask[..., 0] = True  # every query sees a key
    return q, k, v, mask


def _saved_bytes(fn) -> tuple[torch.Tensor, int]:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.exact
def test_grouped_kv_sdpa_matches_transformers_sdpa_and_saves_less():
    """Query head h reads KV head ⌊h/g⌋ in place: outputs and gradients as with repeated K, V (another kernel
    shape: equal up to fp32 rounding), and autograd keeps the H_kv heads instead of H."""
    q, k, v, mask = _inputs()
    module = _Module()
    ours, saved = _saved_bytes(lambda: _sdpa(module, q, k, v, mask, scaling=0.3)[0])
    ref, saved_ref = _saved_bytes(lambda: sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)[0])
    assert ours.shape == ref.shape == (3, 9, 6, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    repeated_kv = 2 * k.numel() * (module.num_key_value_groups - 1) * k.element_size()
    assert saved <= saved_ref - repeated_kv


def test_grouped_kv_sdpa_defers_to_transformers_where_it_does_not_apply():
    """No mask (transformers already reads grouped heads), position biases and softcapping: transformers' SDPA."""
    q, k, v, mask = _inputs(seed=1)
    module = _Module()
    torch.testing.assert_close(_sdpa(module, q, k, v, None)[0], sdpa_attention_forward(module, q, k, v, None)[0],
                               rtol=0, atol=0)
    bias = torch.randn(1, 6, 9, 13)
    torch.testing.assert_close(_sdpa(module, q, k, v, mask, position_bias=bias)[0],
                               sdpa_attention_forward(module, q, k, v, mask, position_bias=bias)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="softcap"):
        _sdpa(module, q, k, v, mask, softcap=30.0)


@pytest.mark.exact
def test_grouped_kv_attention_switches_a_model_for_the_block_only():
    model = tiny_llama()
    ids = torch.randint(3, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the model builds a 4D mask, so SDPA gets one
    ref = model(input_ids=ids, attention_mask=mask).logits
    with grouped_kv_attention(model.config):
        assert model.config._attn_implementation != "sdpa"
        ours = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    model.config._attn_implementation = "eager"  # not SDPA: left alone
    with grouped_kv_attention(model.config):
        assert model.config._attn_implementation == "eager"
