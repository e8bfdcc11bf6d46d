"""Interventions Φ(h) = h + δ(h) and their registry."""

from .base import Intervention
from .direct import DiReFT, OrthoDiReFT
from .low_rank import ConsReFT, LoBiReFT, LoReFT, NoReFT
from .orthogonal import HouseholderBasis, OrthonormalBasis, make_basis, orthonormalize
from .registry import INTERVENTIONS, get_intervention_class, register_intervention

for _name, _cls in {
    "loreft": LoReFT,
    "noreft": NoReFT,
    "consreft": ConsReFT,
    "lobireft": LoBiReFT,
    "direft": DiReFT,
    "orthodireft": OrthoDiReFT,
}.items():
    register_intervention(_name, _cls)

__all__ = [
    "INTERVENTIONS",
    "ConsReFT",
    "DiReFT",
    "HouseholderBasis",
    "Intervention",
    "LoBiReFT",
    "LoReFT",
    "NoReFT",
    "OrthoDiReFT",
    "OrthonormalBasis",
    "get_intervention_class",
    "make_basis",
    "orthonormalize",
    "register_intervention",
]
