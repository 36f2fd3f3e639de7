"""The Gaussian-noise diffusion baseline of Figure 3: a cosine-schedule path, v/ε targets, loss and DDIM.

Time runs as in the flow code, t = 0 the source (here pure noise ε) and t = 1 the data x_1, so one estimator
f(x, t, cond) can be trained by either objective and sampled by `ddim` instead of an ODE solver. The schedule
is the variance-preserving cosine one (Nichol & Dhariwal 2021, without their offset), read in this direction:

    x_t = α(t)·x_1 + σ(t)·ε,  α(t) = sin(πt/2) (signal),  σ(t) = cos(πt/2) (noise),  α² + σ² = 1.

The v target (Salimans & Ho 2022) is stated for their angle φ with x = cos φ·x_1 + sin φ·ε, v = dx/dφ. Here
φ = π(1 − t)/2, so cos φ = α and sin φ = σ, and v = dx/dφ = α·ε − σ·x_1. As φ decreases while t rises,
dx_t/dt = −(π/2)·v: v points from the data towards the noise, the opposite of the flow's velocity.
Shapes: x_1, ε, x_t (B, ...) and t (B,), broadcast over the trailing dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .guidance import Velocity, guided
from .path import _time_like
from .solvers import Field, SolveResult, _check, _time

PREDICTIONS = ("v", "eps")  # what the estimator's output means: the v target, or the noise ε

# ε-prediction reads x_1 as (x_t − σ·ε)/α, a division by α(0) = 0 at the pure-noise end (zero SNR, where ε
# says nothing about x_1). t is clamped to at least T_MIN there, both in that division and where `ddim` calls
# an ε-model, so the noise x_0 is read as x at t = T_MIN (signal α ≈ 1.6e-3). v-prediction divides by nothing.
# Near t = 0 that division still multiplies a learned ε-model's error by 1/α (Lin et al. 2024 on zero
# terminal SNR), so v, which divides by nothing, is the default and the objective the baseline should use.
T_MIN = 1e-3


@dataclass(frozen=True)
class DiffusionSample:
    """One draw from the diffusion path: data, noise, time, noised state and both regression targets."""

    x_1: Tensor  # (B, ...) data sample
    eps: Tensor  # (B, ...) Gaussian noise, the source at t = 0
    t: Tensor  # (B,) time in [0, 1]
    x_t: Tensor  # (B, ...) α(t)·x_1 + σ(t)·ε
    v: Tensor  # (B, ...) α(t)·ε − σ(t)·x_1, the v-prediction target
    # The ε-prediction target is eps itself.

    def target(self, prediction: str) -> Tensor:
        """The regression target (B, ...) of the named prediction: v or eps."""
        _check_prediction(prediction)
        return self.v if prediction == "v" else self.eps


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid predictions: {', '.join(PREDICTIONS)}")


def cosine_schedule(t: Tensor) -> tuple[Tensor, Tensor]:
    """Signal and noise scales (α, σ) of the cosine schedule at times t (any shape) -> two tensors like t.

    α = sin(πt/2) and σ = sin(π(1 − t)/2), which is cos(πt/2) written so that both end points are exact in
    floating point: α(0) = σ(1) = 0 and α(1) = σ(0) = 1 (float cos(π/2) is 6e-17, not 0). Computed in float32
    or wider, then cast back to t's dtype.
    """
    wide = t if t.dtype in (torch.float32, torch.float64) else t.float()
    alpha = torch.sin((math.pi / 2) * wide)
    sigma = torch.sin((math.pi / 2) * (1 - wide))
    return alpha.to(t.dtype), sigma.to(t.dtype)


def diffusion_path(x_1: Tensor, eps: Tensor, t: Tensor) -> DiffusionSample:
    """Noise the data x_1 (B, ...) with ε (B, ...) at times t (B,): x_t = α·x_1 + σ·ε, v = α·ε − σ·x_1."""
    if x_1.shape != eps.shape:
        raise ValueError(f"x_1 {tuple(x_1.shape)} and eps {tuple(eps.shape)} differ in shape")
    alpha, sigma = cosine_schedule(_time_like(t, x_1))  # (B, 1, …, 1) each
    x_t = alpha * x_1 + sigma * eps  # (B, ...)
    v = alpha * eps - sigma * x_1  # (B, ...)
    return DiffusionSample(x_1=x_1, eps=eps, t=t, x_t=x_t, v=v)


def v_to_x1_eps(v: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Data and noise (x_1, ε), each (B, ...), implied by a v (B, ...) at x_t (B, ...), t (B,).

    Inverting the rotation [x_t; v] = [[α, σ], [−σ, α]]·[x_1; ε]: x_1 = α·x_t − σ·v, ε = σ·x_t + α·v.
    No division, so exact at both end points.
    """
    alpha, sigma = cosine_schedule(_time_like(t, x_t))  # (B, 1, …, 1) each
    return alpha * x_t - sigma * v, sigma * x_t + alpha * v


