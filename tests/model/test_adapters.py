"""Named adapters: peft's API and folder layout, training only the active one, heterogeneous specs, old folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import random_batch, tiny_bert, tiny_llama
from safetensors.torch import load_file
from torch import nn

from reft import ReftConfig, ReftModel, get_reft_model
from reft.save_load import CONFIG_NAME, WEIGHTS_NAME

RELEASE = Path(__file__).resolve().parents[1] / "data" / "release-0.1.0"  # written by reft 0.1.0 (commit 9076f42)


def _strong(reft_model: ReftModel, name: str, seed: int) -> None:
    torch.manual_seed(seed)
    for p in reft_model.adapters[name].parameters():
        nn.init.normal_(p, std=0.5)


def _two_adapters():
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1;2", positions="f2+l2", tied=False, rank=4))
    reft_model.add_adapter("style", ReftConfig(layers=[0, 3], positions="l1", rank=2, intervention="direft"))
    _strong(reft_model, "default", 1)
    _strong(reft_model, "style", 2)
    return reft_model.eval()


def _bare_logits(ids, mask):
    return tiny_llama()(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("name", ["llama_f2l2_untied", "bert_classifier"])
def test_a_folder_written_by_release_0_1_0_loads_unchanged(name):
    expected = load_file(RELEASE / f"{name}_expected.safetensors")
    base = tiny_llama() if name.startswith("llama") else tiny_bert()
    loaded = ReftModel.from_pretrained(base, RELEASE / name)
    assert loaded.active_adapters == ["default"]
    logits = loaded(expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)  # other CPU: up to rounding


def test_add_set_delete_and_disable():
    reft_model = _two_adapters()
    ids, mask = random_batch([6, 4], "left")
    assert reft_model.active_adapters == ["default"] and set(reft_model.reft_configs) == {"default", "style"}
    default = reft_model(ids, attention_mask=mask).logits
    reft_model.set_adapter("style")
    style = reft_model(ids, attention_mask=mask).logits
    reft_model.set_adapter(["default", "style"])
    both = reft_model(ids, attention_mask=mask).logits
    bare = _bare_logits(ids, mask)
    assert not torch.allclose(default, style) and not torch.allclose(both, default)
    torch.testing.assert_close(both, reft_model(ids, attention_mask=mask, adapter_names=["default+style"] * 2).logits,
                               rtol=0, atol=0)
    with reft_model.disable_adapter():
        torch.testing.assert_close(reft_model(ids, attention_mask=mask).logits, bare, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown adapter 'nope'.*loaded adapters are"):
        reft_model.set_adapter("nope")
    with pytest.raises(ValueError, match="exists"):
        reft_model.add_adapter("style", ReftConfig(layers=[0]))
    with pytest.raises(ValueError, match="invalid adapter name"):
        reft_model.add_adapter("a+b", ReftConfig(layers=[0]))
    reft_model.delete_adapter("style")
    assert reft_model.active_adapters == ["default"]
    torch.testing.assert_close(reft_model(ids, attention_mask=mask).logits, default, rtol=0, atol=0)
    hooked = reft_model.model.model.layers[0]  # only "style" edited layer 0: its hook is gone
    assert not hooked._forward_hooks
    base = reft_model.unload()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in base.modules())
    torch.testing.assert_close(base(input_ids=ids, attention_mask=mask).logits, bare, rtol=0, atol=0)


def test_training_trains_the_active_adapter_only():
    reft_model = _two_adapters().train()
    reft_model.set_adapter("style")
    frozen = {k: v.clone() for k, v in reft_model.adapters["default"].state_dict().items()}
    start = {k: v.clone() for k, v in reft_model.adapters["style"].state_dict().items()}
    trainable = [p for p in reft_model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in reft_model.adapters["style"].parameters()}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    ids, mask = random_batch([7, 5, 6], "right", seed=3)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # 3-token prompts
    for _ in range(3):
        reft_model(ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    for key, value in reft_model.adapters["default"].state_dict().items():
        assert torch.equal(value, frozen[key]), key  # bitwise unchanged
    assert any(not torch.equal(v, start[k]) for k, v in reft_model.adapters["style"].state_dict().items())
    # …and unused: the loss is that of "style" alone
    alone = get_reft_model(tiny_llama(), reft_model.reft_configs["style"])
    alone.adapters["default"].load_state_dict(reft_model.adapters["style"].state_dict())
    torch.testing.assert_close(alone(ids, attention_mask=mask, labels=labels).loss,
                               reft_model(ids, attention_mask=mask, labels=labels).loss, rtol=0, atol=0)


def test_save_pretrained_uses_peft_layout_and_loads_back(tmp_path):
    reft_model = _two_adapters()
    reft_model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md", "style"])
    assert sorted(os.listdir(tmp_path / "style")) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md"])
    again = ReftModel.from_pretrained(tiny_llama(), tmp_path)
    again.load_adapter(tmp_path / "style", adapter_name="style")
    ids, mask = random_batch([6, 3, 5], "left", seed=1)
    names = ["default", "style", "default-style"]
    torch.testing.assert_close(again(ids, attention_mask=mask, adapter_names=names).logits,
                               reft_model(ids, attention_mask=mask, adapter_names=names).logits, rtol=0, atol=0)
    assert not any(p.requires_grad for p in again.parameters())
    only = tmp_path / "only"
    reft_model.save_pretrained(only, selected_adapters=["style"])
    assert os.listdir(only) == ["style"]
    reft_model.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1").exists()
    with pytest.raises(ValueError, match="unknown adapter"):
        reft_model.save_pretrained(tmp_path / "x", selected_adapters=["nope"])


def test_load_adapter_refuses_another_base_and_leaves_nothing_behind(tmp_path):
    other = get_reft_model(tiny_llama(hidden=64), ReftConfig(layers=[1], positions="l1", rank=2))
    other.save_pretrained(tmp_path / "wide")
    reft_model = _two_adapters()
    with pytest.raises(ValueError, match="hidden size 64 .checkpoint. vs 32"):
        reft_model.load_adapter(tmp_path / "wide", adapter_name="wide")
    assert set(reft_model.adapters) == {"default", "style"}


def test_a_second_wrap_says_what_to_do():
    model = tiny_llama()
    reft_model = get_reft_model(model, ReftConfig(layers=[1]))
    with pytest.raises(ValueError, match="already wrapped.*add_adapter.*unload"):
        get_reft_model(model, ReftConfig(layers=[2]))
    again = get_reft_model(reft_model.unload(), ReftConfig(layers=[2]))
    assert again.reft_config.layers == [2]


def test_the_base_model_is_the_base_model_outside_a_reft_call():
    """After a ReftModel forward, the wrapped model itself computes the bare model, at any batch size."""
    reft_model = _two_adapters()
    ids, mask = random_batch([6, 4], "right")
    reft_model(ids, attention_mask=mask)
    reft_model.generate(ids[:1, :4], max_new_tokens=2, do_sample=False, pad_token_id=0)
    for rows in (1, 2, 3):
        ids3, mask3 = random_batch([5] * rows, "right", seed=rows)
        torch.testing.assert_close(reft_model.model(input_ids=ids3, attention_mask=mask3).logits,
                                   _bare_logits(ids3, mask3), rtol=0, atol=0)


def test_gradient_checkpointing_recomputes_the_edit():
    """Backward's recomputation of checkpointed layers applies the same edits (it runs after forward returned)."""
    grads = []
    ids, mask = random_batch([7, 5], "right", seed=2)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    for checkpointing in (False, True):
        reft_model = _two_adapters().train()  # edits inside the checkpointed blocks: at their MLP's output
        reft_model.add_adapter("inner", ReftConfig(layers=[1, 2], positions="f1+l1", rank=2, component="mlp_output"))
        _strong(reft_model, "inner", 5)
        reft_model.set_adapter(["default", "style", "inner"])
        if checkpointing:
            reft_model.gradient_checkpointing_enable()
        reft_model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in reft_model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_labels_without_prompt_lengths_edit_the_prompt_only():
    reft_model = _two_adapters()
    ids, mask = random_batch([7, 5], "right", seed=2)
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4], labels[1, :2] = -100, -100
    given = reft_model(ids, attention_mask=mask, labels=labels, prompt_lengths=torch.tensor([4, 2])).loss
    torch.testing.assert_close(reft_model(ids, attention_mask=mask, labels=labels).loss, given, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mask the prompt with -100"):
        reft_model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


def test_generate_refuses_right_padding_and_runs_in_eval_mode():
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers=[1], positions="l1", rank=2, dropout=0.5))
    _strong(reft_model, "default", 3)
    ids, mask = random_batch([6, 3], "right")
    with pytest.raises(ValueError, match="left-padded"):
        reft_model.generate(ids, attention_mask=mask, max_new_tokens=2)
    ids, mask = random_batch([6, 3], "left")
    reft_model.train()
    out = [reft_model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
           for _ in range(3)]
    assert reft_model.training and all(torch.equal(o, out[0]) for o in out)  # no dropout inside, mode restored
    reft_model.eval()
    assert torch.equal(reft_model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                           pad_token_id=0), out[0])


