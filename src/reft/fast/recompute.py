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


def _pack(t: torch.Tensor):
    """A ``silu`` output is kept as its node (which holds its input). An in-place change before the save gives the
    tensor another ``grad_fn``; one after it does not matter: the value saved is recomputed."""
    node = t.grad_fn
    return node if node is not None and type(node).__name__ == _SILU else t


def _unpack(saved) -> torch.Tensor:
    return saved if isinstance(saved, torch.Tensor) else F.silu(saved._saved_self)


@contextlib.contextmanager
def recompute_activations() -> Iterator[None]:
    """Within this block, ``silu`` outputs saved for backward are recomputed from their input when needed."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield
