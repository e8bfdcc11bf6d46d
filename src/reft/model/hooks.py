"""The hooks that apply interventions, and the per-call context they read.

Hooks are registered once for the wrapper's life (gradient-checkpoint recomputation runs inside backward, after
``forward`` has returned, and must still see them) and only their own handles are ever removed. They hold no
call counters: which positions to edit comes from :class:`InterventionContext`, which ``ReftModel.forward`` /
``generate`` set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..interventions import Intervention


@dataclass
class InterventionContext:
    """What the hooks apply right now.

    ``positions`` is ``[batch, p+s]`` (``-1`` = empty slot, see :mod:`reft.positions`); ``None`` or
    ``enabled=False`` make every hook a no-op. It stays set after ``forward`` returns so that gradient
    checkpointing recomputes the same edit during backward; the next call replaces it. ``rows`` (``[batch]``,
    only while a packed forward runs) says which row of the hidden states each row of ``positions`` indexes.
    """

    positions: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    enabled: bool = True
    handles: list[RemovableHandle] = field(default_factory=list)


def apply_interventions(
    h: torch.Tensor,
    positions: torch.Tensor,
    parts: list[tuple[Intervention, slice]],
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``h`` with ``Φ`` applied at the given positions, out of place.

    Args:
        h (Tensor): ``[B, T, d]`` hidden states.
        positions (Tensor): ``[N, K]`` absolute positions, ``-1`` for empty slots; ``N = B`` unless ``rows``.
        parts (list): ``(intervention, slot slice)``: which Φ edits which slots.
        rows (Tensor, optional): ``[N]``, the row of ``h`` that each row of ``positions`` indexes (several
            examples packed into one row); default: row ``i`` for ``positions[i]``.

    For each part: ``g = h[b, pos]`` → ``δ = Φ.delta(g)`` (zero in empty slots) → ``h[b, pos] += δ``. Adding the edit
    (``index_put(accumulate=True)``) instead of writing ``Φ(g)`` keeps empty slots, which point at position 0,
    from overwriting a real edit there.
    """
    if rows is None and positions.shape[0] != h.shape[0]:
        raise RuntimeError(
            f"intervention positions are for a batch of {positions.shape[0]} but the layer sees {h.shape[0]} rows; "
            "call the ReftModel (not the wrapped base model) so positions match the batch"
        )
    if positions.device != h.device:
        positions = positions.to(h.device)
    if positions.numel() and int(positions.max()) >= h.shape[1]:
        raise RuntimeError(
            f"intervention position {int(positions.max())} is beyond the sequence length {h.shape[1]}"
        )
    batch = (torch.arange(h.shape[0], device=h.device) if rows is None else rows.to(h.device))[:, None]
    rows, cols, deltas = [], [], []
    for intervention, slots in parts:
        pos = positions[:, slots]  # [B, k]
        if pos.shape[1] == 0:
            continue
        valid = (pos >= 0).unsqueeze(-1)  # [B, k, 1]
        idx = pos.clamp(min=0)
        gathered = h[batch, idx]  # [B, k, d]
        deltas.append(intervention.delta(gathered) * valid)
        rows.append(batch.expand_as(idx))
        cols.append(idx)
    if not deltas:
        return h
    return h.index_put((torch.cat(rows, 1), torch.cat(cols, 1)), torch.cat(deltas, 1), accumulate=True)


def _edit_output(output, fn):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(output[0]), *output[1:])
    if hasattr(output, "last_hidden_state"):  # a ModelOutput
        output.last_hidden_state = fn(output.last_hidden_state)
        return output
    raise TypeError(f"cannot intervene on a module output of type {type(output).__name__}")


def register_intervention_hook(
    module: nn.Module, ctx: InterventionContext, parts: list[tuple[Intervention, slice]], *, on_input: bool
) -> RemovableHandle:
    """Attach ``parts`` to ``module``'s output (or its first input for ``block_input``) and return the handle."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        return apply_interventions(h, ctx.positions, parts, ctx.rows)

    def active() -> bool:
        return ctx.enabled and ctx.positions is not None

    if on_input:

        def pre_hook(mod, args, kwargs):
            if not active():
                return None
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = edit(kwargs["hidden_states"])
            return args, kwargs

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(mod, args, output):
            return _edit_output(output, edit) if active() else None

        handle = module.register_forward_hook(hook)
    ctx.handles.append(handle)
    return handle
