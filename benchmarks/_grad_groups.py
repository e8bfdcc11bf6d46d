"""Shared by both sides of glue_parity (no reft or pyreft import): gradient norms per parameter group."""

from __future__ import annotations

import transformers


def group_of(name: str) -> str:
    """``head`` / ``rotate`` (R's parameter) / ``source`` (W, b) / ``other``, from a parameter's name in either
    library."""
    if "head." in name or "classifier." in name:
        return "head"
    if "rotate" in name:
        return "rotate"
    if "source" in name:
        return "source"
    return "other"


def _norms(pairs) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name, t in pairs:
        sums[group_of(name)] = sums.get(group_of(name), 0.0) + float(t.detach().float().pow(2).sum())
    return {g: round(v ** 0.5, 6) for g, v in sorted(sums.items())}


class GradGroups(transformers.TrainerCallback):
    """For the first ``steps`` optimiser steps, per parameter group: the gradient norm the optimiser sees (after
    clipping), the parameters' norm before the step and the update's norm."""

    def __init__(self, steps: int = 4) -> None:
        self.steps, self.records, self._before = steps, [], None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if len(self.records) >= self.steps or model is None:
            return
        trainable = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        self._before = {n: p.detach().clone() for n, p in trainable}
        self.records.append({"grad": _norms((n, p.grad) for n, p in trainable), "param": _norms(trainable)})

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._before is None or model is None:
            return
        params = dict(model.named_parameters())
        self.records[-1]["update"] = _norms((n, params[n] - b) for n, b in self._before.items())
        self._before = None
