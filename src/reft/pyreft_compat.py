"""Convert adapters saved by pyreft 0.1.0 (pyvene 0.1.8 ``IntervenableModel.save``) into reft adapters.

pyreft's directory holds ``config.json`` (a pyvene ``IntervenableConfig``: ``representations`` as 14-field lists
``[layer, component, unit, max_number_of_units, low_rank_dimension, …]``, ``intervention_types`` as strings such as
``"<class 'pyreft.interventions.LoreftIntervention'>"``, ``sorted_keys``) and one ``intkey_<key>.bin`` per
intervention (``torch.save`` of its ``state_dict``). The config is read as JSON and the class *name* is looked up
in a fixed table; the ``.bin`` files are read with ``torch.load(weights_only=True)``. Nothing named in a file is
ever imported.

Mapping (pyreft → reft), with R ∈ ℝ^{d×r} the effective rotation (orthonormal columns), ``W``/``b`` pyreft's
``learned_source`` Linear(d, r) and ``P`` its ``proj_layer`` Linear(d, r):

=========================  ============  ==============================================================
pyreft                     reft          tensors
=========================  ============  ==============================================================
LoreftIntervention         loreft        rotate.weight ← R, source ← (W, b)
NoreftIntervention         noreft        proj.weight ← P.weight, source ← (W, b − P.bias)  (P.bias folded)
ConsreftIntervention       consreft      rotate.weight ← R, bias ← learned_source
LobireftIntervention       lobireft      rotate.weight ← R, bias ← learned_source
DireftIntervention         orthodireft   rotate.weight ← R, source ← (W, b)
NodireftIntervention       direft        proj.weight ← P.weightᵀ, source ← (W, b)  (P.bias is unused by pyreft)
=========================  ============  ==============================================================

R: ``LoreftIntervention.state_dict`` stores the effective matrix as ``rotate_layer``; the other types store torch's
orthogonal parametrisation (``rotate_layer.parametrizations.weight.original`` X and the ``…weight.0.base`` buffer B),
whose value is ``B · Householder(X)`` (``B · expm(X̃ − X̃ᵀ)`` for a square X); it is evaluated here. reft's
QR-with-positive-diagonal parametrisation is the identity on orthonormal input, so R is reproduced to rounding.

Not stored by pyreft, so given as arguments: the positions (``positions="f7+l7"``), the activation (``act``,
pyreft's default is linear) and dropout. Layers, component and rank come from the config. A layer listed once is
one tied intervention for all positions; layers listed twice (pyreft's ``layers + layers`` for untied ``f+l``)
map to ``layer<i>_first`` (first half of the list, prefix positions) and ``layer<i>_last`` (second half).
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from .config import COMPONENTS, ReftConfig
from .interventions import get_intervention_class
from .interventions.orthogonal import INIT_SCALE
from .positions import check_rule, parse_positions
from .save_load import ADAPTER_FILES, atomic_directory, write_adapter_state

_FIELDS = (
    "layer component unit max_number_of_units low_rank_dimension intervention_type intervention subspace_partition "
    "group_key intervention_link_key moe_key source_representation hidden_source_representation latent_dim"
).split()
_TYPES = {
    "LoreftIntervention": "loreft",
    "NoreftIntervention": "noreft",
    "ConsreftIntervention": "consreft",
    "LobireftIntervention": "lobireft",
    "DireftIntervention": "orthodireft",
    "NodireftIntervention": "direft",
}
_PARAM = "rotate_layer.parametrizations.weight"


def orthogonal_parametrization_weight(original: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """The matrix torch's ``orthogonal`` parametrisation (default maps) represents, from its stored tensors.

    Args:
        original: X, ``[n, k]`` (``parametrizations.weight.original``).
        base: B, ``[max(n,k), max(n,k)]`` (``parametrizations.weight.0.base``), or None without trivialisation.

    For a tall X (n > k), the Householder map: reflectors v_i = column i of ``X.tril(−1)`` with a unit i-th
    entry, τ_i = 2 / ‖v_i‖², Q = (H_1 ⋯ H_k)[:, :k] with each column multiplied by ``int(X_ii)`` (±1). For a square
    X, the matrix-exponential map Q = expm(L − Lᵀ), L = ``X.tril()``. Then Q ← B Q. A wide X is handled transposed.
    """
    x = original.double()
    transposed = x.shape[0] < x.shape[1]
    if transposed:
        x = x.T
    n, k = x.shape
    if n == k:
        lower = x.tril()
        q = torch.linalg.matrix_exp(lower - lower.T)
    else:
        reflectors = x.tril(diagonal=-1)
        tau = 2.0 / (1.0 + (reflectors * reflectors).sum(dim=0))
        q = torch.linalg.householder_product(reflectors, tau)
        q = q * x.diagonal().int().to(q.dtype).unsqueeze(0)
    if base is not None:
        q = base.double() @ q
    return q.T if transposed else q


def _read_config(src: str) -> dict:
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {src}: is this a directory written by pyreft's ReftModel.save?")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-save the pyreft model") from None
    if not isinstance(data, dict) or not isinstance(data.get("representations"), list) or not data["representations"]:
        raise ValueError(f"{path} has no 'representations' list: not a pyreft/pyvene intervention config")
    return data


def _representation(raw, index: int) -> dict:
    if isinstance(raw, list):
        if len(raw) > len(_FIELDS):
            raise ValueError(f"representation {index} has {len(raw)} fields, pyvene 0.1.8 writes {len(_FIELDS)}")
        return dict(zip(_FIELDS, raw))
    if isinstance(raw, dict):
        return raw
    raise ValueError(f"representation {index} is neither a list nor an object: {raw!r}")


def _type_name(text) -> str:
    match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)'?>?\s*$", str(text))
    name = match.group(1) if match else str(text)
    if name not in _TYPES:
        raise ValueError(
            f"pyreft intervention type {text!r} has no reft equivalent: supported are {sorted(_TYPES)}"
        )
    return name


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {os.path.basename(path)} in {os.path.dirname(path)}: the pyreft save is "
                                "incomplete")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(f"cannot read {path} as a tensor state dict ({type(e).__name__}: {e}); only plain "
                         "tensor files are accepted") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a dict of tensors")
    return dict(state)


def _rotation(state: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    if "rotate_layer" in state:
        r = state["rotate_layer"].double()
    elif f"{_PARAM}.original" in state:
        r = orthogonal_parametrization_weight(state[f"{_PARAM}.original"], state.get(f"{_PARAM}.0.base"))
    elif "rotate_layer.weight" in state:
        r = state["rotate_layer.weight"].double()
    else:
        raise ValueError(f"{where} has no rotate_layer tensor (keys: {sorted(state)})")
    eye = torch.eye(r.shape[1], dtype=r.dtype)
    error = float((r.T @ r - eye).abs().max())
    if error > 1e-3:
        raise ValueError(
            f"{where}: pyreft's rotate_layer is not orthonormal (max |RᵀR − I| = {error:.3g}); torch's orthogonal "
            "parametrisation collapses under weight decay. reft's orthonormal R cannot represent it"
        )
    return r * INIT_SCALE  # stored as a fresh R is: further training steps it at the same rate


def _get(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{where} has no {key!r} tensor (keys: {sorted(state)})")
    return state[key].double()


def _convert(kind: str, state: dict[str, torch.Tensor], act: str | None, where: str) -> dict[str, torch.Tensor]:
    """reft tensors (float64) of one intervention from pyreft's state dict."""
    if kind == "LoreftIntervention":  # state_dict overridden by pyreft: learned_source's keys at top level
        return {"rotate.weight": _rotation(state, where), "source.weight": _get(state, "weight", where),
                "source.bias": _get(state, "bias", where)}
    if kind in ("ConsreftIntervention", "LobireftIntervention"):
        return {"rotate.weight": _rotation(state, where), "bias": _get(state, "learned_source", where)}
    source = {"source.weight": _get(state, "learned_source.weight", where),
              "source.bias": _get(state, "learned_source.bias", where)}
    if kind == "DireftIntervention":
        return {"rotate.weight": _rotation(state, where)} | source
    proj = _get(state, "proj_layer.weight", where)  # [r, d]
    if kind == "NodireftIntervention":  # pyreft adds act(W h + b) @ P.weight; P.bias never enters
        return {"proj.weight": proj.T} | source
    # NoreftIntervention: h + (act(W h + b) − (P h + c)) Pᵀ… with c = P.bias when add_bias=True
    if "proj_layer.bias" in state:
        if act not in (None, "linear"):
            raise ValueError(f"{where}: NoReFT with add_bias=True and act={act!r} cannot be expressed in reft "
                             "(the projection bias folds into the source bias only for a linear act)")
        source["source.bias"] = source["source.bias"] - state["proj_layer.bias"].double()
    return {"proj.weight": proj} | source


