"""The reft vLLM plugin behind vLLM's OpenAI server (a subprocess), driven by the ``openai`` client: ``model`` names
an adapter or a composition, ``/v1/models`` lists the adapters, bad names get a 4xx and the server keeps serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this venv: run `make test-vllm`")
if not hasattr(vllm, "LLM"):
    pytest.skip("vLLM is not installed in this venv: run `make test-vllm`", allow_module_level=True)

import httpx  # noqa: E402
import openai  # noqa: E402
from vllm_plugin._vllm_common import ADAPTERS, PROMPTS, N, adapters_env, assert_same_greedy, build_world, reference  # noqa: E402

from reft.integrations.vllm import ENV  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("vllm_api"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, ENV: adapters_env(world["root"]), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    log = open(world["root"] / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(world["root"] / "model"),
         "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager", "-O0", "--max-model-len", "256",
         "--block-size", "32", "--enable-prefix-caching", "--max-num-seqs", "8", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail("vLLM's server exited:\n" + (world["root"] / "server.log").read_text()[-3000:])
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "vLLM's server did not come up in 300 s"
            time.sleep(1)
        world["client"] = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        world["url"] = url
        yield world
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def complete(world, prompt: str, model: str, **extra) -> list[int]:
    ids = world["tokenizer"](prompt)["input_ids"]
    out = world["client"].completions.create(model=model, prompt=ids, max_tokens=N, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True, **extra})
    return list(out.choices[0].token_ids)


def test_models_lists_the_base_and_every_adapter(server):
    listed = {m.id: m for m in server["client"].models.list().data}
    assert sorted(listed) == sorted(["tiny", *ADAPTERS])
    assert listed["a"].parent == "tiny" and listed["a"].root == str(server["root"] / "a")


@pytest.mark.parametrize("model", ["a", "a+b", "0.5*a-2*c", "tiny"])
def test_model_names_the_adapter_or_composition(server, model):
    prompt = PROMPTS[1]
    assert_same_greedy(complete(server, prompt, model), *reference(server, prompt, None if model == "tiny" else model))


def test_the_same_through_vllm_xargs_and_the_chat_api(server):
    prompt = PROMPTS[0]
    want = reference(server, prompt, "b+c")
    assert_same_greedy(complete(server, prompt, "tiny", vllm_xargs={"reft_adapter": "b+c"}), *want)
    assert_same_greedy(complete(server, prompt, "c+b", vllm_xargs={"reft_adapter": "c+b"}), *want)


def test_bad_names_get_a_4xx_naming_the_fix_and_the_server_keeps_serving(server):
    client = server["client"]
    with pytest.raises(openai.NotFoundError, match=r"no reft adapter 'zzz' is served \(adapters: \['a', 'b', 'c'"):
        complete(server, "hi", "a+zzz")
    with pytest.raises(openai.NotFoundError, match="The model `gpt-4o` does not exist"):
        complete(server, "hi", "gpt-4o")
    with pytest.raises(openai.BadRequestError, match="give one of them"):
        complete(server, "hi", "a", vllm_xargs={"reft_adapter": "b"})
    with pytest.raises(openai.BadRequestError, match="unknown reft adapter 'zzz'"):
        complete(server, "hi", "tiny", vllm_xargs={"reft_adapter": "zzz"})
    with pytest.raises(openai.NotFoundError, match="no reft adapter"):
        client.chat.completions.create(model="zzz", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert_same_greedy(complete(server, PROMPTS[2], "d"), *reference(server, PROMPTS[2], "d"))
