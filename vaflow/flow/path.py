"""The linear (optimal-transport) path, training times and the flow-matching loss (paper §3.1, §3.3).

x_0 is the source sample (the aligned video latent x_v^AE in VAFlow, Gaussian noise for the baseline
flow), x_1 the target (the audio latent x_a). Shapes: x_0, x_1 (B, ...) and t (B,), broadcast over the
trailing dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TIME_KINDS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class PathSample:
    """One draw from the path: end points, time, interpolated state and its (target) velocity."""

    x_0: Tensor  # (B, ...) source sample
    x_1: Tensor  # (B, ...) target sample
    t: Tensor  # (B,) time in [0, 1]
    x_t: Tensor  # (B, ...) (1 − t)·x_0 + t·x_1
    dx_t: Tensor  # (B, ...) d x_t / dt = x_1 − x_0, the regression target of Eq. 8


def _time_like(t: Tensor, x: Tensor) -> Tensor:
    """t (B,) -> (B, 1, …, 1) with x's number of dims and dtype, so that it multiplies x (B, ...)."""
    if t.dim() != 1 or x.dim() < 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"expected t (B,) for x (B, ...), got t {tuple(t.shape)} and x {tuple(x.shape)}")
    return t.to(dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def linear_path(x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
    """Sample the linear path between x_0 (B, ...) and x_1 (B, ...) at times t (B,) (Eq. 2/3, Eq. 8).

    x_t = (1 − t)·x_0 + t·x_1 and dx_t = x_1 − x_0. Written as a weighted sum rather than x_0 + t·(x_1 − x_0)
    so that the end points are exact in floating point: t = 0 gives x_0 and t = 1 gives x_1 bit for bit.
    """
    if x_0.shape != x_1.shape:
        raise ValueError(f"x_0 {tuple(x_0.shape)} and x_1 {tuple(x_1.shape)} differ in shape")
    tb = _time_like(t, x_0)  # (B, 1, …, 1)
    x_t = (1 - tb) * x_0 + tb * x_1  # (B, ...)
    return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=x_t, dx_t=x_1 - x_0)


def sample_time(
    batch: int,
    kind: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Training times t (batch,) in [0, 1].

    "uniform": t ~ U(0, 1), as in Eq. 8. "logit_normal": t = sigmoid(n), n ~ N(loc, scale²), which spends more
    of the training on mid-path times (Esser et al. 2024, SD3); offered as an option, not used by the paper.
    The draw is made on the generator's device (so a CPU generator works for any `device`) and then moved.
    """
    if kind not in TIME_KINDS:
        raise ValueError(f"unknown time sampling kind {kind!r}; valid kinds: {', '.join(TIME_KINDS)}")
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    draw_device = generator.device if generator is not None else device
    if kind == "uniform":
        t = torch.rand(batch, generator=generator, device=draw_device, dtype=dtype)
    else:
        if scale <= 0:
            raise ValueError(f"logit_normal scale must be > 0, got {scale}")
        n = torch.randn(batch, generator=generator, device=draw_device, dtype=dtype)
        t = torch.sigmoid(loc + scale * n)
    return t.to(device=device) if device is not None else t


def flow_loss(v: Tensor, dx_t: Tensor) -> Tensor:
    """Flow-matching loss of Eq. 8: mean squared error of the predicted velocity v (B, ...) against the path's
    velocity dx_t (B, ...), averaged over all elements -> ()."""
    if v.shape != dx_t.shape:
        raise ValueError(f"velocity {tuple(v.shape)} and target {tuple(dx_t.shape)} differ in shape")
    # mse_loss runs in float32 under autocast, so a bf16 forward pass still gets a float32 loss.
    return torch.nn.functional.mse_loss(v, dx_t)
