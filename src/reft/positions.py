"""Which token positions an intervention edits.

The convention, written once (training, evaluation and generation all call :func:`prompt_positions`):

* A prompt of ``n`` tokens occupies positions ``start … start+n−1`` of its row, where ``start`` is the index of
  the row's first attended token (0 with right padding, the number of pad tokens with left padding).
* ``"f{p}+l{s}"`` selects the first ``p`` and the last ``s`` prompt tokens: relative positions ``0 … p−1`` and
  ``n−s … n−1``. The last prompt token (``n−1``) is the one whose output predicts the first response token. The
  response is never intervened on; in generation, decoded tokens see the edit only through the KV cache.
* Short prompts, rule ``"split"`` (the default): if both parts are asked for and ``n < p+s``, then
  ``p ← min(p, ⌊n/2⌋)`` and ``s ← min(s, ⌈n/2⌉)`` (prefix and suffix never overlap, every token of a short prompt
  is edited). With one part only it is clipped to ``n``.
* Rule ``"half"`` (pyreft's ``get_intervention_locations``, used for the paper's runs): ``p ← min(p, ⌊n/2⌋)`` and
  ``s ← min(s, ⌊n/2⌋)`` for every prompt, one part or two. ``f3`` edits 2 tokens of a 4-token input; a 1-token
  prompt gets no edit; the middle token of an odd prompt shorter than ``p+s`` is never edited.
* Locations are a fixed-size ``LongTensor [batch, p+s]``: slots ``[:p]`` are the prefix, ``[p:]`` the suffix
  (untied interventions use one Φ per part). Slots with no position hold ``-1``; the hook skips them, so they
  never edit any token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_SPEC = re.compile(r"^\s*(?:f(\d+))?\s*\+?\s*(?:l(\d+))?\s*$")
#: how short prompts are shortened (module docstring): reft's default, and pyreft's
POSITION_RULES = ("split", "half")


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`POSITION_RULES`, else a ``ValueError`` naming them."""
    if rule not in POSITION_RULES:
        raise ValueError(f"unknown position_rule {rule!r}: choose 'split' (reft's: a short prompt's tokens are "
                         "split between prefix and suffix) or 'half' (pyreft's: each part at most ⌊n/2⌋ tokens)")
    return rule


@dataclass(frozen=True)
class PositionSpec:
    """``first`` leading and ``last`` trailing prompt tokens."""

    first: int
    last: int

    @property
    def width(self) -> int:
        return self.first + self.last

    def __str__(self) -> str:
        return "+".join(p for p in (self.first and f"f{self.first}", self.last and f"l{self.last}") if p)


def parse_positions(spec: str | PositionSpec) -> PositionSpec:
    """``"f7+l7"`` → ``PositionSpec(7, 7)``; also ``"l1"``, ``"f3"``, ``"l7+f7"`` is refused.

    Example:
        >>> parse_positions("f7+l7")
        PositionSpec(first=7, last=7)
    """
    if isinstance(spec, PositionSpec):
        return spec
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if not m or (m.group(1) is None and m.group(2) is None) or (spec.count("+") and None in m.groups()):
        raise ValueError(
            f"cannot parse positions {spec!r}: write 'f<p>+l<s>' (first p and last s prompt tokens), "
            "e.g. 'f7+l7', 'l1' or 'f3'"
        )
    first, last = int(m.group(1) or 0), int(m.group(2) or 0)
    if first + last == 0:
        raise ValueError(f"positions {spec!r} select no token: use at least f1 or l1")
    return PositionSpec(first, last)


def check_positions_fit(spec: str | PositionSpec, max_length: int | None, rule: str = "split") -> PositionSpec:
    """Refuse positions that no prompt can hold when examples are cut to ``max_length`` tokens.

    A training example keeps at least one response token, so its prompt has at most ``max_length − 1`` tokens.
    If even that prompt gets fewer than ``p + s`` positions under ``rule``, *every* example would be shortened:
    the spec cannot be what was meant. Shorter prompts in a dataset that also has long ones are fine (that is what
    the rule is for).

    Raises:
        ValueError: the longest possible prompt is shortened, naming the largest spec that fits.

    Example:
        >>> check_positions_fit("f7+l7", 512)
        PositionSpec(first=7, last=7)
    """
    spec = parse_positions(spec)
    if max_length is None:
        return spec
    room = max_length - 1
    fits = split_counts(room, spec.first, spec.last, rule) if room > 0 else (0, 0)
    if fits != (spec.first, spec.last):
        hint = str(PositionSpec(*fits)) if any(fits) else "none"
        widest = 2 * max(spec.first, spec.last)
        need = "" if rule == "split" else f" (position_rule 'half' gives them to prompts of ≥ {widest})"
        raise ValueError(
            f"positions {str(spec)!r} ask for {spec.width} prompt tokens{need} but with max_length={max_length} a "
            f"prompt holds at most {room} (one token is kept for the response): every example would be shortened. "
            f"Raise max_length or choose fewer positions (largest that fits: {hint})"
        )
    return spec


