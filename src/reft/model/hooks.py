"""The hooks that apply interventions, and the per-call edit plan they read.

One hook per hooked module (a layer's component) is registered once for the wrapper's life and carries the
interventions of every adapter that edits that module, each tagged with its *slot key* ``(adapter, spec index)``.
What a hook applies comes from the :class:`InterventionContext`'s ``plan``, which ``ReftModel.forward`` /
``generate`` set for the duration of the call and clear afterwards: outside a ReftModel call every hook is a no-op,
so the wrapped base model is the base model. (Gradient-checkpoint recomputation in backward runs after ``forward``
returned; it gets the plan back through the checkpoint's ``context_fn``: ``ReftModel.gradient_checkpointing_enable``.)

A plan maps slot keys to :class:`Placement`\\ s: which rows of the hidden states the adapter edits, at which
positions, with which weight. Keys absent from the plan edit nothing: rows of other adapters are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..interventions import Intervention

SlotKey = tuple[str, int]  # (adapter name, index of the representation spec in its config)


@dataclass(frozen=True)
class Placement:
    """Where one adapter's spec edits in this call.

    ``positions`` is ``[N, K]`` (``-1`` = empty slot, see :mod:`reft.positions`); row ``n`` of it indexes row
    ``rows[n]`` of the hidden states (``None``: row ``n``, and then ``N`` must be the batch size). ``weight``
    (``[N]``, ``None`` = all ones) scales the edit: ``h ← h + w·δ(h)``.
    """

    positions: torch.Tensor
    rows: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor | None = None) -> Placement:
        """The same edits with positions ``fn(positions)`` (and rows replaced when given)."""
        return Placement(fn(self.positions), self.rows if rows is None else rows, self.weight)

    def repeat_interleave(self, times: int) -> Placement:
        """Each row repeated ``times`` times in place, as ``generate`` repeats inputs for beams / samples."""
        if times == 1:
            return self
        rows = None
        if self.rows is not None:
            rows = (self.rows[:, None] * times + torch.arange(times, device=self.rows.device)).flatten()
        weight = None if self.weight is None else self.weight.repeat_interleave(times)
        return Placement(self.positions.repeat_interleave(times, dim=0), rows, weight)


Plan = dict[SlotKey, Placement]


def map_plan(plan: Plan, fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor | None = None) -> Plan:
    return {key: p.map(fn, rows) for key, p in plan.items()}


@dataclass
class InterventionContext:
    """What the hooks apply right now: ``plan`` (``None`` = nothing), unless ``enabled`` is off."""

    plan: Plan | None = None
    enabled: bool = True
    handles: list[RemovableHandle] = field(default_factory=list)

    @contextlib.contextmanager
    def using(self, plan: Plan | None) -> Iterator[None]:
        """Within this block the hooks apply ``plan``; the previous plan comes back after."""
        previous, self.plan = self.plan, plan
        try:
            yield
        finally:
            self.plan = previous


Part = tuple[SlotKey, Intervention, slice]  # (whose, Φ, which slots of that placement's positions)


def apply_interventions(h: torch.Tensor, plan: Plan, parts: list[Part]) -> torch.Tensor:
    """Return ``h`` with each part's ``Φ`` applied at its placement's positions, out of place.

    Args:
        h (Tensor): ``[B, T, d]`` hidden states.
        plan (dict): slot key → :class:`Placement`.
        parts (list): ``(slot key, intervention, slot slice)``; parts whose key is not in ``plan`` are skipped.

    For each part: ``g = h[row, pos]`` → ``δ = w · Φ.delta(g)`` (zero in empty slots) → ``h[row, pos] += δ``. Every
    δ is computed from the same ``h``, so edits of several parts at one position add up (composition, tied specs);
    adding instead of writing ``Φ(g)`` also keeps empty slots, which point at position 0, from overwriting a real
    edit there. Rows are grouped by placement: no loop over rows.
    """
    rows, cols, deltas = [], [], []
    for key, intervention, slots in parts:
        placement = plan.get(key)
        if placement is None:
            continue
        pos = placement.positions[:, slots]  # [N, k]
        if pos.shape[1] == 0 or pos.shape[0] == 0:
            continue
        if placement.rows is None and pos.shape[0] != h.shape[0]:
            raise RuntimeError(
                f"intervention positions are for a batch of {pos.shape[0]} but the layer sees {h.shape[0]} rows; "
                "call the ReftModel (not the wrapped base model) so positions match the batch"
            )
        pos = pos.to(h.device)
        if int(pos.max()) >= h.shape[1]:
            raise RuntimeError(f"intervention position {int(pos.max())} is beyond the sequence length {h.shape[1]}")
        batch = (torch.arange(pos.shape[0], device=h.device) if placement.rows is None
                 else placement.rows.to(h.device))[:, None]
        idx = pos.clamp(min=0)
        scale = (pos >= 0).unsqueeze(-1).to(h.dtype)  # [N, k, 1]
        if placement.weight is not None:
            scale = scale * placement.weight.to(h.device, h.dtype)[:, None, None]
        deltas.append((intervention.delta(h[batch, idx]) * scale).flatten(0, 1))  # [N·k, d]
        rows.append(batch.expand_as(idx).flatten())
        cols.append(idx.flatten())
    if not deltas:
        return h
    return h.index_put((torch.cat(rows), torch.cat(cols)), torch.cat(deltas), accumulate=True)


def _edit_output(output, fn):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(output[0]), *output[1:])
    if hasattr(output, "last_hidden_state"):  # a ModelOutput
        output.last_hidden_state = fn(output.last_hidden_state)
        return output
    raise TypeError(f"cannot intervene on a module output of type {type(output).__name__}")


def register_intervention_hook(module: nn.Module, ctx: InterventionContext, parts: list[Part], *,
                               on_input: bool) -> RemovableHandle:
    """Attach ``parts`` to ``module``'s output (or its first input for ``block_input``) and return the handle.

    ``parts`` is read at every call: adding or removing an adapter edits the list, not the hook.
    """

    def edit(h: torch.Tensor) -> torch.Tensor:
        return apply_interventions(h, ctx.plan, parts)

    def active() -> bool:
        return ctx.enabled and ctx.plan is not None and bool(parts)

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
