"""The edit plan of one call: which rows each adapter spec edits, at which prompt positions, with which weight."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..config import ReftConfig
from ..positions import prompt_positions
from .compose import Composition
from .hooks import Placement, Plan

AdapterEntry = str | Sequence[tuple[str, float]] | None
Rows = dict[str, tuple[list[int], list[float]]]  # adapter → (its rows, its weight in each)


def plan_rows(batch: int, active: Sequence[str], adapter_names: Sequence[AdapterEntry] | None,
              resolve: Callable[[AdapterEntry], Composition]) -> Rows:
    """Group the rows by adapter: every row on the ``active`` adapters, or row ``i`` on ``adapter_names[i]``."""
    if adapter_names is None:
        return {name: (list(range(batch)), [1.0] * batch) for name in active}
    if isinstance(adapter_names, str) or len(adapter_names) != batch:
        raise ValueError(f"adapter_names must be a list with one entry per row ({batch}), got {adapter_names!r}")
    rows: Rows = {}
    for row, entry in enumerate(adapter_names):
        for name, weight in resolve(entry):
            mine, weights = rows.setdefault(name, ([], []))
            mine.append(row)
            weights.append(weight)
    return rows


def build_plan(configs: Mapping[str, ReftConfig], rows: Rows, attention_mask: torch.Tensor,
               prompt_lengths: torch.Tensor | None) -> Plan | None:
    """One :class:`~reft.model.hooks.Placement` per (adapter, spec): positions of its rows only (``rows=None``
    and ``weight=None`` when it covers the whole batch at weight 1, the case the training engine needs)."""
    batch = attention_mask.shape[0]
    plan: Plan = {}
    positions_of: dict[tuple[str, str, tuple[int, ...]], torch.Tensor] = {}
    device = attention_mask.device
    for name in sorted(rows):
        mine, weights = rows[name]
        every = len(mine) == batch
        index = None if every else torch.tensor(mine, device=device)
        weight = None if all(w == 1.0 for w in weights) else torch.tensor(weights, device=device)
        mask = attention_mask if every else attention_mask[index]
        lengths = prompt_lengths if every or prompt_lengths is None else torch.as_tensor(prompt_lengths)[index]
        for j, spec in enumerate(configs[name].specs):
            key = (spec.positions, spec.position_rule, tuple(mine))
            if key not in positions_of:
                positions_of[key] = prompt_positions(mask, lengths, spec.positions, spec.position_rule)
            plan[(name, j)] = Placement(positions_of[key], index, weight)
    return plan or None


def prompt_lengths_from_labels(attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]`` prompt lengths implied by ``labels``: the attended tokens before a row's first label."""
    labelled = labels != -100
    start = attention_mask.long().argmax(1)  # first attended token
    first = torch.where(labelled.any(1), labelled.long().argmax(1), start + attention_mask.long().sum(1))
    lengths = first - start
    if bool((lengths <= 0).any()):
        raise ValueError("labels start at a row's first token, so no prompt is left to intervene on: mask the prompt "
                         "with -100 in labels (reft.data.make_supervised_dataset does) or pass prompt_lengths")
    return lengths
