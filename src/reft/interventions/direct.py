"""Direct ReFT (DiReFT): an edit written straight into a rank-r subspace, no projection of h removed.

Notation: h ∈ ℝ^d, W1 ∈ ℝ^{r×d}, b ∈ ℝ^r, W2 ∈ ℝ^{r×d} (or R with orthonormal rows).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Intervention
from .orthogonal import make_basis


class DiReFT(Intervention):
    """Φ(h) = h + W2ᵀ act(W1 h + b)  (the paper's DiReFT: no orthogonality).

    Parameters: 2·d·r + r.
    """

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.source = nn.Linear(embed_dim, rank, dtype=self.dtype)  # W1, b
        self.proj = nn.Linear(rank, embed_dim, bias=False, dtype=self.dtype)  # weight = W2ᵀ, [d, r]

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.source(h)))


class OrthoDiReFT(Intervention):
    """Φ(h) = h + Rᵀ act(W1 h + b),  R with orthonormal rows (pyreft's ``DireftIntervention``).

    Parameters: 2·d·r + r.
    """

    has_rotation = True

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotate = make_basis(self.rotation, embed_dim, rank, self.dtype)
        self.source = nn.Linear(embed_dim, rank, dtype=self.dtype)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.source(h)) @ self.rotate().T
