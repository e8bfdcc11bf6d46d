"""The vLLM plugin's per-step logic without vLLM (reft.integrations.vllm): which stream rows a step edits, and the
edit itself on vLLM's ``(hidden_states, residual)`` layer output. The engine tests are in tests/vllm_plugin."""

from __future__ import annotations

import pytest
import torch
from reliability._reliability_common import one_thread, tiny_causal_lm  # noqa: F401  (one_thread: autouse)

from reft import LoReFT, ReftConfig, get_reft_model, prompt_positions
from reft.integrations.vllm import (
    ENV,
    ReftAdapters,
    _salted,
    adapter_dirs,
    check_request,
    edit_layer_output,
    edit_output,
    model_as_adapter,
)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    model, _ = tiny_causal_lm()
    path = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    get_reft_model(model, ReftConfig(layers="1;2", positions="f3+l2", tied=False, rank=2)).save_pretrained(path)
    return path


@pytest.mark.parametrize("chunk", [1, 4, 11, 16])
@pytest.mark.parametrize("n", [1, 4, 11])
def test_each_prompt_position_is_edited_once_whatever_the_chunking(adapter_dir, chunk, n):
    """Prefill in chunks of ``chunk`` tokens (then decode steps), behind a bare request holding rows 0–4: every
    (intervention, position) of the adapter for a prompt of n tokens is edited exactly once, at the row of that
    position in its step, and decode steps edit nothing."""
    adapters = ReftAdapters({"a": str(adapter_dir)}, 32, 4)
    seen: dict[int, list[tuple[int, int]]] = {}
    computed = 0
    while computed < n + 3:
        k = min(chunk, n - computed) if computed < n else 1
        plan = adapters.plan([(None, 5, 0, 0, 5), ("a", n, computed, 5, k)])
        if computed >= n:
            assert plan == {}
        for layer, items in plan.items():
            for intervention, rows, weight in items:
                assert weight == 1.0
                assert bool(((rows >= 5) & (rows < 5 + k)).all())
                seen.setdefault(layer, []).extend((id(intervention), int(r) - 5 + computed) for r in rows)
        computed += k
    model = adapters.adapters["a"].adapter
    positions = prompt_positions(torch.ones(1, n, dtype=torch.long), None, "f3+l2")[0]
    for layer in (1, 2):
        key = (layer, "block_output")
        want = [(id(model.interventions[f"layer{layer}_first"]), int(p)) for p in positions[:3] if p >= 0]
        want += [(id(model.interventions[f"layer{layer}_last"]), int(p)) for p in positions[3:] if p >= 0]
        assert sorted(seen.get(key, [])) == sorted(want)


