"""The prefix cache: an unedited prefix shared by every row runs once across batches, and changes nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, lm_batch, nonzero_init, shared_prefix_batch, tiny_gpt2, tiny_llama

from reft import ReftConfig, get_reft_model
from reft.data import ReftDataCollator

pytestmark = pytest.mark.exact


def _batches(prefix: int = 8, seed: int = 3) -> list[dict]:
    """Three batches of other rows after the same ``prefix`` tokens (a system prompt)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 64, (prefix,), generator=g).tolist()
    out = []
    for prompts in ((6, 2, 9), (4, 7), (3, 3, 5, 8)):
        rows = []
        for n in prompts:
            p = head + torch.randint(3, 64, (n,), generator=g).tolist()
            r = torch.randint(3, 64, (4,), generator=g).tolist()
            rows.append({"input_ids": p + r, "labels": [-100] * len(p) + r, "prompt_lengths": len(p)})
        out.append(ReftDataCollator(pad_token_id=0)(rows))
    return out


def _run(reft_model, batches) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    results = []
    for batch in batches:
        for p in reft_model.intervention_parameters():
            p.grad = None
        loss = reft_model(**batch).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in reft_model.intervention_parameters()]))
    return results


def _prefix_forwards(model) -> list[int]:
    """A counter of single-row forwards (the prefix chunk) the base model's embedding sees."""
    calls = [0]
    model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: calls.__setitem__(0, calls[0] + (args[0].shape[0] == 1)))
    return calls


def _model(arch: str, frozen: bool, prefix: bool, attn: str = "sdpa"):
    model = DECODERS[arch]()
    model.config._attn_implementation = attn
    reft_model = get_reft_model(model, ReftConfig(layers=[1, 2], positions="l2", rank=2, tied=False))
    nonzero_init(reft_model)
    if not frozen:
        reft_model.frozen_cache = None
    if not prefix:
        reft_model.prefix_cache = None
    return model, reft_model


@pytest.mark.parametrize("arch", sorted(DECODERS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("frozen", [False, True], ids=["no_frozen_cache", "frozen_cache"])
def test_later_batches_skip_the_prefix_and_get_the_same_loss_and_gradients(arch, attn, frozen):
    """Batch 1 computes the prefix; batches 2-3 (other rows, same prefix) and every batch of a second epoch (frozen
    blocks replayed) reuse it. The prefix chunk is the same computation in the same shapes: losses and gradients
    are bitwise those of the model without the prefix cache."""
    batches = _batches()
    _, plain = _model(arch, frozen, prefix=False, attn=attn)
    expected = _run(plain, batches) + _run(plain, batches[::-1])
    model, cached = _model(arch, frozen, prefix=True, attn=attn)
    calls = _prefix_forwards(model)
    got = _run(cached, batches)
    assert calls[0] == 1, "the prefix ran again although it was stored"
    # epoch 2, last batch first: with the frozen cache every batch replays blocks ≤ 1, the prefix from the h_1 that
    # batch 3 stored (given it by the prefix cache in epoch 1)
    got += _run(cached, batches[::-1])
    assert calls[0] == 1 + frozen  # a replayed prefix is kept apart from a computed one: once more
    assert cached.prefix_cache.hits == 6 - 1 - frozen
    if frozen:
        assert cached.frozen_cache.replays == 3
    for (loss, grads), (want_loss, want_grads) in zip(got, expected):
        assert torch.equal(loss, want_loss)
        for a, b in zip(grads, want_grads):
            assert torch.equal(a, b)


def test_an_edited_prefix_is_not_reused():
    """Edits inside the shared prefix (f2) depend on the trained parameters: every batch computes its prefix."""
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1], positions="f2+l2", rank=2))
    reft_model.config._attn_implementation = "eager"  # the prefix chunk (not the prefix row of SDPA)
    calls = _prefix_forwards(reft_model.model)
    _run(reft_model, _batches())
    assert calls[0] == 3 and len(reft_model.prefix_cache) == 0


def test_weights_changed_in_place_are_not_served_stale():
    """After an in-place change of a base weight the prefix is computed again, and the loss is the new model's."""
    model, reft_model = _model("llama", frozen=False, prefix=True)
    batch = shared_prefix_batch(8)
    reft_model(**batch)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    calls = _prefix_forwards(model)
    loss = reft_model(**batch).loss
    assert calls[0] == 1
    reft_model.prefix_cache = None
    assert torch.equal(loss, reft_model(**batch).loss)


@pytest.mark.parametrize("case", ["dropout", "unfrozen_base", "no_shared_prefix"])
def test_prefix_cache_stays_unused_where_it_would_not_be_exact(case):
    model = tiny_gpt2() if case == "dropout" else tiny_llama()
    reft_model = get_reft_model(model, ReftConfig(layers=[1], positions="l1", rank=2),
                                freeze_base=case != "unfrozen_base")
    batch = lm_batch() if case == "no_shared_prefix" else shared_prefix_batch(8)
    if case == "dropout":  # GPT-2's dropout (0.1) is random in training mode
        reft_model.train()
    context = torch.no_grad() if case == "unfrozen_base" else torch.enable_grad()
    with context:
        reft_model(**batch)
    assert len(reft_model.prefix_cache) == 0


def test_prefix_cache_bounds():
    _, reft_model = _model("llama", frozen=False, prefix=True)
    cache = reft_model.prefix_cache
    cache.max_entries = 2
    for seed in range(3):  # three distinct prefixes: the oldest goes
        reft_model(**_batches(seed=seed)[0])
    assert len(cache) == 2
    cache.max_bytes = 100  # smaller than one entry (4 layers × K, V × 8 tokens × 32 floats): nothing is kept
    cache.clear()
    reft_model(**_batches(seed=5)[0])
    assert len(cache) == 0
