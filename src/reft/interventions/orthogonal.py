"""A d×r matrix with orthonormal columns: reft's QR parametrisation (``rotation="qr"``, the default) or torch's
``orthogonal`` parametrisation as pyreft holds it (``rotation="householder"``).

Why not ``torch.nn.utils.parametrizations.orthogonal`` (what pyreft uses)? For a non-square weight it keeps a
d×d ``base`` buffer per module (64 MiB per intervention at d = 4096 in fp32) and runs Householder products of
size d×d on every forward. Here

    R = qr(A).Q · diag(sign(diag(qr(A).R)))        A ∈ ℝ^{d×r} unconstrained, R ∈ ℝ^{d×r}, RᵀR = I_r

costs one reduced QR of a d×r matrix per forward (O(d r²) time, O(d r) memory), is differentiable, has no
buffer, and is orthonormal whatever the optimiser does to A (weight decay only rescales A; under torch's
Householder chart it zeroes R, see :class:`HouseholderBasis`). The sign fix makes
the map unique and continuous, and makes ``A = c·R₀`` (c > 0) → ``R == R₀``: loading an orthonormal matrix (e.g. from
pyreft) reproduces it exactly up to rounding. A is stored at scale ``INIT_SCALE`` = ½ (see there): that sets R's
first step size under Adam to pyreft's.

Both parametrisations describe the same set of matrices but not the same coordinates, and Adam's per-coordinate
steps depend on the coordinates: from the same R₀ and data, the two trajectories part after some tens of steps
(measured in docs/results.md). ``rotation="householder"`` (:class:`HouseholderBasis`) follows pyreft's, at
pyreft's cost.
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


class HouseholderBasis(nn.Module):
    """R ∈ ℝ^{d×r} under ``torch.nn.utils.parametrizations.orthogonal`` (pyreft's ``LowRankRotateLayer``).

    For d > r torch holds ``R = B · H(X)[:, :r]``: X ``[d, r]`` the trained parameter
    (``basis.parametrizations.weight.original``), H(X) the product of the Householder reflectors in X's columns,
    B ``[d, d]`` an orthogonal buffer (``…weight.0.base``) whose first r columns are R₀ and the rest a random
    completion; at init X = −I_{d×r} so H(X) = I. Costs a d×d buffer and a d×d·r product per call (d = r: the
    matrix exponential, torch's default there). X's diagonal only gives each column's sign, read as ``int(X_ii)``:
    weight decay takes it from −1 to −0.99…, whose ``int`` is 0, and R becomes 0 (as in pyreft trained with weight
    decay: its Trainer decays X). :class:`reft.ReftTrainer` never decays X; a custom loop must leave it out of
    decay too.
    """

    def __init__(self, embed_dim: int, rank: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.basis = nn.Module()
        self.basis.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(embed_dim, rank, dtype=dtype)))
        torch.nn.utils.parametrizations.orthogonal(self.basis)

    def forward(self) -> torch.Tensor:
        """R ∈ ℝ^{d×r}, RᵀR = I."""
        return self.basis.weight


ROTATIONS = {"qr": OrthonormalBasis, "householder": HouseholderBasis}


def check_rotation(rotation: str, cls: type) -> None:
    """Refuse an unknown ``rotation``, or a non-default one for an intervention class without an orthonormal R."""
    if rotation not in ROTATIONS:
        raise ValueError(f"unknown rotation {rotation!r}: choose 'qr' (reft's, the default) or 'householder' "
                         "(torch's orthogonal parametrisation, as pyreft trains R)")
    if rotation != "qr" and not getattr(cls, "has_rotation", False):
        raise ValueError(f"rotation={rotation!r} needs an intervention with an orthonormal R (loreft, consreft, "
                         f"lobireft, orthodireft); {cls.__name__} has none: leave rotation at 'qr'")


def make_basis(rotation: str, embed_dim: int, rank: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The module that holds R for ``rotation`` (:data:`ROTATIONS`)."""
    return ROTATIONS[rotation](embed_dim, rank, dtype)