def test_the_edit_is_phi_of_the_block_output_summed_where_positions_meet():
    """vLLM's layer output is ``(hidden_states, residual)`` with block output h = their sum: after the edit the sum is
    h + δ₁(h) (+ w·δ₂(h) on a row both edit), the residual and unlisted rows untouched."""
    torch.manual_seed(0)
    hidden, residual = torch.randn(6, 16), torch.randn(6, 16)
    one, two = LoReFT(16, 2), LoReFT(16, 3)
    for p in [*one.parameters(), *two.parameters()]:
        torch.nn.init.normal_(p, std=0.5)
    out, res = edit_layer_output((hidden.clone(), residual.clone()),
                                 [(one, torch.tensor([1, 3]), 1.0), (two, torch.tensor([3]), -0.5)])
    h = hidden + residual
    want = h.clone()
    want[1] += one.delta(h[1])
    want[3] += one.delta(h[3]) - 0.5 * two.delta(h[3])
    torch.testing.assert_close(out + res, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(res, residual)
    assert torch.equal(out[[0, 2, 4, 5]], hidden[[0, 2, 4, 5]])
    torch.testing.assert_close(one(h[1]), (out + res)[1], rtol=1e-6, atol=1e-6)  # Φ(h) = h + δ(h)


def test_requests_are_checked_and_salted_by_adapter(monkeypatch, adapter_dir):
    class Params:
        def __init__(self, extra):
            self.extra_args = extra

    monkeypatch.setenv(ENV, f"a={adapter_dir}, b={adapter_dir}")
    assert adapter_dirs() == {"a": str(adapter_dir), "b": str(adapter_dir)}
    check_request(Params({"reft_adapter": "a"}))
    check_request(Params(None))
    with pytest.raises(ValueError, match=r"unknown reft adapter 'zzz': this server has \['a', 'b'\]"):
        check_request(Params({"reft_adapter": "zzz"}))
    assert _salted(None, Params({"reft_adapter": "a"})) == "reft:a"
    assert _salted("user", Params({"reft_adapter": "b"})) == "reft:b|user"
    assert _salted("user", Params(None)) == "user" and _salted(None, None) is None
    check_request(Params({"reft_adapter": "0.5*a-b"}))
    assert _salted(None, Params({"reft_adapter": "b + 0.50*a"})) == "reft:0.5*a+b"  # one salt per composition
    assert _salted("user", Params({"reft_adapter": "a-a"})) == "user"  # = the bare model
    with pytest.raises(ValueError, match=r"unknown reft adapter 'zzz'"):
        check_request(Params({"reft_adapter": "a+zzz"}))
    with pytest.raises(ValueError, match=r"cannot parse adapter composition 'a\+\+b'"):
        check_request(Params({"reft_adapter": "a++b"}))
    with pytest.raises(ValueError, match="reft_adapter must be an adapter name or a composition"):
        check_request(Params({"reft_adapter": 3}))
    monkeypatch.setenv(ENV, "a")
    with pytest.raises(ValueError, match="write name=DIR"):
        adapter_dirs()


def test_an_adapter_of_another_model_is_refused_and_every_component_is_planned_at_its_own_site(tmp_path, adapter_dir):
    with pytest.raises(ValueError, match="hidden size 32 and 4 layers; vLLM serves 64 and 4"):
        ReftAdapters({"a": str(adapter_dir)}, 64, 4)
    model, _ = tiny_causal_lm()
    get_reft_model(model, ReftConfig(layers="1", positions="l1", component="mlp_output")).save_pretrained(tmp_path)
    adapters = ReftAdapters({"m": str(tmp_path), "a": str(adapter_dir)}, 32, 4)
    assert sorted(adapters.plan([("m+a", 5, 0, 0, 5)])) == [(1, "block_output"), (1, "mlp_output"),
                                                             (2, "block_output")]


def test_a_sub_module_output_is_edited_from_itself():
    torch.manual_seed(1)
    out, one = torch.randn(5, 16), LoReFT(16, 2)
    for p in one.parameters():
        torch.nn.init.normal_(p, std=0.5)
    got = edit_output(out.clone(), [(one, torch.tensor([0, 4]), 2.0)])
    want = out.clone()
    want[[0, 4]] += 2.0 * one.delta(out[[0, 4]])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1:4], out[1:4])


def test_a_composition_plans_each_adapter_at_its_positions_with_its_weight(adapter_dir, tmp_path):
    model, _ = tiny_causal_lm()
    get_reft_model(model, ReftConfig(layers="2", positions="l1", rank=2)).save_pretrained(tmp_path)
    adapters = ReftAdapters({"a": str(adapter_dir), "b": str(tmp_path)}, 32, 4)
    n = 6
    both = adapters.plan([("0.5*a-b", n, 0, 3, n)])
    a, b = adapters.plan([("a", n, 0, 3, n)]), adapters.plan([("b", n, 0, 3, n)])
    one, two = (1, "block_output"), (2, "block_output")
    assert sorted(both) == [one, two]
    key = lambda items: sorted((id(i), r.tolist()) for i, r, _ in items)  # noqa: E731
    assert key(both[one]) == key(a[one]) and key(both[two]) == key(a[two] + b[two])
    weights = {id(i): w for i, _, w in both[two]}
    assert [weights[id(i)] for i, _, _ in a[two]] == [0.5] * len(a[two])
    assert [weights[id(i)] for i, _, _ in b[two]] == [-1.0]
    assert adapters.plan([("a-a", n, 0, 0, n)]) == {}


def test_an_openai_model_naming_adapters_becomes_the_request_adapter(monkeypatch, adapter_dir):
    class Request:
        def __init__(self, model, xargs=None):
            self.model, self.vllm_xargs = model, xargs

    monkeypatch.setenv(ENV, f"a={adapter_dir},b={adapter_dir}")
    is_base = lambda m: m == "base"  # noqa: E731
    for model in ("a", "a+0.5*b"):
        request = Request(model, {"other": 1})
        assert model_as_adapter(request, "base", is_base) is None
        assert (request.model, request.vllm_xargs) == ("base", {"other": 1, "reft_adapter": model})
    request = Request("__base__")
    assert model_as_adapter(request, "base", is_base) is None and (request.model, request.vllm_xargs) == ("base", None)
    request = Request("base", {"reft_adapter": "b"})
    assert model_as_adapter(request, "base", is_base) is None and request.vllm_xargs == {"reft_adapter": "b"}
    assert "no reft adapter 'zzz' is served (adapters: ['a', 'b']" in model_as_adapter(Request("a+zzz"), "base",
                                                                                      is_base)
    assert "name the base model 'base', a reft adapter of ['a', 'b']" in model_as_adapter(Request("gpt-4o"), "base",
                                                                                        is_base)
    assert "give one of them" in model_as_adapter(Request("a", {"reft_adapter": "b"}), "base", is_base)
