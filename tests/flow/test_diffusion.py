"""The Gaussian-noise diffusion baseline (Figure 3): cosine schedule, v/ε targets, DDIM on closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vaflow.flow import (
    PREDICTIONS,
    DiffusionSample,
    SolveResult,
    cosine_schedule,
    ddim,
    ddim_step,
    diffusion_loss,
    diffusion_path,
    eps_to_x1,
    guided,
    sample_diffusion,
    to_x1_eps,
    v_to_x1_eps,
)
from vaflow.flow.diffusion import T_MIN

# Data x_1 ~ N(MU, diag(S²)) in 2-D: the Gaussian whose optimal estimators have a closed form.
MU = torch.tensor([2.0, -1.0], dtype=torch.float64)
S = torch.tensor([0.5, 1.5], dtype=torch.float64)


def _posterior(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[x_1 | x_t] and E[ε | x_t] for x_t = α·x_1 + σ·ε, x_1 ~ N(MU, S²): x_t ~ N(α·MU, V), V = α²S² + σ²."""
    alpha, sigma = cosine_schedule(t[:, None])  # (B, 1) each
    r = (x - alpha * MU) / (alpha**2 * S**2 + sigma**2)  # (B, 2)
    return MU + alpha * S**2 * r, sigma * r


class Oracle:
    """The exact optimal estimator f(x, t) of the Gaussian data, as an ε or a v prediction, counting calls."""

    def __init__(self, prediction: str) -> None:
        self.prediction, self.times = prediction, []

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype and t.device == x.device
        self.times.append(t[0].item())
        x_1, eps = _posterior(x, t)
        alpha, sigma = cosine_schedule(t[:, None])
        return eps if self.prediction == "eps" else alpha * eps - sigma * x_1


def _noise(shape=(2000, 2), seed=0) -> torch.Tensor:
    """Float64 N(0, 1) draws standardised per dim to mean 0 and std 1 exactly: moments measure the map."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0)


def _pair(shape=(4, 5, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_schedule_end_points_are_exact_and_variance_preserving(dtype):
    alpha, sigma = cosine_schedule(torch.tensor([0.0, 1.0], dtype=dtype))
    assert alpha.dtype == sigma.dtype == dtype
    assert alpha.tolist() == [0.0, 1.0] and sigma.tolist() == [1.0, 0.0]
    t = torch.linspace(0, 1, 101, dtype=dtype)
    alpha, sigma = cosine_schedule(t)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=tol)
    assert bool((alpha.diff() >= 0).all()) and bool((sigma.diff() <= 0).all())  # signal rises, noise falls


def test_path_fields_end_points_and_targets():
    x_1, eps = _pair()
    b = x_1.shape[0]
    start, end = diffusion_path(x_1, eps, torch.zeros(b)), diffusion_path(x_1, eps, torch.ones(b))
    assert isinstance(start, DiffusionSample) and start.x_1 is x_1 and start.eps is eps
    assert torch.equal(start.x_t, eps) and torch.equal(start.v, -x_1)  # t = 0: pure noise
    assert torch.equal(end.x_t, x_1) and torch.equal(end.v, eps)  # t = 1: the data
    t = torch.tensor([0.1, 0.4, 0.5, 0.8], dtype=torch.float64)
    s = diffusion_path(x_1, eps, t)
    for i in range(b):  # each row uses its own time
        a, sg = math.sin(math.pi * t[i] / 2), math.cos(math.pi * t[i] / 2)
        torch.testing.assert_close(s.x_t[i], a * x_1[i] + sg * eps[i])
        torch.testing.assert_close(s.v[i], a * eps[i] - sg * x_1[i])
    assert s.target("v") is s.v and s.target("eps") is s.eps
    with pytest.raises(ValueError, match="'x0'.*v, eps"):
        s.target("x0")
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_path(x_1, eps[:, :2], torch.zeros(b))


def test_v_is_minus_the_path_velocity_over_pi_by_2():
    # The sign convention: v = dx/dφ with φ = π(1 − t)/2, so dx_t/dt = −(π/2)·v.
    x_1, eps = _pair((2, 3))
    t, h = torch.tensor([0.3, 0.7], dtype=torch.float64), 1e-6
    fd = (diffusion_path(x_1, eps, t + h).x_t - diffusion_path(x_1, eps, t - h).x_t) / (2 * h)
    torch.testing.assert_close(fd, -(math.pi / 2) * diffusion_path(x_1, eps, t).v)


def test_conversions_invert_the_path():
    x_1, eps = _pair((6, 4, 3))
    t = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.9, 1.0], dtype=torch.float64)
    s = diffusion_path(x_1, eps, t)
    x_hat, eps_hat = v_to_x1_eps(s.v, s.x_t, t)  # exact at both ends: no division
    torch.testing.assert_close(x_hat, x_1)
    torch.testing.assert_close(eps_hat, eps)
    torch.testing.assert_close(eps_to_x1(eps[1:], s.x_t[1:], t[1:]), x_1[1:])
    for prediction in PREDICTIONS:
        x_hat, eps_hat = to_x1_eps(s.target(prediction)[1:], s.x_t[1:], t[1:], prediction)
        torch.testing.assert_close(x_hat, x_1[1:])
        torch.testing.assert_close(eps_hat, eps[1:])
    # At t = 0 the ε reading divides by α(T_MIN), not by α(0) = 0.
    assert bool(torch.isfinite(eps_to_x1(eps[:1], s.x_t[:1], t[:1])).all())
    with pytest.raises(ValueError, match="'x0'.*v, eps"):
        to_x1_eps(s.v, s.x_t, t, "x0")


def test_diffusion_loss_is_mean_squared_error():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loss = diffusion_loss(pred, target)
    assert loss.shape == () and loss.item() == pytest.approx((0 + 4 + 9 + 16) / 4)
    assert diffusion_loss(target, target).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_loss(pred, target[:1])


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_one_ddim_step_with_the_exact_predictor_is_the_ddim_formula(prediction):
    x_t = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, t_next = torch.full((8,), 0.3, dtype=torch.float64), torch.full((8,), 0.55, dtype=torch.float64)
    x_1, eps = _posterior(x_t, t)  # the exact E[x_1 | x_t], E[ε | x_t]
    alpha, sigma = math.sin(math.pi * 0.55 / 2), math.cos(math.pi * 0.55 / 2)
    out = ddim_step(Oracle(prediction)(x_t, t), x_t, t, t_next, prediction)
    torch.testing.assert_close(out, alpha * x_1 + sigma * eps, rtol=1e-12, atol=1e-12)
    if prediction == "v":  # the same step as a rotation by Δ = π(t_next − t)/2
        delta = math.pi * 0.25 / 2
        v = Oracle("v")(x_t, t)
        torch.testing.assert_close(out, math.cos(delta) * x_t - math.sin(delta) * v, rtol=1e-12, atol=1e-12)


def test_one_v_step_from_noise_lands_on_the_data_mean():
    # At t = 0 the optimal v is −E[x_1] whatever the noise, so one DDIM step returns MU for every row.
    f = Oracle("v")
    r = ddim(f, _noise((5, 2)), steps=1)
    torch.testing.assert_close(r.x, MU.expand(5, 2), rtol=0, atol=1e-12)
    assert (r.nfe, r.steps, f.times) == (1, 1, [0.0])


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_many_step_ddim_transports_noise_to_the_data(prediction):
    z = _noise()
    errors = []
    for steps in (100, 200):
        f = Oracle(prediction)
        r = ddim(f, z, steps=steps, prediction=prediction)
        assert isinstance(r, SolveResult) and r.nfe == r.steps == steps == len(f.times)
        # Uniform grid i/steps; an ε-model is called at T_MIN instead of 0.
        first = T_MIN if prediction == "eps" else 0.0
        assert f.times[0] == pytest.approx(first) and f.times[-1] == pytest.approx(1 - 1 / steps)
        # The mean is exact for v; ε reads the noise as x at T_MIN, a bias of about S·α(T_MIN)·|MU| < 3e-3.
        torch.testing.assert_close(r.x.mean(0), MU, rtol=0, atol=3e-3 if prediction == "eps" else 1e-9)
        errors.append((r.x.std(0) - S).abs().max().item())
    assert errors[1] < 0.012  # DDIM is first order: the std error halves with the step
    assert 1.8 < errors[0] / errors[1] < 2.2


class TinyModel(nn.Module):
    """An MLP estimator f(x, t, cond) for 2-D data, with t fed as (sin, cos)(πt/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x, t, cond=None):
        angle = (math.pi / 2) * t[:, None]  # (B, 1)
        return self.net(torch.cat([x, torch.sin(angle), torch.cos(angle)], dim=1))  # (B, 2)


