"""Mixed-adapter batches and compositions: each row is what its own adapter (or sum of adapters) gives alone."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

from reft import ReftConfig, get_reft_model, prompt_positions
from reft.model.layers import find_layers

pytestmark = pytest.mark.exact

ADAPTERS = {
    "a": ReftConfig(layers="0;2", positions="f2+l2", tied=False, rank=4),
    "b": ReftConfig(layers=[1], positions="l1", rank=2, intervention="direft"),
    "c": ReftConfig(layers="1;2", positions="f1+l3", rank=3, intervention="consreft", component="mlp_output"),
}
MIXED = ["a", "b", None, "c", "a+c", "__base__", "-b", "0.5*a+b"]
LENGTHS = [9, 4, 6, 1, 7, 5, 8, 3]
BUILD = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": lambda: tiny_bert(layers=3)}


def _strong(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=1.5)  # strong edits: a wrong row or position changes the greedy text


def _model(arch: str, adapters=ADAPTERS):
    reft_model = get_reft_model(BUILD[arch](), None)
    for seed, (name, cfg) in enumerate(adapters.items()):
        if arch == "bert" and cfg.component == "mlp_output":
            cfg = ReftConfig(**(cfg.to_dict() | {"component": "block_output", "num_layers": None}))
        reft_model.add_adapter(name, cfg)
        _strong(reft_model.adapters[name], seed)
    return reft_model.eval()


def _alone(reft_model, entry, fn):
    """``fn`` with every row of the batch on ``entry`` (the same shapes as the mixed call)."""
    if entry in (None, "__base__"):
        with reft_model.disable_adapter():
            return fn(None)
    return fn([entry] * len(LENGTHS))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_generate_rows_equal_single_adapter_generate(arch):
    reft_model = _model(arch)
    ids, mask = random_batch(LENGTHS, "left", seed=7)

    def gen(names):
        return reft_model.generate(ids, attention_mask=mask, adapter_names=names, max_new_tokens=6, do_sample=False,
                                   pad_token_id=0)

    mixed = gen(MIXED)
    outs = {}
    for row, entry in enumerate(MIXED):
        outs.setdefault(entry, _alone(reft_model, entry, gen))
        assert mixed[row].tolist() == outs[entry][row].tolist(), (row, entry)
    assert len({tuple(o[0, -6:].tolist()) for o in outs.values()}) > 1  # the adapters do differ
    bare = BUILD[arch]().generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)
    for row, entry in enumerate(MIXED):
        if entry in (None, "__base__"):
            assert mixed[row].tolist() == bare[row].tolist()
    # and each row as a batch of one (other shapes: token for token under greedy)
    for row, n in enumerate(LENGTHS):
        one = reft_model.generate(ids[row:row + 1, -n:], adapter_names=[MIXED[row]], max_new_tokens=6,
                                  do_sample=False, pad_token_id=0)
        assert one[0, -6:].tolist() == mixed[row, -6:].tolist(), row


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_forward_rows_equal_single_adapter_forward(arch, side):
    reft_model = _model(arch)
    ids, mask = random_batch(LENGTHS, side, seed=3)

    def run(names):
        out = reft_model(ids, attention_mask=mask, adapter_names=names)
        return out.logits if arch != "bert" else out.last_hidden_state

    mixed = run(MIXED)
    for row, entry in enumerate(MIXED):
        alone = _alone(reft_model, entry, run)
        # other rows' edits do not reach this row; the adapter's δ ran on a sub-batch of rows: equal up to rounding
        torch.testing.assert_close(mixed[row][mask[row].bool()], alone[row][mask[row].bool()], rtol=1e-5, atol=1e-5)


def _sequential(model, ids, mask, steps):
    """Reference: plain hooks applying each step's ``h ← h + w·δ(h)`` one after the other, row by row."""
    handles = []
    for module, positions, phi, weight in steps:
        def hook(mod, args, out, positions=positions, phi=phi, weight=weight):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            for b, row in enumerate(positions.tolist()):
                for p in row:
                    if p >= 0:
                        h[b, p] = h[b, p] + weight * phi.delta(h[b, p])
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handles.append(module.register_forward_hook(hook))
    try:
        return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for handle in handles:
            handle.remove()


def _orthogonal(reft_model, names):
    """Give the adapters' R mutually orthogonal column spaces (columns of one random orthogonal matrix)."""
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    at = 0
    for name in names:
        for module in reft_model.adapters[name].interventions.values():
            r = module.rotate.weight.shape[1]
            with torch.no_grad():
                module.rotate.weight.copy_(q[:, at:at + r])
            at += r


CASES = {  # name: (config a, config b, equal to the sequence?)
    "disjoint_layers": (dict(layers=[0], positions="f2+l2"), dict(layers=[2], positions="f2+l2"), True),
    "disjoint_positions": (dict(layers=[1], positions="f2"), dict(layers=[1], positions="l2"), True),
    "orthogonal_consreft": (dict(layers=[1], positions="f2+l2", intervention="consreft"),
                            dict(layers=[1], positions="f2+l2", intervention="consreft"), True),
    "orthogonal_lobireft": (dict(layers=[1], positions="f2+l2", intervention="lobireft"),
                            dict(layers=[1], positions="f2+l2", intervention="lobireft"), True),
    "loreft_same_positions": (dict(layers=[1], positions="f2+l2"), dict(layers=[1], positions="f2+l2"), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, -1.0)])
