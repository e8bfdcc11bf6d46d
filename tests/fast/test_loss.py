"""The chunked linear cross-entropy equals F.cross_entropy(F.linear(...)) in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reft.fast.loss import linear_cross_entropy


def _reference(h, weight, targets, bias, reduction):
    return F.cross_entropy(F.linear(h, weight, bias).float(), targets, reduction=reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [7, 64, 1000])  # 7 does not divide V = 50; 1000 is one block
def test_matches_reference_value_and_gradient(reduction, with_bias, chunk):
    g = torch.Generator().manual_seed(0)
    n, d, v = 9, 16, 50
    weight = torch.randn(v, d, generator=g, dtype=torch.float64)
    bias = torch.randn(v, generator=g, dtype=torch.float64) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)
    grads = []
    for fn in (_reference, lambda *a: linear_cross_entropy(a[0], a[1], a[2], a[3], reduction=a[4], chunk=chunk)):
        h = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
        loss = fn(h, weight, targets, bias, reduction)
        (loss * upstream).sum().backward() if reduction == "none" else (3.0 * loss).backward()
        grads.append((loss.detach(), h.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0].to(grads[0][0].dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-6)


def test_stable_for_large_logits():
    """Logits in the thousands (no overflow: the running max is subtracted before exp)."""
    g = torch.Generator().manual_seed(2)
    h = (torch.randn(4, 8, generator=g) * 300).requires_grad_(True)
    weight = torch.randn(40, 8, generator=g)
    targets = torch.tensor([0, 5, 39, 17])
    loss = linear_cross_entropy(h, weight, targets, chunk=16)
    loss.backward()
    ref_h = h.detach().clone().requires_grad_(True)
    ref = _reference(ref_h, weight, targets, None, "sum")
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad).all()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-5, atol=1e-4)


def test_no_grad_forward_matches():
    h, weight, targets = torch.randn(5, 8), torch.randn(30, 8), torch.tensor([1, 2, 3, 4, 29])
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, weight, targets, chunk=8),
                                   _reference(h, weight, targets, None, "sum"))


def test_trainable_head_and_bad_reduction_refused():
    h, targets = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="trainable"):
        linear_cross_entropy(h, torch.randn(6, 4, requires_grad=True), targets)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, torch.randn(6, 4), targets, reduction="avg")