def test_learned_v_model_samples_the_data():
    # Trained by the v loss, sampled by DDIM: a wrong target sign, loss or sampler lands far from N(MU, S²)
    # (a model trained on −v gives means near (−3, 0.6)).
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mu, s = MU.float(), S.float()
    model, steps = TinyModel(), 500
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x_1 = mu + s * torch.randn(256, 2, generator=g)
        path = diffusion_path(x_1, torch.randn(256, 2, generator=g), torch.rand(256, generator=g))
        loss = diffusion_loss(model(path.x_t, path.t), path.target("v"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        x = sample_diffusion(model, torch.randn(4000, 2, generator=g), steps=50).x
    torch.testing.assert_close(x.mean(0), mu, rtol=0, atol=0.1)
    torch.testing.assert_close(x.std(0), s, rtol=0.08, atol=0)


class LinearModel:
    """f(x, t, cond) = −x + mean(cond) per row (0 for cond None), counting calls and rows."""

    def __init__(self) -> None:
        self.calls, self.rows = 0, 0

    def __call__(self, x, t, cond):
        self.calls += 1
        self.rows += x.shape[0]
        return -x + (0.0 if cond is None else cond.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_sample_diffusion_is_ddim_of_the_guided_output(prediction):
    x_0 = _noise((3, 2))
    cond = torch.tensor([[0.5, 1.5], [-1.0, -3.0], [2.0, 0.0]], dtype=torch.float64)
    model = LinearModel()
    r = sample_diffusion(model, x_0, cond, steps=6, cfg=1.5, prediction=prediction)
    assert r.nfe == 6 and model.calls == 6 and model.rows == 6 * 6  # one call of 2B rows per step
    expected = ddim(guided(LinearModel(), cond, 1.5), x_0, steps=6, prediction=prediction)
    torch.testing.assert_close(r.x, expected.x, rtol=0, atol=0)
    assert not torch.allclose(r.x, sample_diffusion(model, x_0, cond, steps=6, prediction=prediction).x)
    with pytest.raises(ValueError, match="needs a condition"):
        sample_diffusion(model, x_0, cfg=1.0)


def test_bad_steps_and_prediction_are_refused():
    f, x_0 = Oracle("v"), _noise((2, 2))
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        ddim(f, x_0, steps=0)
    with pytest.raises(ValueError, match="steps must be >= 1, got -3"):
        sample_diffusion(LinearModel(), x_0, steps=-3)
    with pytest.raises(ValueError, match=r"unknown prediction 'x0'; valid predictions: v, eps"):
        ddim(f, x_0, steps=4, prediction="x0")
    with pytest.raises(ValueError, match="'sample'.*v, eps"):
        sample_diffusion(LinearModel(), x_0, prediction="sample")
    assert f.times == []  # refused before any call
