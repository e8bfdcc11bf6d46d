"""Each intervention equals its formula; R stays orthonormal; parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reft import INTERVENTIONS, Intervention, LoReFT, ReftConfig, get_reft_model, register_intervention
from reft.interventions import orthonormalize

D, R = 16, 4


def _formula(kind: str, m: Intervention, h: torch.Tensor) -> torch.Tensor:
    """Φ(h) written directly from the paper / pyreft definitions, R as an r×d matrix."""
    if kind == "noreft":
        rm = m.proj.weight  # [r, d]
    elif hasattr(m, "rotate"):
        rm = m.rotate().T  # [r, d]
    W, b = (m.source.weight, m.source.bias) if hasattr(m, "source") else (None, None)
    if kind in ("loreft", "noreft"):
        return h + (W @ h.T + b[:, None] - rm @ h.T).T @ rm
    if kind == "consreft":
        return h + (m.bias[:, None] - rm @ h.T).T @ rm
    if kind == "lobireft":
        return h + (rm.T @ m.bias)[None, :]
    if kind == "direft":
        return h + (W @ h.T + b[:, None]).T @ m.proj.weight.T
    if kind == "orthodireft":
        return h + (W @ h.T + b[:, None]).T @ rm
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", sorted(["loreft", "noreft", "consreft", "lobireft", "direft", "orthodireft"]))
def test_formula(kind):
    torch.manual_seed(0)
    m = INTERVENTIONS[kind](D, R)
    for p in m.parameters():  # non-trivial values everywhere (biases start at zero)
        torch.nn.init.normal_(p)
    h = torch.randn(10, D)
    torch.testing.assert_close(m(h), _formula(kind, m, h), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.delta(h), m(h) - h, atol=1e-6, rtol=1e-5)


def test_activation_and_dtype():
    torch.manual_seed(0)
    m = LoReFT(D, R, act="relu")
    h = torch.randn(5, D, dtype=torch.bfloat16)
    out = m(h)
    assert out.dtype == torch.bfloat16 and m.rotate.weight.dtype == torch.float32
    rm = m.rotate().T
    hf = h.float()
    expect = hf + (torch.relu(hf @ m.source.weight.T + m.source.bias) - hf @ rm.T) @ rm
    torch.testing.assert_close(out.float(), expect, atol=3e-2, rtol=3e-2)


def test_dropout_acts_on_the_edit_only():
    torch.manual_seed(0)
    m = LoReFT(D, R, dropout=0.99).train()
    h = torch.randn(200, D)
    out = m(h)
    kept = out == h
    assert kept.float().mean() > 0.97  # dropped entries keep h exactly (not rescaled, not zeroed)
    with torch.no_grad():
        edit = m.edit(h) / (1 - 0.99)
    torch.testing.assert_close(out[~kept], (h + edit)[~kept], atol=1e-3, rtol=1e-4)
    m.eval()
    torch.testing.assert_close(m(h), _formula("loreft", m, h), atol=1e-6, rtol=1e-6)


def _ortho_error(m) -> float:
    rm = m.rotate().detach()
    return float((rm.T @ rm - torch.eye(rm.shape[1])).abs().max())


def _train(m, steps: int, opt=None):
    opt = opt or torch.optim.AdamW(m.parameters(), lr=5e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        h = torch.randn(8, D, generator=g)
        loss = (m(h) - 3.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("kind", ["loreft", "consreft", "lobireft", "orthodireft"])
def test_r_orthonormal_after_training_and_reload(kind, tmp_path):
    torch.manual_seed(0)
    m = INTERVENTIONS[kind](D, R)
    _train(m, 50)
    assert _ortho_error(m) <= 1e-5
    from safetensors.torch import load_file, save_file

    save_file(m.state_dict(), tmp_path / "w.safetensors")
    m2 = INTERVENTIONS[kind](D, R)
    m2.load_state_dict(load_file(tmp_path / "w.safetensors"))
    torch.testing.assert_close(m2.rotate(), m.rotate())
    _train(m2, 50)
    assert _ortho_error(m2) <= 1e-5


def test_orthonormalize_is_identity_on_orthonormal_input():
    q = orthonormalize(torch.randn(32, 5))
    torch.testing.assert_close(orthonormalize(q), q, atol=1e-6, rtol=0)
    assert float((q.T @ q - torch.eye(5)).abs().max()) < 1e-6


@pytest.mark.parametrize("kind,per", [("loreft", 2 * D * R + R), ("noreft", 2 * D * R + R), ("direft", 2 * D * R + R),
                                       ("orthodireft", 2 * D * R + R), ("consreft", D * R + R),
                                       ("lobireft", D * R + R)])
def test_parameter_count(kind, per):
    assert sum(p.numel() for p in INTERVENTIONS[kind](D, R).parameters()) == per


def test_no_dxd_buffer():
    m = LoReFT(512, 4)
    assert not list(m.buffers())
    assert max(p.numel() for p in m.parameters()) == 512 * 4


def test_llama2_7b_count_on_meta():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      vocab_size=32000)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    reft_model = get_reft_model(model, ReftConfig(layers="all", positions="f7+l7", tied=True, rank=8))
    trainable = sum(p.numel() for p in reft_model.parameters() if p.requires_grad)
    assert trainable == 2_097_408 == 32 * (2 * 4096 * 8 + 8)
    untied = get_reft_model(reft_model.unload(), ReftConfig(layers="all", positions="f7+l7", tied=False, rank=8))
    assert sum(p.numel() for p in untied.parameters() if p.requires_grad) == 2 * 2_097_408


def test_registry_rules():
    class Scale(Intervention):
        def __init__(self, embed_dim, rank, **kw):
            super().__init__(embed_dim, rank, **kw)
            self.s = torch.nn.Parameter(torch.zeros(1))

        def edit(self, h):
            return self.s * h

    register_intervention("scale_test", Scale)
    assert INTERVENTIONS["scale_test"] is Scale
    with pytest.raises(ValueError, match="already registered"):
        register_intervention("scale_test", LoReFT)
    with pytest.raises(ValueError, match="lower case"):
        register_intervention("Bad.Name", Scale)
    with pytest.raises(ValueError, match="not a subclass"):
        register_intervention("plain", torch.nn.Linear)
    with pytest.raises(ValueError, match="unknown intervention type 'os.system'"):
        ReftConfig(intervention="os.system")
    with pytest.raises(ValueError, match="rank"):
        LoReFT(8, 9)


def test_apply_interventions_packed_rows_match_per_row():
    """Examples packed into one row (``rows`` maps each positions row to it) get the same edits as row by row."""
    from reft.model.hooks import Placement, apply_interventions

    torch.manual_seed(0)
    d = 8
    first, second = LoReFT(d, 2), LoReFT(d, 2)
    parts = [(("a", 0), first, slice(0, 2)), (("a", 0), second, slice(2, 3))]
    h = torch.randn(3, 5, d)
    positions = torch.tensor([[0, 1, 4], [2, -1, 3], [-1, -1, 0]])
    expected = apply_interventions(h, {("a", 0): Placement(positions)}, parts)
    packed = h.reshape(1, 15, d)
    offsets = torch.tensor([[0], [5], [10]])
    packed_positions = torch.where(positions >= 0, positions + offsets, -1)
    got = apply_interventions(packed, {("a", 0): Placement(packed_positions, torch.zeros(3, dtype=torch.long))}, parts)
    torch.testing.assert_close(got.reshape(3, 5, d), expected)
    with pytest.raises(RuntimeError, match="batch of 3"):
        apply_interventions(packed, {("a", 0): Placement(packed_positions)}, parts)


def test_r_steps_like_torch_orthogonal_parametrization():
    """Adam moves R as far per step as under torch's Householder parametrisation (pyreft's), so pyreft's learning
    rates carry over: QR is scale-invariant, and A stored at half scale doubles R's step to match."""
    from torch.nn.utils.parametrizations import orthogonal

    d, r, lr = 256, 4, 4e-3
    target = torch.randn(d, r, generator=torch.Generator().manual_seed(3))

    def moved(get_r, params, steps: int) -> float:
        opt = torch.optim.Adam(params, lr=lr)
        start = get_r().detach().clone()
        for _ in range(steps):
            loss = -(get_r() * target).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float((get_r().detach() - start).norm())

    for steps in (1, 5):
        torch.manual_seed(0)
        reference = nn.Linear(r, d, bias=False)  # weight [d, r], as pyreft's LowRankRotateLayer
        nn.init.orthogonal_(reference.weight)
        orthogonal(reference)
        ours = INTERVENTIONS["loreft"](d, r).rotate
        want = moved(lambda ref=reference: ref.weight, list(reference.parameters()), steps)
        got = moved(ours, list(ours.parameters()), steps)
        assert abs(got / want - 1) < 0.1, (steps, got, want)


