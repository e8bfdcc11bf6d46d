"""reft.import_pyreft without pyreft: hand-built pyreft-format directories, checked against the formulas."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import random_batch, tiny_llama
from safetensors.torch import load_file
from torch import nn

from reft import ReftModel, import_pyreft
from reft.pyreft_compat import orthogonal_parametrization_weight

D, R = 32, 4
PARAM = "rotate_layer.parametrizations.weight"


def _pyvene_key(layer: int, n: int) -> str:
    return f"layer_{layer}_comp_block_output_unit_pos_nunit_1#{n}"


def _write_pyreft_dir(path, kind: str, layers: list[int], states: list[dict]) -> None:
    """config.json in pyvene 0.1.8's layout + intkey_*.bin written with torch.save of plain tensors."""
    path.mkdir(parents=True)
    counts: dict[int, int] = {}
    keys = []
    for layer in layers:
        counts[layer] = counts.get(layer, -1) + 1
        keys.append(_pyvene_key(layer, counts[layer]))
    config = {
        "representations": [[layer, "block_output", "pos", 1, R] + [None] * 9 for layer in layers],
        "intervention_types": [f"<class 'pyreft.interventions.{kind}'>"] * len(layers),
        "sorted_keys": keys, "intervention_dimensions": [D] * len(layers),
        "intervention_constant_sources": [True] * len(layers), "mode": "parallel",
    }
    (path / "config.json").write_text(json.dumps(config))
    for key, state in zip(keys, states):
        torch.save(state, path / f"intkey_{key}.bin")


def _orthonormal(d: int, r: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(seed)))
    return q


