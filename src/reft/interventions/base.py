"""The intervention contract and the pieces every intervention shares.

An intervention is a map Φ: ℝ^d → ℝ^d applied to selected hidden states. Every intervention in this
package has the form Φ(h) = h + δ(h) with a low-rank edit δ, and exposes the edit itself (:meth:`delta`) so the
hook can add it in place without computing ``Φ(h) − h`` (which would lose precision and break on duplicate
positions).

Parameters are kept in their own dtype (fp32 by default) even when the base model runs in bf16: the edit is
computed in that dtype and cast back to the hidden-state dtype at the end.
"""

from __future__ import annotations

import torch
from torch import nn

from .orthogonal import check_rotation

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"`` → ``torch.float32``; a clear error for anything else."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def make_activation(act: str | None) -> nn.Module:
    """Activation applied to ``W h + b``; ``None`` means identity (the paper's setting)."""
    if act is None:
        return nn.Identity()
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}: choose one of {sorted(_ACTIVATIONS)} or None")
    return _ACTIVATIONS[act]()


class Intervention(nn.Module):
    """Base class: Φ(h) = h + dropout(δ(h)).

    Subclasses implement :meth:`edit` (δ on fp32 inputs) and nothing else. Dropout acts on the edit only, so
    that in training the unedited representation h is never rescaled (pyreft drops out the whole Φ(h)).

    Args:
        embed_dim (int): hidden size d.
        rank (int): low rank r, ``1 ≤ r ≤ d``.
        dropout (float): dropout probability on the edit. Default: 0.0
        act (str | None): activation on ``W h + b`` where the formula has one. Default: None
        dtype (str | torch.dtype): parameter and compute dtype. Default: ``"float32"``
        rotation (str): how an orthonormal R is parametrised (interventions with one, :attr:`has_rotation`):
            ``"qr"`` or ``"householder"`` (:mod:`reft.interventions.orthogonal`). Default: ``"qr"``
    """

    #: whether the intervention holds an orthonormal R (and so takes ``rotation``)
    has_rotation: bool = False

    def __init__(
        self,
        embed_dim: int,
        rank: int,
        *,
        dropout: float = 0.0,
        act: str | None = None,
        dtype: str | torch.dtype = "float32",
        rotation: str = "qr",
    ) -> None:
        super().__init__()
        check_rotation(rotation, type(self))
        if not isinstance(rank, int) or rank < 1 or rank > embed_dim:
            raise ValueError(f"rank {rank} is out of range for hidden size {embed_dim}: choose 1 ≤ rank ≤ {embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout {dropout} must be in [0, 1)")
        self.embed_dim = embed_dim
        self.rank = rank
        self.dtype = resolve_dtype(dtype)
        self.act = make_activation(act)
        self.dropout = nn.Dropout(dropout)
        self.rotation = rotation

    def edit(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """δ(h) for ``h`` of shape ``[..., d]`` in :attr:`dtype`; returns ``[..., d]``."""
        raise NotImplementedError

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """The edit to add to ``h`` (shape ``[..., d]``), in ``h``'s dtype."""
        return self.dropout(self.edit(h.to(self.dtype))).to(h.dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Φ(h) = h + δ(h), ``[..., d] → [..., d]``."""
        return h + self.delta(h)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, rank={self.rank}, dtype={self.dtype}"
