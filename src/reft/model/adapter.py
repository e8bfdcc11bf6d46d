"""One named adapter: its config, its interventions (one per spec, layer and part) and, for classifiers, its head."""

from __future__ import annotations

from torch import nn

from ..config import ReftConfig
from ..interventions import get_intervention_class
from ..positions import parse_positions


class Adapter(nn.Module):
    """The trainable state of one adapter.

    ``interventions`` is keyed as :meth:`ReftConfig.keys` names them (``layer3``, ``layer3_first``, ``r1_layer9``…);
    ``head`` is a classification head or ``None``.
    """

    def __init__(self, config: ReftConfig, hidden: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        modules = {}
        for j, spec in enumerate(config.specs):
            cls = get_intervention_class(spec.intervention)
            options = {"dropout": spec.dropout, "act": spec.act, "dtype": config.dtype}
            if spec.rotation != "qr":  # only then: registered interventions of users need not know the option
                options["rotation"] = spec.rotation
            modules |= {key: cls(hidden, spec.rank, **options) for key in spec.keys(config.spec_prefix(j))}
        self.interventions = nn.ModuleDict(modules)
        self.head = head

    def parts(self, spec_index: int, layer: int) -> list[tuple[nn.Module, slice]]:
        """The interventions of spec ``spec_index`` at ``layer`` with the position slots each one edits."""
        spec = self.config.specs[spec_index]
        pos = parse_positions(spec.positions)
        slots = {"all": slice(0, pos.width), "first": slice(0, pos.first), "last": slice(pos.first, pos.width)}
        prefix = self.config.spec_prefix(spec_index)
        return [(self.interventions[prefix + (f"layer{layer}" if p == "all" else f"layer{layer}_{p}")], slots[p])
                for p in spec.parts]

    def spec_sizes(self) -> list[int]:
        """Parameter count of each spec's interventions."""
        sizes = []
        for j, spec in enumerate(self.config.specs):
            keys = spec.keys(self.config.spec_prefix(j))
            sizes.append(sum(p.numel() for k in keys for p in self.interventions[k].parameters()))
        return sizes


class AdapterView:
    """What :mod:`reft.save_load` reads and writes of one adapter (``reft_config``, ``interventions``, and
    ``head`` + ``num_labels`` for a classifier)."""

    def __init__(self, adapter: Adapter, num_labels: int | None = None) -> None:
        self.reft_config = adapter.config
        self.interventions = adapter.interventions
        if adapter.head is not None:
            self.head = adapter.head
            self.num_labels = num_labels
