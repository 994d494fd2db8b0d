"""Process layout for training: one process, or several under `accelerate launch` or `torchrun`.

Accelerate reads the launcher's environment, sets up the process group (NCCL on GPUs, gloo on
CPUs) and wraps the model in DistributedDataParallel, which averages gradients across processes.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn


class Engine:
    """The current process's rank, device and gradient-sync controls."""

    def __init__(self, cpu: bool = False):
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu)
        if not self.is_main:
            # Only the main process logs; the others report warnings and errors.
            logging.getLogger("gptclf").setLevel(logging.WARNING)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return the model wrapped for gradient averaging (unchanged in a single process)."""
        if self.world_size == 1:
            return model
        return self.accelerator.prepare_model(model, device_placement=True)

    def sync_gradients(self, model: nn.Module, sync: bool):
        """Skip DDP's all-reduce on micro-batches that are not the last of an optimizer step."""
        if sync or self.world_size == 1:
            return contextlib.nullcontext()
        return model.no_sync()

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()