def test_heterogeneous_specs_round_trip_count_and_equal_their_parts(tmp_path, capsys):
    specs = [{"layers": [1], "positions": "l1", "rank": 2, "intervention": "loreft", "component": "mlp_output"},
             {"layers": [0, 2], "positions": "f2+l2", "tied": False, "rank": 3, "intervention": "direft"}]
    cfg = ReftConfig(representations=specs)
    assert ReftConfig.from_json(cfg.to_json()) == cfg
    reft_model = get_reft_model(tiny_llama(), cfg)
    assert sorted(reft_model.interventions) == ["r0_layer1", "r1_layer0_first", "r1_layer0_last",
                                                "r1_layer2_first", "r1_layer2_last"]
    _strong(reft_model, "default", 4)
    reft_model.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert "loreft rank 2 at mlp_output of layers [1], positions l1: 130 params" in printed  # 2·32·2 + 2
    # 4 · (2·32·3 + 3)
    assert "direft rank 3 at block_output of layers [0, 2], positions f2+l2 untied: 780 params" in printed
    # one adapter of two specs = two one-spec adapters composed (its specs edit other modules: exact)
    for j, spec in enumerate(specs):
        name = f"part{j}"
        reft_model.add_adapter(name, ReftConfig(**spec))
        state = reft_model.adapters["default"].interventions.state_dict()
        own = {k.removeprefix(f"r{j}_"): v for k, v in state.items() if k.startswith(f"r{j}_")}
        reft_model.adapters[name].interventions.load_state_dict(own)
    ids, mask = random_batch([6, 2, 5], "left", seed=5)
    whole = reft_model(ids, attention_mask=mask).logits
    parts = reft_model(ids, attention_mask=mask, adapter_names=["part0+part1"] * 3).logits
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)
    reft_model.save_pretrained(tmp_path)
    again = ReftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(again(ids, attention_mask=mask).logits, whole, rtol=0, atol=0)


@pytest.mark.parametrize("bad, match", [
    ([{"rnk": 2}], r"representations\[0\]: unknown keys \['rnk'\]"),
    ([{"rank": 0}], r"representations\[0\]: rank must be a positive integer"),
    ([{}, {"positions": "f7x"}], r"representations\[1\]: cannot parse positions"),
    (["l1"], r"representations\[0\]: must be a dict"),
])
def test_bad_specs_name_the_spec_and_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        ReftConfig(representations=bad)


def test_load_adapter_of_the_wrong_kind_says_which_class_fits(tmp_path):
    from reft import UnknownAdapterError

    classifier = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=2), num_labels=3)
    classifier.save_pretrained(tmp_path / "clf")
    plain = get_reft_model(tiny_bert(), None)
    with pytest.raises(ValueError, match="classifier adapter .a head for 3 labels.*ReftModel.from_pretrained"):
        plain.load_adapter(tmp_path / "clf", adapter_name="clf")
    assert type(ReftModel.from_pretrained(tiny_bert(), tmp_path / "clf")).__name__ == \
        "ReftModelForSequenceClassification"
    with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'"):
        plain.parse_adapter_spec("nope")
