"""`ReftConfig`: everything that defines a set of interventions, validated and JSON round-trippable."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from .interventions import get_intervention_class
from .interventions.base import make_activation, resolve_dtype
from .interventions.orthogonal import check_rotation
from .positions import check_rule, parse_positions

COMPONENTS = ("block_output", "block_input", "attention_output", "mlp_output")
CONFIG_NAME = "reft_config.json"
FORMAT_VERSION = 1
# dotted attribute path; no "_"-prefixed part, so a config file cannot walk into dunders (__class__, __globals__…)
_LAYERS_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


def parse_layers(layers: str | int | list[int] | tuple[int, ...], num_layers: int | None = None) -> list[int] | str:
    """``"3;9;18"`` / ``[3, 9, 18]`` / ``"all"`` → sorted unique layer indices (``"all"`` needs ``num_layers``).

    Negative indices count from the top (``-1`` = last layer) when ``num_layers`` is known.
    """
    if isinstance(layers, str):
        text = layers.strip()
        if text == "all":
            return list(range(num_layers)) if num_layers is not None else "all"
        try:
            layers = [int(x) for x in text.replace(",", ";").split(";") if x.strip()]
        except ValueError:
            raise ValueError(f"cannot parse layers {text!r}: write 'all' or indices like '3;9;18'") from None
    elif isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ValueError(f"layers {layers!r} must be 'all' or a non-empty list of integers")
    if num_layers is not None:
        bad = [x for x in layers if not -num_layers <= x < num_layers]
        if bad:
            raise ValueError(
                f"layer index {bad[0]} is out of range: the model has {num_layers} layers (0…{num_layers - 1})"
            )
        layers = [x % num_layers for x in layers]
    return sorted(set(layers))


SPEC_FIELDS = ("layers", "component", "positions", "tied", "rank", "intervention", "dropout", "act", "position_rule",
               "rotation")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_prompt_format(value: Any) -> None:
    """``None`` or ``{"chat_template": bool, "template_sha256": 64 hex digits or None}``; other keys warn."""
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("chat_template"), bool):
        raise ValueError(f"prompt_format must be null or an object with a boolean 'chat_template', got {value!r:.80}")
    sha = value.get("template_sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        raise ValueError(f"prompt_format.template_sha256 must be null or 64 hex digits, got {sha!r:.80}")
    unknown = sorted(set(value) - {"chat_template", "template_sha256"})
    if unknown:
        warnings.warn(f"ignoring unknown prompt_format keys {unknown}: written by a newer reft? upgrade reft",
                      stacklevel=4)


@dataclass
class Representation:
    """One representation spec: interventions of one type at some layers, one component, one position rule.

    The fields mean what :class:`ReftConfig`'s fields of the same name mean; a config holds one or more specs.
    """

    layers: Any = "all"
    component: str = "block_output"
    positions: str = "l1"
    tied: bool = True
    rank: int = 4
    intervention: str = "loreft"
    dropout: float = 0.0
    act: str | None = None
    position_rule: str = "split"
    rotation: str = "qr"

    def validate(self, num_layers: int | None, hidden_size: int | None, where: str = "") -> None:
        """Normalise ``layers``/``positions`` in place; raise ``ValueError`` naming the bad field (and ``where``)."""
        try:
            self.layers = parse_layers(self.layers, num_layers)
            if self.component not in COMPONENTS:
                raise ValueError(f"unknown component {self.component!r}: choose one of {list(COMPONENTS)}")
            self.positions = str(parse_positions(self.positions))
            check_rule(self.position_rule)
            if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
                raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
            if hidden_size is not None and self.rank > hidden_size:
                raise ValueError(f"rank {self.rank} > hidden size {hidden_size}: choose rank ≤ {hidden_size}")
            check_rotation(self.rotation, get_intervention_class(self.intervention))
            make_activation(self.act)
            if not 0.0 <= float(self.dropout) < 1.0:
                raise ValueError(f"dropout {self.dropout} must be in [0, 1)")
            if not isinstance(self.tied, bool):
                raise ValueError(f"tied must be true or false, got {self.tied!r}")
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None

    @property
    def parts(self) -> list[str]:
        """Intervention slots per layer: ``["all"]`` when tied (or one part only), else ``["first", "last"]``."""
        spec = parse_positions(self.positions)
        if self.tied or not (spec.first and spec.last):
            return ["all"]
        return ["first", "last"]

    def keys(self, prefix: str = "") -> list[str]:
        """Names of this spec's interventions: ``layer3`` (tied) or ``layer3_first`` / ``layer3_last``."""
        if self.layers == "all":
            raise ValueError("layers='all' is resolved when the config is attached to a model")
        return [prefix + (f"layer{i}" if p == "all" else f"layer{i}_{p}") for i in self.layers for p in self.parts]