def eps_to_x1(eps: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Data x_1 (B, ...) implied by a noise ε (B, ...) at x_t (B, ...), t (B,): (x_t − σ·ε)/α.

    t is clamped to at least T_MIN, as α(0) = 0 (see T_MIN); an ε-model should be called at that time too.
    """
    alpha, sigma = cosine_schedule(_time_like(t, x_t).clamp(min=T_MIN))  # (B, 1, …, 1) each
    return (x_t - sigma * eps) / alpha


def to_x1_eps(out: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """Data and noise estimates (x̂_1, ε̂), each (B, ...), from an estimator's output (B, ...) at x_t, t.

    `prediction` says what `out` is: "v" (converted by `v_to_x1_eps`) or "eps" (x̂_1 by `eps_to_x1`).
    """
    _check_prediction(prediction)
    if prediction == "v":
        return v_to_x1_eps(out, x_t, t)
    return eps_to_x1(out, x_t, t), out


def diffusion_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of the estimator's output pred (B, ...) against the path's target (B, ...) (the v or
    ε of `DiffusionSample.target`), averaged over all elements -> (); the ε case is the DDPM "simple" loss."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    # mse_loss runs in float32 under autocast, so a bf16 forward pass still gets a float32 loss.
    return torch.nn.functional.mse_loss(pred, target)


def _model_time(x: Tensor, t: float, prediction: str) -> Tensor:
    """The (B,) time at which the estimator is called: t, raised to T_MIN for an ε-model (see T_MIN)."""
    return _time(x, max(t, T_MIN) if prediction == "eps" else t)


def ddim_step(out: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor, prediction: str) -> Tensor:
    """One deterministic DDIM step (Song et al. 2021, η = 0) from x_t (B, ...) at t (B,) to t_next (B,).

    The estimator's output out (B, ...) gives (x̂_1, ε̂) at (x_t, t), which are re-noised at t_next:
    x_next = α(t_next)·x̂_1 + σ(t_next)·ε̂ -> (B, ...). For v this is the rotation cos Δ·x_t − sin Δ·v by the
    angle Δ = π(t_next − t)/2. Classifier-free guidance mixes `out` before the step; as x̂_1 and ε̂ are affine
    in `out` and the weights (1 + γ, −γ) of Eq. 10 sum to 1, guiding v, ε or x̂_1 is the same thing.
    """
    x_hat, eps_hat = to_x1_eps(out, x_t, t, prediction)  # (B, ...) each
    alpha, sigma = cosine_schedule(_time_like(t_next, x_t))  # (B, 1, …, 1) each
    return alpha * x_hat + sigma * eps_hat


def ddim(f: Field, x_0: Tensor, steps: int, prediction: str = "v") -> SolveResult:
    """Deterministic DDIM from noise x_0 (B, ...) at t = 0 to data at t = 1 in `steps` uniform steps.

    f(x (B, ...), t (B,)) -> (B, ...) is the (already guided, see `guidance.guided`) estimator output, read as
    `prediction`. Returns `SolveResult(x, nfe=steps, steps)`. An ε-model is called at t = T_MIN instead of 0
    (see T_MIN).
    """
    _check(x_0, steps)
    _check_prediction(prediction)
    x = x_0
    for i in range(steps):
        t, t_next = i / steps, (i + 1) / steps
        t_model = _model_time(x, t, prediction)
        x = ddim_step(f(x, t_model), x, t_model, _time(x, t_next), prediction)
    return SolveResult(x=x, nfe=steps, steps=steps)


def sample_diffusion(
    velocity: Velocity,
    x_0: Tensor,
    cond: Tensor | None = None,
    steps: int = 25,
    cfg: float = 0.0,
    prediction: str = "v",
) -> SolveResult:
    """DDIM from noise x_0 (B, ...) with the classifier-free-guided estimator output (Eq. 10 on v or ε).

    The counterpart of `sampling.sample` for a diffusion-trained estimator: velocity(x (B, ...), t (B,), cond)
    -> (B, ...) is the same model callable, its output read as `prediction`; cond (B, ...) or None and cfg (γ)
    as in `sample`, `steps` DDIM steps. Grad mode is the caller's choice; wrap in torch.no_grad() to generate.
    """
    _check_prediction(prediction)
    return ddim(guided(velocity, cond, cfg), x_0, steps=steps, prediction=prediction)
