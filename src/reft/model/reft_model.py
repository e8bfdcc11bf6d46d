"""`ReftModel`: a frozen transformers model with named adapters of interventions, attached by hooks.

    >>> reft_model = get_reft_model(model, ReftConfig(layers="3;9", positions="f7+l7", rank=4))  # adapter "default"
    >>> reft_model.add_adapter("style", ReftConfig(layers="15", positions="l1"))
    >>> out = reft_model(input_ids, attention_mask=mask, labels=labels, prompt_lengths=lens)   # the active adapter
    >>> reft_model.generate(ids, attention_mask=mask, adapter_names=["default", "style", "default-style", None])

The conventions are HF peft's (``add_adapter``, ``set_adapter``, ``delete_adapter``, ``disable_adapter``, the
folder layout of ``save_pretrained``) so a peft user knows them. Rows of one batch may use different adapters or
compositions of them (:mod:`reft.model.compose`); each row is edited at its own prompt positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..config import ReftConfig
from ..fast import engine
from ..fast.frozen_cache import FrozenBatch, FrozenCache, stochastic_modules
from ..fast.loss import has_plain_lm_head
from ..fast.prefix_cache import PrefixCache
from .adapter import Adapter
from .compose import BASE, Composition, UnknownAdapterError, check_adapter_name, parse_composition
from .hooks import InterventionContext, Part, Plan, register_intervention_hook
from .layers import (
    cache_name,
    component_module,
    find_layers,
    is_peft_model,
    model_dims,
    model_name,
    transformers_model,
)
from .persistence import SaveLoadMixin
from .plan import AdapterEntry, build_plan, plan_rows, prompt_lengths_from_labels


class ReftModel(SaveLoadMixin, nn.Module):
    """A frozen base model whose hidden states are edited by interventions at prompt positions.

    Attribute access falls through to the base model (``reft_model.config``, ``.device``, …).

    Args:
        model (nn.Module): a transformers model (decoder or encoder), or a peft ``PeftModel`` wrapping one.
        config (ReftConfig, optional): the first adapter; ``layers="all"`` is resolved against ``model``. Without
            it the wrapper starts with no adapter (the bare model) and adapters are added later.
        adapter_name (str): the first adapter's name. Default: ``"default"``
        freeze_base (bool): freeze the base model's parameters. A peft model keeps its own flags (peft has
            already frozen the base and left its adapter, e.g. LoRA, trainable). ``False`` changes no flag.
            Default: True
    """

    #: trainable adapters sit on the frozen base: the flag transformers' Trainer reads before it lets a quantized
    #: base (bitsandbytes, torchao, quanto) train; which bases can train under ReFT is checked in reft.quantization
    _hf_peft_config_loaded = True

    def __init__(self, model: nn.Module, config: ReftConfig | None = None, *, adapter_name: str = "default",
                 freeze_base: bool = True) -> None:
        super().__init__()
        if getattr(model, "_reft_wrapped", False):
            raise ValueError("this model is already wrapped by a ReftModel: add another adapter to that wrapper "
                             "(reft_model.add_adapter(name, config) / reft_model.load_adapter(dir, adapter_name=)), "
                             "or call reft_model.unload() first to get the bare model back")
        self.model = model
        if freeze_base and not is_peft_model(model):
            for p in model.parameters():
                p.requires_grad_(False)
        self.adapters = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self._trainable: dict[str, bool] = {}
        self._ctx = InterventionContext()
        self._hooks: dict[tuple[str | None, int, str], list[Part]] = {}  # (layers_path, layer, component) → parts
        self._hook_handles: dict = {}
        self._generating: tuple[Plan | None, int] | None = None
        self.cache_key = cache_name(transformers_model(model))  # looked up once, not per forward
        # the training engine (reft.fast, docs/engine.md): False = every loss is the base model's plain forward;
        # finer switches: split_frozen_prefix (the chunking), frozen_cache = None (the reuse across epochs) and
        # prefix_cache = None (an unedited shared prefix's KV reused across batches)
        self.fast_training = True
        self.split_frozen_prefix = True
        self._frozen_cache: FrozenCache | None = None
        self._reuse_frozen = True
        self.prefix_cache: PrefixCache | None = PrefixCache(self.model.parameters())  # None = off
        self._stochastic: list[nn.Module] | None = None
        self._ctx.handles.append(  # on the module whose forward `generate` calls each step
            transformers_model(model).register_forward_pre_hook(self._generation_step, with_kwargs=True))
        model._reft_wrapped = True
        if config is not None:
            try:
                self.add_adapter(adapter_name, config)
            except BaseException:
                self.unload()  # a failed wrap leaves the base model as it was
                raise

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

    @property
    def active_adapter(self) -> str | None:
        """The first active adapter (the one ``interventions`` / ``reft_config`` / training refer to)."""
        return self.active_adapters[0] if self.active_adapters else None

    @property
    def reft_configs(self) -> dict[str, ReftConfig]:
        return {name: adapter.config for name, adapter in self.adapters.items()}

    @property
    def reft_config(self) -> ReftConfig | None:
        """The active adapter's config."""
        name = self.active_adapter
        return self.adapters[name].config if name is not None else None

    @property
    def interventions(self) -> nn.ModuleDict:
        """The active adapter's interventions."""
        if self.active_adapter is None:
            raise AttributeError("no active adapter: add one with add_adapter(name, config) or set_adapter(name)")
        return self.adapters[self.active_adapter].interventions

    @property
    def frozen_cache(self) -> FrozenCache | None:
        """Reuse of the frozen blocks' output across epochs (see :mod:`reft.fast.frozen_cache`); ``None`` = off.
        Set it to ``None`` to turn the reuse off."""
        return self._frozen_cache

    @frozen_cache.setter
    def frozen_cache(self, value: FrozenCache | None) -> None:
        self._frozen_cache, self._reuse_frozen = value, value is not None

    def intervention_parameters(self) -> Iterator[nn.Parameter]:
        return self.interventions.parameters()

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        for name, adapter in self.adapters.items():
            for spec, size in zip(adapter.config.specs, adapter.spec_sizes()):
                print(f"adapter {name!r}: {spec.intervention} rank {spec.rank} at {spec.component} of layers "
                      f"{spec.layers}, positions {spec.positions}{'' if spec.tied else ' untied'}: {size:,} params")
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ---- named adapters ------------------------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: ReftConfig, *, trainable: bool = True) -> None:
        """Attach a new adapter; it becomes active only if no adapter is active yet (as in peft)."""
        check_adapter_name(adapter_name)
        if adapter_name in self.adapters:
            raise ValueError(f"an adapter named {adapter_name!r} exists: delete_adapter({adapter_name!r}) first or "
                             "choose another name")
        hidden, num_layers = model_dims(self.model)
        data = config.to_dict() | {
            "hidden_size": hidden, "num_layers": num_layers,
            "model_type": getattr(self.model.config, "model_type", None),
            "base_model": config.base_model or model_name(self.model),
        }
        config = ReftConfig.from_dict(data)  # validates layers, rank against this model
        blocks = find_layers(self.model, config.layers_path)
        for spec in config.specs:  # every hooked module exists before anything is attached
            for i in spec.layers:
                component_module(blocks[i], spec.component)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        with torch.device(device):
            adapter = Adapter(config, hidden, self._new_head(config))
        self.adapters[adapter_name] = adapter
        self._trainable[adapter_name] = trainable
        for j, spec in enumerate(config.specs):
            for i in spec.layers:
                parts = self._hook_parts(blocks, config.layers_path, i, spec.component)
                parts.extend(((adapter_name, j), module, slots) for module, slots in adapter.parts(j, i))
        if not self.active_adapters:
            self.set_adapter(adapter_name)
        else:
            self._set_flags()

    def _new_head(self, config: ReftConfig) -> nn.Module | None:
        return None

    def _hook_parts(self, blocks: nn.ModuleList, path: str | None, layer: int, component: str) -> list[Part]:
        key = (path, layer, component)
        if key not in self._hooks:
            self._hooks[key] = []
            target = component_module(blocks[layer], component)
            handle = register_intervention_hook(target, self._ctx, self._hooks[key],
                                                on_input=component == "block_input")
            self._hook_handles[key] = handle
        return self._hooks[key]

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Make ``adapter_name`` (or several, applied together: their edits add up) the active adapter(s): the ones
        a call without ``adapter_names`` uses, and the only ones that train. The others are frozen and unused."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = [n for n in names if n not in self.adapters]
        if unknown or not names:
            raise ValueError(f"unknown adapter {unknown[0] if unknown else names!r}: loaded adapters are "
                             f"{list(self.adapters)}")
        self.active_adapters = names
        self._set_flags()
        self._refresh_frozen_cache()

    def _set_flags(self) -> None:
        for name, adapter in self.adapters.items():
            for p in adapter.parameters():
                p.requires_grad_(name in self.active_adapters and self._trainable[name])

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter, its interventions and (when nothing else uses them) its hooks."""
        if adapter_name not in self.adapters:
            raise ValueError(f"unknown adapter {adapter_name!r}: loaded adapters are {list(self.adapters)}")
        for key, parts in list(self._hooks.items()):
            parts[:] = [p for p in parts if p[0][0] != adapter_name]
            if not parts:
                handle = self._hook_handles.pop(key)
                handle.remove()
                self._ctx.handles.remove(handle)
                del self._hooks[key]
        del self.adapters[adapter_name]
        del self._trainable[adapter_name]
        self.active_adapters = [n for n in self.active_adapters if n != adapter_name]
        self._refresh_frozen_cache()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside this block the model is the frozen base model (peft's name)."""
        previous, self._ctx.enabled = self._ctx.enabled, False
        try:
            yield
        finally:
            self._ctx.enabled = previous

    disable_interventions = disable_adapter

    def unload(self) -> nn.Module:
        """Remove this wrapper's hooks (only its own) and return the untouched base model."""
        for handle in self._ctx.handles:
            handle.remove()
        self._ctx.handles.clear()
        self._hooks.clear()
        self.model.__dict__.pop("_reft_wrapped", None)
        return self.model

    def parse_adapter_spec(self, entry: AdapterEntry) -> Composition:
        """One ``adapter_names`` entry → ``((name, weight), …)``, checked against the loaded adapters."""
        composition = parse_composition(entry)
        unknown = [n for n, _ in composition if n not in self.adapters]
        if unknown:
            raise UnknownAdapterError(f"unknown adapter {unknown[0]!r} in {entry!r}: loaded adapters are "
                                      f"{list(self.adapters)} ({BASE!r} or None = the bare model)")
        return composition

    # ---- the edit plan of one call -------------------------------------------------------------------------
    def _plan(self, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None,
              adapter_names: Sequence[AdapterEntry] | None) -> Plan | None:
        """Which rows each adapter spec edits, at which positions, with which weight (see :mod:`.plan`)."""
        if not self._ctx.enabled:
            return None
        rows = plan_rows(attention_mask.shape[0], self.active_adapters, adapter_names, self.parse_adapter_spec)
        return build_plan({n: self.adapters[n].config for n in rows}, rows, attention_mask, prompt_lengths)

    @contextlib.contextmanager
    def editing(self, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None,
                adapter_names: Sequence[AdapterEntry] | None = None) -> Iterator[Plan | None]:
        """Within this block, calls of the wrapped base model (``reft_model.model``) on batches laid out like
        ``attention_mask`` are edited as :meth:`forward` edits them (e.g. to get ``output_hidden_states``); yields
        the plan. Outside such a block (and outside forward / generate) the base model is the bare base model."""
        plan = self._plan(attention_mask, prompt_lengths, adapter_names)
        with self._ctx.using(plan):
            yield plan

    # ---- forward / loss ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        adapter_names: Sequence[AdapterEntry] | None = None,
        **kwargs,
    ):
        """Run the base model with interventions at the prompt positions.

        Args:
            input_ids: ``[B, T]``.
            attention_mask: ``[B, T]``; left or right padding. Default: all ones.
            labels: ``[B, T]`` with ``-100`` on ignored tokens (prompt, padding); shifted inside.
            prompt_lengths: ``[B]`` prompt token counts; default: the tokens before a row's first label when
                ``labels`` are given, else the whole attended input.
            num_items_in_batch: token count the summed loss is divided by (gradient accumulation); default:
                the number of label tokens in this batch.
            adapter_names: one entry per row (a name, a composition such as ``"a+b"`` / ``"-a"`` /
                ``[("a", 0.5)]``, or ``None`` / ``"__base__"`` for the bare model); default: the active adapters.

        With ``labels`` on a causal LM whose logits are ``lm_head(h)``, vocabulary logits are computed only at
        the positions that have a label (``logits`` is then ``None``): the prompt's logits are never needed.
        """
        if attention_mask is None:
            ref = input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0]
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        if labels is not None and prompt_lengths is None:
            prompt_lengths = prompt_lengths_from_labels(attention_mask, labels)
        plan = self._plan(attention_mask, prompt_lengths, adapter_names)
        if labels is not None and plan is not None and not kwargs and self.fast_training:
            trainable_base = any(p.requires_grad for p in self.model.parameters())  # one scan per forward
            if self._fast_loss_ok(trainable_base, plan):
                reuse, checkpointing = not trainable_base and adapter_names is None, self._checkpointing()
                frozen = self._frozen_batch(input_ids, attention_mask) if reuse else None
                return engine.lm_loss(transformers_model(self.model), self._ctx, plan, input_ids, attention_mask,
                                      labels, num_items_in_batch, cache_key=self.cache_key,
                                      chunk=self.split_frozen_prefix and not checkpointing,
                                      grouped_kv=not checkpointing, frozen=frozen,
                                      prefixes=self._prefixes() if reuse else None)
        if labels is not None and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        with self._ctx.using(plan):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def _fast_loss_ok(self, trainable_base: bool, plan: Plan) -> bool:
        # the fast path runs part of the prompt without autograd: only valid when the base model is frozen (a
        # peft/LoRA base or freeze_base=False takes the plain path, with gradients through every position); its
        # chunking needs every placement to cover the whole batch at weight 1
        return (
            not is_peft_model(self.model)
            and not (torch.is_grad_enabled() and trainable_base)
            and has_plain_lm_head(self.model)
            and all(p.rows is None and p.weight is None for p in plan.values())
        )

    def _refresh_frozen_cache(self) -> None:
        """The cache follows the active adapters: blocks below their lowest edited layer (block outputs only)."""
        if not self._reuse_frozen:
            return
        specs = [s for n in self.active_adapters for s in self.adapters[n].config.specs]
        if not specs or any(s.component != "block_output" for s in specs) or is_peft_model(self.model):
            self._frozen_cache = None
            return
        lowest = min(min(s.layers) for s in specs)
        if self._frozen_cache is not None and self._frozen_cache.layer == lowest:
            return
        paths = {self.adapters[n].config.layers_path for n in self.active_adapters}
        blocks = find_layers(self.model, paths.pop() if len(paths) == 1 else None)
        above = {id(m) for block in blocks[lowest + 1:] for m in block.modules()}
        below = [m for m in self.model.modules() if id(m) not in above]
        self._frozen_cache = FrozenCache(blocks, lowest, stochastic_modules(below))

    def _frozen_batch(self, input_ids, attention_mask) -> FrozenBatch | None:
        """This batch's use of :attr:`frozen_cache` (``None``: compute everything, store nothing)."""
        if self._frozen_cache is None or not self._ctx.enabled or self._checkpointing():
            return None
        return self._frozen_cache.begin(input_ids, attention_mask)

    def _prefixes(self) -> PrefixCache | None:
        """:attr:`prefix_cache` when every module of the base model is deterministic now (no dropout training)."""
        cache = self.prefix_cache
        if cache is None:
            return None
        if self._stochastic is None:
            self._stochastic = stochastic_modules(self.model.modules())
        return None if any(m.training for m in self._stochastic) else cache

    def _checkpointing(self) -> bool:
        checkpointing = getattr(self.model, "is_activation_checkpointing", None)
        if checkpointing is None:
            checkpointing = getattr(self.model, "is_gradient_checkpointing", False)
        return bool(checkpointing)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Turn on the base model's gradient checkpointing (non-reentrant, which a frozen base needs). The layers'
        recomputation in backward runs after ``forward`` returned: it gets the call's edit plan back through the
        checkpoint's ``context_fn``."""

        def contexts():  # called in forward, where the plan is set; the second context runs the recomputation
            return contextlib.nullcontext(), self._ctx.using(self._ctx.plan)

        kwargs = {"use_reentrant": False, "context_fn": contexts} | (gradient_checkpointing_kwargs or {})
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ---- generation ----------------------------------------------------------------------------------------
    def _generation_step(self, module, args, kwargs):
        """Before each base-model forward inside :meth:`generate`: intervene iff it starts at position 0."""
        if self._generating is None:
            return None
        plan, batch = self._generating
        cache = kwargs.get(self.cache_key)
        cached = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        if cached or plan is None:
            self._ctx.plan = None  # a decode step: the edit reaches it through the KV cache
        else:
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows = (ids if ids is not None else kwargs["inputs_embeds"]).shape[0]
            self._ctx.plan = {k: p.repeat_interleave(rows // batch) for k, p in plan.items()}  # beams / samples
        return None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 adapter_names: Sequence[AdapterEntry] | None = None, **kwargs) -> torch.Tensor:
        """``model.generate`` with interventions on the prompt positions during prefill.

        The whole input is the prompt; batches must be left-padded. Greedy, sampling and beam search all work;
        beams and ``num_return_sequences`` repeat the positions per row as ``generate`` repeats the inputs.
        ``adapter_names`` as in :meth:`forward`. Runs in eval mode (no dropout), whatever the mode outside.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.bool()
        if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
            raise ValueError("generate needs left-padded inputs (padding before the prompt): a row has padding after "
                             "its tokens; set tokenizer.padding_side = 'left' (reft.generation does)")
        plan = self._plan(attention_mask, None, adapter_names)
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        self._generating = (plan, input_ids.shape[0])
        try:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self._generating = None
            self._ctx.plan = None
            for m, training in modes:
                m.training = training
