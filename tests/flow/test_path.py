"""The linear path (Eq. 2/3), training times and the flow-matching loss (Eq. 8)."""

from __future__ import annotations

import math

import pytest
import torch

from vaflow.flow import TIME_KINDS, PathSample, flow_loss, linear_path, sample_time


def _pair(shape=(4, 5, 3), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_end_points_are_exact(dtype):
    x_0, x_1 = _pair(dtype=dtype)
    b = x_0.shape[0]
    assert torch.equal(linear_path(x_0, x_1, torch.zeros(b)).x_t, x_0)
    assert torch.equal(linear_path(x_0, x_1, torch.ones(b)).x_t, x_1)


def test_sample_fields_velocity_and_broadcast_over_b_t_d():
    x_0, x_1 = _pair((3, 7, 2))
    t = torch.tensor([0.0, 0.25, 0.9])
    s = linear_path(x_0, x_1, t)
    assert isinstance(s, PathSample)
    assert s.x_0 is x_0 and s.x_1 is x_1 and s.t is t
    assert s.x_t.shape == x_0.shape
    assert torch.equal(s.dx_t, x_1 - x_0)
    for i in range(3):  # each row uses its own time
        expected = (1 - t[i]) * x_0[i] + t[i] * x_1[i]
        torch.testing.assert_close(s.x_t[i], expected)


def test_path_velocity_is_the_time_derivative():
    x_0, x_1 = _pair((2, 3), dtype=torch.float64)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    eps = 1e-6
    fd = (linear_path(x_0, x_1, t + eps).x_t - linear_path(x_0, x_1, t - eps).x_t) / (2 * eps)
    torch.testing.assert_close(fd, linear_path(x_0, x_1, t).dx_t)


def test_path_rejects_bad_shapes():
    x_0, x_1 = _pair((2, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        linear_path(x_0, x_1[:, :2], torch.zeros(2))
    with pytest.raises(ValueError, match="expected t"):
        linear_path(x_0, x_1, torch.zeros(3))
    with pytest.raises(ValueError, match="expected t"):
        linear_path(x_0, x_1, torch.zeros(2, 1))


@pytest.mark.parametrize("kind", TIME_KINDS)
def test_sample_time_range_shape_dtype_and_determinism(kind):
    t = sample_time(1000, kind, generator=torch.Generator().manual_seed(3))
    assert t.shape == (1000,) and t.dtype == torch.float32
    assert (t >= 0).all() and (t <= 1).all()
    again = sample_time(1000, kind, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, again)
    other = sample_time(1000, kind, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(t, other)
    assert sample_time(5, kind, dtype=torch.float64).dtype == torch.float64


def test_uniform_time_mean_and_logit_normal_median():
    g = torch.Generator().manual_seed(0)
    assert abs(sample_time(20_000, "uniform", generator=g).mean().item() - 0.5) < 0.01
    for loc in (0.0, 1.0, -0.5):
        t = sample_time(20_000, "logit_normal", loc=loc, scale=0.7, generator=g)
        assert abs(t.median().item() - 1 / (1 + math.exp(-loc))) < 0.01


def test_sample_time_rejects_unknown_kind_naming_the_valid_ones():
    with pytest.raises(ValueError, match="'beta'.*uniform, logit_normal"):
        sample_time(4, "beta")
    with pytest.raises(ValueError, match="scale"):
        sample_time(4, "logit_normal", scale=0.0)


def test_flow_loss_is_mean_squared_velocity_error():
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    dx_t = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loss = flow_loss(v, dx_t)
    assert loss.shape == ()
    assert loss.item() == pytest.approx((0 + 4 + 9 + 16) / 4)
    assert flow_loss(dx_t, dx_t).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        flow_loss(v, dx_t[:1])


def test_flow_loss_gradient_reaches_the_velocity():
    x_0, x_1 = _pair((2, 3, 4))
    s = linear_path(x_0, x_1, torch.tensor([0.2, 0.7]))
    w = torch.tensor(0.5, requires_grad=True)
    flow_loss(w * s.x_t, s.dx_t).backward()
    assert w.grad is not None and torch.isfinite(w.grad)
