"""A tiny regression model, its loss and deterministic data streams for the trainer tests and benchmark."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

N_FEATURES = 6


def make_model(seed: int = 0) -> nn.Module:
    """A 2-layer MLP with a LayerNorm (no buffers: DDP and one process see exactly the same maths)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 1))


def toy_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` samples of y = sin(x·w)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    w = torch.randn(N_FEATURES, 1, generator=g)
    return x, torch.sin(x @ w)


class ToyStream:
    """An epoch-bounded stream: each epoch is a fresh permutation of the samples (seeded by the epoch), cut into
    global batches of `batch_size × world` of which rank r takes the r-th chunk — as webdataset's node split
    would, and so that N ranks together see exactly the batches one process sees."""

    pattern = "toy-{000000..000003}.tar"  # what a shard stream would report in errors

    def __init__(self, rank: int, world: int, batch_size: int, n_samples: int = 96, seed: int = 0):
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, seed
        self.x, self.y = toy_data(n_samples, seed)
        self.epoch = 0
        self.drawn = 0  # batches produced so far, replayed ones included

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))

    def _epoch_batches(self, epoch: int, start: int = 0):
        order = self._order(epoch)
        chunk = self.batch_size
        n_chunks = len(order) // chunk
        for k in range(start, n_chunks // self.world):
            c = k * self.world + self.rank
            idx = order[c * chunk : (c + 1) * chunk]
            self.drawn += 1
            yield k, (self.x[idx], self.y[idx])

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        for _, batch in self._epoch_batches(epoch):
            yield batch


class StatefulToyStream(ToyStream):
    """ToyStream that resumes from `state_dict()` instead of being replayed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pos = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]

    def __iter__(self):
        # `epoch` counts epochs started; mid-epoch (pos > 0) the current one is epoch - 1.
        epoch = self.epoch - 1 if self.pos else self.epoch
        self.epoch = epoch + 1
        for k, batch in self._epoch_batches(epoch, self.pos):
            self.pos = k + 1
            yield batch
        self.pos = 0


class EpochToyStream(ToyStream):
    """A stream whose pass is chosen by `set_epoch`, a pure function of the epoch (like `pairs.ClipStream`)."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for _, batch in self._epoch_batches(self.epoch):
            yield batch


class ResumableEpochToyStream(EpochToyStream):
    """`set_epoch` and `state_dict` (a stream that saves its place): `__iter__` continues the current pass from
    its position, so a `set_epoch` after `load_state_dict` would restart the restored pass."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pos = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.pos = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]

    def __iter__(self):
        for k, batch in self._epoch_batches(self.epoch, self.pos):
            self.pos = k + 1
            yield batch


class Crash(RuntimeError):
    """Raised by `toy_loss(crash_at=n)`: a run dying mid-way."""


def toy_loss(noisy: bool = False, sleep: float = 0.0, nan_at: int = 0, crash_at: int = 0):
    """MSE loss; `noisy` adds target noise from the global torch RNG (exercises RNG restore on resume),
    `sleep` slows each call, `nan_at` makes the n-th call's loss NaN, `crash_at` raises Crash on the n-th call."""
    calls = {"n": 0}

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        calls["n"] += 1
        if crash_at and calls["n"] >= crash_at:
            raise Crash(f"crash on call {calls['n']}")
        x, y = batch
        if noisy:
            y = y + 0.05 * torch.randn_like(y)
        err = model(x) - y
        loss = (err**2).mean()
        if nan_at and calls["n"] >= nan_at:
            loss = loss * float("nan")
        if sleep:
            time.sleep(sleep)
        return loss, {"mae": err.abs().mean().item()}

    return loss_fn
