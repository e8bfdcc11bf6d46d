"""`ReftModel`: a frozen transformers model plus interventions attached by hooks.

    >>> reft_model = get_reft_model(model, ReftConfig(layers="3;9", positions="f7+l7", rank=4))
    >>> out = reft_model(input_ids, attention_mask=mask, labels=labels, prompt_lengths=lens)
    >>> reft_model.generate(input_ids, attention_mask=mask, max_new_tokens=32)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from ..config import ReftConfig
from ..fast.attention import shared_prefix_attention, shared_prefix_mask, supports_shared_prefix
from ..fast.frozen_cache import FrozenBatch, FrozenCache, stochastic_modules
from ..fast.loss import linear_cross_entropy
from ..interventions import get_intervention_class
from ..positions import parse_positions, prompt_positions
from .hooks import InterventionContext, register_intervention_hook
from .layers import component_module, find_layers, model_dims

# causal LMs whose logits are exactly lm_head(last hidden state): the loss can skip prompt positions
_PLAIN_LM_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "phi3", "olmo", "olmo2"}


def _model_name(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def is_peft_model(model: nn.Module) -> bool:
    """A peft ``PeftModel`` (recognised by its attributes; peft is never imported here)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model that runs the forward: ``model`` itself, or the one inside a ``PeftModel``."""
    return model.get_base_model() if is_peft_model(model) else model


def _cache_name(base: nn.Module) -> str:
    """The KV-cache argument and output field: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _prefix_edits(positions: torch.Tensor, shared: int) -> torch.Tensor:
    """Row 0's edits inside the shared prefix (``[1, K]``, ``-1`` elsewhere): alike in every row, applied once."""
    return positions[:1].masked_fill(positions[:1] >= shared, -1)


def _edits_after(positions: torch.Tensor, start: int) -> torch.Tensor:
    """Each row's edits from ``start`` on, relative to ``start`` (``-1`` before it)."""
    return torch.where(positions >= start, positions - start, -1)


def _reusing(frozen: FrozenBatch | None, index) -> contextlib.AbstractContextManager:
    """Around a base-model forward over ``index`` of the batch layout: replay or capture the frozen blocks."""
    return frozen.call(index) if frozen is not None else contextlib.nullcontext()


def _finish(frozen: FrozenBatch | None, shared: int) -> None:
    if frozen is not None:
        frozen.finish(shared)


