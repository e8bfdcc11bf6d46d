"""Cross-entropy of a linear head without materialising the ``[N, V]`` logits.

The LM loss is ``Σ_i lse(W h_i + b) − (W h_i + b)[t_i]`` over the ``N`` label positions. With a 49k-entry vocabulary
the plain path (``F.linear`` → ``log_softmax`` → ``nll_loss`` and their backward) writes and reads several
``N × V`` float tensors per step. With a frozen head, the only gradient needed is ``∂L/∂h_i = Σ_v p_iv W_v − W_{t_i}``
(``p = softmax(W h_i + b)``), which an online softmax accumulates chunk by chunk over the vocabulary, as flash
attention does over keys:

    for each vocabulary chunk c:  l = h W_cᵀ + b_c;  m' = max(m, max_v l)
                                  s ← s·e^{m−m'} + Σ_v e^{l−m'};  a ← a·e^{m−m'} + e^{l−m'} W_c;  m ← m'
    lse = m + log s;   ∂L/∂h = a / s − W_t

Two matmuls per chunk, one pass, ``O(N·chunk)`` memory; the gradient is ready when the forward returns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunk_for(device: torch.device) -> int:
    # CPU: a [N, chunk] block and W_c stay in cache (docs/engine.md has the timing); accelerators prefer large
    # matmuls
    return 2048 if device.type == "cpu" else 32768


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        n = h.shape[0]
        want_grad = ctx.needs_input_grad[0]
        m = torch.full((n,), float("-inf"), device=h.device, dtype=torch.float32)
        s = torch.zeros(n, device=h.device, dtype=torch.float32)
        acc = torch.zeros(n, h.shape[1], device=h.device, dtype=torch.float32) if want_grad else None
        for start in range(0, weight.shape[0], chunk):
            w = weight[start:start + chunk]
            logits = F.linear(h, w, None if bias is None else bias[start:start + chunk]).float()
            m_new = torch.maximum(m, logits.amax(1))
            scale = torch.exp(m - m_new)
            p = torch.exp(logits.sub_(m_new[:, None]))  # unnormalised softmax of this chunk, in place
            s = s * scale + p.sum(1)
            if want_grad:
                acc.mul_(scale[:, None])
                if w.dtype == torch.float32:
                    acc.addmm_(p, w)
                else:
                    acc.add_((p.to(w.dtype) @ w).float())
            m = m_new
        w_t = weight[targets]  # [N, d]
        target_logit = (h.float() * w_t.float()).sum(1)
        if bias is not None:
            target_logit = target_logit + bias[targets].float()
        loss = m + torch.log(s) - target_logit  # [N]
        if want_grad:
            ctx.save_for_backward((acc / s[:, None] - w_t.float()).to(h.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_loss[:, None].to(grad_h.dtype), None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    reduction: str = "sum",
    chunk: int | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias).float(), targets, reduction=…)``, chunked over the vocabulary.

    Args:
        h: ``[N, d]`` hidden states (gradient flows to them).
        weight: ``[V, d]`` head weight; bias: ``[V]`` or ``None``. They must not require grad (a frozen head): use
            the plain expression for a trainable one (under ``torch.no_grad`` any head will do).
        targets: ``[N]`` class ids, all valid (select the labelled positions first).
        reduction: ``"sum"``, ``"mean"`` or ``"none"``.
        chunk: vocabulary columns per block; default: 2048 on CPU, 32768 elsewhere.
    """
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        raise ValueError("linear_cross_entropy computes no gradient for the head: use F.cross_entropy(F.linear(...)) "
                         "when the head is trainable")
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    losses = _LinearCrossEntropy.apply(h, weight, bias, targets, chunk or _chunk_for(h.device))
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


# causal LMs whose logits are exactly lm_head(last hidden state): a loss may skip the prompt's vocabulary logits
PLAIN_LM_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "phi3", "olmo", "olmo2"})


def has_plain_lm_head(lm) -> bool:
    """``lm`` (a transformers causal LM) computes ``logits = lm_head(last hidden state)`` and nothing else."""
    cfg = lm.config
    return (getattr(cfg, "model_type", None) in PLAIN_LM_HEAD and getattr(cfg, "final_logit_softcapping", None) is None
            and lm.get_output_embeddings() is not None and lm.base_model is not lm)
