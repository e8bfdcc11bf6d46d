"""reft.import_pyreft on a pyreft config with mixed representations (types, components, ranks) → one spec each."""

from __future__ import annotations

import json

import torch
from conftest import tiny_llama

from reft import ReftModel, import_pyreft

D = 32


def _orthonormal(r: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D, r, generator=torch.Generator().manual_seed(seed)))
    return q


def _linear(r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, D, generator=g) * 0.3, torch.randn(r, generator=g)


def test_mixed_representations_become_one_spec_each(tmp_path):
    # pyvene 0.1.8's layout: LoReFT rank 2 on block outputs of layers 1, 3; NoDiReFT rank 3 on layer 2's MLP output
    reps = [(1, "block_output", 2, "LoreftIntervention"), (3, "block_output", 2, "LoreftIntervention"),
            (2, "mlp_output", 3, "NodireftIntervention")]
    keys = [f"layer_{layer}_comp_{comp}_unit_pos_nunit_1#0" for layer, comp, _, _ in reps]
    src = tmp_path / "pyreft"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "representations": [[layer, comp, "pos", 1, rank] + [None] * 9 for layer, comp, rank, _ in reps],
        "intervention_types": [f"<class 'pyreft.interventions.{kind}'>" for *_, kind in reps],
        "sorted_keys": keys}))
    expected = {}
    for i, ((layer, _, rank, kind), key) in enumerate(zip(reps, keys)):
        w, b = _linear(rank, i)
        if kind == "LoreftIntervention":
            r = _orthonormal(rank, 10 + i)
            torch.save({"rotate_layer": r, "weight": w, "bias": b}, src / f"intkey_{key}.bin")
            expected[f"r0_layer{layer}"] = lambda h, r=r, w=w, b=b: h + (h @ w.T + b - h @ r) @ r.T
        else:
            p = torch.randn(rank, D, generator=torch.Generator().manual_seed(20 + i))
            torch.save({"proj_layer.weight": p, "proj_layer.bias": torch.zeros(rank), "learned_source.weight": w,
                        "learned_source.bias": b}, src / f"intkey_{key}.bin")
            expected[f"r1_layer{layer}"] = lambda h, p=p, w=w, b=b: h + (h @ w.T + b) @ p
    config = import_pyreft(src, tmp_path / "reft", tiny_llama(), positions="f1+l1")
    assert [(s.intervention, s.component, s.rank, s.layers) for s in config.specs] == [
        ("loreft", "block_output", 2, [1, 3]), ("direft", "mlp_output", 3, [2])]
    model = ReftModel.from_pretrained(tiny_llama(), tmp_path / "reft")
    h = torch.randn(5, D, generator=torch.Generator().manual_seed(9))
    assert sorted(model.interventions) == sorted(expected)
    for key, formula in expected.items():
        torch.testing.assert_close(model.interventions[key](h), formula(h), atol=1e-5, rtol=1e-5)
