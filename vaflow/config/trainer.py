"""`TrainerConfig`: the optimisation, precision, checkpoint and launch settings every training stage shares.

Each training stage's params section embeds one (`<stage>.trainer`), so `dvc exp run -S flow.trainer.lr=3e-4`
changes exactly that stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vaflow.config.section import Section

# Keys that may change between a run and its resume without changing what is being trained: the run length,
# how often it logs/checkpoints, how it is launched and which (equivalent) kernels compute it.
# Every other key must match.
RESUMABLE_KEYS = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "resume",
        "launcher",
        "deterministic",
        "num_workers",
        "in_memory_mb",
    }
)


class TrainerConfig(Section):
    """The shared training loop's settings (DESIGN §8, §9)."""

    # Optimiser steps of the run. 1000 steps fit the toy world in CPU minutes; the paper's stages run 100K-300K.
    # 0 only where a stage defines it (joint_tune: pass the previous stage's model through); others need >= 1.
    steps: int = Field(1000, ge=0)
    # GLOBAL batch (all ranks, all accumulation micro-steps). Per-rank batch = batch_size / (world × grad_accum),
    # so a run keeps its optimisation maths when it moves from 1 to N processes. 32 fits a CPU step in well under 1 s.
    batch_size: int = Field(32, ge=1)
    # Micro-steps per optimiser step; raise it when the per-rank batch does not fit in memory.
    grad_accum: int = Field(1, ge=1)
    # AdamW peak learning rate; 1e-4 is the usual DiT / Stable Audio Open value and is stable at small batch.
    lr: float = Field(1e-4, gt=0)
    # AdamW betas; PyTorch's defaults, which DiT and SAO training both keep.
    betas: tuple[float, float] = (0.9, 0.999)
    # AdamW decoupled weight decay, applied to matrices only (biases and norm gains are not decayed). A light 1e-3
    # regularises without slowing the short runs; AdamW's own 1e-2 default suits much longer schedules.
    weight_decay: float = Field(1e-3, ge=0)
    # Linear warm-up from lr/warmup_steps to lr; 100 steps keeps the first Adam updates from overshooting.
    warmup_steps: int = Field(100, ge=0)
    # After warm-up: `constant` (the paper trains flows at a fixed lr), `cosine` down to min_lr_ratio·lr at
    # `steps`, or `step` (multiply by schedule_gamma every schedule_step_every steps).
    schedule: Literal["constant", "cosine", "step"] = "constant"
    # `step` schedule: steps between decays (counted after warm-up).
    schedule_step_every: int = Field(1000, ge=1)
    # `step` schedule: factor applied at each decay; 0.5 halves the lr.
    schedule_gamma: float = Field(0.5, gt=0, le=1)
    # `cosine` schedule: floor as a fraction of lr; 0.1 keeps learning late in the run.
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    # Max global gradient norm (0 = no clipping, the norm is still computed and logged); 1.0 is the DiT/SAO value.
    clip_grad: float = Field(1.0, ge=0)
    # EMA decay per optimiser step; 0.999 averages over ~1000 steps, right for short CPU runs (0.9999 at paper scale).
    ema_decay: float = Field(0.999, ge=0, lt=1)
    # Steps between checkpoints (one is also written at the end and on SIGTERM/SIGINT).
    checkpoint_every: int = Field(500, ge=1)
    # Step-numbered checkpoints kept besides `last.pt` and `last.pt.prev` (0 = none): for picking an earlier model.
    keep_checkpoints: int = Field(0, ge=0)
    # Steps between progress lines / logged step metrics; 50 keeps MLflow traffic negligible.
    log_every: int = Field(50, ge=1)
    # Seed of python, numpy and torch (rank r uses seed + r so ranks draw different noise).
    seed: int = 0
    # Continue from `<out_dir>/last.pt` when it exists (an interrupted stage reruns and finishes the work).
    resume: bool = True
    # `auto`: bf16 autocast on CUDA, fp32 on CPU (CPU bf16 autocast is slower and only useful for testing).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Deterministic CUDA kernels (torch.use_deterministic_algorithms, no cuDNN autotuning, a fixed cuBLAS workspace):
    # two GPU runs give bit-identical weights, at some cost in speed; an op with no deterministic kernel raises.
    # Off by default because CPU runs, the embedded default, are bit-identical without it.
    deterministic: bool = False
    # Command prefix of the stage in dvc.yaml (`${<stage>.trainer.launcher} stages/x.py`): `python` for one
    # process, e.g. `torchrun --nproc-per-node=8` (plus rendezvous flags for several nodes) for DDP.
    launcher: str = Field("python", min_length=1)

    @model_validator(mode="after")
    def _betas_in_range(self) -> TrainerConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        return self

    def per_rank_batch(self, world_size: int) -> int:
        """Batch each rank draws per micro-step; raises ValueError naming the numbers when it does not divide."""
        parts = world_size * self.grad_accum
        if self.batch_size % parts:
            raise ValueError(
                f"trainer.batch_size={self.batch_size} is not divisible by world_size={world_size} × "
                f"grad_accum={self.grad_accum} = {parts}; choose a batch_size that is a multiple of {parts}"
            )
        return self.batch_size // parts


class ClipTrainerConfig(TrainerConfig):
    """The trainer of a stage that trains on clips decoded from the media files: how the train split is read."""

    # Threads decoding clips ahead of the step, each driving one ffmpeg process (0: decode in the step's thread).
    num_workers: int = Field(2, ge=0)
    # A train split whose decoded windows take at most this many MB is decoded once into memory on every rank; a
    # larger one is streamed (decoded again batch by batch, memory bounded by the clips in flight). Either way the
    # batches are the same.
    in_memory_mb: float = Field(2048, ge=0)


__all__ = ["RESUMABLE_KEYS", "ClipTrainerConfig", "TrainerConfig"]


def needs_steps(trainer: TrainerConfig, stage: str) -> None:
    """A stage section's check that its trainer trains (`steps` >= 1); only joint_tune may pass through with 0."""
    if trainer.steps < 1:
        raise ValueError(f"trainer.steps: {stage} must train at least 1 step (0 is only for joint_tune)")