def _parametrized(seed: int) -> tuple[dict, torch.Tensor]:
    """Stored tensors of torch's orthogonal parametrisation (X with ±1 diagonal, base B) and R by reflectors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, R, generator=g) * 0.5
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0])
    x.diagonal().copy_(signs)
    base = _orthonormal(D, D, seed + 1)
    # R = B · (H_1 ⋯ H_k)[:, :k] · diag(signs), H_i = I − τ_i v_i v_iᵀ, v_i = e_i + X[i+1:, i], τ_i = 2 / ‖v_i‖²
    q = torch.eye(D, dtype=torch.float64)
    for i in range(R):
        v = torch.zeros(D, dtype=torch.float64)
        v[i] = 1.0
        v[i + 1:] = x[i + 1:, i].double()
        q = q @ (torch.eye(D, dtype=torch.float64) - 2.0 / (v @ v) * torch.outer(v, v))
    expected = base.double() @ q[:, :R] * signs.double()
    state = {f"{PARAM}.original": x, f"{PARAM}.0.base": base, "embed_dim": torch.tensor(D),
             "interchange_dim": torch.tensor(D)}
    return state, expected.float()


def test_orthogonal_parametrization_matches_torch_and_the_reflector_formula():
    state, expected = _parametrized(0)
    got = orthogonal_parametrization_weight(state[f"{PARAM}.original"], state[f"{PARAM}.0.base"])
    torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=0)
    layer = nn.utils.parametrizations.orthogonal(nn.Linear(R, D, bias=False))  # weight [D, R], like pyreft's
    layer.load_state_dict({k.removeprefix("rotate_layer."): v for k, v in state.items() if "parametrizations" in k})
    torch.testing.assert_close(got.float(), layer.weight.detach(), atol=1e-5, rtol=0)
    square = nn.utils.parametrizations.orthogonal(nn.Linear(6, 6, bias=False))  # matrix_exp map
    with torch.no_grad():
        square.parametrizations.weight.original.add_(torch.randn(6, 6) * 0.3)
    sd = square.state_dict()
    torch.testing.assert_close(
        orthogonal_parametrization_weight(sd["parametrizations.weight.original"],
                                          sd["parametrizations.weight.0.base"]).float(),
        square.weight.detach(), atol=1e-5, rtol=0)


def _h(n: int = 5) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(9))


def _linear(seed: int, out: int = R, inp: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * 0.3, torch.randn(out, generator=g)


def _converted(tmp_path, kind, states, layers=(1,), positions="l1", act=None):
    _write_pyreft_dir(tmp_path / "pyreft", kind, list(layers), states)
    config = import_pyreft(tmp_path / "pyreft", tmp_path / "reft", tiny_llama(), positions=positions, act=act)
    model = ReftModel.from_pretrained(tiny_llama(), tmp_path / "reft")
    return config, model


def test_loreft_effective_rotation(tmp_path):
    rot, (w, b) = _orthonormal(D, R, 1), _linear(2)
    config, model = _converted(tmp_path, "LoreftIntervention", [{"weight": w, "bias": b, "rotate_layer": rot}])
    assert config.intervention == "loreft" and config.layers == [1] and config.hidden_size == D
    assert config.position_rule == model.reft_config.position_rule == "half"  # pyreft edited ⌊n/2⌋ per part
    h = _h()
    # pyreft: Φ(h) = h + (W h + b − R h) Rᵀ with R the stored [d, r] matrix (orthonormal columns)
    expected = h + (h @ w.T + b - h @ rot) @ rot.T
    torch.testing.assert_close(model.interventions["layer1"](h), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.interventions["layer1"].rotate(), rot, atol=1e-6, rtol=0)


def test_direft_from_parametrized_rotation_with_relu(tmp_path):
    state, rot = _parametrized(3)
    w, b = _linear(4)
    config, model = _converted(tmp_path, "DireftIntervention",
                               [state | {"learned_source.weight": w, "learned_source.bias": b}], act="relu")
    assert config.intervention == "orthodireft" and config.act == "relu"
    h = _h()
    expected = h + torch.relu(h @ w.T + b) @ rot.T  # pyreft: h + act(W h + b) Rᵀ
    torch.testing.assert_close(model.interventions["layer1"](h), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,reft_kind", [("ConsreftIntervention", "consreft"),
                                            ("LobireftIntervention", "lobireft")])
def test_consreft_and_lobireft(tmp_path, kind, reft_kind):
    state, rot = _parametrized(5)
    bias = torch.randn(R)
    config, model = _converted(tmp_path, kind, [state | {"learned_source": bias}])
    h = _h()
    if kind == "ConsreftIntervention":
        expected = h + (bias - h @ rot) @ rot.T  # h + Rᵀ(b − R h)
    else:
        expected = h + bias @ rot.T  # h + Rᵀ b
    assert config.intervention == reft_kind
    torch.testing.assert_close(model.interventions["layer1"](h), expected, atol=1e-5, rtol=1e-5)


def test_noreft_folds_the_projection_bias(tmp_path):
    (w, b), (p, c) = _linear(6), _linear(7)
    state = {"learned_source.weight": w, "learned_source.bias": b, "proj_layer.weight": p, "proj_layer.bias": c,
             "embed_dim": torch.tensor(D), "interchange_dim": torch.tensor(D)}
    config, model = _converted(tmp_path, "NoreftIntervention", [state])
    h = _h()
    expected = h + (h @ w.T + b - (h @ p.T + c)) @ p  # pyreft: h + (W h + b − P(h)) P.weight
    assert config.intervention == "noreft"
    torch.testing.assert_close(model.interventions["layer1"](h), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="add_bias=True and act='gelu' cannot be expressed"):
        import_pyreft(tmp_path / "pyreft", tmp_path / "again", positions="l1", act="gelu")


def test_nodireft_transposes_the_projection_and_ignores_its_unused_bias(tmp_path):
    (w, b), (p, c) = _linear(8), _linear(9)
    state = {"learned_source.weight": w, "learned_source.bias": b, "proj_layer.weight": p, "proj_layer.bias": c}
    config, model = _converted(tmp_path, "NodireftIntervention", [state], act="tanh")
    h = _h()
    expected = h + torch.tanh(h @ w.T + b) @ p  # pyreft: h + act(W1 h + b) W2, W2 = proj_layer.weight [r, d]
    assert config.intervention == "direft"
    torch.testing.assert_close(model.interventions["layer1"](h), expected, atol=1e-5, rtol=1e-5)
    assert load_file(tmp_path / "reft" / "reft_model.safetensors")["layer1.proj.weight"].shape == (D, R)


def test_untied_layout_first_half_prefix_second_half_suffix(tmp_path):
    states = [{"weight": _linear(10 + i)[0], "bias": _linear(10 + i)[1], "rotate_layer": _orthonormal(D, R, 20 + i)}
              for i in range(4)]
    config, model = _converted(tmp_path, "LoreftIntervention", states, layers=(1, 3, 1, 3), positions="f2+l2")
    assert config.tied is False and config.layers == [1, 3] and config.positions == "f2+l2"
    order = ["layer1_first", "layer3_first", "layer1_last", "layer3_last"]
    for key, state in zip(order, states):
        torch.testing.assert_close(model.interventions[key].rotate(), state["rotate_layer"], atol=1e-6, rtol=0)
        torch.testing.assert_close(model.interventions[key].source.bias, state["bias"])
    ids, mask = random_batch([9, 6])
    assert model(ids, attention_mask=mask).logits.isfinite().all()


def test_tied_layout_and_layers_out_of_range(tmp_path):
    states = [{"weight": _linear(i)[0], "bias": _linear(i)[1], "rotate_layer": _orthonormal(D, R, i)}
              for i in range(2)]
    config, _ = _converted(tmp_path, "LoreftIntervention", states, layers=(0, 2), positions="f7+l7")
    assert config.tied is True and config.keys() == ["layer0", "layer2"]
    _write_pyreft_dir(tmp_path / "deep", "LoreftIntervention", [0, 9], states)
    with pytest.raises(ValueError, match="layer index 9 is out of range: the model has 4 layers"):
        import_pyreft(tmp_path / "deep", tmp_path / "deep_out", tiny_llama(), positions="l1")


def test_refusals(tmp_path):
    rot, (w, b) = _orthonormal(D, R, 1), _linear(2)
    good = {"weight": w, "bias": b, "rotate_layer": rot}
    _write_pyreft_dir(tmp_path / "a", "LoreftIntervention", [1], [good])
    with pytest.raises(ValueError, match="pyreft does not store intervention positions: pass positions="):
        import_pyreft(tmp_path / "a", tmp_path / "out")
    with pytest.raises(ValueError, match=r"hidden size 32 \(checkpoint\) vs 64 \(model\)"):
        import_pyreft(tmp_path / "a", tmp_path / "out", tiny_llama(hidden=64), positions="l1")
    _write_pyreft_dir(tmp_path / "b", "SomethingElse", [1], [good])
    with pytest.raises(ValueError, match=r"SomethingElse'>\" has no reft equivalent: supported are \['Cons"):
        import_pyreft(tmp_path / "b", tmp_path / "out", positions="l1")
    _write_pyreft_dir(tmp_path / "c", "LoreftIntervention", [1, 1, 2], [good] * 3)
    with pytest.raises(ValueError, match=r"layers \[1, 1, 2\]: reft maps each layer listed once"):
        import_pyreft(tmp_path / "c", tmp_path / "out", positions="f1+l1")
    state, _ = _parametrized(4)
    state[f"{PARAM}.original"].diagonal()[0] = 0.7  # decayed diagonal: torch's map zeroes that column
    _write_pyreft_dir(tmp_path / "d", "DireftIntervention", [1], [state | {"learned_source.weight": w,
                                                                         "learned_source.bias": b}])
    with pytest.raises(ValueError, match="rotate_layer is not orthonormal"):
        import_pyreft(tmp_path / "d", tmp_path / "out", positions="l1")
    (tmp_path / "a" / f"intkey_{_pyvene_key(1, 0)}.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing intkey_layer_1_comp_block_output_unit_pos_nunit_1#0.bin"):
        import_pyreft(tmp_path / "a", tmp_path / "out", positions="l1")
    assert not (tmp_path / "out").exists()  # nothing half-written


FIRED: list[str] = []


def _fire(tag):
    FIRED.append(tag)
    return {}


class _Bomb:
    def __reduce__(self):
        return (_fire, ("unpickled",))


def test_bin_files_are_read_with_weights_only(tmp_path):
    _write_pyreft_dir(tmp_path / "p", "LoreftIntervention", [1], [{"weight": torch.zeros(R, D)}])
    with open(tmp_path / "p" / f"intkey_{_pyvene_key(1, 0)}.bin", "wb") as f:
        pickle.dump({"weight": _Bomb()}, f, protocol=2)
    with pytest.raises(ValueError, match="only plain tensor files are accepted"):
        import_pyreft(tmp_path / "p", tmp_path / "out", positions="l1")
    assert FIRED == []
