"""The LoRA baseline (Hu et al., 2021) through the ``peft`` library, on the same data, model and evaluation as ReFT.

LoRA replaces a frozen linear map ``y = W₀ x`` (``W₀ ∈ ℝ^{d_out×d_in}``) by

    y = W₀ x + (α / r) · B A x,      A ∈ ℝ^{r×d_in},  B ∈ ℝ^{d_out×r}  (B = 0 at init)

so each adapted matrix adds ``r · (d_in + d_out)`` trainable parameters; with the default targets (query and
value projections of every layer) a model with ``L`` layers gets ``L · r · [(d + d_q) + (d + d_v)]``, i.e.
``2 · L · r · (d_in + d_out)`` when both projections are square (BERT, MiniLM). Llama models with grouped-query
attention have a narrower ``v_proj`` (``d_v = n_kv_heads · head_dim``).

* Causal LMs: :func:`train_lora_causal` trains on (prompt, response) pairs tokenised exactly as ReFT's
  (:func:`reft.data.make_supervised_dataset`, prompt labels ``-100``) with the same collator, and the loss over
  response tokens only (vocabulary logits are computed only where there is a label, as in :class:`reft.ReftModel`).
* Classification: :class:`LoraForSequenceClassification` = LoRA on the encoder + the same head type as
  :class:`reft.ReftModelForSequenceClassification`, trained with :func:`reft.harness.classification.fit_classifier`;
  :class:`ProbeForSequenceClassification` = the frozen encoder + the same head, only the head trains (the probe
  baseline: what the frozen [CLS] features give without any adapter).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from ..config import check_prompt_format
from ..data import ReftDataCollator, check_fits_context, make_supervised_dataset
from ..fast.loss import has_plain_lm_head
from ..model.layers import transformers_model
from ..save_load import atomic_directory
from ..trainer import FiniteGuard, NonFiniteLossError, training_fingerprint
from .classification import BASE_DROPOUT, classification_loss, fit_classifier
from .interrupt import stop_on_interrupt
from .recipe import TrainSettings, reporting_callbacks, training_arguments, write_run_outputs
from .runs import CHECKPOINTS, claim, run_folder

#: default LoRA target modules (query and value projections) per ``config.model_type``
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: ("q_proj", "v_proj") for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo",
                                          "olmo2", "opt")},
    **{t: ("query", "value") for t in ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra")},
    "gpt2": ("c_attn",),
}
HEAD_FILE = "lora_head.safetensors"
#: how the training prompts were rendered (:func:`reft.generation.prompt_format`), beside a causal LoRA adapter
PROMPT_FORMAT_FILE = "prompt_format.json"
PROBE_FILE = "probe_head.safetensors"
#: the names a LoRA adapter save writes (peft's files and the head): the only ones it replaces
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", HEAD_FILE, PROMPT_FORMAT_FILE)


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``target_modules=None`` picks :data:`LORA_TARGETS` for the model type."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None


def default_lora_targets(model: nn.Module) -> list[str]:
    """The query/value projection names of ``model``'s architecture.

    Raises:
        ValueError: an architecture not in :data:`LORA_TARGETS`; pass ``target_modules`` explicitly.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LORA_TARGETS:
        raise ValueError(f"no default LoRA targets for model type {model_type!r}: pass target_modules (the names "
                         f"of the linear layers to adapt, e.g. ['q_proj', 'v_proj'])")
    return list(LORA_TARGETS[model_type])


