"""Recomputed activations (reft.fast.recompute): bitwise autograd's gradients, one d_ff tensor less per MLP."""

from __future__ import annotations

import weakref

import pytest
import torch
from conftest import tiny_llama

from reft.fast.recompute import recompute_activations


def _grads(model, x: torch.Tensor, recompute: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    with recompute_activations() if recompute else torch.enable_grad():
        out = model(x)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    return out, list(grads)


@pytest.mark.exact
@pytest.mark.parametrize("frozen", [True, False])
def test_gated_mlp_gradients_are_bitwise_autograds(frozen):
    """The same silu on the same tensor in backward: equal bits, frozen weights or trained ones."""
    mlp = tiny_llama().model.layers[0].mlp
    for p in mlp.parameters():
        p.requires_grad_(not frozen)
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(0))
    out, grads = _grads(mlp, x, recompute=False)
    out_r, grads_r = _grads(mlp, x, recompute=True)
    torch.testing.assert_close(out_r, out, rtol=0, atol=0)
    assert len(grads) == (1 if frozen else 4)
    for a, b in zip(grads_r, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_silu_output_is_not_kept_alive_by_the_graph():
    """Without the block the graph holds silu(g) until backward; inside it, only g and u."""
    mlp = tiny_llama().model.layers[0].mlp.requires_grad_(False)
    x = torch.randn(2, 9, 32, requires_grad=True)
    for recompute in (False, True):
        seen = []
        handle = mlp.act_fn.register_forward_hook(lambda m, a, out, seen=seen: seen.append(weakref.ref(out)))
        with recompute_activations() if recompute else torch.enable_grad():
            out = mlp(x)
        handle.remove()
        assert (seen[0]() is None) == recompute
        out.sum().backward()  # and backward still runs