@pytest.mark.parametrize("kind", ["loreft", "consreft", "lobireft", "orthodireft"])
def test_householder_rotation_is_torchs_orthogonal_chart_and_reloads(kind, tmp_path):
    """rotation="householder": R = B · H(X)[:, :r] (torch's parametrisation, checked against pyreft_compat's
    independent evaluation of that formula), orthonormal through training, and reloaded exactly (B is saved)."""
    from safetensors.torch import load_file, save_file

    from reft.pyreft_compat import orthogonal_parametrization_weight

    torch.manual_seed(0)
    m = INTERVENTIONS[kind](D, R, rotation="householder")
    _train(m, 50, torch.optim.Adam(m.parameters(), lr=5e-2))
    assert _ortho_error(m) <= 1e-5
    state = m.state_dict()
    x, b = state["rotate.basis.parametrizations.weight.original"], state["rotate.basis.parametrizations.weight.0.base"]
    assert b.shape == (D, D) and float((x + torch.eye(D, R)).abs().max()) > 1e-2  # X moved away from −I
    torch.testing.assert_close(m.rotate().detach(), orthogonal_parametrization_weight(x, b).float(),
                               atol=1e-5, rtol=0)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    m2 = INTERVENTIONS[kind](D, R, rotation="householder")
    m2.load_state_dict(load_file(tmp_path / "w.safetensors"))
    torch.testing.assert_close(m2.rotate(), m.rotate(), atol=0, rtol=0)


