"""A quantized frozen base (reft.quantization): every backend on CPU, on a tiny random Llama saved to disk."""

from __future__ import annotations

import json

import pytest
import torch
from reliability._reliability_common import one_thread, save_tiny_causal_lm  # noqa: F401  (one_thread: autouse)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, TrainingArguments

from reft import ReftConfig, ReftModel, get_reft_model
from reft.cli.main import main as cli_main
from reft.data import ReftDataCollator
from reft.quantization import quantization_config, quantization_of, stored_bytes
from reft.trainer import ReftTrainer, training_fingerprint

BASES = [("8bit", "bitsandbytes"), ("4bit", "bitsandbytes"), ("8bit", "torchao"), ("8bit", "quanto"),
         ("4bit", "quanto")]
IDS = [f"{backend}-{bits}" for bits, backend in BASES]
VOCAB, HIDDEN = 96, 128  # 128: quanto's int4 groups and bitsandbytes' 4-bit blocks fit the rows
CONFIG = dict(layers="0;1", positions="f2+l2", rank=4)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                         max_position_embeddings=64, initializer_range=0.1)
    path = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load(path, bits: str | None = None, backend: str | None = None):
    kwargs = {} if bits is None else {"quantization_config": quantization_config(bits, backend), "device_map": "cpu"}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


def batch(n: int = 4, length: int = 12, prompt: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "prompt_lengths": torch.full((n,), prompt)}


def reft(model) -> ReftModel:
    torch.manual_seed(2)
    return get_reft_model(model, ReftConfig(**CONFIG))


def grads(model: ReftModel) -> tuple[float, torch.Tensor]:
    loss = model(**batch()).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.intervention_parameters()])


@pytest.mark.parametrize(("bits", "backend"), BASES, ids=IDS)
def test_linear_weights_are_stored_quantized_and_interventions_stay_fp32(base_dir, bits, backend):
    full, quantized = load(base_dir), load(base_dir, bits, backend)
    assert quantization_of(full) is None
    described = quantization_of(quantized)
    assert described["backend"] == backend and described["bits"].startswith(bits)
    layer_full, layer_q = full.model.layers[0], quantized.model.layers[0]
    ratio = stored_bytes(layer_q) / stored_bytes(layer_full)
    assert ratio < (0.3 if bits == "8bit" else 0.2)  # int8 + scales ≈ ¼ of fp32, int4 + scales ≈ ⅛ (+ norms)
    model = reft(quantized)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.intervention_parameters())
    assert not any(p.requires_grad for p in model.model.parameters())


@pytest.mark.parametrize(("bits", "backend"), BASES, ids=IDS)
def test_gradients_reach_the_interventions_as_on_the_full_base(base_dir, bits, backend):
    """Same interventions, same batch: the loss and the interventions' gradient on the quantized base agree with the
    fp32 base's up to the weights' quantization error (gradients flow through the dequantized matmuls)."""
    loss_full, grad_full = grads(reft(load(base_dir)))
    loss_q, grad_q = grads(reft(load(base_dir, bits, backend)))
    assert torch.isfinite(grad_q).all() and grad_q.norm() > 0
    # measured on this model: 8bit ≤ 0.0014 relative / cosine ≥ 0.998; 4bit ≤ 0.025 / ≥ 0.84 (random weights, not
    # the smooth ones NF4/int4 groups are made for)
    assert abs(loss_q - loss_full) / loss_full < (0.01 if bits == "8bit" else 0.06)
    cosine = torch.nn.functional.cosine_similarity(grad_q, grad_full, dim=0)
    assert cosine > (0.99 if bits == "8bit" else 0.7), cosine


