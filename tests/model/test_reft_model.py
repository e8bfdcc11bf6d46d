"""The wrapper: where edits land, which hooks exist, losses, training, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DECODERS,
    ENCODERS,
    lm_batch,
    nonzero_init,
    random_batch,
    shared_prefix_batch,
    tiny_bert,
    tiny_llama,
)
from torch import nn

from reft import ReftConfig, get_reft_model
from reft.data import ReftDataCollator
from reft.fast import engine
from reft.model.layers import find_layers


def _hidden(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("arch", sorted(DECODERS) + sorted(ENCODERS))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("tied", [True, False])
def test_only_chosen_positions_and_layers_change(arch, side, tied):
    model = {**DECODERS, **ENCODERS}[arch]()
    base_model = model
    layer = 1
    reft_model = get_reft_model(model, ReftConfig(layers=[layer], positions="f1+l2", tied=tied, rank=4))
    nonzero_init(reft_model)
    pad = model.config.pad_token_id
    ids, mask = random_batch([7, 3, 1], side, pad=pad)
    with reft_model.disable_interventions():
        base = _hidden(base_model, ids, mask)
    with reft_model.editing(mask) as plan:
        edited = _hidden(reft_model.model, ids, mask)  # hooks apply the plan inside the block only
    positions = plan[("default", 0)].positions
    torch.testing.assert_close(_hidden(reft_model.model, ids, mask)[layer + 1], base[layer + 1], rtol=0, atol=0)
    # layers below the intervened one are untouched everywhere
    for i in range(layer + 1):
        torch.testing.assert_close(edited[i], base[i], rtol=0, atol=0)
    # the intervened layer's output changes exactly at the chosen positions
    changed = (edited[layer + 1] - base[layer + 1]).abs().amax(-1) > 0
    expect = torch.zeros_like(changed)
    for row, pos in enumerate(positions.tolist()):
        for p in pos:
            if p >= 0:
                expect[row, p] = True
    assert torch.equal(changed, expect), (changed, positions)
    # a causal model's positions before the first edit are identical in every later layer too
    if arch in DECODERS:
        first = torch.where(positions >= 0, positions, 10**6).amin(1)
        for h_e, h_b in zip(edited[layer + 2: -1], base[layer + 2: -1]):
            for row in range(ids.shape[0]):
                torch.testing.assert_close(h_e[row, : first[row]], h_b[row, : first[row]], rtol=0, atol=0)


@pytest.mark.parametrize("component", ["block_input", "attention_output", "mlp_output"])
@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_components(arch, component):
    model = DECODERS[arch]()
    reft_model = get_reft_model(model, ReftConfig(layers=[1], component=component, positions="l1", rank=2))
    nonzero_init(reft_model)
    ids, mask = random_batch([5, 5])
    with reft_model.disable_interventions():
        base = reft_model(ids, attention_mask=mask).logits
    out = reft_model(ids, attention_mask=mask).logits
    assert torch.equal(out[:, :4], base[:, :4]) and not torch.equal(out[:, 4], base[:, 4])


def test_encoder_without_mlp_module_is_a_clear_error():
    with pytest.raises(ValueError, match="no mlp sub-module"):
        get_reft_model(tiny_bert(), ReftConfig(layers=[0], component="mlp_output"))


def test_unknown_architecture_and_layers_path():
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 8, "num_hidden_layers": 2})()
            self.stack_a = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
            self.stack_b = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

        def forward(self, x):
            for m in self.stack_a:
                x = m(x)
            return x

    model = Blocks()
    with pytest.raises(ValueError, match="cannot find the 2 transformer blocks of Blocks.*layers_path"):
        get_reft_model(model, ReftConfig(layers=[0]))
    reft_model = get_reft_model(model, ReftConfig(layers=[0], layers_path="stack_a"))
    assert find_layers(model, "stack_a") is model.stack_a and len(reft_model.interventions) == 1


def test_layer_out_of_range():
    with pytest.raises(ValueError, match="layer index 9 is out of range: the model has 4 layers"):
        get_reft_model(tiny_llama(), ReftConfig(layers="1;9"))
    assert get_reft_model(tiny_llama(), ReftConfig(layers="all")).reft_config.layers == [0, 1, 2, 3]
    assert get_reft_model(tiny_llama(), ReftConfig(layers=[-1])).reft_config.layers == [3]


def test_rank_above_hidden_size():
    with pytest.raises(ValueError, match="rank 33 > hidden size 32"):
        get_reft_model(tiny_llama(), ReftConfig(layers=[0], rank=33))


def test_base_frozen_hooks_owned_and_unload():
    model = tiny_llama()
    calls = []
    other = model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    reft_model = get_reft_model(model, ReftConfig(layers=[1, 2], positions="f1+l1", rank=2))
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in reft_model.intervention_parameters())
    ids, mask = random_batch([4])
    reft_model(ids, attention_mask=mask)
    reft_model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert calls  # someone else's hook survives our forward and generate
    base = reft_model.unload()
    assert base is model and not model.model.layers[2]._forward_hooks
    assert len(model.model.layers[1]._forward_hooks) == 1
    other.remove()


def test_train_eval_reach_interventions():
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1], rank=2, dropout=0.5))
    reft_model.eval()
    assert not any(m.training for m in reft_model.interventions.modules())
    reft_model.train()
    assert all(m.training for m in reft_model.interventions.modules())


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_sparse_loss_equals_full_logits_loss(arch):
    reft_model = get_reft_model(DECODERS[arch](), ReftConfig(layers=[1], positions="f1+l1", rank=2))
    nonzero_init(reft_model)
    batch = lm_batch()
    fast = reft_model(**batch)
    assert fast.logits is None  # vocabulary logits only at label positions
    with reft_model.editing(batch["attention_mask"], batch["prompt_lengths"]):
        full = reft_model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"])
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)
    n = int((batch["labels"][:, 1:] != -100).sum())
    half = reft_model(**batch, num_items_in_batch=2 * n)
    torch.testing.assert_close(half.loss, fast.loss / 2)


def test_memorisation_drives_loss_near_zero():
    model = tiny_llama(layers=4, hidden=64, init=0.2)
    reft_model = get_reft_model(model, ReftConfig(layers="all", positions="f3+l3", tied=False, rank=16))
    batch = lm_batch()
    opt = torch.optim.AdamW(reft_model.intervention_parameters(), lr=2e-2)
    first = None
    for _ in range(120):
        loss = reft_model(**batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.05


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_checkpointing_same_gradients(arch):
    grads = []
    for checkpointing in (False, True):
        model = DECODERS[arch]()
        reft_model = get_reft_model(model, ReftConfig(layers=[0, 2], positions="f2+l2", tied=False, rank=2))
        nonzero_init(reft_model)
        if checkpointing:
            reft_model.gradient_checkpointing_enable()
            base = reft_model.model
            assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
        reft_model.train()
        reft_model(**lm_batch()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in reft_model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def _prompt_is_prefix_batch():
    """Row 0's prompt + first response token equal row 1's prompt: the shared prefix would swallow row 0's first
    predicting position unless it stops before it."""
    ids = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 11, 12, 13]]
    data = [{"input_ids": ids[0], "labels": [-100] * 3 + ids[0][3:], "prompt_lengths": 3},
            {"input_ids": ids[1], "labels": [-100] * 4 + ids[1][4:], "prompt_lengths": 4}]
    return ReftDataCollator(pad_token_id=0)(data)


@pytest.mark.parametrize("arch", sorted(DECODERS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("positions,batch_kind,expect_offset,prefix_row", [
    ("l1", "random", 8, False),         # frozen prefix: first edit at the shortest prompt's last token (9 - 1)
    ("l3", "random", 6, False),
    ("f2+l2", "shared", 8, True),       # shared prefix of 8 tokens, edited at 0 and 1 in every row: computed once
    ("l2", "shared", 8, False),         # shared and frozen
    ("f3+l3", "short", 3, True),        # one row is edited at 3, inside the 4-token shared prefix: sharing stops at 3
    ("f2+l2", "long_prefix", 11, True),  # prefix longer than every rest; stops at 11, where a row is edited
    ("f1", "prompt_is_prefix", 2, True),  # row 0 predicts from position 2: sharing stops there
])
def test_chunked_loss_is_exact(arch, attn, positions, batch_kind, expect_offset, prefix_row, monkeypatch):
    """Chunking the sequence (shared prefix once, frozen part without autograd) changes no loss or gradient.

    With SDPA a shared prefix that holds edits runs as an extra row of the same forward (``prefix_row``); with eager
    attention it runs first and its KV cache is repeated.
    """
    results = []
    calls = []
    seen = []  # (rows, tokens) of every forward the base model's embedding sees
    original = engine._prefix_row_hidden
    monkeypatch.setattr(engine, "_prefix_row_hidden", lambda *a: calls.append(1) or original(*a))
    for chunked in (False, True):
        model = DECODERS[arch]()
        model.config._attn_implementation = attn
        reft_model = get_reft_model(model, ReftConfig(layers=[0, 2], positions=positions, rank=2, tied=False))
        nonzero_init(reft_model)
        reft_model.split_frozen_prefix = chunked
        embed = model.get_input_embeddings()
        embed.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
        if batch_kind == "random":
            batch = lm_batch(prompt=9)  # prompts of 9 and 10 tokens
        elif batch_kind == "shared":
            batch = shared_prefix_batch(8)
        elif batch_kind == "long_prefix":
            batch = shared_prefix_batch(12, prompts=(3, 5, 1), response=3)
        elif batch_kind == "prompt_is_prefix":
            batch = _prompt_is_prefix_batch()
        else:
            batch = shared_prefix_batch(4, prompts=(6, 2, 9))
        seen.clear()
        out = reft_model(**batch)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in reft_model.intervention_parameters()]))
        if chunked and calls:  # the prefix-row forward is packed: one row of the real tokens, no padding
            real = expect_offset + int(batch["attention_mask"][:, expect_offset:].sum())
            assert seen == [(1, real)]
        if chunked:
            plan = reft_model._plan(batch["attention_mask"], batch["prompt_lengths"], None)
            with torch.no_grad():
                _, offset = engine.decoder_hidden(model.base_model, reft_model._ctx, plan, batch["input_ids"],
                                                  batch["attention_mask"], batch["labels"],
                                                  cache_key=reft_model.cache_key)
            assert offset == expect_offset
            assert bool(calls) == (prefix_row and attn == "sdpa")
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
