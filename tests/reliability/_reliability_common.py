"""Shared helpers for the reliability tests: token datasets, a character tokenizer, a small ReftTrainer run."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_llama
from transformers import TrainerCallback, TrainingArguments

from reft import ReftConfig, get_reft_model
from reft.data import IGNORE_INDEX, ReftDataCollator
from reft.harness.recipe import TrainSettings, train_reft
from reft.trainer import ReftTrainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core runner they lose 10×: use one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class CharTokenizer:
    """Enough of a transformers tokenizer for reft.data: one id per character, BOS 2, EOS 1, PAD 0."""

    bos_token_id, eos_token_id, pad_token_id = 2, 1, 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + ord(c) % (VOCAB - 3) for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


#: a 9-step ``train_reft`` run (6 examples, batch 2, 3 epochs) of a tiny Llama with a character tokenizer
RUN_CONFIG = ReftConfig(layers="1;2", positions="f2+l2", rank=4)
RUN_PROMPTS = ["add one to three", "two plus two", "the cat sat", "a b c d", "hello world", "on and on"]
RUN_RESPONSES = ["four", "four", "on the mat", "e f", "again", "and on"]
RUN_SETTINGS = dict(epochs=3, lr=2e-2, batch_size=2, max_length=64, save_steps=2, seed=3)


def tiny_run(out, *, settings=None, prompts=RUN_PROMPTS, **kwargs):
    """That run into ``out`` (``settings`` override :data:`RUN_SETTINGS`): ``train_reft``'s ``(model, metrics)``."""
    return train_reft(tiny_llama(init=0.2), CharTokenizer(), RUN_CONFIG, prompts, RUN_RESPONSES, out,
                      TrainSettings(**(RUN_SETTINGS | (settings or {}))), progress=False, **kwargs)


def token_examples(n: int = 12, seed: int = 3, prompt: int = 5, response: int = 3) -> list[dict]:
    """Pre-tokenised (prompt, response) examples of varying lengths, labels masked on the prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(3, VOCAB, (prompt + i % 4,), generator=g).tolist()
        r = torch.randint(3, VOCAB, (response + i % 3,), generator=g).tolist()
        out.append({"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r, "prompt_lengths": len(p)})
    return out


class LossLog(TrainerCallback):
    """Records (step, loss); optionally stops training after ``stop_at`` steps (saving a checkpoint there)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.points: list[tuple[int, float]] = []
        self.stop_at = stop_at

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append((state.global_step, float(logs["loss"])))

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at is not None and state.global_step == self.stop_at:
            control.should_training_stop = True
            control.should_save = True


def make_trainer(out_dir, *, config: ReftConfig | None = None, data=None, model=None, callbacks=(), eval_data=None,
                 frozen_cache: bool = True, **args):
    """A ReftTrainer on a fresh tiny Llama (seeded), logging every step, CPU only.

    ``frozen_cache=False`` turns off the reuse of the frozen blocks' output: every batch is then computed in the
    same shapes in an uninterrupted and a resumed run, so the two agree bitwise on any CPU.
    """
    torch.manual_seed(0)
    config = config or ReftConfig(layers="1;2", positions="f2+l2", tied=False, rank=4, dropout=0.3)
    reft_model = get_reft_model(model if model is not None else tiny_llama(init=0.2), config)
    if not frozen_cache:
        reft_model.frozen_cache = None
    defaults = dict(output_dir=str(out_dir), num_train_epochs=2, per_device_train_batch_size=4, learning_rate=2e-2,
                    logging_steps=1, save_strategy="steps", save_steps=2, seed=5, report_to=[], disable_tqdm=True,
                    use_cpu=True, remove_unused_columns=False, warmup_steps=1, weight_decay=0.01)
    training_args = TrainingArguments(**(defaults | args))
    return ReftTrainer(model=reft_model, args=training_args, train_dataset=data if data is not None else
                       token_examples(), eval_dataset=eval_data, data_collator=ReftDataCollator(0),
                       callbacks=list(callbacks))


def intervention_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.interventions.state_dict().items()}


CHAT_TEMPLATE = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                 "{% if add_generation_prompt %}<a>{% endif %}")


def byte_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A real (saveable) fast tokenizer: one token per byte (byte-level BPE without merges), pad 0, eos 1, bos 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_causal_lm(*, chat_template: str | None = CHAT_TEMPLATE, context: int = 128):
    """``(model, tokenizer)``: a tiny random Llama sized for :func:`byte_tokenizer`, with a context of ``context``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer(chat_template)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                         max_position_embeddings=context)
    return LlamaForCausalLM(config).eval(), tokenizer


def save_tiny_causal_lm(path, **kwargs) -> str:
    """:func:`tiny_causal_lm` saved with save_pretrained, for ``--model PATH`` (no download)."""
    model, tokenizer = tiny_causal_lm(**kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_encoder_config(path) -> str:
    """A BERT config.json only: enough for the CLI to tell an encoder (it reads the config before any weights)."""
    from transformers import BertConfig

    BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4).save_pretrained(path)
    return str(path)


def tree_state(root, skip=()) -> dict[str, tuple]:
    """Every file and folder below ``root`` (but ``skip``) with its size, mtime and content hash: to show a command
    changed nothing outside its output."""
    import hashlib
    import os

    root, skip = os.path.abspath(root), {os.path.abspath(s) for s in skip}
    state = {}
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(here, d) not in skip]
        for name in dirs + files:
            path = os.path.join(here, name)
            if path in skip:
                continue
            info = os.lstat(path)
            if os.path.isfile(path):  # a folder's own mtime moves when an entry is added to it: not compared
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
            else:
                state[os.path.relpath(path, root)] = (info.st_mode,)
    return state
