"""Which adapters edit a row, and with which weights: the ``adapter_names`` entries of a mixed batch.

A row's entry is a *composition* ``((name₁, w₁), …)``. At every hooked position the named adapters' edits are
summed with their weights, each computed from the same hidden state:

    Φ(h) = h + Σᵢ wᵢ δᵢ(h)

This equals applying the adapters one after the other exactly when no adapter reads what another writes:

* disjoint layers or positions — every hooked (layer, position) sees at most one δ;
* orthogonal subspaces of LoBiReFT (δ = Rᵀb does not depend on h) or ConsReFT (δ_B(h) = R_Bᵀ(b_B − R_B h) depends on
  h only through R_B h, and R_B R_Aᵀ = 0 leaves R_B(h + δ_A) = R_B h).

Otherwise (e.g. two LoReFTs, whose ``W h`` reads the whole of h, at one position) the sum is a first-order
approximation of the sequence. Weight 0 is the same as leaving the adapter out; weight −1 subtracts its edit.

Accepted forms: ``None`` or ``"__base__"`` (no edit), ``"name"``, ``"style+topic"``, ``"-toxic"``,
``"0.5*style+topic-2*toxic"``, or a sequence of ``(name, weight)`` pairs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal

BASE = "__base__"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_TERM = re.compile(r"\s*([+-]?)\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_.]*)\s*")

Composition = tuple[tuple[str, float], ...]


class UnknownAdapterError(ValueError):
    """An ``adapter_names`` entry names an adapter that is not loaded (a server answers 404, not 400)."""


#: longest adapter name: it names a subfolder of a multi-adapter save (file names stop at 255 bytes)
MAX_NAME_LENGTH = 128


def check_adapter_name(name: str) -> str:
    """Adapter names start with a letter or ``_`` and hold up to :data:`MAX_NAME_LENGTH` letters, digits, ``_`` and
    ``.`` (so that ``+``, ``-`` and ``*`` are free for compositions); ``__base__`` is reserved."""
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"adapter name {name[:24]!r}… is {len(name)} characters long: use at most "
                         f"{MAX_NAME_LENGTH} (it names the adapter's folder when saved)")
    if not isinstance(name, str) or not _NAME.match(name) or name == BASE:
        raise ValueError(f"invalid adapter name {name!r}: use letters, digits, '_' and '.', starting with a letter "
                         f"or '_' (e.g. 'style', 'task_1'); {BASE!r} is reserved for the bare model")
    return name


def parse_composition(entry: str | Sequence[tuple[str, float]] | None) -> Composition:
    """One ``adapter_names`` entry → ``((name, weight), …)`` sorted by name, weights of repeated names summed,
    zero weights dropped (``()`` = the bare model).

    Example:
        >>> parse_composition("0.5*style+topic-toxic")
        (('style', 0.5), ('topic', 1.0), ('toxic', -1.0))
    """
    if entry is None or entry == BASE:
        return ()
    if isinstance(entry, str):
        terms, at = [], 0
        text = entry.strip()
        while at < len(text):
            m = _TERM.match(text, at)
            if not m or m.end() == at or (terms and not m.group(1)):
                raise ValueError(f"cannot parse adapter composition {entry!r} at {text[at:]!r}: write names joined "
                                 "by + and -, each optionally weighted, e.g. 'style+topic', '-toxic', '0.5*a+b'")
            sign = -1.0 if m.group(1) == "-" else 1.0
            terms.append((m.group(3), sign * float(m.group(2) or 1.0)))
            at = m.end()
        if not terms:
            raise ValueError(f"empty adapter composition {entry!r}: name an adapter, or use {BASE!r} / None")
    elif isinstance(entry, Iterable):
        terms = []
        for item in entry:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"adapter composition {entry!r}: each item must be a (name, weight) pair")
            name, weight = item
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
                raise ValueError(f"adapter composition {entry!r}: weight of {name!r} must be a finite number")
            terms.append((check_adapter_name(name), float(weight)))
    else:
        raise ValueError(f"adapter_names entry {entry!r} must be a name, a composition string, None or a list of "
                         "(name, weight) pairs")
    total: dict[str, float] = {}
    for name, weight in terms:
        total[name] = total.get(name, 0.0) + weight
    return tuple(sorted((n, w) for n, w in total.items() if w != 0.0))


def format_composition(composition: Composition) -> str:
    """The canonical text of a parsed composition: ``(("a", 0.5), ("b", 1.0))`` → ``"0.5*a+b"``, ``()`` →
    ``"__base__"``; ``parse_composition`` of it gives it back."""
    terms = []
    for name, w in composition:
        sign = "-" if w < 0 else ("+" if terms else "")
        digits = format(Decimal(repr(abs(w))), "f").removesuffix(".0")  # shortest exact digits, no exponent
        terms.append(f"{sign}{'' if abs(w) == 1 else digits + '*'}{name}")
    return "".join(terms) or BASE