@dataclass
class ReftConfig(Representation):
    """Where and how to intervene: one spec (the flat fields) or several (``representations``), per adapter.

    Args:
        layers: ``"all"``, ``"3;9;18"`` or a list of layer indices. Default: ``"all"``
        component: which representation of a layer: ``block_output`` (residual stream after the block),
            ``block_input``, ``attention_output``, ``mlp_output``. Default: ``"block_output"``
        positions: ``"f<p>+l<s>"``, e.g. ``"f7+l7"``, ``"l1"``. Default: ``"l1"``
        tied: one Φ per layer shared by prefix and suffix (True) or one each (False). Default: True
        rank: low rank r. Default: 4
        intervention: registered type: loreft, noreft, consreft, lobireft, direft, orthodireft. Default: ``"loreft"``
        dropout: dropout on the edit. Default: 0.0
        act: activation on ``W h + b`` (relu, gelu, silu, tanh, …) or None. Default: None
        position_rule: how prompts shorter than the positions are shortened (:mod:`reft.positions`):
            ``"split"`` (prefix ⌊n/2⌋, suffix ⌈n/2⌉ tokens when both do not fit; one part clipped to n) or
            ``"half"`` (pyreft's: each part at most ⌊n/2⌋ tokens, as in the paper's runs). Default: ``"split"``
        rotation: how an orthonormal R is parametrised (:mod:`reft.interventions.orthogonal`): ``"qr"`` (QR of an
            unconstrained A: no buffer, O(d r²) per call) or ``"householder"`` (torch's ``orthogonal``
            parametrisation, pyreft's: the same optimisation trajectory as pyreft, a d×d buffer per
            intervention). Default: ``"qr"``
        dtype: intervention parameter dtype; keep fp32 for bf16 models. Default: ``"float32"``
        layers_path: dotted path of the layer list when automatic discovery fails, e.g. ``"model.layers"``.
        representations: several specs in one adapter, each a dict of some of ``layers``, ``component``,
            ``positions``, ``tied``, ``rank``, ``intervention``, ``dropout``, ``act``, ``position_rule``, ``rotation``
            (pyreft's
            ``representations=[{...}, ...]``); a field a spec leaves out takes the flat field's value. Default: None
            (the flat fields are the one spec)
        base_model: name of the base model (filled in on attach; checked on load).
        model_type, hidden_size, num_layers: the base model's (filled in on attach; checked on load).
        prompt_format: how training prompts were rendered, ``{"chat_template": bool, "template_sha256": str | None}``
            (the SHA-256 of the tokenizer's chat template when it was used); ``reft eval`` / ``reft generate`` use
            it by default. None: not recorded (adapters written before it existed).
    """

    dtype: str = "float32"
    layers_path: str | None = None
    representations: list[dict[str, Any]] | None = None
    base_model: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    format_version: int = field(default=FORMAT_VERSION)
    prompt_format: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate(self.num_layers, self.hidden_size)
        resolve_dtype(self.dtype)
        if self.layers_path is not None and not _LAYERS_PATH.match(str(self.layers_path)):
            raise ValueError(f"layers_path {self.layers_path!r} must be a dotted path of public attribute names, "
                             "e.g. 'model.layers'")
        if self.representations is not None:
            self.representations = [self._spec_dict(i, r) for i, r in enumerate(self.representations)]
        check_prompt_format(self.prompt_format)

    def _spec_dict(self, i: int, rep: Any) -> dict[str, Any]:
        where = f"representations[{i}]: "
        if isinstance(rep, Representation):
            rep = dataclasses.asdict(rep)
        if not isinstance(rep, dict):
            raise ValueError(f"{where}must be a dict of {list(SPEC_FIELDS)}, got {type(rep).__name__}")
        unknown = sorted(set(rep) - set(SPEC_FIELDS))
        if unknown:
            raise ValueError(f"{where}unknown keys {unknown}: a spec takes {list(SPEC_FIELDS)} (dtype and "
                             "layers_path are per adapter)")
        spec = Representation(**({k: getattr(self, k) for k in SPEC_FIELDS} | rep))
        spec.validate(self.num_layers, self.hidden_size, where)
        return dataclasses.asdict(spec)

    # ---- derived -------------------------------------------------------------------------------------------
    @property
    def specs(self) -> list[Representation]:
        """The representation specs: ``representations`` if given, else one spec made of the flat fields."""
        if self.representations is None:
            return [Representation(**{k: getattr(self, k) for k in SPEC_FIELDS})]
        return [Representation(**r) for r in self.representations]

    def spec_prefix(self, index: int) -> str:
        """Key prefix of spec ``index``: none for a one-spec config (keys as before), ``r<index>_`` otherwise."""
        return "" if self.representations is None else f"r{index}_"

    @property
    def parts(self) -> list[str]:
        """The parts of a one-spec config (see :attr:`Representation.parts`)."""
        return self.specs[0].parts

    def keys(self) -> list[str]:
        """Names of all interventions, e.g. ``layer3`` / ``layer3_first``; with several specs ``r1_layer3`` …"""
        return [k for i, spec in enumerate(self.specs) for k in spec.keys(self.spec_prefix(i))]

    # ---- JSON ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReftConfig:
        """Build from a dict; unknown keys warn (a newer reft wrote them), wrong types raise."""
        if not isinstance(data, dict):
            raise ValueError(f"a ReftConfig must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"ignoring unknown ReftConfig keys {unknown}: written by a newer reft? upgrade reft",
                          stacklevel=2)
        if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ValueError(f"checkpoint format {data['format_version']} is newer than this reft "
                             f"({FORMAT_VERSION}): upgrade reft")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReftConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{CONFIG_NAME} is not valid JSON ({e}): the checkpoint is corrupt; re-save it") from None
        return cls.from_dict(data)

    def save(self, directory: str | os.PathLike) -> None:
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ReftConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: is this a reft adapter directory?")
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())