def test_householder_and_qr_hold_the_same_map_and_part_ways_under_adam():
    """Same R₀ → the same Φ (up to rounding); the coordinates differ, so Adam's trajectories differ after a
    few steps (why pyreft parity needs rotation="householder")."""
    torch.manual_seed(0)
    qr, hh = LoReFT(D, R), LoReFT(D, R, rotation="householder")
    with torch.no_grad():
        hh.rotate.basis.weight = qr.rotate()  # assigning R sets B and X (torch's right_inverse)
        hh.source.load_state_dict(qr.source.state_dict())
    h = torch.randn(5, D)
    torch.testing.assert_close(hh(h), qr(h), atol=1e-5, rtol=0)
    _train(qr, 20, torch.optim.Adam(qr.parameters(), lr=5e-2))
    _train(hh, 20, torch.optim.Adam(hh.parameters(), lr=5e-2))
    assert float((hh.rotate() - qr.rotate()).abs().max()) > 1e-3


def test_rotation_option_is_refused_where_there_is_no_r():
    with pytest.raises(ValueError, match="rotation='householder' needs an intervention with an orthonormal R"):
        INTERVENTIONS["direft"](D, R, rotation="householder")
    with pytest.raises(ValueError, match="DiReFT has none"):
        ReftConfig(intervention="direft", rotation="householder")
    with pytest.raises(ValueError, match="unknown rotation 'cayley'"):
        ReftConfig(rotation="cayley")
    cfg = ReftConfig(layers=[1], rotation="householder")
    assert ReftConfig.from_json(cfg.to_json()).rotation == "householder"