def _layout(layers: list[int], first: int, last: int) -> list[str]:
    """reft keys for pyreft's interventions, in the config's order (see module docstring)."""
    if len(set(layers)) == len(layers):
        return [f"layer{i}" for i in layers]
    half = len(layers) // 2
    if first and last and len(layers) % 2 == 0 and layers[:half] == layers[half:] and len(set(layers[:half])) == half:
        return [f"layer{i}_first" for i in layers[:half]] + [f"layer{i}_last" for i in layers[half:]]
    raise ValueError(
        f"pyreft layers {layers}: reft maps each layer listed once (tied) or the whole list repeated twice (untied "
        "f+l, first half prefix, second half suffix); other repetitions have no reft equivalent"
    )


def import_pyreft(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    positions: str | None = None,
    act: str | None = None,
    dropout: float = 0.0,
    position_rule: str = "half",
) -> ReftConfig:
    """Convert a directory written by pyreft's ``ReftModel.save`` into a reft adapter in ``dst_dir``.

    Args:
        src_dir: pyreft's save directory (``config.json`` + ``intkey_*.bin``).
        dst_dir: where to write ``reft_config.json`` + ``reft_model.safetensors`` (replaced atomically).
        model: the base model; when given, hidden size and layer indices are checked against it and its name,
            type and size are recorded in the config. Default: None (checked when the adapter is loaded).
        positions: the positions pyreft was trained with, e.g. ``"l1"`` (pyreft's quickstart) or ``"f7+l7"``
            (the paper). Required: pyreft does not store them.
        act: activation pyreft's ``act_fn`` used (``None`` = linear, pyreft's default). Not stored by pyreft.
        dropout: dropout for continued training. Default: 0.0
        position_rule: how short prompts are shortened (:mod:`reft.positions`). Default: ``"half"``, pyreft's
            ``get_intervention_locations`` (each part at most ⌊n/2⌋ tokens), so the adapter edits what it did there.

    Returns:
        ReftConfig: the config written to ``dst_dir``; load with ``ReftModel.from_pretrained(model, dst_dir)``.

    Raises:
        ValueError / FileNotFoundError: a missing or unreadable file, an unsupported intervention type, component
            or layout, a non-orthonormal rotation, or a model that does not fit.
    """
    if positions is None:
        raise ValueError("pyreft does not store intervention positions: pass positions= as used in training, "
                         "e.g. positions='l1' (pyreft's quickstart) or positions='f7+l7' (the paper's setting)")
    spec = parse_positions(positions)
    check_rule(position_rule)
    src = os.fspath(src_dir)
    data = _read_config(src)
    reps = [_representation(r, i) for i, r in enumerate(data["representations"])]
    types = data.get("intervention_types")
    types = [types] * len(reps) if isinstance(types, str) else types
    if not isinstance(types, list) or len(types) != len(reps):
        raise ValueError(f"config.json lists {len(reps)} representations but intervention_types is {types!r}")
    kinds = [_type_name(t) for t in types]
    for i, rep in enumerate(reps):
        if rep.get("unit", "pos") != "pos" or int(rep.get("max_number_of_units") or 1) != 1:
            raise ValueError(f"representation {i}: only unit='pos' with one unit maps to reft, got {rep}")
        if rep.get("intervention_link_key") is not None or rep.get("subspace_partition") is not None:
            raise ValueError(f"representation {i}: linked or partitioned interventions have no reft equivalent")
        if rep.get("component", "block_output") not in COMPONENTS:
            raise ValueError(f"representation {i}: pyreft component {rep.get('component')!r}: reft needs one of "
                             f"{list(COMPONENTS)}")
        if not isinstance(rep.get("low_rank_dimension"), int):
            raise ValueError(f"representation {i}: low_rank_dimension {rep.get('low_rank_dimension')!r} must be an "
                             "integer rank")
    # representations of one (type, component, rank) form one reft spec; several groups → several specs
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, (kind, rep) in enumerate(zip(kinds, reps)):
        groups.setdefault((kind, rep.get("component", "block_output"), rep["low_rank_dimension"]), []).append(i)

    sorted_keys = data.get("sorted_keys")
    if not (isinstance(sorted_keys, list) and len(sorted_keys) == len(reps)):  # pyvene's naming scheme
        counter: dict[str, int] = {}
        sorted_keys = []
        for rep in reps:
            stem = f"layer_{rep['layer']}_comp_{rep.get('component', 'block_output')}_unit_pos_nunit_1"
            counter[stem] = counter.get(stem, -1) + 1
            sorted_keys.append(f"{stem}#{counter[stem]}")

    state: dict[str, torch.Tensor] = {}
    specs = []
    for j, ((kind, component, rank), members) in enumerate(groups.items()):
        prefix = "" if len(groups) == 1 else f"r{j}_"
        layers = [int(reps[i]["layer"]) for i in members]
        for i, key in zip(members, _layout(layers, spec.first, spec.last)):
            pyvene_key = sorted_keys[i]
            if not re.fullmatch(r"[A-Za-z0-9_#.\-]+", str(pyvene_key)):
                raise ValueError(f"unexpected intervention key {pyvene_key!r} in config.json")
            path = os.path.join(src, f"intkey_{pyvene_key}.bin")
            for name, tensor in _convert(kind, _load_bin(path), act, os.path.basename(path)).items():
                state[f"{prefix}{key}.{name}"] = tensor.float().contiguous()
        untied = any(k.endswith("_first") for k in _layout(layers, spec.first, spec.last))
        specs.append({"layers": sorted(set(layers)), "component": component, "positions": str(spec),
                      "tied": not untied, "rank": rank, "intervention": _TYPES[kind],
                      "act": None if act == "linear" else act, "dropout": dropout, "position_rule": position_rule})

    sample = next(k for k in state if k.endswith(("source.weight", "rotate.weight")))
    # W: [r, d]; ConsReFT/LoBiReFT have only R: [d, r]
    hidden = int(state[sample].shape[1] if sample.endswith("source.weight") else state[sample].shape[0])
    cfg = (specs[0] if len(specs) == 1 else specs[0] | {"representations": specs}) | {"hidden_size": hidden}
    if model is not None:
        from .model.layers import model_dims
        from .model.layers import model_name as _model_name
        from .model.persistence import check_compatible

        _, num_layers = model_dims(model)
        cfg |= {"num_layers": num_layers, "model_type": getattr(model.config, "model_type", None),
                "base_model": _model_name(model)}
        config = ReftConfig(**cfg)
        check_compatible(config, model)
    else:
        config = ReftConfig(**cfg)
    _check_shapes(config, state)

    def write(tmp: str) -> None:
        write_adapter_state(tmp, config, state, {"converted_from": "pyreft"})

    dst = os.fspath(dst_dir)
    if os.path.isdir(dst) and os.listdir(dst):
        raise FileExistsError(f"{dst} is not empty: choose a new directory for the converted adapter")
    atomic_directory(dst, write, owned=ADAPTER_FILES)
    return config


def _check_shapes(config: ReftConfig, state: dict[str, torch.Tensor]) -> None:
    """Every converted tensor has the name and shape a fresh reft intervention has."""
    expected = {}
    for j, spec in enumerate(config.specs):
        cls = get_intervention_class(spec.intervention)
        with torch.device("meta"):
            template = cls(config.hidden_size, spec.rank)
        expected |= {f"{key}.{n}": tuple(t.shape) for key in spec.keys(config.spec_prefix(j))
                     for n, t in template.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise ValueError(f"converted tensors do not match reft's interventions: expected {expected}, got {got}")
