"""Condition dropout for training and classifier-free guidance for sampling (paper §3.3, Eq. 10).

The null condition ∅ is all-zero features, zeros_like(cond): training zeroes x_v with probability 0.1, so the
same estimator learns both v(x_t, t, x_v) and v(x_t, t, ∅), and sampling mixes the two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .solvers import Field

# velocity(x (B, ...), t (B,), cond (B, ...) or None) -> v (B, ...): the model seen as a plain callable.
Velocity = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def drop_condition(cond: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each batch row of cond (B, ...) by zeros (the null condition ∅) with probability p -> (B, ...).

    §3.3: x_v is zeroed with p = 0.1 during training so that Eq. 10 has an unconditional velocity to use.
    p = 0 returns cond itself; p = 1 zeroes every row. A multiplicative mask (not an in-place write) keeps the
    gradient flowing to the kept rows. The draw is made on the generator's device, then moved to cond's.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    if cond.dim() < 1:
        raise ValueError(f"expected cond (B, ...), got a scalar of shape {tuple(cond.shape)}")
    if p == 0.0:
        return cond
    draw_device = generator.device if generator is not None else cond.device
    u = torch.rand(cond.shape[0], generator=generator, device=draw_device).to(cond.device)  # (B,) in [0, 1)
    keep = (u >= p).to(cond.dtype)  # (B,); u < 1 always, so p = 1 drops every row
    return cond * keep.reshape(-1, *([1] * (cond.dim() - 1)))  # (B, ...)


def guided(velocity: Velocity, cond: Tensor | None, gamma: float) -> Field:
    """The classifier-free-guided field f(x, t) of Eq. 10 for a model callable velocity(x, t, cond).

    v_cfg = (1 + γ)·v(x_t, t, x_v) − γ·v(x_t, t, ∅), with ∅ = zeros_like(cond). Shapes: x (B, ...), t (B,),
    cond (B, ...) or None. γ = 0 gives the plain conditional velocity, one model call per evaluation (cond may
    then be None, for an unconditional model). γ ≠ 0 evaluates the conditional and null branches in ONE
    batched call of 2B rows ([x, x], [t, t], [cond, ∅]) and splits the result; it needs a condition.
    """
    if gamma == 0:
        # Eq. 10 with γ = 0 is exactly v(x_t, t, x_v): skip the null branch and its cost.
        def conditional(x: Tensor, t: Tensor) -> Tensor:
            return velocity(x, t, cond)

        return conditional
    if cond is None:
        raise ValueError(f"classifier-free guidance (gamma={gamma}) needs a condition, got cond=None")
    both = torch.cat([cond, torch.zeros_like(cond)])  # (2B, ...): [x_v, ∅], built once per solve

    def cfg(x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[0]
        if cond.shape[0] != batch:
            raise ValueError(f"cond has {cond.shape[0]} rows but x has {batch}")
        v = velocity(torch.cat([x, x]), torch.cat([t, t]), both)  # (2B, ...)
        v_cond, v_null = v[:batch], v[batch:]  # (B, ...) each
        return (1 + gamma) * v_cond - gamma * v_null  # Eq. 10

    return cfg
