"""TRL's SFT and DPO trainers on a :class:`~reft.ReftModel` (extra ``reft[trl]``, tested with trl 1.16.0).

TRL computes its losses with a *fused LM head*: ``model(..., labels=y, fused_lm_head=True)`` returns the per-token
log-probabilities ``log p(y_t | y_<t)`` ``[B, T-1]`` without building the ``[B, T, V]`` logits. It installs that head
by replacing ``model.forward`` with one that calls the backbone directly, which on a ReftModel would skip the
interventions (nothing trainable in the graph). Here the head goes on the transformers model *inside* the ReftModel
and ``ReftModel.forward`` stays the entry, so every TRL forward runs under the edit plan: Φ at the prompt positions
(found from ``attention_mask`` and the first label of each row), the response tokens unedited.

    >>> trainer = ReftSFTTrainer(model=reft_model, args=SFTConfig(...), train_dataset=ds, processing_class=tok)
    >>> trainer = ReftDPOTrainer(model=reft_model, args=DPOConfig(...), train_dataset=prefs, processing_class=tok)

DPO's reference policy π_ref is the bare base model: the same modules as the policy's base (no second copy),
called outside any edit plan. Both trainers checkpoint, resume and save like :class:`reft.ReftTrainer`
(:class:`reft.trainer.ReftTrainerMixin`): checkpoints hold the adapter only.
"""

from __future__ import annotations

import copy
from typing import Any

try:
    from trl import DPOTrainer, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    from trl.trainer.utils import add_fused_lm_head
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"reft.integrations.trl needs trl ({e}): pip install 'reft[trl]'") from e

from ..model.layers import is_peft_model, transformers_model
from ..model.reft_model import ReftModel
from ..trainer import ReftTrainerMixin

#: every per-token field TRL's fused head can compute; used when the fields TRL asked for cannot be read
FUSED_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")

# ChatML written as SmolLM2 (and others) write it: one expression per message. TRL ships no training version of it
_CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
_CHATML_TRAINING_TURN = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}" + _CHATML_TURN + "{% endif %}"
)


