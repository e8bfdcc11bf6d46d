"""Interventions in a learned low-rank subspace R (LoReFT and its relatives).

Notation: h ∈ ℝ^d, R ∈ ℝ^{r×d} with orthonormal rows (stored transposed, ``[d, r]``), W ∈ ℝ^{r×d}, b ∈ ℝ^r.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Intervention
from .orthogonal import make_basis


class LoReFT(Intervention):
    """Φ(h) = h + Rᵀ(act(W h + b) − R h),  R with orthonormal rows.

    Parameters: 2·d·r + r (R, W, b).
    """

    has_rotation = True

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotate = make_basis(self.rotation, embed_dim, rank, self.dtype)
        self.source = nn.Linear(embed_dim, rank, dtype=self.dtype)  # W, b

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        r = self.rotate()  # [d, r]
        return (self.act(self.source(h)) - h @ r) @ r.T  # [..., r] → [..., d]


class NoReFT(Intervention):
    """Φ(h) = h + Rᵀ(act(W h + b) − R h),  R unconstrained (LoReFT without orthogonality).

    Parameters: 2·d·r + r.
    """

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.proj = nn.Linear(embed_dim, rank, bias=False, dtype=self.dtype)  # R
        self.source = nn.Linear(embed_dim, rank, dtype=self.dtype)  # W, b

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return (self.act(self.source(h)) - self.proj(h)) @ self.proj.weight


class ConsReFT(Intervention):
    """Φ(h) = h + Rᵀ(b − R h): moves the subspace coordinates to a learned constant b.

    Parameters: d·r + r.
    """

    has_rotation = True

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotate = make_basis(self.rotation, embed_dim, rank, self.dtype)
        self.bias = nn.Parameter(torch.zeros(rank, dtype=self.dtype))

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        r = self.rotate()
        return (self.bias - h @ r) @ r.T


class LoBiReFT(ConsReFT):
    """Φ(h) = h + Rᵀ b: a learned bias restricted to a rank-r subspace (ConsReFT's parameters, no −R h term).

    Parameters: d·r + r.
    """

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return (self.bias @ self.rotate().T).expand_as(h)
