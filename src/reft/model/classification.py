"""Sequence classification with a frozen encoder: interventions plus a trainable head on the first token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..config import ReftConfig
from .persistence import _CLASSIFIER
from .reft_model import ReftModel


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
    """An encoder with interventions and a trainable head on the first token; each adapter has its own head.

    ``num_labels == 1`` is regression (MSE, e.g. STS-B); otherwise cross-entropy over classes.
    """

    def __init__(self, model: nn.Module, config: ReftConfig | None = None, num_labels: int = 2,
                 head_dropout: float = 0.1, *, adapter_name: str = "default", freeze_base: bool = True) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be ≥ 1 (1 = regression), got {num_labels}")
        super().__init__(model, None, freeze_base=freeze_base)
        self.num_labels = num_labels
        self.head_dropout = head_dropout
        if config is not None:
            self.add_adapter(adapter_name, config)

    def _new_head(self, config: ReftConfig) -> nn.Module:
        return ClassificationHead(config.hidden_size, self.num_labels, self.head_dropout)

    @property
    def head(self) -> nn.Module:
        """The active adapter's head."""
        if self.active_adapter is None:
            raise AttributeError("no active adapter: add one with add_adapter(name, config)")
        return self.adapters[self.active_adapter].head

    def forward(self, input_ids=None, attention_mask=None, labels=None, token_type_ids=None, adapter_names=None,
                **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        plan = self._plan(attention_mask, None, adapter_names)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        with self._ctx.using(plan):
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                           **extra).last_hidden_state
        logits = self._logits(hidden[:, 0], adapter_names)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _logits(self, h_cls: torch.Tensor, adapter_names) -> torch.Tensor:
        """Each row through its adapter's head (rows grouped by adapter)."""
        if adapter_names is None:
            return self.head(h_cls)
        heads = []
        for entry in adapter_names:
            names = [n for n, _ in self.parse_adapter_spec(entry)]
            if len(names) != 1:
                raise ValueError(f"adapter_names entry {entry!r}: a classification row needs exactly one adapter, "
                                 "whose head scores it")
            heads.append(names[0])
        logits = h_cls.new_empty(h_cls.shape[0], self.num_labels)
        for name in sorted(set(heads)):
            rows = torch.tensor([i for i, n in enumerate(heads) if n == name], device=h_cls.device)
            logits[rows] = self.adapters[name].head(h_cls[rows]).to(logits.dtype)
        return logits


_CLASSIFIER.append(ReftModelForSequenceClassification)