def training_chat_template(tokenizer) -> str | None:
    """A chat template for ``assistant_only_loss``: renders exactly as ``tokenizer.chat_template`` and marks the
    assistant turns (content and end-of-turn token) with ``{% generation %}``. ``None`` when the template already
    has the markers. TRL's own training templates first, then ChatML written one expression per message (SmolLM2).

    Raises:
        ValueError: the template is neither; the message names the two ways out.
    """
    template = tokenizer.chat_template
    if template is None:
        raise ValueError("assistant_only_loss needs a chat template, and the tokenizer has none: set "
                         "tokenizer.chat_template, or give prompt/completion data")
    if has_generation_markers(template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        pass
    if isinstance(template, str) and _CHATML_TURN in template:
        return template.replace(_CHATML_TURN, _CHATML_TRAINING_TURN)
    raise ValueError(
        "assistant_only_loss needs a chat template whose assistant turns are marked with {% generation %} … "
        "{% endgeneration %}, and neither TRL nor reft knows a training version of this tokenizer's template. Set "
        "tokenizer.chat_template to one with the markers, or give the data as conversational prompt/completion "
        "pairs ({'prompt': [...messages before the answer], 'completion': [{'role': 'assistant', ...}]}), which "
        "works with any template"
    )


def _check_reft_model(model: Any, trainer: str) -> ReftModel:
    if not isinstance(model, ReftModel):
        raise TypeError(f"{trainer} trains a reft.ReftModel (reft.get_reft_model(model, ReftConfig(...))), got "
                        f"{type(model).__name__}; for a model without interventions use trl.{trainer[4:]}")
    if not model.active_adapters:
        raise ValueError(f"{trainer}: the ReftModel has no active adapter to train: add_adapter(name, config) or "
                         "set_adapter(name) first")
    return model


def _check_rows(args, trainer: str) -> None:
    if getattr(args, "packing", False) or getattr(args, "padding_free", False):
        raise ValueError(f"{trainer}: ReFT edits each example at its own prompt positions, found from its row of "
                         "attention_mask and labels; packing / padding_free put several examples in one row. Set "
                         "packing=False and padding_free=False")


def _first_example(dataset) -> dict | None:
    if dataset is None or isinstance(dataset, dict):
        return None
    try:
        return next(iter(dataset))
    except (StopIteration, TypeError):
        return None


def _route_fused_head(reft_model: ReftModel) -> None:
    """Move the fused LM head TRL put on ``reft_model`` (an instance ``forward``) to its transformers model, with
    the per-token fields TRL asked for, so that ``ReftModel.forward`` (the edit plan) stays the entry."""
    patched = reft_model.__dict__.pop("forward", None)
    outputs = FUSED_OUTPUTS
    fn = getattr(patched, "__func__", None)
    if fn is not None and "outputs" in fn.__code__.co_freevars:
        outputs = tuple(fn.__closure__[fn.__code__.co_freevars.index("outputs")].cell_contents)
    inner = transformers_model(reft_model.model)
    if not set(outputs) <= set(getattr(inner, "_reft_fused_outputs", ())):
        add_fused_lm_head(inner, outputs=outputs)
        inner._reft_fused_outputs = outputs


class _NoTrlCard:
    def create_model_card(self, *args, **kwargs) -> None:
        """Not TRL's card: ``save_pretrained`` writes the adapter's (:mod:`reft.model_card`)."""


class ReftSFTTrainer(ReftTrainerMixin, _NoTrlCard, SFTTrainer):
    """`trl.SFTTrainer` for a :class:`reft.ReftModel`: the loss ``-Σ log p(y_t | x, y_<t) / N`` over the completion
    tokens, the prompt edited by the interventions.

    Data: prompt/completion pairs (plain or conversational), or chat ``messages`` with
    ``assistant_only_loss=True`` (the prompt is everything before the first assistant token). A template without
    ``{% generation %}`` markers gets one from :func:`training_chat_template` (on a copy of the tokenizer).
    Language-modeling data (``text``, or ``messages`` without ``assistant_only_loss``) has no prompt to edit and is
    refused, as are packing and padding-free batches.
    """

    def __init__(self, model: ReftModel, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 *, peft_config=None, **kwargs) -> None:
        _check_reft_model(model, "ReftSFTTrainer")
        if peft_config is not None:
            raise ValueError("ReftSFTTrainer: peft_config would wrap the ReftModel in peft; give get_reft_model a "
                             "peft model instead (LoRA + ReFT, docs/lora.md)")
        _check_rows(args, "ReftSFTTrainer")
        example = _first_example(train_dataset)
        if args is not None and args.completion_only_loss is False:
            raise ValueError("ReftSFTTrainer: completion_only_loss=False puts the loss on the prompt, which the "
                             "interventions edit; leave it at None or True")
        if example is not None:
            assistant_only = bool(getattr(args, "assistant_only_loss", False))
            if "messages" in example and not assistant_only:
                raise ValueError("ReftSFTTrainer: chat 'messages' without assistant_only_loss=True are trained as "
                                 "plain text, with no prompt left to edit: set assistant_only_loss=True in "
                                 "SFTConfig, or give prompt/completion pairs")
            if not ({"prompt", "completion"} <= set(example) or "completion_mask" in example or assistant_only):
                raise ValueError(f"ReftSFTTrainer: examples with fields {sorted(example)} have no prompt to edit: "
                                 "give 'prompt' and 'completion' (or 'messages' with assistant_only_loss=True)")
            if assistant_only and processing_class is not None:
                template = training_chat_template(processing_class)
                if template is not None:
                    processing_class = copy.deepcopy(processing_class)
                    processing_class.chat_template = template
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        _route_fused_head(self.model)


class ReftDPOTrainer(ReftTrainerMixin, _NoTrlCard, DPOTrainer):
    """`trl.DPOTrainer` for a :class:`reft.ReftModel`: the policy π is the base with the interventions, the
    reference π_ref the bare base (the same parameters, outside the edit plan), so with
    ``m = β[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]`` the loss is ``−log σ(m)``.
    Chosen and rejected responses are never edited: both rows of a pair get Φ at the same prompt positions.

    ``ref_model`` is not taken (the reference is the bare base), nor ``sync_ref_model``, a peft base, packing or
    padding-free batches.
    """

    def __init__(self, model: ReftModel, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, peft_config=None, **kwargs) -> None:
        _check_reft_model(model, "ReftDPOTrainer")
        if ref_model is not None:
            raise ValueError("ReftDPOTrainer: the reference policy is the bare base model under the ReftModel "
                             "(no second copy); leave ref_model out")
        if peft_config is not None or is_peft_model(model.model):
            raise ValueError("ReftDPOTrainer: a peft base (or peft_config) is not supported: the bare-base "
                             "reference would include the peft adapter; use a plain transformers base")
        if args is not None and getattr(args, "sync_ref_model", False):
            raise ValueError("ReftDPOTrainer: sync_ref_model=True would copy the policy into the reference, which "
                             "is the frozen base itself; set sync_ref_model=False")
        _check_rows(args, "ReftDPOTrainer")
        super().__init__(model=model, ref_model=transformers_model(model.model), args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        _route_fused_head(self.model)
