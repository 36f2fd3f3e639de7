"""The numerics around the training loop: seeds, deterministic kernels, the learning-rate schedule and the
EMA of the weights."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from vaflow.config.trainer import TrainerConfig

__all__ = ["EMA", "decays", "deterministic_algorithms", "lr_factor", "seed_everything", "to_device"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """`trainer.deterministic`: torch's deterministic kernels and no cuDNN autotuning for the run, then the
    process's previous settings again (they are global)."""
    if not on:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)  # warn_only=False: a nondeterministic op raises, naming itself
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: another choice per run
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def lr_factor(cfg: TrainerConfig, done: int) -> float:
    """Multiplier of `cfg.lr` for the optimiser step taken after `done` completed steps."""
    if done < cfg.warmup_steps:
        return (done + 1) / cfg.warmup_steps  # linear warm-up, lr/warmup_steps on the first step
    after = done - cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, after / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return cfg.schedule_gamma ** (after // cfg.schedule_step_every)
    return 1.0


class EMA:
    """Exponential moving average of a module's parameters; buffers (e.g. norm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._params = list(self.module.parameters())
        self._buffers = list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema ← decay·ema + (1−decay)·θ."""
        src = list(model.parameters())
        torch._foreach_lerp_(self._params, src, 1.0 - self.decay)
        for dst, buf in zip(self._buffers, model.buffers(), strict=True):
            dst.copy_(buf)


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to a parameter: matrices and kernels only. Decaying biases, norm gains and the
    weight-norm gains `weight_g` (one scale per output channel, shaped (C, 1, 1) like a kernel) only pulls them off
    their neutral values."""
    return param.ndim >= 2 and not name.endswith("weight_g")


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` (a tensor, or mappings and sequences of them) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
