"""Interventions are found by registered name, never by import path.

A checkpoint names its intervention type as a registry key (``"loreft"``); loading looks the key up here and
refuses anything else, so a crafted config cannot make the loader import a class.
"""

from __future__ import annotations

import re

from .base import Intervention

INTERVENTIONS: dict[str, type[Intervention]] = {}

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def register_intervention(name: str, cls: type[Intervention], *, overwrite: bool = False) -> type[Intervention]:
    """Make ``cls`` available as ``ReftConfig(intervention=name)``.

    Args:
        name (str): lower-case key, ``[a-z][a-z0-9_]*``.
        cls (type[Intervention]): a subclass of :class:`Intervention` taking ``(embed_dim, rank, **options)``.
        overwrite (bool): replace an existing entry. Default: False

    Raises:
        ValueError: bad name, a name already taken, or a class that is not an :class:`Intervention`.
    """
    if not _KEY.match(name):
        raise ValueError(f"intervention name {name!r} must be lower case letters, digits and '_' (e.g. 'my_reft')")
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise ValueError(f"{cls!r} is not a subclass of reft.Intervention")
    if name in INTERVENTIONS and not overwrite and INTERVENTIONS[name] is not cls:
        raise ValueError(f"intervention {name!r} is already registered; pass overwrite=True to replace it")
    INTERVENTIONS[name] = cls
    return cls


def get_intervention_class(name: str) -> type[Intervention]:
    """The class registered as ``name``; a ValueError listing the known names otherwise."""
    try:
        return INTERVENTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown intervention type {name!r}: known types are {sorted(INTERVENTIONS)}; "
            "register your own with reft.register_intervention(name, cls)"
        ) from None
