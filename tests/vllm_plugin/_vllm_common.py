"""A tiny random Llama saved to disk with four random reft adapters, and the reference answers of ReftModel."""

from __future__ import annotations

from pathlib import Path

import torch
from reliability._reliability_common import byte_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from reft import ReftConfig, ReftModel, get_reft_model
from reft.model.compose import parse_composition

ADAPTERS = {"a": dict(layers="1;2", positions="f2+l2"), "b": dict(layers="0;3", positions="l3"),
            "c": dict(layers="2", positions="f1+l1", tied=False),
            "d": dict(layers="0;1;2", positions="f8"),  # edits inside the first cached block only
            "i": dict(layers="1;2", positions="f2+l2", component="block_input"),
            "m": dict(layers="0;3", positions="l3", component="mlp_output"),
            "s": dict(layers="2", positions="f1+l2", component="attention_output", tied=False)}
N = 12
PROMPTS = ["the quick brown fox", "hello there, how are you today?", "ab",
           "a much longer prompt that goes on and on, past three blocks of the KV cache, to the end"]


def build_world(root: Path) -> dict:
    """``root/model`` (tokenizer included) and ``root/<name>`` for each of :data:`ADAPTERS`."""
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2, max_position_embeddings=256, initializer_range=0.3,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for seed, (name, spec) in enumerate(ADAPTERS.items(), start=1):
        model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
        reft_model = get_reft_model(model, ReftConfig(rank=4, **spec))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in reft_model.interventions.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 3.0 / p.shape[-1] ** 0.5)
        reft_model.save_pretrained(root / name)
    return {"root": root, "tokenizer": tokenizer}


def adapters_env(root: Path) -> str:
    return ",".join(f"{name}={root / name}" for name in ADAPTERS)


def reference(world: dict, prompt: str, entry: str | None) -> tuple[list[int], list[float]]:
    """Greedy tokens of ReftModel.generate of ``prompt`` alone under ``entry`` (an adapter or a composition), and
    the top-2 logit gap at each step."""
    tokenizer, root = world["tokenizer"], world["root"]
    base = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32).eval()
    base.generation_config.eos_token_id = None  # as vLLM's ignore_eos: eos may be generated, and does not stop
    runner, names = base, [name for name, _ in parse_composition(entry)]
    for i, name in enumerate(names):
        if i == 0:
            runner = ReftModel.from_pretrained(base, root / name, adapter_name=name)
        else:
            runner.load_adapter(root / name, adapter_name=name)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    kwargs = {"adapter_names": [entry]} if names else {}
    out = runner.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=False,
                          pad_token_id=0, output_scores=True, return_dict_in_generate=True, **kwargs)
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    return out.sequences[0, ids.shape[1]:].tolist(), gaps


def assert_same_greedy(got: list[int], want: list[int], gaps: list[float], tie: float = 1e-4) -> None:
    """Token for token, or up to the first step where the reference's top two logits tie within ``tie`` (CPU kernels
    differ in the last bits; after a tie both continuations are right)."""
    for k, (a, b) in enumerate(zip(got, want)):
        if a != b:
            assert gaps[k] < tie, f"token {k} differs ({a} vs {b}) although the reference margin is {gaps[k]:.2e}"
            return
    assert len(got) == len(want)
