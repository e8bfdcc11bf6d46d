"""The HTTP API against a real server on 127.0.0.1, through the official ``openai`` client (and httpx2 for raw bodies).

Answers are checked against ``ReftModel.generate`` alone (greedy). Every bad input gets a clear 4xx in OpenAI's error
format, and the server keeps serving afterwards. Request loops are bounded in count and time.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import httpx2
import openai
import pytest
import torch
from _serve_common import (
    MODEL_ID,
    LoopbackServer,
    assert_same_text,
    build,
    char_tokenizer,
    make_adapter,
    openai_client,
    reference,
    reference_composition,
    running,
    serve_model,
)
from conftest import tiny_llama

TOK = char_tokenizer()
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"a": make_adapter(root / "a", 1), "b": make_adapter(root / "b", 2, positions="l3", layers="0;3")}


@pytest.fixture(scope="module")
def server(adapters):
    app, engine, scheduler = build(adapters, max_batch=16)
    with running(app) as srv:
        srv.engine, srv.scheduler = engine, scheduler
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server.url)


def ids(text: str) -> list[int]:
    return TOK(text)["input_ids"]


def chat_ids(text: str) -> list[int]:
    return ids(TOK.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=False))


def wait_idle(server, limit: float = 20.0) -> bool:
    """Poll /health until no row runs and nothing waits (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = httpx2.get(server.url + "/health").json()
        if body["running"] == 0 and body["waiting"] == 0:
            return True
        time.sleep(0.02)
    return False


def test_models_lists_the_base_model_and_every_adapter(client):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL_ID, "a", "b"]
    card = client.models.retrieve("b")
    assert card.id == "b" and card.parent == MODEL_ID and card.reft["positions"] == "l3"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("nope")


@pytest.mark.parametrize("model", [MODEL_ID, "a", "b"])
def test_completion_equals_the_adapter_alone(client, adapters, model):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
    want, gaps = reference(serve_model(), TOK, ids(PROMPT), 16, adapters.get(model))
    assert_same_text(out.choices[0].text, want, gaps, TOK)
    assert out.object == "text_completion" and out.model == model
    assert out.usage.prompt_tokens == len(ids(PROMPT)) and out.usage.completion_tokens == len(want)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.choices[0].finish_reason == ("stop" if want[-1] == 1 else "length")


@pytest.mark.parametrize("spec", ["a+b", "-a", "0.5*a+b", "b - 2*a"])
def test_compositions_are_accepted_as_model(client, adapters, spec):
    out = client.completions.create(model=spec, prompt=PROMPT, max_tokens=16, temperature=0)
    want, gaps = reference_composition(spec, adapters, ids(PROMPT), 16)
    assert_same_text(out.choices[0].text, want, gaps, TOK)
    assert out.model == spec


def test_chat_uses_the_chat_template_and_each_adapter(client, adapters):
    answers = {}
    for model in (MODEL_ID, "a"):
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                             max_tokens=12, temperature=0)
        want, gaps = reference(serve_model(), TOK, chat_ids(PROMPT), 12, adapters.get(model))
        assert out.choices[0].message.role == "assistant"
        assert_same_text(out.choices[0].message.content, want, gaps, TOK)
        assert out.usage.prompt_tokens == len(chat_ids(PROMPT))
        answers[model] = out.choices[0].message.content
    assert answers[MODEL_ID] != answers["a"]  # one server, the ReFT answer next to the base model's


