"""What a stage exchanges with the Trainer: the loss it returns, the spec its data-stream factory gets, the
tracker the trainer logs to, the result of `fit` and the errors `fit` raises (see `vaflow.train.trainer`)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from vaflow.errors import UserError

__all__ = [
    "EmptyStreamError",
    "LossOutput",
    "NonFiniteError",
    "StepTracker",
    "StreamSpec",
    "TrainResult",
    "TrainingInterrupted",
    "split_loss",
    "stream_name",
]

LossOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]


class NonFiniteError(FloatingPointError, UserError):
    """The loss or the gradient norm became NaN/Inf; nothing of that step was applied or checkpointed."""


class EmptyStreamError(RuntimeError, UserError):
    """The data stream yielded no batch at all."""


class TrainingInterrupted(SystemExit):
    """SIGTERM/SIGINT arrived: a checkpoint was written and the run stopped. Uncaught, the process exits with
    status 128 + signal (143 for SIGTERM), so DVC records the stage as failed and a rerun resumes it."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None):
        super().__init__(128 + signum)
        self.step, self.signum, self.checkpoint = step, signum, checkpoint

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"training interrupted by {name} after step {self.step}; checkpoint {self.checkpoint}"


class StepTracker(Protocol):
    """What the trainer needs of a tracker (`vaflow.tracking.Tracker` implements it)."""

    def start_at(self, step: int) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class StreamSpec:
    """What a data-stream factory is told: which share of the data this process reads, in what batch size."""

    rank: int
    world_size: int
    # Per-rank micro-batch: TrainerConfig.batch_size / (world_size × grad_accum).
    batch_size: int
    seed: int


@dataclass
class TrainResult:
    """What `fit` returns."""

    step: int  # last completed optimiser step (== cfg.steps unless resumed past it)
    losses: dict[str, float]  # loss and extra metrics, averaged over the last logging window
    ema: nn.Module  # EMA weights (eval mode, no grad): evaluate and export these
    model: nn.Module  # the raw trained weights (unwrapped from DDP)
    checkpoint: Path | None  # last.pt (rank 0), None on other ranks
    resumed_from: int = 0  # step the run resumed from (0 = fresh start)
    history: list[dict[str, float]] = field(default_factory=list)  # the logged step metrics of this run


def split_loss(out: LossOutput) -> tuple[torch.Tensor, Mapping[str, Any]]:
    """(loss, extra metrics) of a loss function's output, with or without its extras."""
    if isinstance(out, tuple):
        loss, extra = out
        return loss, extra
    return out, {}


def stream_name(stream: Any) -> str:
    """A stream as named in an error: its shard pattern, or its repr cut to 200 characters."""
    pattern = getattr(stream, "pattern", None)
    if pattern:
        return f"{type(stream).__name__}(pattern={pattern!r})"
    text = repr(stream)
    return text if len(text) <= 200 else text[:200] + "…"