@pytest.mark.parametrize(("bits", "backend"), BASES, ids=IDS)
def test_trains_with_reft_trainer_and_the_adapter_loads_on_either_base(base_dir, bits, backend, tmp_path):
    """transformers' Trainer refuses a "purely quantized" model: a ReftModel carries trainable adapters, so it
    trains; the saved adapter is the same tensors on the fp32 base and gives the same outputs on the quantized one."""
    model = reft(load(base_dir, bits, backend))
    data = [{k: v[i].tolist() for k, v in batch(8).items() if k != "attention_mask"} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=5e-2, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
                             save_strategy="no", remove_unused_columns=False)
    trainer = ReftTrainer(model=model, args=args, train_dataset=data, data_collator=ReftDataCollator(0))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    assert training_fingerprint(args, data, model)["model"]["base_quantization"] == quantization_of(model)
    model.eval()
    probe = batch(2)
    with torch.no_grad():
        trained_logits = model(**probe).logits
    model.save_pretrained(tmp_path / "adapter", training={"base weights": "quantized"})
    saved = {k: v.clone() for k, v in model.interventions.state_dict().items()}

    on_full = ReftModel.from_pretrained(load(base_dir), tmp_path / "adapter")
    assert all(torch.equal(saved[k], v) for k, v in on_full.interventions.state_dict().items())
    again = ReftModel.from_pretrained(model.unload(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**probe).logits, trained_logits, rtol=1e-6, atol=1e-6)

    full_model = reft(load(base_dir))  # and the other way: an adapter of the fp32 base on the quantized one
    full_model.save_pretrained(tmp_path / "full_adapter")
    on_q = ReftModel.from_pretrained(load(base_dir, bits, backend), tmp_path / "full_adapter")
    assert all(torch.equal(full_model.interventions.state_dict()[k], v)
               for k, v in on_q.interventions.state_dict().items())


def test_fp32_fingerprint_has_no_quantization_entry(base_dir):
    """Runs on a plain base keep the fingerprint they had (checkpoints of older runs still resume)."""
    model = reft(load(base_dir))
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    assert "base_quantization" not in training_fingerprint(args, [], model)["model"]


@pytest.mark.parametrize(("bits", "backend", "message"), [
    ("2bit", "bitsandbytes", "quantize must be one of ['8bit', '4bit']"),
    ("8bit", "gptq", "backend must be one of ['bitsandbytes', 'torchao', 'quanto']"),
    ("4bit", "torchao", "4bit with bitsandbytes (nf4) or quanto (int4)"),
])
def test_unusable_quantization_is_refused_with_the_fix(bits, backend, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        quantization_config(bits, backend)


def test_a_missing_backend_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optimum" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'reft\[quant\]' \(or pip install optimum-quanto\)"):
        quantization_config("8bit", "quanto")


def test_cli_trains_on_a_4bit_base_and_the_card_says_so(tmp_path, capfd):
    model_dir = save_tiny_causal_lm(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"ok {i}"}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    code = cli_main(["train", "--data", str(data), "--model", model_dir, "--quantize", "4bit", "--layers", "1;2",
                     "--positions", "l1", "--epochs", "1", "--batch-size", "4", "--out", str(out)])
    assert code == 0, capfd.readouterr().err
    card = (out / "adapter" / "README.md").read_text()
    assert "bitsandbytes 4bit (nf4) weights" in card
    reloaded = ReftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out / "adapter")
    assert sum(p.numel() for p in reloaded.intervention_parameters()) > 0  # and on the fp32 base


def test_cli_refuses_a_pair_no_backend_offers_before_loading(tmp_path, capfd, monkeypatch):
    from reft.harness import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code = cli_main(["generate", "--model", save_tiny_causal_lm(tmp_path / "tiny"), "--quantize", "4bit",
                     "--quantize-backend", "torchao", "--prompt", "hi"])
    err = capfd.readouterr().err
    assert code == 2 and "--quantize 4bit --quantize-backend torchao" in err and "quanto (int4)" in err


def test_reft_serve_runs_adapters_on_a_4bit_base(tmp_path):
    """An adapter of the fp32 base served on its NF4 copy answers as ReftModel.generate on that copy (greedy)."""
    from serve._serve_common import (
        assert_same_text,
        build,
        char_tokenizer,
        make_adapter,
        openai_client,
        reference,
        running,
        serve_model,
    )

    # linear inputs of 64 features, one bitsandbytes block: on CPUs with AVX512-BF16, bitsandbytes repacks NF4
    # weights for its CPU kernel at the first no-grad forward, which fails for fewer features than a block
    base = serve_model(hidden=64)
    base.save_pretrained(tmp_path / "model")
    adapter = make_adapter(tmp_path / "adapter", 1, model=base)
    app, engine, _ = build({"a": adapter}, model=load(tmp_path / "model", "4bit", "bitsandbytes"))
    tokenizer, prompt = char_tokenizer(), "the quick brown fox"
    with running(app) as srv:
        out = openai_client(srv.url).completions.create(model="a", prompt=prompt, max_tokens=12, temperature=0)
    want, gaps = reference(load(tmp_path / "model", "4bit", "bitsandbytes"), tokenizer,
                           tokenizer(prompt)["input_ids"], 12, adapter)
    assert_same_text(out.choices[0].text, want, gaps, tokenizer)
