"""Shared helpers for the server tests: a character tokenizer with a chat template, tiny adapters, a loopback server.

Everything is built in code (tiny random Llama from tests/conftest.py); nothing is downloaded. Servers bind a free
port on 127.0.0.1 only and are always shut down.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import uvicorn
from conftest import VOCAB, tiny_llama
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from reft import ReftConfig, get_reft_model
from reft.serve.app import create_app
from reft.serve.engine import Engine
from reft.serve.scheduler import Scheduler

SPECIALS = ["<pad>", "<eos>", "<bos>"]  # ids 0, 1, 2, as in tiny_llama's config
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?'\"-_{}()<>|/\n=*+#%"
assert len(SPECIALS) + len(CHARS) == VOCAB, len(CHARS)
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<a>{% endif %}")
MODEL_ID = "tiny-llama"
INIT = 0.3  # larger than the default 0.02: peaked logits, so greedy choices are far from ties


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (lower-cased; anything else becomes '?'), specials <pad>=0 <eos>=1 <bos>=2."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    outside = "[^" + "".join("\\" + c if c in "\\^]-[" else c for c in CHARS) + "]"
    tk.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(outside), "?")])
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def serve_model(layers: int = 4, hidden: int = 32):
    """The tiny random Llama every server test serves (same weights every call)."""
    return tiny_llama(layers=layers, hidden=hidden, init=INIT)


def make_adapter(path: Path, seed: int, *, positions: str = "f2+l2", layers: str = "1;2", rank: int = 4,
                 model=None, scale: float = 3.0) -> Path:
    """Save a random LoReFT adapter for :func:`serve_model` whose edit visibly changes the output."""
    model = model if model is not None else serve_model()
    reft_model = get_reft_model(model, ReftConfig(layers=layers, positions=positions, rank=rank))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in reft_model.interventions.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[-1] ** 0.5)
    reft_model.save_pretrained(path)
    reft_model.unload()
    return path


def build(adapters: dict[str, Path] | None = None, *, model=None, app_kw: dict | None = None, **scheduler_kw):
    """``(app, engine, scheduler)`` serving :func:`serve_model` with ``adapters`` loaded."""
    engine = Engine(model if model is not None else serve_model(), char_tokenizer(), MODEL_ID)
    for name, path in (adapters or {}).items():
        engine.load_adapter(name, path)
    scheduler = Scheduler(engine, **scheduler_kw)
    app = create_app(engine, scheduler, **(app_kw or {}))
    return app, engine, scheduler


class LoopbackServer:
    """uvicorn serving ``app`` in a thread on a free 127.0.0.1 port; :meth:`stop` shuts it down (graceful)."""

    def __init__(self, app, *, graceful: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=graceful,
                                log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@contextlib.contextmanager
def running(app, **kw) -> Iterator[LoopbackServer]:
    server = LoopbackServer(app, **kw).start()
    try:
        yield server
    finally:
        server.stop()


def openai_client(url: str, **kw):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60, **kw)


def reference(model, tokenizer, prompt_ids: list[int], max_tokens: int, adapter: Path | None = None):
    """Greedy ``(token ids, per-step top-2 logit gaps)`` from ``ReftModel.generate`` / ``model.generate`` alone."""
    from reft import ReftModel

    runner = ReftModel.from_pretrained(model, adapter) if adapter is not None else model
    ids = torch.tensor([prompt_ids])
    try:
        out = runner.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=1)
    finally:
        if adapter is not None:
            runner.unload()
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    return tokens, gaps


def reference_composition(spec: str, adapters: dict[str, Path], prompt_ids: list[int], max_tokens: int):
    """As :func:`reference`, for a composition (``"a+b"``) of named adapters, through ``ReftModel.generate``."""
    from reft import ReftModel

    runner = ReftModel(serve_model())
    for name, path in adapters.items():
        runner.load_adapter(path, adapter_name=name)
    ids = torch.tensor([prompt_ids])
    out = runner.generate(ids, attention_mask=torch.ones_like(ids), adapter_names=[spec], max_new_tokens=max_tokens,
                          do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0,
                          eos_token_id=1)
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    return out.sequences[0, ids.shape[1]:].tolist(), gaps


def assert_same_greedy(got: list[int], want: list[int], gaps: list[float], tie: float = 1e-4) -> None:
    """Equal greedy tokens, except that they may part at a near-tie of the reference (rounding can flip it)."""
    for k, (a, b) in enumerate(zip(got, want)):
        if a != b:
            assert gaps[k] < tie, f"token {k} differs ({a} vs {b}) although the reference margin is {gaps[k]:.2e}"
            return
    assert len(got) == len(want), (got, want)


def assert_same_text(text: str, want: list[int], gaps: list[float], tokenizer, tie: float = 1e-4) -> None:
    """:func:`assert_same_greedy` on decoded text (special tokens, which decode to nothing, included in ``want``)."""
    pos = 0
    for k, token in enumerate(want):
        piece = tokenizer.decode([token], skip_special_tokens=True)
        if text[pos:pos + len(piece)] != piece:
            assert gaps[k] < tie, f"token {k} differs ({text[pos:]!r} vs {piece!r}), reference margin {gaps[k]:.2e}"
            return
        pos += len(piece)
    assert pos == len(text), (text, tokenizer.decode(want))