def test_composition_equals_the_sequence_where_the_math_says_so(case, weights):
    a, b, exact = CASES[case]
    reft_model = _model("llama", {"a": ReftConfig(rank=2, **a), "b": ReftConfig(rank=2, **b)})
    if case.startswith("orthogonal"):
        _orthogonal(reft_model, ["a", "b"])
    ids, mask = random_batch([9, 6, 5], "left", seed=11)
    blocks = find_layers(reft_model.model)
    steps = []
    for name, w in zip("ab", weights):
        cfg = reft_model.reft_configs[name]
        for i in cfg.layers:
            steps.append((blocks[i], prompt_positions(mask, None, cfg.positions), reft_model.adapters[name]
                          .interventions[f"layer{i}"], w))
    with torch.no_grad():
        expected = _sequential(reft_model.model, ids, mask, steps)
        names = [[("a", weights[0]), ("b", weights[1])]] * 3
        got = reft_model(ids, attention_mask=mask, adapter_names=names).logits
        string = {(1.0, 1.0): "a+b", (0.5, -1.0): "0.5*a-b"}[weights]
        assert torch.equal(reft_model(ids, attention_mask=mask, adapter_names=[string] * 3).logits, got)
    if exact:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:  # the control: LoReFT's W h reads the other's edit, so the sum is not the sequence
        assert not torch.allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_weight_zero_is_absent_and_negation_subtracts():
    reft_model = _model("llama")
    ids, mask = random_batch([7, 4], "left", seed=2)
    run = lambda names: reft_model(ids, attention_mask=mask, adapter_names=names).logits  # noqa: E731
    assert torch.equal(run([[("a", 1.0), ("b", 0.0)]] * 2), run(["a", "a"]))
    assert torch.equal(run(["a+b-b"] * 2), run(["a", "a"]))
    with reft_model.disable_adapter():
        bare = reft_model(ids, attention_mask=mask).logits
    torch.testing.assert_close(run([[("b", 0.0)]] * 2), bare, rtol=0, atol=0)
    # −b at a single position: exactly h − δ_b(h) there
    blocks = find_layers(reft_model.model)
    phi = reft_model.adapters["b"].interventions["layer1"]
    with torch.no_grad():
        expected = _sequential(reft_model.model, ids, mask, [(blocks[1], prompt_positions(mask, None, "l1"), phi, -1)])
        torch.testing.assert_close(run(["-b"] * 2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text", ["a", "-a", "0.5*style+topic-toxic", "0.1*a-2*b", "0.00001*a+b", "3*a+0.333*c"])
def test_a_composition_prints_as_text_that_parses_back_to_it(text):
    from reft.model.compose import format_composition, parse_composition

    parsed = parse_composition(text)
    assert parse_composition(format_composition(parsed)) == parsed
    assert format_composition(parsed) == format_composition(parse_composition(format_composition(parsed)))
    assert format_composition(()) == "__base__"
    g = torch.Generator().manual_seed(0)  # any float weight comes back bit for bit
    for w in (torch.randn(64, generator=g, dtype=torch.float64) * 10).tolist():
        assert parse_composition(format_composition((("a", w),))) == (("a", w),)


@pytest.mark.parametrize("names, match", [
    (["a", "zzz"], "unknown adapter 'zzz'"),
    (["a"], "one entry per row"),
    ("a", "one entry per row"),
    (["a", "a++b"], "cannot parse adapter composition"),
    (["a", [("a", float("nan"))]], "finite number"),
    (["a", 3], "must be a name"),
])
def test_bad_adapter_names_are_refused_with_the_fix(names, match):
    reft_model = _model("llama")
    ids, mask = random_batch([5, 4], "left")
    with pytest.raises(ValueError, match=match):
        reft_model(ids, attention_mask=mask, adapter_names=names)


def test_classifier_rows_use_their_own_heads():
    cfg = ReftConfig(layers="all", positions="f1", rank=2)
    reft_model = get_reft_model(tiny_bert(), cfg, num_labels=3)
    reft_model.add_adapter("other", cfg)
    _strong(reft_model.adapters["default"], 1)
    _strong(reft_model.adapters["other"], 2)
    reft_model.eval()
    ids, mask = random_batch([6, 4, 5], "right")
    mixed = reft_model(ids, attention_mask=mask, adapter_names=["other", "default", "other"]).logits
    default = reft_model(ids, attention_mask=mask).logits
    reft_model.set_adapter("other")
    other = reft_model(ids, attention_mask=mask).logits
    torch.testing.assert_close(mixed[1], default[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[[0, 2]], other[[0, 2]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one adapter"):
        reft_model(ids, attention_mask=mask, adapter_names=["other", None, "other+default"])
