"""Generation: integrate the guided velocity field from the source sample x_0 to t = 1 (§3.3, Inference)."""

from __future__ import annotations

from torch import Tensor

from .guidance import Velocity, guided
from .solvers import SolveResult, solve


def sample(
    velocity: Velocity,
    x_0: Tensor,
    cond: Tensor | None = None,
    solver: str = "euler",
    steps: int = 25,
    cfg: float = 0.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> SolveResult:
    """Solve Eq. 1 with the classifier-free-guided velocity of Eq. 10 from x_0 (B, ...) at t = 0 to t = 1.

    velocity(x (B, ...), t (B,), cond (B, ...) or None) -> (B, ...) is the model; x_0 is the source sample (a
    draw of x_v^AE for VAFlow, noise for a Gaussian-prior flow); cond (B, ...) is x_v for a conditional
    estimator, None for the vanilla one (then cfg must be 0 and velocity is called with cond=None). cfg is γ.
    `solver`/`steps`/`rtol`/`atol` as in `solve`. The result's nfe counts evaluations of the guided field:
    with cfg ≠ 0 each one is a single batched model call of 2B rows (conditional and null together).
    Grad mode is the caller's choice; wrap in torch.no_grad() for generation.
    """
    return solve(guided(velocity, cond, cfg), x_0, solver=solver, steps=steps, rtol=rtol, atol=atol)
