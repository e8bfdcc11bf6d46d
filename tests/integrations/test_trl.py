"""TRL's SFT and DPO trainers on a ReftModel (reft.integrations.trl), on a tiny random Llama with a byte tokenizer."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from reliability._reliability_common import one_thread, tiny_causal_lm  # noqa: F401  (one_thread: autouse)
from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from reft import ReftConfig, ReftModel, get_reft_model
from reft.data import IGNORE_INDEX, ReftDataCollator
from reft.integrations.trl import ReftDPOTrainer, ReftSFTTrainer, training_chat_template
from reft.trainer import ReftTrainer

# SmolLM2-135M-Instruct's chat template, verbatim
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt"
    " %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ARGS = dict(per_device_train_batch_size=4, report_to=[], use_cpu=True, logging_steps=1, bf16=False, seed=3,
            activation_checkpointing=False, learning_rate=2e-2, disable_tqdm=True, save_strategy="no", warmup_steps=0)


def _reft(layers: str = "1;2", positions: str = "f2+l2", **config) -> tuple[ReftModel, object]:
    model, tokenizer = tiny_causal_lm()
    torch.manual_seed(1)
    return get_reft_model(model, ReftConfig(layers=layers, positions=positions, rank=2, **config)), tokenizer


def _pairs(n: int, start: int = 0) -> Dataset:
    return Dataset.from_list([{"prompt": f"q{i} is it?", "completion": f" a{i}" + "!" * (i % 3)}
                              for i in range(start, start + n)])


def _state(model: ReftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.interventions.state_dict().items()}


class _Losses:
    def __init__(self):
        self.values: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.values.append(float(logs["loss"]))


def _callback(losses: _Losses):
    from transformers import TrainerCallback

    return type("LossLog", (TrainerCallback,), {"on_log": lambda self, *a, **k: losses.on_log(*a, **k)})()


def test_sft_loss_and_updates_equal_reft_trainers(tmp_path):
    """The same data and arguments through TRL's SFTTrainer and through ReftTrainer: the same losses and the same
    trained interventions, up to fp32 rounding (the two pad and batch the frozen blocks differently)."""
    reft_a, tokenizer = _reft()
    initial = _state(reft_a)
    sft_losses, reft_losses = _Losses(), _Losses()
    sft = ReftSFTTrainer(model=reft_a, args=SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=4, **ARGS),
                         train_dataset=_pairs(12), processing_class=tokenizer, callbacks=[_callback(sft_losses)])
    tokenized = sft.train_dataset
    sft.train()

    reft_b, _ = _reft()
    rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in tokenized]  # TRL's tokens, as is
    assert all(r["labels"][0] == IGNORE_INDEX for r in rows)
    plain = ReftTrainer(model=reft_b, args=TrainingArguments(output_dir=str(tmp_path / "reft"), max_steps=4,
                                                             remove_unused_columns=False, **ARGS),
                        train_dataset=rows, data_collator=ReftDataCollator(tokenizer.pad_token_id),
                        callbacks=[_callback(reft_losses)])
    plain.train()

    assert len(sft_losses.values) == 4
    torch.testing.assert_close(torch.tensor(sft_losses.values), torch.tensor(reft_losses.values), rtol=1e-5, atol=0)
    trained_sft, trained_reft = _state(reft_a), _state(reft_b)
    assert any((trained_sft[k] - initial[k]).abs().max() > 1e-3 for k in initial)  # the interventions did train
    for k in initial:
        torch.testing.assert_close(trained_sft[k], trained_reft[k], rtol=1e-4, atol=1e-5)

    sft.save_model(str(tmp_path / "saved"))
    loaded = ReftModel.from_pretrained(tiny_causal_lm()[0], str(tmp_path / "saved"))
    for k, v in _state(loaded).items():
        torch.testing.assert_close(v, trained_sft[k], rtol=0, atol=0)


def test_training_template_renders_as_smollm2s_and_marks_the_answers():
    _, tokenizer = tiny_causal_lm()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    template = training_chat_template(tokenizer)
    assert "{% generation %}" in template
    for messages in ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                     [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"},
                      {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]):
        for add in (False, True):
            original = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            training = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add,
                                                     chat_template=template)
            assert training == original
    _, plain = tiny_causal_lm()  # reliability's template: no markers, unknown to TRL and reft
    with pytest.raises(ValueError, match="prompt/completion"):
        training_chat_template(plain)


def test_sft_on_messages_with_assistant_only_loss(tmp_path):
    """Chat messages + assistant_only_loss on SmolLM2's template (no generation markers): trained on the answer
    and its end-of-turn token only, the tokenizer the user passed left as it was."""
    reft_model, tokenizer = _reft()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    data = Dataset.from_list([{"messages": [{"role": "user", "content": f"say {i}"},
                                            {"role": "assistant", "content": f"ok {i}"}]} for i in range(8)])
    trainer = ReftSFTTrainer(model=reft_model, train_dataset=data, processing_class=tokenizer,
                             args=SFTConfig(output_dir=str(tmp_path), max_steps=2, assistant_only_loss=True, **ARGS))
    assert tokenizer.chat_template == SMOLLM2_TEMPLATE
    example = trainer.train_dataset[3]
    answer = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert answer == "ok 3<|im_end|>"
    before = _state(reft_model)
    trainer.train()
    assert any((v - before[k]).abs().max() > 0 for k, v in _state(reft_model).items())


@pytest.mark.parametrize("make, match", [
    (lambda t: dict(train_dataset=Dataset.from_list([{"text": "plain text"}] * 4)), "no prompt to edit"),
    (lambda t: dict(train_dataset=Dataset.from_list([{"messages": [{"role": "user", "content": "a"}]}] * 4)),
     "assistant_only_loss=True"),
    (lambda t: dict(train_dataset=_pairs(4), args=SFTConfig(output_dir=t, packing=True, **ARGS)), "packing"),
    (lambda t: dict(train_dataset=_pairs(4), args=SFTConfig(output_dir=t, completion_only_loss=False, **ARGS)),
     "completion_only_loss"),
    (lambda t: dict(train_dataset=_pairs(4), model=tiny_causal_lm()[0]), "trains a reft.ReftModel"),
])
def test_sft_refuses_what_it_cannot_edit(tmp_path, make, match):
    reft_model, tokenizer = _reft()
    kwargs = dict(model=reft_model, args=SFTConfig(output_dir=str(tmp_path), **ARGS), processing_class=tokenizer)
    kwargs |= make(str(tmp_path))
    with pytest.raises((ValueError, TypeError), match=match):
        ReftSFTTrainer(**kwargs)


def _preferences(n: int, start: int = 0) -> Dataset:
    return Dataset.from_list([{"prompt": f"q{i} ok?", "chosen": " yes", "rejected": " no"}
                              for i in range(start, start + n)])


def _dpo(tmp_path, reft_model, tokenizer, **args) -> ReftDPOTrainer:
    return ReftDPOTrainer(model=reft_model, processing_class=tokenizer, train_dataset=_preferences(24),
                          eval_dataset=_preferences(8, start=100),
                          args=DPOConfig(output_dir=str(tmp_path), **(ARGS | args)))


def test_dpo_reference_is_the_bare_base_sharing_its_storage(tmp_path):
    reft_model, tokenizer = _reft()
    storage = {p.data_ptr() for p in reft_model.model.parameters()}
    trainer = _dpo(tmp_path, reft_model, tokenizer, max_steps=1)
    assert trainer.ref_model is reft_model.model
    assert {p.data_ptr() for p in trainer.ref_model.parameters()} == storage
    ids = torch.tensor([tokenizer("q1 ok? yes")["input_ids"]])
    with torch.no_grad():
        ref = trainer.ref_model(input_ids=ids).logits
        with reft_model.disable_adapter():
            bare = reft_model(input_ids=ids).logits
        edited = reft_model(input_ids=ids).logits
    torch.testing.assert_close(ref, bare, rtol=0, atol=0)
    assert (edited - bare).abs().max() > 1e-4  # the reference really is unedited


def test_dpo_never_edits_the_responses(tmp_path):
    """An intervention on the last block at the last prompt position: the policy's log-probabilities of chosen and
    rejected tokens equal the bare reference's except the first response token (predicted from that position)."""
    reft_model, tokenizer = _reft(layers="3", positions="l1")
    trainer = _dpo(tmp_path, reft_model, tokenizer, max_steps=1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    completion = batch.pop("completion_mask")
    labels = batch["input_ids"].masked_fill(completion == 0, -100)
    with torch.no_grad():
        policy = reft_model(**batch, labels=labels, fused_lm_head=True).log_probs
        ref = trainer.ref_model(**batch, labels=labels, fused_lm_head=True).log_probs
    target = completion[:, 1:].bool()  # label t+1, predicted at position t
    first = target & ~torch.nn.functional.pad(target, (1, 0))[:, :-1]
    later = target & ~first
    assert int(first.sum()) == 8 and int(later.sum()) > 0  # 4 pairs, chosen and rejected rows
    assert (policy - ref)[first].abs().min() > 1e-5
    torch.testing.assert_close(policy[later], ref[later], rtol=0, atol=1e-6)


def test_dpo_held_out_margin_rises(tmp_path):
    reft_model, tokenizer = _reft()
    trainer = _dpo(tmp_path, reft_model, tokenizer, max_steps=12, learning_rate=3e-2, beta=1.0)
    before = trainer.evaluate()["eval_rewards/margins"]
    trainer.train()
    after = trainer.evaluate()["eval_rewards/margins"]
    assert after > before + 0.2 and after > 0, (before, after)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ref_model="x"), "leave ref_model out"),
    (dict(args_extra=dict(sync_ref_model=True)), "sync_ref_model"),
    (dict(args_extra=dict(padding_free=True)), "padding_free"),
])
def test_dpo_refuses_a_second_reference(tmp_path, kwargs, match):
    reft_model, tokenizer = _reft()
    args = DPOConfig(output_dir=str(tmp_path), **(ARGS | kwargs.pop("args_extra", {})))
    with pytest.raises(ValueError, match=match):
        ReftDPOTrainer(model=reft_model, args=args, processing_class=tokenizer, train_dataset=_preferences(4),
                       **kwargs)