class ReftModel(nn.Module):
    """A frozen base model whose hidden states are edited by interventions at prompt positions.

    Attribute access falls through to the base model (``reft_model.config``, ``.device``, …).

    Args:
        model (nn.Module): a transformers model (decoder or encoder), or a peft ``PeftModel`` wrapping one.
        config (ReftConfig): where and how to intervene; ``layers="all"`` is resolved against ``model``.
        freeze_base (bool): freeze the base model's parameters. A peft model keeps its own flags (peft has
            already frozen the base and left its adapter, e.g. LoRA, trainable). ``False`` changes no flag.
            Default: True
    """

    def __init__(self, model: nn.Module, config: ReftConfig, *, freeze_base: bool = True) -> None:
        super().__init__()
        hidden, num_layers = model_dims(model)
        data = config.to_dict() | {
            "hidden_size": hidden,
            "num_layers": num_layers,
            "model_type": getattr(model.config, "model_type", None),
            "base_model": config.base_model or _model_name(model),
        }
        data["layers"] = config.layers
        self.reft_config = ReftConfig.from_dict(data)  # validates layers, rank against this model
        self.model = model
        if freeze_base and not is_peft_model(model):
            for p in model.parameters():
                p.requires_grad_(False)

        cfg = self.reft_config
        cls = get_intervention_class(cfg.intervention)
        options = {"dropout": cfg.dropout, "act": cfg.act, "dtype": cfg.dtype}
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.device(device):
            self.interventions = nn.ModuleDict({key: cls(hidden, cfg.rank, **options) for key in cfg.keys()})

        self._ctx = InterventionContext()
        spec = parse_positions(cfg.positions)
        slots = {"all": slice(0, spec.width), "first": slice(0, spec.first), "last": slice(spec.first, spec.width)}
        blocks = find_layers(model, cfg.layers_path)
        for i in cfg.layers:
            parts = [(self.interventions[k], slots[k.partition("_")[2] or "all"]) for k in cfg.keys()
                     if k.partition("_")[0] == f"layer{i}"]
            target = component_module(blocks[i], cfg.component)
            register_intervention_hook(target, self._ctx, parts, on_input=cfg.component == "block_input")
        self._generating: tuple[torch.Tensor, int] | None = None
        self._cache_key = _cache_name(transformers_model(model))  # looked up once, not per forward
        # training loss: run the frozen prompt prefix once without autograd (see _decoder_hidden)
        self.split_frozen_prefix = True
        # training loss: blocks below the lowest edit run once per example, then their output is reused (set to
        # None to turn off; `.frozen_cache.max_bytes` bounds it)
        self.frozen_cache = self._make_frozen_cache(blocks)
        # on the module whose forward `generate` calls each step (inside a PeftModel: the transformers model)
        self._ctx.handles.append(
            transformers_model(model).register_forward_pre_hook(self._generation_step, with_kwargs=True)
        )

    def _make_frozen_cache(self, blocks: nn.ModuleList) -> FrozenCache | None:
        cfg = self.reft_config
        if cfg.component != "block_output" or is_peft_model(self.model):
            return None
        lowest = min(cfg.layers)
        above = {id(m) for block in blocks[lowest + 1:] for m in block.modules()}
        below = [m for m in self.model.modules() if id(m) not in above]
        return FrozenCache(blocks, lowest, stochastic_modules(below))

    # ---- plumbing ------------------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @property
    def config(self):
        return self.model.config

    def intervention_parameters(self) -> Iterator[nn.Parameter]:
        return self.interventions.parameters()

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def unload(self) -> nn.Module:
        """Remove this wrapper's hooks (only its own) and return the untouched base model."""
        for handle in self._ctx.handles:
            handle.remove()
        self._ctx.handles.clear()
        return self.model

    @contextlib.contextmanager
    def disable_interventions(self) -> Iterator[None]:
        """Inside this block the model is the frozen base model."""
        previous, self._ctx.enabled = self._ctx.enabled, False
        try:
            yield
        finally:
            self._ctx.enabled = previous

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Turn on the base model's gradient checkpointing (non-reentrant, which a frozen base needs)."""
        kwargs = {"use_reentrant": False} | (gradient_checkpointing_kwargs or {})
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def set_positions(self, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Compute and install the positions the next forward intervenes on (see :mod:`reft.positions`)."""
        self._ctx.positions = prompt_positions(attention_mask, prompt_lengths, self.reft_config.positions)
        return self._ctx.positions

    # ---- forward / loss ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ):
        """Run the base model with interventions at the prompt positions.

        Args:
            input_ids: ``[B, T]``.
            attention_mask: ``[B, T]``; left or right padding. Default: all ones.
            labels: ``[B, T]`` with ``-100`` on ignored tokens (prompt, padding); shifted inside.
            prompt_lengths: ``[B]`` prompt token counts; default: the whole attended input is prompt.
            num_items_in_batch: token count the summed loss is divided by (gradient accumulation); default:
                the number of label tokens in this batch.

        With ``labels`` on a causal LM whose logits are ``lm_head(h)``, vocabulary logits are computed only at
        the positions that have a label (``logits`` is then ``None``): the prompt's logits are never needed.
        """
        if attention_mask is None:
            ref = input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0]
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        self.set_positions(attention_mask, prompt_lengths)
        if labels is not None:
            trainable_base = any(p.requires_grad for p in self.model.parameters())  # one scan per forward
            if self._sparse_loss_ok(kwargs, trainable_base):
                return self._sparse_lm_loss(input_ids, attention_mask, labels, num_items_in_batch,
                                            reuse_frozen=not trainable_base)
        if labels is not None and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def _sparse_loss_ok(self, kwargs: dict, trainable_base: bool) -> bool:
        lm = transformers_model(self.model)
        cfg = lm.config
        # the fast path runs part of the prompt without autograd: only valid when the base model is frozen (a
        # peft/LoRA base or freeze_base=False takes the plain path, with gradients through every position)
        return (
            not is_peft_model(self.model)
            and not (torch.is_grad_enabled() and trainable_base)
            and getattr(cfg, "model_type", None) in _PLAIN_LM_HEAD
            and getattr(cfg, "final_logit_softcapping", None) is None
            and lm.get_output_embeddings() is not None
            and lm.base_model is not lm
            and not kwargs
        )

    def _sparse_lm_loss(self, input_ids, attention_mask, labels, num_items_in_batch, *, reuse_frozen: bool = False):
        hidden, offset = self._decoder_hidden(input_ids, attention_mask, labels, reuse_frozen=reuse_frozen)
        targets = labels[:, offset + 1:]
        keep = targets != -100  # [B, T-1-offset]
        h = hidden[:, :-1][keep]  # [N, d]: only positions that predict a label
        head = transformers_model(self.model).get_output_embeddings()
        loss = linear_cross_entropy(h, head.weight, targets[keep], head.bias)  # no [N, vocab] logits kept
        denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(loss.device)
        return CausalLMOutputWithPast(loss=loss / denom, logits=None)

    def _decoder_hidden(self, input_ids, attention_mask, labels=None, *, reuse_frozen: bool = False,
                        **kwargs) -> tuple[torch.Tensor, int]:
        """Last hidden states from position ``offset`` on, computing only what differs from work done elsewhere.

        Attention is causal, so a token's hidden states depend only on the tokens up to it. Two exact savings follow:

        * a prefix shared by every row (a chat template's system prompt, a fixed instruction), in which every row
          is edited at the same positions, is the same computation in every row: it runs once. When it holds edits
          (and the model uses SDPA) it is an extra row of the same forward whose keys/values every other row
          attends to (:mod:`reft.fast.attention`); otherwise it runs first, for one row, and its KV cache is
          repeated for the batch (gradients flow back through the repeat);
        * tokens before the first edited position ``c`` are the frozen model's computation: they run without
          autograd, so backward stops at ``c``.

        The rest runs after them (with the cached keys/values). ``offset`` = where that rest starts. With
        ``reuse_frozen`` (the caller has checked that no base parameter trains), blocks below the lowest edited layer
        run once per example across calls (:attr:`frozen_cache`, see :mod:`reft.fast.frozen_cache`).
        """
        base = self.model.base_model
        positions = self._ctx.positions
        shared, split = self._chunk_bounds(input_ids, attention_mask, positions, labels)
        frozen = self._frozen_batch(input_ids, attention_mask, kwargs) if reuse_frozen else None
        if max(shared, split) < 2:
            with _reusing(frozen, (slice(None), slice(None))):
                out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
            _finish(frozen, 0)
            return out.last_hidden_state, 0
        if shared >= 2 and split < shared and not kwargs and supports_shared_prefix(base.config):
            hidden = self._prefix_row_hidden(base, input_ids, attention_mask, positions, shared, frozen)
            _finish(frozen, shared)
            return hidden, shared
        cache, key = None, self._cache_key
        if shared >= 2:  # chunk 1: the shared prefix, once
            self._ctx.positions = _prefix_edits(positions, shared)
            with torch.set_grad_enabled(torch.is_grad_enabled() and shared > split), \
                    _reusing(frozen, (slice(0, 1), slice(0, shared))):
                cache = getattr(base(input_ids=input_ids[:1, :shared], attention_mask=attention_mask[:1, :shared],
                                     use_cache=True), key)
            cache.batch_repeat_interleave(input_ids.shape[0])
        start = shared if shared >= 2 else 0
        if split > start:  # chunk 2: the rest of the frozen part, without autograd
            with torch.no_grad(), self.disable_interventions(), _reusing(frozen, (slice(None), slice(start, split))):
                cache = getattr(base(input_ids=input_ids[:, start:split], attention_mask=attention_mask[:, :split],
                                     use_cache=True, **{key: cache}), key)
            start = split
        self._ctx.positions = _edits_after(positions, start)  # relative to the last chunk
        with _reusing(frozen, (slice(None), slice(start, None))):
            out = base(input_ids=input_ids[:, start:], attention_mask=attention_mask, use_cache=True,
                       **{key: cache}, **kwargs)
        _finish(frozen, shared if shared >= 2 else 0)
        return out.last_hidden_state, start

    def _frozen_batch(self, input_ids, attention_mask, kwargs) -> FrozenBatch | None:
        """This batch's use of :attr:`frozen_cache` (``None``: compute everything, store nothing)."""
        if self.frozen_cache is None or kwargs or not self._ctx.enabled or self._checkpointing():
            return None
        return self.frozen_cache.begin(input_ids, attention_mask)

    def _checkpointing(self) -> bool:
        checkpointing = getattr(self.model, "is_activation_checkpointing", None)
        if checkpointing is None:
            checkpointing = getattr(self.model, "is_gradient_checkpointing", False)
        return bool(checkpointing)

    def _prefix_row_hidden(self, base, input_ids, attention_mask, positions, shared: int,
                           frozen: FrozenBatch | None = None) -> torch.Tensor:
        """Hidden states from ``shared`` on, with the edited shared prefix as an extra row 0 of the same forward.

        Row 0 = the prefix, rows ``1..B`` = each row after it (see :mod:`reft.fast.attention`); position ids
        continue after the prefix, and the prefix's edits are applied once, in row 0. The forward runs packed: one
        row of the real tokens of that layout (no padding), edits at their packed positions.
        """
        batch, length = input_ids.shape
        width = max(shared, length - shared)

        def pad(x: torch.Tensor, value) -> torch.Tensor:
            return F.pad(x, (0, width - x.shape[1]), value=value)

        ids = torch.cat([pad(input_ids[:1, :shared], 0), pad(input_ids[:, shared:], 0)])
        mask = attention_mask.bool()
        valid = torch.cat([pad(mask[:1, :shared], False), pad(mask[:, shared:], False)])  # [B+1, W]
        ar = torch.arange(width, device=input_ids.device)
        position_ids = torch.cat([ar[None], (ar + shared)[None].expand(batch, width)])
        # packed layout: token t of the one packed row is flat slot index[t] of the [B+1, W] layout
        index = valid.flatten().nonzero().squeeze(1)
        packed_at = (valid.flatten().long().cumsum(0) - 1).view(batch + 1, width)  # slot -> packed position
        edits = torch.cat([_prefix_edits(positions, shared), _edits_after(positions, shared)])  # [B+1, K]
        self._ctx.positions = torch.where(edits >= 0, packed_at.gather(1, edits.clamp(min=0)), -1)
        self._ctx.rows = torch.zeros(batch + 1, dtype=torch.long, device=input_ids.device)
        # the packed row's tokens in the [B, T] batch layout (for the frozen cache): row 0 is batch row 0's prefix
        layout_row, column = index // width, index % width
        batch_index = ((layout_row - 1).clamp(min=0)[None],
                       torch.where(layout_row == 0, column, column + shared)[None])
        try:
            with shared_prefix_attention(base.config, index), _reusing(frozen, batch_index):
                out = base(input_ids=ids.flatten()[index][None], attention_mask=shared_prefix_mask(shared, valid),
                           position_ids=position_ids.flatten()[index][None], use_cache=False)
        finally:
            self._ctx.rows = None
        h = out.last_hidden_state[0]  # [T, d]
        h = h.new_zeros(valid.numel(), h.shape[-1]).index_copy(0, index, h).view(batch + 1, width, -1)
        return h[1:, : length - shared]

    def _chunk_bounds(self, input_ids, attention_mask, positions, labels=None) -> tuple[int, int]:
        """``(shared, split)``: the shared-prefix length and the first edited position (0 when not applicable)."""
        valid = positions[positions >= 0]
        if not self.split_frozen_prefix or not self._ctx.enabled or self._checkpointing() or not valid.numel():
            # gradient checkpointing drops the KV cache inside the layers, and its recompute in backward would run
            # outside the prefix-row attention switch: no chunking then
            return 0, 0
        split = int(valid.min())
        # keep every row's first predicting position (the one before its first label) in the last chunk
        limit = int(attention_mask.sum(1).min()) - 1
        if labels is not None:
            labelled = labels != -100
            first = torch.where(labelled.any(1), labelled.long().argmax(1), labels.shape[1])
            limit = min(limit, int(first.min()) - 1)
        same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # [T]
        shared = int(same.long().cumprod(0).sum())
        for slot in range(positions.shape[1]):  # every row must be edited alike inside the shared prefix
            column = positions[:, slot]
            inside = column < shared
            if inside.any() and not (column == column[0]).all():
                shared = min(shared, int(column[column >= 0].min()))
        return min(shared, limit), split

    # ---- generation ----------------------------------------------------------------------------------------
    def _generation_step(self, module, args, kwargs):
        """Before each base-model forward inside :meth:`generate`: intervene iff it starts at position 0."""
        if self._generating is None:
            return None
        positions, batch = self._generating
        cache = kwargs.get(self._cache_key)
        cached = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        if cached:
            self._ctx.positions = None  # a decode step: the edit reaches it through the KV cache
        else:
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows = (ids if ids is not None else kwargs["inputs_embeds"]).shape[0]
            self._ctx.positions = positions.repeat_interleave(rows // batch, dim=0)  # beams / num_return_sequences
        return None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``model.generate`` with interventions on the prompt positions during prefill.

        The whole input is the prompt (use left padding for batches). Greedy, sampling and beam search all work;
        beams and ``num_return_sequences`` repeat the positions per row as ``generate`` repeats the inputs.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = prompt_positions(attention_mask, None, self.reft_config.positions)
        self._generating = (positions, input_ids.shape[0])
        try:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self._generating = None
            self._ctx.positions = None

    # ---- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, **_: object) -> None:
        """Write ``reft_config.json`` + ``reft_model.safetensors`` atomically (see :mod:`reft.save_load`)."""
        from ..save_load import save_adapter

        save_adapter(self, directory)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | os.PathLike, **kwargs) -> ReftModel:
        """Attach the adapter saved in ``directory`` to ``model``; refuses a mismatched base model."""
        from ..save_load import load_adapter

        return load_adapter(model, directory, **kwargs)


class ClassificationHead(nn.Module):
    """``logits = W_o tanh(W_d h_CLS + b_d) + b_o`` (the RoBERTa-style head; softmax lives in the loss)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, h_cls: torch.Tensor) -> torch.Tensor:
        """``[B, d] → [B, num_labels]``."""
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(h_cls)))))


class ReftModelForSequenceClassification(ReftModel):
    """An encoder with interventions and a trainable head on the first token.

    ``num_labels == 1`` is regression (MSE, e.g. STS-B); otherwise cross-entropy over classes.
    """

    def __init__(self, model: nn.Module, config: ReftConfig, num_labels: int, head_dropout: float = 0.1, *,
                 freeze_base: bool = True) -> None:
        super().__init__(model, config, freeze_base=freeze_base)
        if num_labels < 1:
            raise ValueError(f"num_labels must be ≥ 1 (1 = regression), got {num_labels}")
        self.num_labels = num_labels
        device = next(self.model.parameters()).device
        self.head = ClassificationHead(self.reft_config.hidden_size, num_labels, head_dropout).to(device)

    def forward(self, input_ids=None, attention_mask=None, labels=None, token_type_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.set_positions(attention_mask, None)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.head(hidden[:, 0])
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


def get_reft_model(
    model: nn.Module, config: ReftConfig, *, num_labels: int | None = None, freeze_base: bool = True
) -> ReftModel:
    """Freeze ``model`` and attach the interventions ``config`` describes.

    Args:
        model: a transformers model (``AutoModelForCausalLM`` or an encoder such as ``BertModel``), or a peft
            ``PeftModel`` (e.g. LoRA) to co-train with the interventions: its adapter stays trainable.
        config: the interventions.
        num_labels: give it to get a :class:`ReftModelForSequenceClassification` with a fresh head.
        freeze_base: see :class:`ReftModel`. Default: True
    """
    config = copy.deepcopy(config)
    if num_labels is not None:
        return ReftModelForSequenceClassification(model, config, num_labels, freeze_base=freeze_base)
    return ReftModel(model, config, freeze_base=freeze_base)