def split_counts(n: int, first: int, last: int, rule: str = "split") -> tuple[int, int]:
    """How many prefix and suffix positions a prompt of ``n`` tokens gets under ``rule``.

    Example:
        >>> split_counts(5, 7, 7), split_counts(1, 7, 7), split_counts(20, 7, 7), split_counts(3, 5, 0)
        ((2, 3), (0, 1), (7, 7), (3, 0))
        >>> split_counts(5, 7, 7, "half"), split_counts(1, 7, 7, "half"), split_counts(4, 3, 0, "half")
        ((2, 2), (0, 0), (2, 0))
    """
    if n <= 0:
        raise ValueError("empty prompt (0 tokens): every example needs at least one prompt token to intervene on")
    if check_rule(rule) == "half":
        return min(first, n // 2), min(last, n // 2)
    if first and last:
        if n < first + last:
            return min(first, n // 2), min(last, (n + 1) // 2)
        return first, last
    return min(first, n), min(last, n)


def prompt_positions(
    attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None, spec: str | PositionSpec, rule: str = "split"
) -> torch.LongTensor:
    """Absolute positions to intervene on, ``[batch, p+s]``, ``-1`` for empty slots.

    Args:
        attention_mask (Tensor): ``[batch, seq]``, 1 on real tokens (left or right padded, contiguous).
        prompt_lengths (Tensor | None): ``[batch]`` prompt token counts; ``None`` = every attended token is prompt.
        spec (str | PositionSpec): e.g. ``"f7+l7"``.
        rule (str): how short prompts are shortened, ``"split"`` or ``"half"`` (module docstring).

    Raises:
        ValueError: a row with an empty prompt, or a prompt longer than the row.

    Example:
        >>> m = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
        >>> prompt_positions(m, None, "f1+l2").tolist()
        [[0, 3, 4], [3, 4, 5]]
        >>> prompt_positions(m, None, "f3", "half").tolist()
        [[0, 1, -1], [3, -1, -1]]
    """
    spec = parse_positions(spec)
    check_rule(rule)
    mask = attention_mask.bool()
    bsz, seq = mask.shape
    lengths = mask.sum(1) if prompt_lengths is None else torch.as_tensor(prompt_lengths, device=mask.device).long()
    if bool((lengths <= 0).any()):
        row = int((lengths <= 0).nonzero()[0])
        raise ValueError(f"row {row} has an empty prompt (0 tokens): drop it or give it at least one prompt token")
    if bool((lengths > mask.sum(1)).any()):
        raise ValueError("a prompt length exceeds the row's attended tokens: check prompt_lengths and attention_mask")
    start = mask.long().argmax(1)  # index of the first attended token; 0 for right padding

    # split: p_i = min(p, ⌊n/2⌋), s_i = min(s, ⌈n/2⌉) when n < p+s and both are asked for; else clip to n
    # half: p_i = min(p, ⌊n/2⌋), s_i = min(s, ⌊n/2⌋)
    n = lengths
    if rule == "half":
        p = torch.clamp(n // 2, max=spec.first)
        s = torch.clamp(n // 2, max=spec.last)
    elif spec.first and spec.last:
        short = n < spec.width
        p = torch.where(short, torch.clamp(n // 2, max=spec.first), torch.full_like(n, spec.first))
        s = torch.where(short, torch.clamp((n + 1) // 2, max=spec.last), torch.full_like(n, spec.last))
    else:
        p = torch.clamp(n, max=spec.first)
        s = torch.clamp(n, max=spec.last)

    j_first = torch.arange(spec.first, device=mask.device).expand(bsz, -1)  # [B, p]
    j_last = torch.arange(spec.last, device=mask.device).expand(bsz, -1)  # [B, s]
    first = torch.where(j_first < p[:, None], start[:, None] + j_first, -1)
    # suffix slot j holds prompt token n − s + j; slots j ≥ s_i are empty
    last = torch.where(j_last < s[:, None], start[:, None] + n[:, None] - s[:, None] + j_last, -1)
    return torch.cat([first, last], dim=1)