def count_parameters(model: nn.Module, *, trainable: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def lora_parameters(model: nn.Module) -> int:
    """Number of LoRA parameters (``lora_A`` / ``lora_B`` tensors) in a peft model."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    """peft asks transformers 5 for ``is_gradient_checkpointing``, whose deprecation warning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")
        yield


def get_lora_model(model: nn.Module, settings: LoraSettings | None = None):
    """Freeze ``model`` and add LoRA to its target linear layers (``peft.get_peft_model``; mutates ``model``)."""
    from peft import LoraConfig, get_peft_model

    settings = settings or LoraSettings()
    if settings.rank < 1:
        raise ValueError(f"LoRA rank must be ≥ 1, got {settings.rank}")
    targets = list(settings.target_modules) if settings.target_modules else default_lora_targets(model)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    for p in model.parameters():
        p.requires_grad_(False)
    with _peft_quietly():
        return get_peft_model(model, config)


# ---- causal LM -------------------------------------------------------------------------------------------------
def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   num_items_in_batch: int | torch.Tensor | None = None) -> CausalLMOutputWithPast:
    """Next-token cross-entropy over the label tokens (``labels != -100``, shifted by one), averaged over them.

    Equal to ``model(input_ids, attention_mask=…, labels=labels).loss`` but, for plain ``lm_head`` models, the
    vocabulary logits are computed only at positions that predict a label. Works on a peft model or a bare LM.
    """
    inner = transformers_model(model)
    if not has_plain_lm_head(inner):
        kwargs = {"num_items_in_batch": num_items_in_batch} if num_items_in_batch is not None else {}
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
    hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(loss.device)
    return CausalLMOutputWithPast(loss=loss / denom, logits=None)


