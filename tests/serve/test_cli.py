"""``reft serve`` as a user starts it: a subprocess on a free loopback port, the openai client, SIGTERM to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx2
import pytest
from _serve_common import char_tokenizer, make_adapter, openai_client, serve_model
from conftest import tiny_llama

from reft.cli.main import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-model")
    serve_model().save_pretrained(root)
    char_tokenizer().save_pretrained(root)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_subprocess_answers_and_stops_gracefully_on_sigterm(model_dir, tmp_path):
    adapter = make_adapter(tmp_path / "demo", 1)
    port = _free_port()
    cmd = [sys.executable, "-m", "reft.cli.main", "serve", "--model", str(model_dir), "--adapter", f"demo={adapter}",
           "--port", str(port), "--served-model-name", "tiny", "--threads", "1", "--shutdown-timeout", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "reft serve did not come up"
            try:
                if httpx2.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)
        client = openai_client(url)
        assert [m.id for m in client.models.list().data] == ["tiny", "demo"]
        messages = [{"role": "user", "content": "the quick brown fox"}]
        base = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
        reft = client.chat.completions.create(model="demo", messages=messages, max_tokens=12, temperature=0)
        assert base.choices[0].message.content != reft.choices[0].message.content

        pieces, started = [], threading.Event()

        def consume():
            for chunk in client.completions.create(model="demo", prompt="abc", max_tokens=80, temperature=0,
                                                   stream=True):
                pieces.append(chunk.choices[0])
                started.set()

        t = threading.Thread(target=consume)
        t.start()
        assert started.wait(60)
        proc.send_signal(signal.SIGTERM)  # in flight: the stream is allowed to finish
        t.join(60)
        assert pieces[-1].finish_reason in ("length", "stop")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn re-raises the signal it caught once the shutdown is complete: the process ends "by SIGTERM", cleanly
    assert proc.returncode in (0, -signal.SIGTERM), err[-3000:]
    assert "Application shutdown complete" in err and "Traceback" not in err
    assert "loaded adapter demo" in err and '"event": "access"' in err and '"path": "/v1/chat/completions"' in err


def test_cli_refuses_bad_adapters_before_serving(model_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(model_dir), "--adapter", "nodir"]) == 2
    assert "write NAME=DIR" in capsys.readouterr().err
    wider = make_adapter(tmp_path / "wider", 1, model=tiny_llama(hidden=48))
    assert main(["serve", "--model", str(model_dir), "--adapter", f"w={wider}"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--adapter", f"w={tmp_path / 'missing'}"]) == 2
    assert "no adapter folder" in capsys.readouterr().err
