"""One ReFT training run, used by test_rel_ddp.py both in-process (1 process) and under torchrun (2 processes).

    python -m torch.distributed.run --nproc_per_node 2 _ddp_worker.py OUT_DIR PER_DEVICE_BATCH
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from _reliability_common import make_trainer, token_examples  # noqa: E402

from reft import ReftConfig  # noqa: E402

STEPS = 3
EXAMPLES = 24


def train(out_dir: str, per_device_batch: int) -> None:
    """Three optimizer steps over a shuffled dataset; the adapter is saved to OUT_DIR/adapter."""
    torch.set_num_threads(1)
    config = ReftConfig(layers="1;2", positions="f2+l2", tied=False, rank=4, dropout=0.0)
    trainer = make_trainer(os.path.join(out_dir, "run"), config=config, data=token_examples(EXAMPLES),
                           per_device_train_batch_size=per_device_batch, max_steps=STEPS, save_steps=2,
                           warmup_steps=0, learning_rate=5e-2)
    trainer.train()
    trainer.save_model(os.path.join(out_dir, "adapter"))


if __name__ == "__main__":
    train(sys.argv[1], int(sys.argv[2]))
    if torch.distributed.is_initialized():  # tear gloo down before exit: its threads otherwise abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