def test_streaming_matches_the_whole_answer(client):
    whole = client.completions.create(model="a", prompt=PROMPT, max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model="a", prompt=PROMPT, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason

    messages = [{"role": "user", "content": PROMPT}]
    whole = client.chat.completions.create(model="b", messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="b", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1


def test_n_seed_stop_and_prompt_lists(client):
    kw = {"model": "a", "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 11, "n": 3}
    one, two = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in one.choices] == [0, 1, 2]
    assert [c.text for c in one.choices] == [c.text for c in two.choices]
    assert len({c.text for c in one.choices}) == 3
    greedy = client.completions.create(model="b", prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    stop = greedy[8:10]
    cut = client.completions.create(model="b", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert cut.choices[0].text == greedy[:greedy.find(stop)] and cut.choices[0].finish_reason == "stop"
    batch = client.completions.create(model="b", prompt=[PROMPT, "ab"], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == greedy[:len(batch.choices[0].text)]


def test_ignore_eos_generates_max_tokens(client):
    """vLLM's ``ignore_eos`` extension (the load test uses it so that every request costs the same)."""
    for prompt in ("ab", PROMPT, "hello there"):
        out = client.completions.create(model="a", prompt=prompt, max_tokens=40, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 40 and out.choices[0].finish_reason == "length"


def _post(server, path: str, body, headers: dict | None = None) -> httpx2.Response:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx2.post(server.url + path, content=content, timeout=30,
                       headers={"Content-Type": "application/json"} | (headers or {}))


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    ({"prompt": "hi"}, 400, "'model' is required"),
    ({"model": "a"}, 400, "'prompt' is required"),
    ({"model": "a", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "a", "prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "a", "prompt": "hi", "temperature": 9}, 400, "temperature"),
    ({"model": "a", "prompt": "hi", "n": 0}, 400, "'n'"),
    ({"model": "a", "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": "a", "prompt": "hi", "stop": ["1", "2", "3", "4", "5"]}, 400, "stop"),
    ({"model": "a", "prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ({"model": "a", "prompt": "hi", "echo": True}, 400, "'echo' is not supported"),
    ({"model": "a", "prompt": ""}, 400, "empty"),
    ({"model": "a", "prompt": [999]}, 400, "vocabulary"),
    ({"model": "a", "prompt": "x" * 200}, 400, "maximum context length is 128"),
    ({"model": "a", "prompt": "x" * 100, "max_tokens": 50}, 400, "maximum context length is 128"),
    ({"model": "zzz", "prompt": "hi"}, 404, "'zzz' does not exist"),
    ({"model": "a+zzz", "prompt": "hi"}, 404, "'zzz' does not exist"),
    ({"model": "a++b", "prompt": "hi"}, 400, "cannot parse adapter composition"),
])
def test_bad_completion_requests_get_clear_errors(server, body, status, words):
    r = _post(server, "/v1/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"], error


@pytest.mark.parametrize("body, words", [
    ({"model": "a", "messages": []}, "messages"),
    ({"model": "a", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"model": "a", "messages": [{"content": "hi"}]}, "'messages.0.role' is required"),
    ({"model": "a", "messages": [{"role": "user", "content": "x" * 200}]}, "maximum context length"),
    ({"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, "max_completion"),
    ({"model": "a", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "needs 'logprobs': true"),
    ({"model": "a", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 30},
     "top_logprobs"),
])
def test_bad_chat_requests_get_clear_errors(server, body, words):
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_errors_through_the_openai_client_and_the_server_keeps_serving(client, server):
    with pytest.raises(openai.NotFoundError, match="loaded: a, b"):
        client.completions.create(model="style", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="a", prompt="hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="a", messages=[{"role": "user", "content": "y" * 300}])
    assert httpx2.get(server.url + "/nowhere").status_code == 404
    ok = client.completions.create(model="a", prompt="hi", max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens >= 1
    assert httpx2.get(server.url + "/health").json()["status"] == "ok"


def test_too_many_requests_get_429(adapters):
    app, engine, scheduler = build(adapters, max_batch=1, max_queue=1)
    with running(app) as srv:
        client = openai_client(srv.url)
        stream = client.completions.create(model="a", prompt=PROMPT, max_tokens=100, temperature=0, stream=True)
        next(iter(stream))  # running: it holds the only row
        waiting = threading.Thread(target=lambda: client.completions.create(model="b", prompt="ab", max_tokens=2))
        waiting.start()
        deadline = time.monotonic() + 30
        while scheduler.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError, match="too many requests") as info:
            client.completions.create(model="a", prompt="hi", max_tokens=2)
        assert info.value.response.headers["retry-after"] == "1"
        stream.close()
        waiting.join(30)
        assert not waiting.is_alive()


def test_client_disconnect_frees_its_slot(adapters):
    """A client that goes away mid-stream (or while waiting for a whole answer) has its rows dropped from the batch."""
    model = serve_model()
    model.config.max_position_embeddings = 1_000_000  # RoPE has no table: a long context, so requests run long
    app, _, scheduler = build(adapters, model=model)
    body = {"model": "a", "prompt": PROMPT, "max_tokens": 500_000, "temperature": 0}
    with running(app) as srv:
        with httpx2.stream("POST", srv.url + "/v1/completions", json=body | {"stream": True}, timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
        assert wait_idle(srv) and scheduler.stats["cancelled_rows"] == 1
        raw = json.dumps(body | {"model": "b"})
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(raw)}\r\n\r\n{raw}").encode())
            deadline = time.monotonic() + 30
            while scheduler.running == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
        assert wait_idle(srv) and scheduler.stats["cancelled_rows"] == 2
        assert openai_client(srv.url).completions.create(model="a", prompt="hi", max_tokens=2).usage


def test_adapters_load_and_unload_at_run_time(server, client, tmp_path):
    path = make_adapter(tmp_path / "late", 9, positions="f3+l1", layers="1")
    r = _post(server, "/v1/load_adapter", {"adapter_name": "late", "adapter_path": str(path)})
    assert r.status_code == 200 and r.json()["id"] == "late", r.text
    assert "late" in [m.id for m in client.models.list().data]
    out = client.completions.create(model="late", prompt=PROMPT, max_tokens=10, temperature=0)
    want, gaps = reference(serve_model(), TOK, ids(PROMPT), 10, path)
    assert_same_text(out.choices[0].text, want, gaps, TOK)

    assert _post(server, "/v1/load_adapter", {"adapter_name": "late", "adapter_path": str(path)}).status_code == 409
    wider = make_adapter(tmp_path / "wider", 1, model=tiny_llama(hidden=48))
    r = _post(server, "/v1/load_adapter", {"lora_name": "wider", "lora_path": str(wider)})  # vLLM's field names
    assert r.status_code == 400 and "does not fit" in r.json()["error"]["message"], r.text
    r = _post(server, "/v1/load_adapter", {"adapter_name": "gone", "adapter_path": str(tmp_path / "missing")})
    assert r.status_code == 404 and "no adapter folder" in r.json()["error"]["message"]
    r = _post(server, "/v1/load_adapter", {"adapter_name": "x+y", "adapter_path": str(path)})
    assert r.status_code == 400 and "invalid adapter name" in r.json()["error"]["message"]
    r = _post(server, "/v1/load_adapter", {"adapter_name": "x"})
    assert r.status_code == 400 and "adapter_path" in r.json()["error"]["message"]

    assert _post(server, "/v1/unload_lora_adapter", {"lora_name": "late"}).status_code == 200
    with pytest.raises(openai.NotFoundError, match="'late' does not exist"):
        client.completions.create(model="late", prompt=PROMPT, max_tokens=2)
    assert _post(server, "/v1/unload_adapter", {"adapter_name": "late"}).status_code == 404
    assert [m.id for m in client.models.list().data] == [MODEL_ID, "a", "b"]


def test_adapter_loading_can_be_turned_off(adapters):
    app, _, _ = build(adapters, app_kw={"allow_adapter_loading": False})
    with running(app) as srv:
        r = _post(srv, "/v1/load_adapter", {"adapter_name": "c", "adapter_path": str(adapters["a"])})
        assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]


def test_health_request_ids_and_access_log(server, caplog):
    health = httpx2.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["model"] == MODEL_ID and health.json()["adapters"] == ["a", "b"]
    with caplog.at_level(logging.INFO, logger="reft.serve.access"):
        r = _post(server, "/v1/completions", {"model": "a", "prompt": "hi", "max_tokens": 3, "temperature": 0},
                  headers={"X-Request-Id": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42" and r.json()["id"] == "cmpl-trace-42"
        generated = httpx2.get(server.url + "/health").headers["x-request-id"]
        deadline = time.monotonic() + 10
        while not any("trace-42" in m for m in caplog.messages) and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [json.loads(m) for m in caplog.messages if m.startswith("{")]
    line = next(x for x in lines if x["request_id"] == "trace-42")
    assert line["status"] == 200 and line["path"] == "/v1/completions" and line["model"] == "a"
    assert line["prompt_tokens"] == 2 and line["completion_tokens"] >= 1 and "ttft_ms" in line and line["ms"] > 0
    assert len(generated) >= 16


def test_graceful_shutdown_finishes_in_flight_streams(adapters):
    app, _, scheduler = build(adapters)
    srv = LoopbackServer(app).start()
    pieces, done = [], threading.Event()

    def consume():
        client = openai_client(srv.url)
        for chunk in client.completions.create(model="a", prompt=PROMPT, max_tokens=60, temperature=0, stream=True):
            pieces.append(chunk.choices[0])
            if len(pieces) == 1:
                done.set()

    t = threading.Thread(target=consume)
    t.start()
    try:
        assert done.wait(30)
    finally:
        srv.stop()  # what SIGTERM does: stop accepting, let in-flight requests finish, then stop the scheduler
        t.join(30)
    assert pieces[-1].finish_reason in ("length", "stop") and not scheduler.alive
    want, _ = reference(serve_model(), TOK, ids(PROMPT), 60, adapters["a"])
    assert len(ids("".join(p.text for p in pieces))) == len([t for t in want if t > 2])


def test_playground_page_is_served(server):
    r = httpx2.get(server.url + "/")
    assert r.status_code == 200 and "reft serve playground" in r.text and r.headers["content-type"].startswith(
        "text/html")


def _teacher_forced_logprobs(adapter, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """``log softmax`` of the adapter's next-token logits after each generated prefix: ``[len(generated), vocab]``
    (one forward over prompt + generated, the edit at the prompt's positions only)."""
    from reft import ReftModel

    runner = ReftModel.from_pretrained(serve_model(), adapter).eval()
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = runner(input_ids=ids, attention_mask=torch.ones_like(ids),
                        prompt_lengths=torch.tensor([len(prompt)])).logits[0]
    return logits[len(prompt) - 1:len(prompt) - 1 + len(generated)].log_softmax(-1)


def test_completion_logprobs_are_the_models_log_softmax(client, adapters):
    """Each token's log p and its top-k rivals equal the model's log softmax given the tokens before it (computed
    here in one teacher-forced forward: exact up to rounding), and tokens/text_offset spell the text."""
    out = client.completions.create(model="a", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3,
                                    extra_body={"ignore_eos": True})
    choice = out.choices[0]
    lp = choice.logprobs
    generated = [TOK.convert_tokens_to_ids(t) for t in lp.tokens]
    assert len(generated) == 8 and "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(map(len, lp.tokens[:k])) for k in range(8)]
    want = _teacher_forced_logprobs(adapters["a"], ids(PROMPT), generated)
    for k, token in enumerate(generated):
        assert lp.token_logprobs[k] == pytest.approx(float(want[k, token]), abs=1e-4)
        top = list(lp.top_logprobs[k].items())
        values, order = want[k].topk(3)
        assert [TOK.convert_tokens_to_ids(t) for t, _ in top] == order.tolist() or \
            float(values[0] - values[2]) < 1e-4  # a near-tie may order rivals differently
        assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-4)
        assert token == int(order[0]) or float(values[0] - want[k, token]) < 1e-4  # greedy: the top token


def test_chat_logprobs_and_streamed_logprobs_agree_with_the_whole_answer(client):
    body = dict(model="a", messages=[{"role": "user", "content": PROMPT}], max_tokens=6, temperature=0,
                logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**body, extra_body={"ignore_eos": True})
    content = whole.choices[0].logprobs.content
    assert len(content) == 6 and "".join(c.token for c in content) == whole.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and c.bytes == list(c.token.encode()) for c in content)
    assert all(c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)
    streamed = [c for chunk in client.chat.completions.create(**body, stream=True, extra_body={"ignore_eos": True})
                for ch in chunk.choices if ch.logprobs for c in ch.logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-6)
    plain = client.completions.create(model="a", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0, stream=True,
                                      extra_body={"ignore_eos": True})
    chunks = [ch.logprobs for chunk in plain for ch in chunk.choices if ch.logprobs and ch.logprobs.tokens]
    offsets = [o for c in chunks for o in c.text_offset]
    tokens = [t for c in chunks for t in c.tokens]
    assert offsets == [sum(map(len, tokens[:k])) for k in range(len(tokens))] and len(tokens) == 4
    assert all(top == {} for c in chunks for top in c.top_logprobs)  # logprobs=0: the token's own only
    no_lp = client.completions.create(model="a", prompt=PROMPT, max_tokens=2, temperature=0)
    assert no_lp.choices[0].logprobs is None


def _metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def test_metrics_count_tokens_requests_and_errors(adapters):
    app, _, _ = build(adapters)
    with running(app) as srv:
        first = httpx2.get(srv.url + "/metrics")
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
        assert _metric(first.text, "reft:num_adapters_loaded") == 2
        assert _metric(first.text, "reft:num_requests_running") == 0
        client = openai_client(srv.url)
        out = [client.completions.create(model=m, prompt=PROMPT, max_tokens=5, temperature=0, n=2,
                                         extra_body={"ignore_eos": True}) for m in ("a", "b", MODEL_ID)]
        assert _post(srv, "/v1/completions", {"model": "zzz", "prompt": "hi"}).status_code == 404
        assert httpx2.get(srv.url + "/nowhere").status_code == 404
        text = httpx2.get(srv.url + "/metrics").text
    assert _metric(text, "reft:generation_tokens_total") == sum(o.usage.completion_tokens for o in out) == 30
    assert _metric(text, "reft:prompt_tokens_total") == sum(o.usage.prompt_tokens for o in out)
    assert _metric(text, "reft:request_success_total", finished_reason="length") == 6  # 3 requests × n=2
    assert _metric(text, "reft:time_to_first_token_seconds_count") == 3
    assert _metric(text, "reft:e2e_request_latency_seconds_count") == 3
    assert _metric(text, "reft:http_requests_total", route="/v1/completions", status="200") == 3
    assert _metric(text, "reft:http_requests_total", route="/v1/completions", status="404") == 1
    assert _metric(text, "reft:http_requests_total", route="unmatched", status="404") == 1
    assert _metric(text, "reft:scheduler_decode_steps_total") >= 4


def test_api_key_guards_every_v1_route(adapters):
    app, _, _ = build(adapters, app_kw={"api_key": "s3cret"})
    with running(app) as srv:
        ok = openai_client(srv.url, default_headers={"Authorization": "Bearer s3cret"})
        assert ok.completions.create(model="a", prompt="hi", max_tokens=2).choices[0].text is not None
        assert [m.id for m in ok.models.list()] == [MODEL_ID, "a", "b"]
        import openai as openai_module

        wrong = openai_module.OpenAI(base_url=srv.url + "/v1", api_key="guess", max_retries=0, timeout=30)
        with pytest.raises(openai_module.AuthenticationError, match="not this server's"):
            wrong.completions.create(model="a", prompt="hi", max_tokens=2)
        for path, body in (("/v1/completions", {"model": "a", "prompt": "hi"}),
                           ("/v1/load_adapter", {"adapter_name": "c", "adapter_path": str(adapters["a"])})):
            r = _post(srv, path, body)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            error = r.json()["error"]
            assert "needs an API key" in error["message"] and error["code"] == "invalid_api_key"
        assert httpx2.get(srv.url + "/v1/models").status_code == 401
        assert httpx2.get(srv.url + "/health").status_code == 200  # probes and scrapes stay open
        assert "reft:http_requests_total" in httpx2.get(srv.url + "/metrics").text
        assert httpx2.get(srv.url + "/").status_code == 200
        assert ok.completions.create(model="b", prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_serve_api_key_defaults_to_the_environment(monkeypatch):
    from reft.cli.main import build_parser

    monkeypatch.setenv("REFT_API_KEY", "from-env")
    assert build_parser().parse_args(["serve"]).api_key == "from-env"
    assert build_parser().parse_args(["serve", "--api-key", "flag"]).api_key == "flag"
    monkeypatch.delenv("REFT_API_KEY")
    assert build_parser().parse_args(["serve"]).api_key is None
