"""Activations that backward recomputes from their input instead of keeping.

A gated MLP ``y = W_down (silu(g) ⊙ u)``, ``g = W_gate x``, ``u = W_up x``, leaves three ``[T, d_ff]`` tensors to
backward: ``g`` (for ``silu'``), ``silu(g)`` and ``u`` (for the product's gradients). Inside
:func:`recompute_activations`, a ``silu`` output that an op saves for backward is stored as the ``silu`` node
(which keeps ``g`` anyway) and recomputed, ``silu(g)``, when backward unpacks it: the same op on the same tensor, so
the gradients are bitwise autograd's, for one ``[T, d_ff]`` tensor less per block. The model's code is untouched:
this works through :func:`torch.autograd.graph.saved_tensors_hooks`, for any architecture that calls ``silu``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_SILU = "SiluBackward0"


class _Recompute:
    """A saved ``silu(g)``, as its node (which holds ``g``). An in-place change of the output before it was saved
    gives it another ``grad_fn``; one after it was saved does not matter: the value saved is recomputed."""

    __slots__ = ("node",)

    def __init__(self, node) -> None:
        self.node = node


def _pack(t: torch.Tensor):
    node = t.grad_fn
    return _Recompute(node) if node is not None and type(node).__name__ == _SILU else t


def _unpack(saved) -> torch.Tensor:
    if isinstance(saved, _Recompute):
        return F.silu(saved.node._saved_self)
    return saved


@contextlib.contextmanager
def recompute_activations() -> Iterator[None]:
    """Within this block, ``silu`` outputs saved for backward are recomputed from their input when needed."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield
