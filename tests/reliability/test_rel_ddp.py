"""DDP: two CPU processes (gloo, torchrun) end with the interventions of one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_worker import train
from _reliability_common import one_thread, token_examples  # noqa: F401
from conftest import tiny_bert, tiny_llama
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler
from transformers import TrainingArguments

from reft import ReftConfig, get_reft_model
from reft.data import ReftDataCollator
from reft.save_load import WEIGHTS_NAME
from reft.trainer import ReftTrainer

HERE = Path(__file__).resolve().parent
# DDP runs two batches of 4 where one process runs one of 8: other GEMM shapes, so the gradients agree up to fp32
# rounding only, and three Adam steps (lr 5e-2) carry that into the weights (measured up to 1.1e-6 on weights of
# size ~0.3 with the instruction set limited to SSE4.2; 0 on AVX-512): equal within 1e-5
DDP_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.exact


def test_two_process_ddp_equals_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(HERE / "_ddp_worker.py"), str(tmp_path / "ddp"), "4"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    train(str(tmp_path / "single"), 8)  # same global batch in one process

    ddp = load_file(tmp_path / "ddp" / "adapter" / WEIGHTS_NAME)
    single = load_file(tmp_path / "single" / "adapter" / WEIGHTS_NAME)
    after_two = load_file(tmp_path / "single" / "run" / "checkpoint-2" / WEIGHTS_NAME)
    assert ddp.keys() == single.keys()
    for key in single:
        assert not torch.equal(single[key], after_two[key]), key  # the last step still moved every tensor
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=DDP_ATOL, msg=key)
    # every rank wrote its RNG state into the one atomically published checkpoint
    files = set(os.listdir(tmp_path / "ddp" / "run" / "checkpoint-2"))
    assert {"rng_state_0.pth", "rng_state_1.pth", WEIGHTS_NAME, "optimizer.pt"} <= files
    assert sorted(os.listdir(tmp_path / "ddp" / "run")) == ["checkpoint-2", "checkpoint-3"]


def _one_sgd_step(tmp_path, reft_model, data, batch: int, accumulation: int) -> dict[str, torch.Tensor]:
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch, max_steps=1,
                             gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=0.5,
                             lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], disable_tqdm=True,
                             use_cpu=True, remove_unused_columns=False, save_strategy="no", seed=1)
    trainer = ReftTrainer(model=reft_model, args=args, train_dataset=data, data_collator=ReftDataCollator(0))
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(data)
    trainer.train()
    return {k: v.detach().clone() for k, v in reft_model.state_dict().items() if "interventions" in k or "head" in k}


@pytest.mark.parametrize("task", ["causal_lm", "classification"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, task):
    """SGD (not scale-invariant like Adam): 2 micro-batches of 2 = 1 batch of 4, for token sums and batch means."""
    if task == "causal_lm":
        data = token_examples(4)

        def fresh():
            torch.manual_seed(0)
            return get_reft_model(tiny_llama(init=0.2), ReftConfig(layers="1;2", positions="f1+l1", rank=4))
    else:
        data = [{"input_ids": e["input_ids"], "labels": i % 3} for i, e in enumerate(token_examples(4))]

        def fresh():
            torch.manual_seed(0)
            reft_model = get_reft_model(tiny_bert(), ReftConfig(layers="0;1", positions="f1", rank=4), num_labels=3)
            for module in reft_model.modules():  # BERT's and the head's dropout would draw different masks
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
            return reft_model

    start = {k: v.clone() for k, v in fresh().state_dict().items() if "interventions" in k or "head" in k}
    big = _one_sgd_step(tmp_path / "big", fresh(), data, batch=4, accumulation=1)
    small = _one_sgd_step(tmp_path / "small", fresh(), data, batch=2, accumulation=2)
    assert any(not torch.equal(big[k], start[k]) for k in big)
    for key in big:
        torch.testing.assert_close(small[key], big[key], rtol=1e-5, atol=1e-6, msg=key)
