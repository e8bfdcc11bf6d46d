"""A d×r matrix with orthonormal columns, parametrised by QR of an unconstrained matrix.

Why not ``torch.nn.utils.parametrizations.orthogonal`` (what pyreft uses)? For a non-square weight it keeps a
d×d ``base`` buffer per module (64 MiB per intervention at d = 4096 in fp32) and runs Householder products of
size d×d on every forward; with AdamW weight decay it was also seen to collapse R to zero. Here

    R = qr(A).Q · diag(sign(diag(qr(A).R)))        A ∈ ℝ^{d×r} unconstrained, R ∈ ℝ^{d×r}, RᵀR = I_r

costs one reduced QR of a d×r matrix per forward (O(d r²) time, O(d r) memory), is differentiable, has no
buffer, and is orthonormal whatever the optimiser does to A (weight decay only rescales A). The sign fix makes
the map unique and continuous, and makes ``A = c·R₀`` (c > 0) → ``R == R₀``: loading an orthonormal matrix (e.g. from
pyreft) reproduces it exactly up to rounding. A is stored at scale ``INIT_SCALE`` = ½ (see there): that sets R's
step size under Adam to pyreft's.
"""

from __future__ import annotations

import torch
from torch import nn


def orthonormalize(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``a``'s column space, ``[d, r] → [d, r]`` (QR with a positive diagonal)."""
    q, r = torch.linalg.qr(a, mode="reduced")
    sign = torch.sign(torch.diagonal(r))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return q * sign


# ‖A‖ at init. QR is scale-invariant, so an optimiser step of fixed size on A (Adam's) turns R by step / ‖A‖: at ½,
# one Adam step moves R as far as under torch's Householder parametrisation (pyreft's; dR = 2·dX at init), and
# learning rates tuned with pyreft (the paper's) carry over (the measurement is in docs/engine.md).
INIT_SCALE = 0.5


class OrthonormalBasis(nn.Module):
    """Holds ``weight`` (A, ``[d, r]``) and returns R with orthonormal columns on call.

    The stored parameter is A itself so that optimiser state and checkpoints refer to the same tensor and a resumed
    run continues exactly. R is initialised orthonormal, A := INIT_SCALE · R.
    """

    def __init__(self, embed_dim: int, rank: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        a = torch.empty(embed_dim, rank, dtype=dtype)
        if a.device.type != "meta":
            nn.init.orthogonal_(a)
            a.mul_(INIT_SCALE)
        self.weight = nn.Parameter(a)

    def forward(self) -> torch.Tensor:
        """R ∈ ℝ^{d×r}, RᵀR = I."""
        if self.weight.device.type == "meta":
            return self.weight
        return orthonormalize(self.weight)
