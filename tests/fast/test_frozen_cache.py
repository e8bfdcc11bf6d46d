"""The frozen-block cache: blocks below the lowest edit run once per example, then their output is reused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DECODERS, lm_batch, nonzero_init, shared_prefix_batch, tiny_gpt2, tiny_llama

from reft import ReftConfig, get_reft_model
from reft.data import ReftDataCollator
from reft.model.layers import find_layers

pytestmark = pytest.mark.exact


BATCHES = {
    "random": lambda: lm_batch(prompt=9),  # rows differ from the first token: no shared prefix
    "shared": lambda: shared_prefix_batch(8),  # an 8-token prefix shared by every row
    "short": lambda: shared_prefix_batch(4, prompts=(6, 2, 9)),
}


def _loss_and_grads(reft_model, batch):
    for p in reft_model.intervention_parameters():
        p.grad = None
    loss = reft_model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in reft_model.intervention_parameters()]


def _count_calls(model, layer: int) -> list[int]:
    """A counter of forward calls of every module inside blocks ``0..layer`` (the blocks themselves excepted)."""
    calls = [0]
    for block in find_layers(model)[: layer + 1]:
        for m in list(block.modules())[1:]:
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("arch", sorted(DECODERS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layers,positions,batch_kind,split", [
    ([1, 2], "l1", "random", True),    # frozen prompt part without autograd (KV-cache chunks), then the rest
    ([0, 2], "f2+l2", "shared", True),  # edits inside the shared prefix: prefix row (SDPA) or prefix chunk (eager)
    ([1], "f3+l3", "short", True),
    ([1, 2], "l2", "shared", True),     # shared prefix chunk, frozen chunk, then the rest
    ([1, 2], "f1+l1", "random", False),  # one plain forward
])
def test_replay_gives_the_same_loss_and_gradients(arch, attn, layers, positions, batch_kind, split):
    """First call stores ``h_L``, second call replays it: both equal a model without the cache, and the replay
    runs nothing inside blocks ``0..L``."""
    batch = BATCHES[batch_kind]()
    results = []
    for use_cache in (False, True):
        model = DECODERS[arch]()
        model.config._attn_implementation = attn
        reft_model = get_reft_model(model, ReftConfig(layers=layers, positions=positions, rank=2, tied=False))
        nonzero_init(reft_model)
        reft_model.split_frozen_prefix = split
        if not use_cache:
            reft_model.frozen_cache = None
            results.append(_loss_and_grads(reft_model, batch))
            continue
        calls = _count_calls(model, min(layers))
        results.append(_loss_and_grads(reft_model, batch))
        assert calls[0] > 0 and len(reft_model.frozen_cache) == batch["input_ids"].shape[0]
        calls[0] = 0
        results.append(_loss_and_grads(reft_model, batch))
        assert calls[0] == 0, "blocks below the lowest edit ran although every row was cached"
    (loss, grads), others = results[0], results[1:]
    for other_loss, other_grads in others:
        torch.testing.assert_close(other_loss, loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(other_grads, grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _examples(n: int) -> list[dict]:
    """Tokenised examples that share a 5-token prefix, prompts of 2 + i tokens after it, 3-token responses."""
    g = torch.Generator().manual_seed(0)
    head = torch.randint(3, 64, (5,), generator=g).tolist()
    examples = []
    for i in range(n):
        p = head + torch.randint(3, 64, (2 + i,), generator=g).tolist()
        r = torch.randint(3, 64, (3,), generator=g).tolist()
        examples.append({"input_ids": p + r, "labels": [-100] * len(p) + r, "prompt_lengths": len(p)})
    return examples


def test_batch_padded_beyond_its_longest_row():
    """Padding to a fixed length (``padding="max_length"``, ``pad_to_multiple_of``): capture and replay still equal
    the model without the cache."""
    batch = {k: F.pad(v, (0, 3), value=-100 if k == "labels" else 0) if v.dim() == 2 else v
             for k, v in lm_batch().items()}
    results = []
    for use_cache in (False, True):
        reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1], positions="l1", rank=2))
        nonzero_init(reft_model)
        if not use_cache:
            reft_model.frozen_cache = None
        for _ in range(1 + use_cache):  # with the cache: capture, then replay
            results.append(_loss_and_grads(reft_model, batch))
    assert reft_model.frozen_cache.replays == 1
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_training_with_the_cache_ends_where_training_without_it_does():
    """Two shuffled epochs (batches regrouped, so shared prefixes and padding differ from epoch 1): same weights."""
    examples = _examples(6)
    collate = ReftDataCollator(pad_token_id=0)
    orders = [[0, 1, 2, 3, 4, 5], [4, 1, 5, 0, 3, 2]]
    final = []
    for use_cache in (False, True):
        reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1, 3], positions="f2+l2", rank=2, tied=False))
        if not use_cache:
            reft_model.frozen_cache = None
        opt = torch.optim.AdamW(reft_model.intervention_parameters(), lr=1e-2)
        for order in orders:
            for k in range(0, 6, 2):
                loss = reft_model(**collate([examples[i] for i in order[k: k + 2]])).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
        final.append([p.detach().clone() for p in reft_model.intervention_parameters()])
        if use_cache:
            assert len(reft_model.frozen_cache) == 6
    for a, b in zip(*final):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _left_padded(batch):
    """The same examples, padded on the left."""
    ids, mask, labels = batch["input_ids"].clone(), batch["attention_mask"].clone(), batch["labels"].clone()
    for b in range(ids.shape[0]):
        pad = int((mask[b] == 0).sum())
        ids[b], mask[b], labels[b] = ids[b].roll(pad), mask[b].roll(pad), labels[b].roll(pad)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("case", ["left_padding", "dropout", "unfrozen_base", "checkpointing"])
def test_cache_stays_unused_where_it_would_not_be_exact(case):
    model = tiny_gpt2() if case == "dropout" else tiny_llama()
    reft_model = get_reft_model(model, ReftConfig(layers=[1], positions="l1", rank=2),
                                freeze_base=case != "unfrozen_base")
    batch = lm_batch()
    if case == "left_padding":
        batch = _left_padded(batch)
    elif case == "dropout":  # GPT-2's embedding/attention/residual dropout (0.1) is random in training mode
        reft_model.train()
    elif case == "checkpointing":
        reft_model.gradient_checkpointing_enable()
        reft_model.train()
    context = torch.no_grad() if case == "unfrozen_base" else torch.enable_grad()
    with context:  # no_grad: the loss takes the fast path, but the base may change between calls
        reft_model(**batch)
    assert len(reft_model.frozen_cache) == 0


def test_cache_respects_its_size_bound():
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1], positions="l1", rank=2))
    batch = lm_batch()  # 4 rows of 10-11 tokens, d = 32, fp32: 1280-1408 bytes each
    reft_model.frozen_cache.max_bytes = 3000
    reft_model(**batch)
    assert len(reft_model.frozen_cache) == 2 and reft_model.frozen_cache.nbytes <= 3000
    reft_model.frozen_cache.clear()
    assert len(reft_model.frozen_cache) == 0 and reft_model.frozen_cache.nbytes == 0


def test_no_cache_for_interventions_that_are_not_on_block_outputs():
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1], positions="l1", rank=2, component="mlp_output"))
    assert reft_model.frozen_cache is None


def test_trainer_replays_from_the_second_epoch_and_empties_the_cache_after(tmp_path):
    from transformers import TrainingArguments

    from reft.trainer import ReftTrainer

    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1, 2], positions="f2+l2", rank=2, tied=False))
    data = _examples(8)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False, seed=0)
    ReftTrainer(model=reft_model, args=args, train_dataset=data, data_collator=ReftDataCollator(0)).train()
    assert reft_model.frozen_cache.replays == 4  # epochs 2 and 3, 2 batches each (shuffled: other groupings)
    assert len(reft_model.frozen_cache) == 0 and reft_model.frozen_cache.nbytes == 0
