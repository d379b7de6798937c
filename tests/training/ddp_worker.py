"""Run under torchrun by test_training.py (and test_training_cut.py, with a model name): train a few steps,
save this rank's parameters and last gradients."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from advseg_cli.training.loop import Trainer, main_process_first
from tests.training.test_training import ddp_config, tiny_config


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    model = sys.argv[3] if len(sys.argv) > 3 else "cyclegan"
    config = ddp_config(data, out / "runs", name="ddp") if model == "cyclegan" else \
        tiny_config(data, out / "runs", name="ddp", model=model, max_steps=3, workers=0)
    trainer = Trainer(config)
    trainer.run()
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().cpu() for k, v in trainer.model.named_parameters()}, out / f"rank{rank}.pt")
    torch.save({k: v.grad.detach().cpu() for k, v in trainer.model.named_parameters()}, out / f"grad{rank}.pt")
    torch.save(trainer.steps_per_epoch, out / f"spe{rank}.pt")
    with main_process_first(trainer.ddp):  # rank 0 is slow here: without the barrier, rank 1 writes first
        if rank == 0:
            time.sleep(1.0)
        with open(out / "order.txt", "a") as handle:
            handle.write(f"{rank}\n")


if __name__ == "__main__":
    main()
