"""Process-group set-up from the environment `torchrun` provides, and the few collectives the trainer needs.

One process (`python stages/x.py`) and many (`torchrun --nproc-per-node=N stages/x.py`, or several nodes with
torchrun's `--nnodes/--rdzv-*` flags) run the same code: torchrun exports RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT, and `init_distributed` only reads them.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among `world_size` processes and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and MLflow runs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def env_rank() -> tuple[int, int]:
    """(rank, world_size) from the environment, without touching the process group (1 process: (0, 1))."""
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the environment (idempotent) and pick this rank's device.

    `device`: force a device (e.g. "cpu" on a GPU host); default CUDA `local_rank` when CUDA is available, else CPU.
    Backend: NCCL when the device is CUDA, gloo on CPU. A single process (no WORLD_SIZE or WORLD_SIZE=1) creates
    no process group at all.
    """
    rank, world = env_rank()
    local_rank = _env_int("LOCAL_RANK", rank)
    if device is None:
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={world} but {name} is not set: launch with torchrun (it sets the rendezvous "
                    "variables), or export MASTER_ADDR and MASTER_PORT yourself"
                )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # binds NCCL to this GPU up front (no guessing in the first collective)
        dist.init_process_group(**kwargs)
        atexit.register(shutdown_distributed)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    """Leave the process group if one exists (registered at exit by `init_distributed`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, indexed by rank (a one-element list in one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def group_rank() -> tuple[int, int]:
    """(rank, world_size) in the process group; (0, 1) when there is none (one process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_from_main(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's `t` copied in place into every rank's `t` (same shape and dtype everywhere; identity in one
    process); returns `t`. NCCL needs `t` on the rank's GPU."""
    if dist.is_initialized():
        # The collective reads and writes raw memory: a strided view (a slice of columns) goes through a dense copy.
        dense = t.contiguous()
        dist.broadcast(dense, src=0)
        if dense is not t:
            t.copy_(dense)
    return t


class _GatherRows(torch.autograd.Function):
    """Rows of every rank concatenated in rank order; backward hands each rank the gradient of its own rows summed
    over every rank's loss (the adjoint of the gather: each rank's copy of the gathered tensor feeds its own loss)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        x = x.contiguous()  # the collective moves raw memory: dense rows in, dense rows out
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts)  # (world·B, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()  # (world·B, ...)
        mine = torch.empty_like(grad[: grad.shape[0] // dist.get_world_size()])  # (B, ...)
        # Rank r receives Σ_s (rank s's gradient of rows r): the sum over every rank's loss.
        dist.reduce_scatter(mine, list(grad.chunk(dist.get_world_size())), op=dist.ReduceOp.SUM)
        return mine


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """x (B, ...) on each rank -> (world·B, ...): every rank's rows in rank order, differentiable (open_clip's
    `gather_with_grad=True`). Every rank must pass the same shape. One process: `x` itself, no copy.

    Gradients: backward returns to each rank Σ_ranks ∂L_rank/∂x_mine — the sum over all ranks' losses of the
    gradient they send to this rank's rows. When every rank computes the same loss L over the gathered batch that is
    world·∂L/∂x_mine, and DDP's gradient AVERAGE over ranks divides the world back out (see CAVPObjective in
    vaflow/train/cavp.py for the whole argument)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_gather_with_grad",
    "all_reduce_sum",
    "broadcast_from_main",
    "group_rank",
    "barrier",
    "env_rank",
    "init_distributed",
    "shutdown_distributed",
]
