"""Generation: interventions on the prompt during prefill only; batched = batch-1 under greedy decoding."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, random_batch
from torch import nn

from reft import ReftConfig, get_reft_model
from reft.model.layers import cache_name as _cache_name


def _reft(arch, positions="f2+l2", tied=False):
    reft_model = get_reft_model(DECODERS[arch](), ReftConfig(layers="0;2", positions=positions, tied=tied, rank=4))
    torch.manual_seed(3)
    for p in reft_model.intervention_parameters():
        nn.init.normal_(p, std=2.0)  # strong edits, so a wrong position would change the text
    return reft_model.eval()


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_batched_greedy_equals_batch_one(arch):
    reft_model = _reft(arch)
    lengths = [9, 4, 1, 6]
    ids, mask = random_batch(lengths, "left", seed=5)
    out = reft_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for row, n in enumerate(lengths):
        single = ids[row:row + 1, -n:]
        alone = reft_model.generate(single, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert out[row, -8:].tolist() == alone[0, -8:].tolist(), (row, out[row], alone)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_matches_manual_prefill_and_decode(arch):
    """Greedy tokens = argmax of: prompt forward with interventions, then plain forwards without them."""
    reft_model = _reft(arch, positions="f1+l1")
    ids, mask = random_batch([6], seed=2)
    gen = reft_model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    seq = ids.clone()
    out = reft_model(seq, attention_mask=torch.ones_like(seq), use_cache=True)
    key = _cache_name(reft_model.model)  # `cache` from transformers 5.24 on, `past_key_values` before
    cache, tokens = getattr(out, key), []
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(4):
        tokens.append(int(nxt))
        with reft_model.disable_interventions():
            step = reft_model.model(nxt, use_cache=True, **{key: cache})
        cache = getattr(step, key)
        nxt = step.logits[:, -1].argmax(-1, keepdim=True)
    assert gen[0, 6:].tolist() == tokens
    with reft_model.disable_interventions():
        bare = reft_model.model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert bare[0, 6:].tolist() != tokens  # the interventions matter for this prompt


def test_no_cache_gives_the_same_tokens():
    reft_model = _reft("llama")
    ids, mask = random_batch([7, 3], "left", seed=4)
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    a = reft_model.generate(ids, attention_mask=mask, use_cache=True, **kw)
    b = reft_model.generate(ids, attention_mask=mask, use_cache=False, **kw)
    assert torch.equal(a, b)


def test_beam_search_and_sampling():
    reft_model = _reft("llama")
    ids, mask = random_batch([7, 3], "left", seed=4)
    beams = reft_model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=3, num_return_sequences=2,
                                do_sample=False, pad_token_id=0)
    assert beams.shape == (4, 12)
    # a beam search with one beam is greedy search
    one = reft_model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=1, do_sample=False,
                              pad_token_id=0)
    greedy = reft_model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(one, greedy)
    torch.manual_seed(0)
    s1 = reft_model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=5, pad_token_id=0)
    torch.manual_seed(0)
    s2 = reft_model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=5, pad_token_id=0)
    assert torch.equal(s1, s2) and s1.shape == (2, 12)
    assert reft_model._ctx.plan is None  # nothing left armed after generate


def test_beam_rows_get_their_own_positions():
    """num_beams repeats rows: each expanded row must be edited at its own prompt's positions."""
    reft_model = _reft("llama")
    ids, mask = random_batch([7, 2], "left", seed=4)
    seen = []
    hook = reft_model.model.model.layers[0].register_forward_hook(
        lambda *a: seen.append(None if reft_model._ctx.plan is None
                               else reft_model._ctx.plan[("default", 0)].positions.clone()))
    reft_model.generate(ids, attention_mask=mask, max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)
    hook.remove()
    assert seen[0].shape[0] == 4 and all(s is None for s in seen[1:])
    assert torch.equal(seen[0][0], seen[0][1]) and torch.equal(seen[0][2], seen[0][3])
    assert seen[0][2].tolist() == [5, -1, 6, -1]  # a 2-token prompt at 5, 6: one prefix, one suffix slot