class LoraCausalTrainer(Trainer):
    """`Trainer` for a peft causal LM fed by :class:`reft.data.ReftDataCollator` batches (``prompt_lengths`` is
    dropped; the loss is :func:`causal_lm_loss`, averaged over label tokens across gradient-accumulation steps)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {k: v for k, v in inputs.items() if k != "prompt_lengths"}
        outputs = causal_lm_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                 num_items_in_batch)
        loss = outputs.loss
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}: lower "
                                     "the learning rate")
        return (loss, outputs) if return_outputs else loss


def train_lora_causal(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    out_dir: str | os.PathLike,
    settings: TrainSettings | None = None,
    lora: LoraSettings | None = None,
    *,
    progress: bool = True,
    prompt_format: dict | None = None,
):
    """LoRA on (prompt, response) pairs; writes ``out_dir/adapter`` (peft format, plus ``prompt_format.json`` when
    ``prompt_format`` is given, read back by :func:`load_lora`), ``loss_curve.png`` and ``train_metrics.json`` like
    :func:`reft.harness.recipe.train_reft`.

    Returns:
        ``(peft_model, metrics)``; ``metrics["trainable_parameters"]`` counts the LoRA parameters.
    """
    settings = settings or TrainSettings()
    with run_folder(out_dir) as out_dir:
        dataset = make_supervised_dataset(tokenizer, prompts, responses, max_length=settings.max_length)
        check_fits_context(dataset, model)
        torch.manual_seed(settings.seed)
        peft_model = get_lora_model(model, lora)
        args = training_arguments(settings, os.path.join(out_dir, CHECKPOINTS), progress=progress,
                                  save_strategy="no")
        trainer = LoraCausalTrainer(model=peft_model, args=args, train_dataset=dataset,
                                    callbacks=[FiniteGuard(), *reporting_callbacks(settings, out_dir)],
                                    data_collator=ReftDataCollator(tokenizer.pad_token_id))
        claim(out_dir, training_fingerprint(args, dataset, peft_model))
        with stop_on_interrupt(trainer):
            result = trainer.train()
        peft_model.eval()

        def write(tmp: str) -> None:
            peft_model.save_pretrained(tmp)
            if prompt_format is not None:
                with open(os.path.join(tmp, PROMPT_FORMAT_FILE), "w", encoding="utf-8") as f:
                    json.dump(prompt_format, f, indent=2)

        atomic_directory(os.path.join(out_dir, "adapter"), write, owned=LORA_FILES)
        peft_model.prompt_format = prompt_format
        metrics = write_run_outputs(out_dir, trainer.state, dict(result.metrics) | {
            "examples": len(dataset), "trainable_parameters": count_parameters(peft_model)}, title="LoRA training")
    return peft_model, metrics


# ---- classification --------------------------------------------------------------------------------------------
class _EncoderWithHead(nn.Module):
    """An encoder (``.model``) + the ReFT classification head on the first token (see
    :mod:`reft.harness.classification`): ``logits = head(encoder(x).last_hidden_state[:, 0])``, ``[B, num_labels]``."""

    def __init__(self, encoder: nn.Module, num_labels: int, head_dropout: float = 0.1) -> None:
        super().__init__()
        from ..model.classification import ClassificationHead

        if num_labels < 1:
            raise ValueError(f"num_labels must be ≥ 1 (1 = regression), got {num_labels}")
        self.model = encoder
        self.num_labels = num_labels
        device = next(encoder.parameters()).device
        self.head = ClassificationHead(encoder.config.hidden_size, num_labels, head_dropout).to(device)

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.head(hidden[:, 0])
        loss = classification_loss(logits, labels, self.num_labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}


class LoraForSequenceClassification(_EncoderWithHead):
    """LoRA on an encoder + the ReFT classification head on the first token (see :mod:`reft.harness.classification`).

    Args:
        peft_model: an encoder (e.g. ``BertModel``) wrapped by :func:`get_lora_model`.
        num_labels: classes (1 = regression).
        head_dropout: dropout inside the head. Default: 0.1
    """

    def __init__(self, peft_model: nn.Module, num_labels: int, head_dropout: float = 0.1) -> None:
        super().__init__(peft_model, num_labels, head_dropout)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """The peft adapter files plus ``lora_head.safetensors`` (head weights, ``num_labels`` in the metadata)."""
        state = self._head_state()

        def write(tmp: str) -> None:
            self.model.save_pretrained(tmp)
            save_file(state, os.path.join(tmp, HEAD_FILE), metadata={"num_labels": str(self.num_labels)})

        atomic_directory(directory, write, owned=LORA_FILES)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | os.PathLike) -> LoraForSequenceClassification:
        from peft import PeftModel
        from safetensors import safe_open

        path = os.path.join(directory, HEAD_FILE)
        with safe_open(path, framework="pt") as f:
            num_labels = int((f.metadata() or {})["num_labels"])
        with _peft_quietly():
            out = cls(PeftModel.from_pretrained(model, directory), num_labels)
        out.head.load_state_dict(load_file(path))
        return out.eval()


class ProbeForSequenceClassification(_EncoderWithHead):
    """The probe baseline: a frozen encoder + the ReFT classification head; only the head trains.

    The head is the same two-layer head as every other method's (``W_o tanh(W_d h_CLS + b_d) + b_o``), so this is
    "what the frozen [CLS] features give", the floor an adapter has to beat.

    Args:
        encoder: the base encoder (e.g. ``BertModel``); its parameters are frozen (mutates it).
        num_labels: classes (1 = regression).
        head_dropout: dropout inside the head. Default: 0.1
    """

    def __init__(self, encoder: nn.Module, num_labels: int, head_dropout: float = 0.1) -> None:
        for p in encoder.parameters():
            p.requires_grad_(False)
        super().__init__(encoder, num_labels, head_dropout)
        #: h_CLS ``[d]`` per input (key: the row's unpadded token ids and token types), filled while the frozen
        #: encoder is deterministic (no active dropout): every later epoch runs the head alone. Equal to recomputing
        #: up to fp32 rounding (a row's features come from the batch it was first seen in). None: off.
        self.feature_cache: dict[bytes, torch.Tensor] | None = {}

    def _deterministic(self) -> bool:
        return not any(m.training and m.p > 0 for m in self.model.modules()
                       if isinstance(m, nn.modules.dropout._DropoutNd))

    def _features(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        """``[B, d]``: the frozen encoder's h_CLS, from :attr:`feature_cache` where every row is there."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.feature_cache is None or not self._deterministic():
            with torch.no_grad():
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state[:, 0]
        mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        keys = [input_ids[i][mask[i]].cpu().numpy().tobytes() + b"|" + types[i][mask[i]].cpu().numpy().tobytes()
                for i in range(input_ids.shape[0])]
        if not all(k in self.feature_cache for k in keys):
            with torch.no_grad():
                cls = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state[:, 0]
            for k, row in zip(keys, cls):
                self.feature_cache[k] = row.clone()
            return cls
        return torch.stack([self.feature_cache[k] for k in keys])

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
        logits = self.head(self._features(input_ids, attention_mask, token_type_ids))
        loss = classification_loss(logits, labels, self.num_labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``probe_head.safetensors``: the head's weights, ``num_labels`` in the metadata."""
        state = self._head_state()
        atomic_directory(directory, lambda tmp: save_file(state, os.path.join(tmp, PROBE_FILE),
                                                           metadata={"num_labels": str(self.num_labels)}),
                         owned=(PROBE_FILE,))

    @classmethod
    def from_pretrained(cls, encoder: nn.Module, directory: str | os.PathLike) -> ProbeForSequenceClassification:
        from safetensors import safe_open

        path = os.path.join(directory, PROBE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} holds no {PROBE_FILE}: not a probe folder")
        with safe_open(path, framework="pt") as f:
            num_labels = int((f.metadata() or {})["num_labels"])
        out = cls(encoder, num_labels)
        out.head.load_state_dict(load_file(path))
        return out.eval()


def train_lora_classifier(model: nn.Module, tokenizer, task, train_examples, dev_examples,
                          out_dir: str | os.PathLike, settings: TrainSettings | None = None,
                          lora: LoraSettings | None = None, *, progress: bool = True,
                          base_dropout_active: bool = BASE_DROPOUT):
    """LoRA + head on a GLUE task with dev-set model selection; saves ``out_dir/adapter``.

    ``base_dropout_active``: see :func:`reft.harness.classification.base_dropout` (LoRA's own dropout stays).

    Returns:
        ``(classifier, info)`` with ``info`` as in :func:`reft.harness.classification.fit_classifier`.
    """
    settings = settings or TrainSettings()
    with run_folder(out_dir) as out_dir:
        torch.manual_seed(settings.seed)
        classifier = LoraForSequenceClassification(get_lora_model(model, lora), task.num_labels)
        info = fit_classifier(classifier, tokenizer, task, train_examples, dev_examples, out_dir, settings,
                              trainer_cls=Trainer, progress=progress, base_dropout_active=base_dropout_active)
        classifier.save_pretrained(os.path.join(out_dir, "adapter"))
    return classifier, info


def train_probe_classifier(model: nn.Module, tokenizer, task, train_examples, dev_examples,
                           out_dir: str | os.PathLike, settings: TrainSettings | None = None, *,
                           progress: bool = True, base_dropout_active: bool = BASE_DROPOUT):
    """The head alone on the frozen encoder (:class:`ProbeForSequenceClassification`) with dev-set model selection;
    saves ``out_dir/adapter/probe_head.safetensors``.

    Returns:
        ``(classifier, info)`` with ``info`` as in :func:`reft.harness.classification.fit_classifier`.
    """
    settings = settings or TrainSettings()
    with run_folder(out_dir) as out_dir:
        torch.manual_seed(settings.seed)
        classifier = ProbeForSequenceClassification(model, task.num_labels)
        info = fit_classifier(classifier, tokenizer, task, train_examples, dev_examples, out_dir, settings,
                              trainer_cls=Trainer, progress=progress, base_dropout_active=base_dropout_active)
        classifier.save_pretrained(os.path.join(out_dir, "adapter"))
    return classifier, info


def load_lora(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """A saved LoRA adapter on ``model``: a :class:`LoraForSequenceClassification` when the folder holds a head,
    else a ``peft.PeftModel`` (causal LM), in eval mode, with ``.prompt_format`` = the recorded prompt format
    (``prompt_format.json``) or None."""
    from peft import PeftModel

    if not os.path.isfile(os.path.join(directory, "adapter_config.json")):
        raise FileNotFoundError(f"{directory} holds no adapter_config.json: not a LoRA adapter folder "
                                "(a ReFT adapter is loaded with --adapter)")
    if os.path.isfile(os.path.join(directory, HEAD_FILE)):
        return LoraForSequenceClassification.from_pretrained(model, directory)
    with _peft_quietly():
        peft_model = PeftModel.from_pretrained(model, directory).eval()
    path = os.path.join(directory, PROMPT_FORMAT_FILE)
    recorded = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        check_prompt_format(recorded)
    peft_model.prompt_format = recorded
    return peft_model
