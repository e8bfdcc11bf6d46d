"""Tiny random models built from configs in code (no downloads), shared by the tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaModel,
)

from reft.data import ReftDataCollator

VOCAB = 64
#: set (CI does, in .ci/run) to make a missing task-data folder an error instead of a reason to use the stand-in
REQUIRE_DATA_ENV = "REFT_REQUIRE_DATA"
_DATA_SKIP: str | None = None  # why needs_data tests skip in this session (None: the real data is there)


def pytest_configure(config) -> None:
    """Find the task data (``REFT_DATA`` or ``../shared/data``). Without it, the loaders' logic runs on a synthetic
    stand-in (``tests/mini_data.py``) and tests marked ``needs_data`` skip, naming ``REFT_DATA``; with
    ``REFT_REQUIRE_DATA=1`` the run stops instead."""
    global _DATA_SKIP
    config.addinivalue_line("markers", "needs_data: asserts facts of the real task data files (../shared/data)")
    from reft.harness.tasks import data_root

    try:
        if (data_root() / "MANIFEST.md").is_file():
            return
        problem = f"{data_root()} holds no MANIFEST.md"
    except FileNotFoundError as e:
        problem = str(e)
    if os.environ.get(REQUIRE_DATA_ENV):
        raise pytest.UsageError(f"{REQUIRE_DATA_ENV} is set but the task data is missing: {problem}")
    from mini_data import write_mini_data

    root = write_mini_data(Path(tempfile.mkdtemp(prefix="reft-mini-data-")))
    _DATA_SKIP = (f"needs the real task data (set REFT_DATA to the folder holding MANIFEST.md, or put shared/data "
                  f"beside the checkout); the loaders ran on a synthetic stand-in instead ({problem})")
    os.environ["REFT_DATA"] = str(root)  # also seen by the CLI subprocesses of the tests
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))


def pytest_runtest_setup(item) -> None:
    if _DATA_SKIP and item.get_closest_marker("needs_data"):
        pytest.skip(_DATA_SKIP)


# tiny models run fastest on one thread, and a test run then leaves the other core to whatever else runs
torch.set_num_threads(1)


def tiny_llama(layers: int = 4, hidden: int = 32, init: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                      initializer_range=init, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def tiny_qwen2(layers: int = 3) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                      max_position_embeddings=128)
    return Qwen2ForCausalLM(cfg).eval()


def tiny_gpt2(layers: int = 3) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=128, pad_token_id=0,
                     eos_token_id=1, bos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert(layers: int = 2) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                     num_attention_heads=4, max_position_embeddings=128, pad_token_id=0)
    return BertModel(cfg, add_pooling_layer=False).eval()


def tiny_roberta(layers: int = 2) -> RobertaModel:
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=130, pad_token_id=1)
    return RobertaModel(cfg, add_pooling_layer=False).eval()


DECODERS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}
ENCODERS = {"bert": tiny_bert, "roberta": tiny_roberta}


@pytest.fixture(params=sorted(DECODERS))
def decoder(request):
    return DECODERS[request.param]()


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request):
    return ENCODERS[request.param]()


def random_batch(lengths: list[int], padding_side: str = "right", seed: int = 0, pad: int = 0):
    """Token ids ≥ 3 with the given lengths, padded; returns (input_ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        row = torch.randint(3, VOCAB, (n,), generator=g)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[i, sl], mask[i, sl] = row, 1
    return ids, mask


def nonzero_init(reft_model):
    torch.manual_seed(1)
    for p in reft_model.intervention_parameters():
        if p.dim() == 1:
            nn.init.normal_(p)


def lm_batch(n_examples=4, prompt=6, response=4, seed=1, vocab=64):
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n_examples):
        p = torch.randint(3, vocab, (prompt + i % 2,), generator=g).tolist()
        r = torch.randint(3, vocab, (response,), generator=g).tolist()
        data.append({"input_ids": p + r, "labels": [-100] * len(p) + r, "prompt_lengths": len(p)})
    return ReftDataCollator(pad_token_id=0)(data)


def shared_prefix_batch(prefix: int, prompts=(6, 2, 9), response=4):
    """Rows that start with the same ``prefix`` tokens (a system prompt), then differ."""
    g = torch.Generator().manual_seed(3)
    head = torch.randint(3, 64, (prefix,), generator=g).tolist()
    data = []
    for n in prompts:
        p = head + torch.randint(3, 64, (n,), generator=g).tolist()
        r = torch.randint(3, 64, (response,), generator=g).tolist()
        data.append({"input_ids": p + r, "labels": [-100] * len(p) + r, "prompt_lengths": len(p)})
    return ReftDataCollator(pad_token_id=0)(data)


def position_loop(n: int, p: int, s: int, rule: str = "split") -> list[int]:
    """The short-prompt rules of :mod:`reft.positions` written as a plain loop over slots (relative positions,
    -1 = empty): the reference the vectorised ``prompt_positions`` is tested against."""
    if rule == "half":  # pyreft 0.1.0's get_intervention_locations, every n
        p_n, s_n = min(p, n // 2), min(s, n // 2)
    elif p and s and n < p + s:
        p_n, s_n = min(p, n // 2), min(s, (n + 1) // 2)
    else:
        p_n, s_n = min(p, n), min(s, n)
    return [j if j < p_n else -1 for j in range(p)] + [n - s_n + j if j < s_n else -1 for j in range(s)]
