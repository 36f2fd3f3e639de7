"""sample(): the guided solve (Eq. 10 inside Eq. 1) that the sampling stage calls."""

from __future__ import annotations

import math

import pytest
import torch

from vaflow.flow import sample


class LinearVelocity:
    """v(x, t, cond) = −x + b·mean(cond) per row (0 for cond None), counting calls and rows."""

    def __init__(self, b: float = 1.0) -> None:
        self.b, self.calls, self.rows = b, 0, 0

    def __call__(self, x, t, cond):
        self.calls += 1
        self.rows += x.shape[0]
        drift = 0.0 if cond is None else self.b * cond.mean(dim=1, keepdim=True)  # (B, 1)
        return -x + drift


def test_sample_with_cfg_solves_the_guided_ode():
    # Guided field: (1 + γ)(−x + m) − γ(−x) = −x + (1 + γ)m, so x(1) = m' + (x(0) − m')e⁻¹ with m' = (1 + γ)m.
    x_0 = torch.tensor([[1.0, -1.0], [2.0, 0.0]], dtype=torch.float64)
    cond = torch.tensor([[0.5, 1.5, 1.0], [-1.0, -3.0, -2.0]], dtype=torch.float64)  # row means 1, −2
    gamma = 2.0
    m = (1 + gamma) * cond.mean(dim=1, keepdim=True)
    exact = m + (x_0 - m) * math.exp(-1)
    velocity = LinearVelocity()
    r = sample(velocity, x_0, cond, solver="rk4", steps=10, cfg=gamma)
    torch.testing.assert_close(r.x, exact, rtol=1e-6, atol=1e-6)
    assert r.nfe == 40 and velocity.calls == 40 and velocity.rows == 40 * 4  # one call of 2B rows each


def test_sample_without_guidance_and_without_condition():
    x_0 = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    velocity = LinearVelocity()
    r = sample(velocity, x_0, solver="dopri5", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(r.x, x_0 * math.exp(-1), rtol=1e-6, atol=1e-6)
    assert r.nfe == velocity.calls == velocity.rows  # B = 1 row per call: no null branch
    with pytest.raises(ValueError, match="needs a condition"):
        sample(velocity, x_0, cfg=1.0)


def test_sample_defaults_to_25_euler_steps():
    velocity = LinearVelocity()
    x_0 = torch.ones(2, 3)
    cond = torch.zeros(2, 4)
    r = sample(velocity, x_0, cond)
    assert (r.nfe, r.steps, velocity.calls) == (25, 25, 25)
    torch.testing.assert_close(r.x, x_0 * (1 - 1 / 25) ** 25)
