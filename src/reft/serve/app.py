"""The OpenAI-compatible HTTP API of ``reft serve`` (FastAPI), its access log and the playground page.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (chat template from the tokenizer),
``GET /v1/models`` (the base model and every adapter), ``POST /v1/load_adapter`` / ``/v1/unload_adapter`` (also
under vLLM's ``load_lora_adapter`` names), ``GET /health``, ``GET /metrics`` (Prometheus, :mod:`.metrics`) and the
playground at ``/``. ``model`` picks the adapter: the base model's id runs the bare model. With an API key every
``/v1`` route wants ``Authorization: Bearer <key>`` (as OpenAI and vLLM; ``/health``, ``/metrics`` and the page stay
open). Every error is OpenAI's ``{"error": {...}}`` with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data import tokenize_prompt
from .engine import AdapterConflict, Engine
from .metrics import ServeMetrics
from .protocol import (
    MAX_STOP,
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    UnloadAdapterRequest,
    chat_chunk,
    chat_logprobs,
    chat_response,
    completion_chunk,
    completion_logprobs,
    completion_response,
    error_body,
    usage,
    usage_chunk,
)
from .scheduler import QueueFull, SamplingParams, Scheduler, ShuttingDown
from .scheduler import Request as GenRequest

access_log = logging.getLogger("reft.serve.access")
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
          409: "conflict_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable", 504: "timeout_error"}


class ApiError(Exception):
    """An HTTP error in OpenAI's format."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    body = error_body(message, _TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence for pydantic's errors (malformed JSON, missing or out-of-range fields)."""
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON ({detail}): send one JSON object", None
        field = ".".join(loc) or "body"
        param = param or (loc[0] if loc else None)
        if kind == "missing":
            parts.append(f"'{field}' is required")
        elif kind in ("model_type", "dict_type", "model_attributes_type") and not loc:
            parts.append("the body must be a JSON object")
        else:
            got = err.get("input")
            shown = json.dumps(got)[:60] if isinstance(got, (int, float, str, bool)) or got is None else "…"
            parts.append(f"'{field}': {err.get('msg', 'invalid')} (got {shown})")
    unique = list(dict.fromkeys(parts))
    return "invalid request: " + "; ".join(unique[:6]), param


class AccessLog:
    """Pure ASGI middleware: a request id per request (``X-Request-Id``, echoed) and one JSON log line per response.

    Handlers add fields (model, tokens, time to first token) to ``request.state.log``; every response is counted
    in ``metrics`` (by route template).
    """

    def __init__(self, app, metrics: ServeMetrics | None = None) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _RID.match(given) else uuid.uuid4().hex[:24]
        fields: dict = {}
        scope.setdefault("state", {})
        scope["state"]["request_id"], scope["state"]["log"] = rid, fields
        status = {"code": 0}
        t0 = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            line = {"event": "access", "request_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                    "status": status["code"], "ms": round(1000 * (time.perf_counter() - t0), 1),
                    "client": f"{client[0]}:{client[1]}" if client else None} | fields
            access_log.info(json.dumps(line))
            if self.metrics is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.http_response(str(scope.get("method")), route, status["code"])


class BearerAuth:
    """Pure ASGI middleware: paths under ``/v1/`` need ``Authorization: Bearer <api_key>`` (401 otherwise)."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = ("this server needs an API key: send the header 'Authorization: Bearer <key>' (the openai client: "
                   "api_key=…)" if not given else "the API key is not this server's (--api-key): check the key sent "
                   "in 'Authorization: Bearer <key>'")
        response = _error(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def playground_html() -> str:
    return resources.files("reft.serve").joinpath("playground.html").read_text(encoding="utf-8")


def create_app(engine: Engine, scheduler: Scheduler, *, request_timeout: float | None = 600.0,
               default_max_tokens: int = 1024, allow_adapter_loading: bool = True,
               shutdown_timeout: float = 30.0, api_key: str | None = None) -> FastAPI:
    """The FastAPI application around a (not yet started) scheduler; its lifespan starts and stops the scheduler.

    Args:
        request_timeout: seconds a request may wait and run before it fails (504; 503 while still queued).
        default_max_tokens: chat ``max_tokens`` when the request gives none (completions default to 16, as OpenAI).
        allow_adapter_loading: serve ``/v1/load_adapter`` and ``/v1/unload_adapter`` (403 otherwise).
        shutdown_timeout: on shutdown, seconds in-flight requests get to finish before they are cancelled.
        api_key: if given, the bearer token every ``/v1`` request must send (401 otherwise).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not scheduler.alive:
            scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop, shutdown_timeout)

    app = FastAPI(title="reft serve", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    metrics = ServeMetrics(engine, scheduler)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(AccessLog, metrics=metrics)  # added last = outermost: 401s are logged and counted too
    app.state.engine, app.state.scheduler, app.state.metrics = engine, scheduler, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return _error(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path}: the API is under /v1 "
                               "(completions, chat/completions, models)", code="unknown_url")
        if exc.status_code == 405:
            return _error(405, f"method {request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    # ---- pages and metadata ----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(playground_html())

    @app.get("/health")
    async def health():
        body = {"status": "ok" if scheduler.accepting else "unavailable", "model": engine.model_id,
                "adapters": sorted(engine.adapters), "running": scheduler.running, "waiting": scheduler.waiting,
                "steps": scheduler.steps}
        return JSONResponse(body, status_code=200 if scheduler.accepting else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    def _model_card(name: str | None) -> dict:
        if name is None:
            return {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "reft",
                    "root": engine.model_id, "parent": None, "context_length": engine.context_length}
        info = engine.adapters[name]
        return {"id": name, "object": "model", "created": info.created, "owned_by": "reft", "root": info.path,
                "parent": engine.model_id, "reft": {"positions": info.positions, "specs": list(info.specs),
                                                    "parameters": info.parameters}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(None)] + [_model_card(n) for n in engine.adapters]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id in engine.base_ids:
            return _model_card(None)
        if model_id in engine.adapters:
            return _model_card(model_id)
        raise ApiError(404, _resolve_error(model_id), param="model", code="model_not_found")

    def _resolve_error(spec: str) -> str:
        try:
            engine.resolve(spec)
        except (LookupError, ValueError) as e:
            return str(e.args[0]) if e.args else str(e)
        return f"unknown model {spec!r}"

    # ---- adapters at run time ----------------------------------------------------------------------------------
    def _check_loading() -> None:
        if not allow_adapter_loading:
            raise ApiError(403, "loading adapters at run time is disabled on this server (started with "
                                "--no-adapter-loading)")

    @app.post("/v1/load_adapter")
    @app.post("/v1/load_lora_adapter", include_in_schema=False)
    async def load(body: LoadAdapterRequest, request: Request):
        _check_loading()
        request.state.log["adapter"] = body.adapter_name
        try:
            info = await scheduler.call(lambda: engine.load_adapter(body.adapter_name, body.adapter_path))
        except FileNotFoundError as e:
            raise ApiError(404, str(e), param="adapter_path", code="adapter_not_found") from None
        except AdapterConflict as e:
            raise ApiError(409, str(e), param="adapter_name", code="adapter_exists") from None
        except ValueError as e:
            raise ApiError(400, f"cannot load {body.adapter_path!r}: {e}", param="adapter_path",
                           code="adapter_incompatible") from None
        request.state.log["load_ms"] = round(1000 * info.load_seconds, 1)
        return {"object": "adapter", "id": info.name, "loaded": True, "load_seconds": info.load_seconds,
                "model": _model_card(info.name)}

    @app.post("/v1/unload_adapter")
    @app.post("/v1/unload_lora_adapter", include_in_schema=False)
    async def unload(body: UnloadAdapterRequest, request: Request):
        _check_loading()
        request.state.log["adapter"] = body.adapter_name
        try:
            await scheduler.call(lambda: engine.unload_adapter(body.adapter_name))
        except KeyError as e:
            raise ApiError(404, str(e.args[0]), param="adapter_name", code="model_not_found") from None
        return {"object": "adapter", "id": body.adapter_name, "unloaded": True}

    # ---- generation --------------------------------------------------------------------------------------------
    def _resolve(spec: str):
        try:
            return engine.resolve(spec)
        except LookupError as e:
            raise ApiError(404, str(e.args[0]), param="model", code="model_not_found") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="model", code="invalid_model") from None

    def _params(body, prompts: list[list[int]], max_tokens: int | None, default: int) -> SamplingParams:
        for field_ in ("echo", "suffix", "tools"):
            if getattr(body, field_, None):
                raise ApiError(400, f"'{field_}' is not supported by reft serve: leave it out", param=field_)
        best_of = getattr(body, "best_of", None)
        if best_of not in (None, 1) and best_of != body.n:
            raise ApiError(400, "'best_of' is not supported by reft serve: use 'n'", param="best_of")
        for field_ in ("presence_penalty", "frequency_penalty"):
            if getattr(body, field_) not in (None, 0, 0.0):
                raise ApiError(400, f"'{field_}' is not supported by reft serve: leave it out or set 0", param=field_)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP or any(not s for s in stop):
            raise ApiError(400, f"'stop' takes up to {MAX_STOP} non-empty strings, got {stop!r}", param="stop")
        context = engine.context_length
        longest = max(map(len, prompts))
        if context is not None and longest >= context:
            raise ApiError(400, f"this model's maximum context length is {context} tokens, but the prompt has "
                                f"{longest} tokens: shorten the prompt", param="prompt" if hasattr(body, "prompt")
                           else "messages", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = default if context is None else max(1, min(default, context - longest))
        elif context is not None and longest + max_tokens > context:
            raise ApiError(400, f"this model's maximum context length is {context} tokens, but you requested "
                                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the "
                                f"completion): reduce the prompt or max_tokens", param="max_tokens",
                           code="context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature
        if isinstance(body, ChatRequest):
            if body.top_logprobs is not None and not body.logprobs:
                raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
        else:
            logprobs = body.logprobs
        return SamplingParams(max_tokens=max_tokens, temperature=temperature,
                              top_p=1.0 if body.top_p is None else body.top_p, stop=tuple(stop), seed=body.seed,
                              n=body.n or 1, ignore_eos=body.ignore_eos, logprobs=logprobs)

    def _tokenize(text: str, param: str) -> list[int]:
        try:
            return tokenize_prompt(engine.tokenizer, text)
        except ValueError:
            raise ApiError(400, f"'{param}' is empty: give at least one token of prompt", param=param) from None

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = _resolve(body.model)
        raw = body.prompt
        if isinstance(raw, str):
            prompts = [_tokenize(raw, "prompt")]
        elif raw and all(isinstance(x, str) for x in raw):
            prompts = [_tokenize(p, "prompt") for p in raw]
        elif raw and all(isinstance(x, int) for x in raw):
            prompts = [list(raw)]
        elif raw and all(isinstance(x, list) for x in raw):
            prompts = [list(p) for p in raw]
        else:
            raise ApiError(400, "'prompt' must be a non-empty string, list of strings, or token ids", param="prompt")
        if any(not p for p in prompts):
            raise ApiError(400, "'prompt' has an empty entry: give every prompt at least one token", param="prompt")
        if any(t < 0 or t >= engine.vocab_size for p in prompts for t in p if isinstance(t, int)):
            raise ApiError(400, f"'prompt' has a token id outside the vocabulary [0, {engine.vocab_size})",
                           param="prompt")
        params = _params(body, prompts, body.max_tokens, 16)
        return await _generate(request, body, adapter, prompts, params, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        adapter = _resolve(body.model)
        tok = engine.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, "the base model's tokenizer has no chat template: use /v1/completions with a "
                                "plain prompt", param="messages")
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                    for m in body.messages]
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # the template's own checks (e.g. role order) raise TemplateError
            raise ApiError(400, f"the chat template refused these messages: {e}", param="messages") from None
        prompts = [_tokenize(text, "messages")]
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = _params(body, prompts, max_tokens, default_max_tokens)
        return await _generate(request, body, adapter, prompts, params, chat=True)

    async def _generate(request: Request, body, adapter, prompts, params: SamplingParams, *, chat: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + request.state.request_id
        fields = request.state.log
        fields |= {"model": body.model, "prompt_tokens": sum(map(len, prompts)), "n": params.n,
                   "stream": bool(body.stream)}
        gen = GenRequest(rid, adapter, prompts, params, timeout=request_timeout)
        try:
            scheduler.submit(gen)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full", headers={"Retry-After": "1"}) from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), code="shutting_down") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="n") from None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(gen, body.model, rid, chat, include_usage, fields),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, reasons = [""] * gen.rows, [None] * gen.rows
        entries: list[list] = [[] for _ in range(gen.rows)]
        checked = [time.monotonic()]
        try:
            while not all(reasons):
                events = await _next(gen, request, checked)
                for e in events:
                    if e.error:
                        raise ApiError(e.error[0], e.error[1])
                    texts[e.index] += e.text
                    entries[e.index] += e.logprobs or []
                    if e.finish_reason:
                        reasons[e.index] = e.finish_reason
        finally:
            if not gen.done:
                gen.cancel()
            _log_done(gen, fields, reasons)
        use = usage(gen.prompt_tokens, gen.completion_tokens)
        logprobs = [_logprobs(x, chat) for x in entries] if params.logprobs is not None else None
        build = chat_response if chat else completion_response
        return build(rid, body.model, texts, reasons, use, logprobs)

    def _logprobs(entries: list, chat: bool, offset: int = 0) -> dict:
        """The choice's ``logprobs`` object: chat's, or the completions' (``offset``: characters before these)."""
        return chat_logprobs(entries, engine.tokenizer) if chat else \
            completion_logprobs(entries, engine.tokenizer, offset)

    async def _next(gen: GenRequest, request: Request, checked: list[float]) -> list:
        """The next events of ``gen``; a client that disconnects meanwhile cancels it (its rows leave the batch).

        The connection is looked at every 0.25 s (``checked[0]``: when it was last), also while events keep coming.
        """
        getter = asyncio.ensure_future(gen.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=0.25)
                now = time.monotonic()
                if now - checked[0] >= 0.25:
                    checked[0] = now
                    if await request.is_disconnected():
                        gen.cancel()
                        raise ApiError(499, "the client closed the connection")
                if done:
                    return getter.result()
        finally:
            if not getter.done():
                getter.cancel()

    def _log_done(gen: GenRequest, fields: dict, reasons) -> None:
        fields |= {"completion_tokens": gen.completion_tokens,
                   "finish": [r for r in reasons] if gen.rows > 1 else reasons[0],
                   "cancelled": gen.cancelled and not gen.done}
        if gen.first_token_time is not None:
            fields["ttft_ms"] = round(1000 * (gen.first_token_time - gen.arrival), 1)
        metrics.request_done(gen, reasons, time.monotonic())

    async def _stream(gen: GenRequest, model_name: str, rid: str, chat: bool, include_usage: bool, fields: dict):
        created = int(time.time())
        reasons: list[str | None] = [None] * gen.rows
        offsets = [0] * gen.rows  # characters streamed per choice (the completions' text_offset)

        def sse(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            if chat:
                for i in range(gen.rows):
                    yield sse(chat_chunk(rid, model_name, created, i, {"role": "assistant", "content": ""}, None))
            while not all(reasons):
                events = await gen.events.get()
                for e in events:
                    if e.error:
                        status, message = e.error
                        yield sse(error_body(message, _TYPES.get(status, "server_error"), code=str(status)))
                        yield "data: [DONE]\n\n"
                        return
                    if e.finish_reason:
                        reasons[e.index] = e.finish_reason
                    if e.text or e.finish_reason:
                        lp = None if e.logprobs is None else _logprobs(e.logprobs, chat, offsets[e.index])
                        offsets[e.index] += len(e.text)
                        if chat:
                            delta = {"content": e.text} if e.text else {}
                            yield sse(chat_chunk(rid, model_name, created, e.index, delta, e.finish_reason, lp))
                        else:
                            yield sse(completion_chunk(rid, model_name, created, e.index, e.text, e.finish_reason,
                                                       lp))
            if include_usage:
                yield sse(usage_chunk(rid, model_name, created, chat, usage(gen.prompt_tokens, gen.completion_tokens)))
            yield "data: [DONE]\n\n"
        finally:
            if not gen.done:
                gen.cancel()  # client gone mid-stream: free its rows
            _log_done(gen, fields, reasons)

    return app
