"""ODE solvers against closed-form solutions (Eq. 1/3 integrated from t = 0 to 1), with honest NFE."""

from __future__ import annotations

import math

import pytest
import torch

from vaflow.flow import SOLVERS, SolveResult, dopri5, euler, midpoint, rk4, solve

X_0 = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=torch.float64)  # (B=2, D=3)


class Counted:
    """Wrap a field f(x, t) and count its calls, checking what the solver passes."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype and t.device == x.device
        assert bool(((t >= 0) & (t <= 1)).all())
        self.calls += 1
        return self.f(x, t)


def decay(x, t):  # dx/dt = −x: x(1) = x(0)·e⁻¹
    return -x


def cubic(x, t):  # dx/dt = 3t²: x(1) = x(0) + 1
    return 3 * t[:, None] ** 2 * torch.ones_like(x)


def _error(result: SolveResult, exact: torch.Tensor) -> float:
    return (result.x - exact).abs().max().item()


FIXED = {"euler": (euler, 1), "midpoint": (midpoint, 2), "rk4": (rk4, 4)}


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_step_nfe_is_counted_calls(name):
    fn, per_step = FIXED[name]
    f = Counted(decay)
    r = fn(f, X_0, steps=7)
    assert isinstance(r, SolveResult)
    assert r.nfe == f.calls == per_step * 7 and r.steps == 7
    assert r.x.shape == X_0.shape and r.x.dtype == X_0.dtype


def test_euler_on_cubic_has_the_closed_form_error():
    # Left Riemann sum of 3t²: Σ 3(i/N)²/N = (N−1)(2N−1)/(2N²), so the error is (3N − 1)/(2N²).
    for n in (1, 4, 10):
        r = euler(cubic, X_0, steps=n)
        torch.testing.assert_close(r.x, X_0 + 1 - (3 * n - 1) / (2 * n**2))


def test_midpoint_on_cubic_has_the_closed_form_error_and_rk4_is_exact():
    # Midpoint rule for 3t²: error 1/(4N²); RK4 on a t-only field is Simpson's rule, exact for cubics.
    for n in (1, 4, 10):
        torch.testing.assert_close(midpoint(cubic, X_0, steps=n).x, X_0 + 1 - 1 / (4 * n**2))
        torch.testing.assert_close(rk4(cubic, X_0, steps=n).x, X_0 + 1, rtol=0, atol=1e-12)


def test_euler_is_first_order_on_decay():
    exact = X_0 * math.exp(-1)
    errors = [_error(euler(decay, X_0, steps=n), exact) for n in (10, 20, 40)]
    for n, e in zip((10, 20, 40), errors, strict=True):
        assert e <= 0.25 * X_0.abs().max().item() / n
    assert errors[0] > errors[1] > errors[2]
    assert 1.8 < errors[0] / errors[1] < 2.2  # halving h halves the error


def test_midpoint_is_second_order_on_decay():
    exact = X_0 * math.exp(-1)
    errors = [_error(midpoint(decay, X_0, steps=n), exact) for n in (10, 20, 40)]
    for n, e in zip((10, 20, 40), errors, strict=True):
        assert e <= 0.1 * X_0.abs().max().item() / n**2
    assert 3.6 < errors[0] / errors[1] < 4.4


def test_rk4_on_decay_with_ten_steps():
    r = rk4(decay, X_0, steps=10)
    rel = ((r.x - X_0 * math.exp(-1)) / (X_0 * math.exp(-1))).abs().max().item()
    assert rel <= 1e-6


@pytest.mark.parametrize(("field", "exact"), [(decay, X_0 * math.exp(-1)), (cubic, X_0 + 1)])
def test_dopri5_meets_tolerance_with_counted_nfe(field, exact):
    f = Counted(field)
    r = dopri5(f, X_0, rtol=1e-7, atol=1e-7)
    assert ((r.x - exact) / exact.abs().clamp_min(1.0)).abs().max().item() <= 1e-5  # relative, 0 guarded
    assert r.nfe == f.calls
    assert r.nfe >= 2 + 6 * r.steps and (r.nfe - 2) % 6 == 0  # 2 to start, then 6 per attempt (FSAL)


def test_dopri5_rejects_steps_and_still_counts_them():
    # dx/dt = cos(20t)·x: x(1) = x(0)·exp(sin(20)/20); the oscillation forces some rejected steps.
    f = Counted(lambda x, t: torch.cos(20 * t)[:, None] * x)
    r = dopri5(f, X_0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(r.x, X_0 * math.exp(math.sin(20) / 20), rtol=1e-6, atol=1e-6)
    assert r.nfe == f.calls
    assert r.nfe > 2 + 6 * r.steps  # at least one rejection was paid for
    loose = dopri5(f, X_0, rtol=1e-3, atol=1e-3)
    assert loose.nfe < r.nfe  # a looser tolerance costs fewer evaluations


def test_dopri5_max_steps_guard_reports_numbers():
    with pytest.raises(RuntimeError, match=r"max_steps=2 .*accepted.*rejected.*nfe="):
        dopri5(lambda x, t: torch.cos(20 * t)[:, None] * x, X_0, rtol=1e-10, atol=1e-10, max_steps=2)


def test_dopri5_non_finite_field_fails_loudly():
    with pytest.raises(RuntimeError, match="dopri5"):
        dopri5(lambda x, t: torch.full_like(x, float("nan")), X_0)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solvers_keep_autograd(name):
    x_0 = X_0.clone().requires_grad_(True)
    r = solve(decay, x_0, solver=name, steps=10, rtol=1e-7, atol=1e-7)
    r.x.sum().backward()
    # d x(1) / d x(0) = e⁻¹ for dx/dt = −x (approximately, for the fixed-step solvers)
    torch.testing.assert_close(x_0.grad, torch.full_like(X_0, math.exp(-1)), rtol=0.06, atol=0)


def test_solve_dispatches_and_validates():
    assert set(SOLVERS) == {"euler", "midpoint", "rk4", "dopri5"}
    f = Counted(decay)
    assert solve(f, X_0, "midpoint", steps=3).nfe == 6 == f.calls
    assert solve(decay, X_0).steps == 25  # euler, 25 steps by default
    with pytest.raises(ValueError, match="'heun'.*euler, midpoint, rk4, dopri5"):
        solve(decay, X_0, "heun")
    with pytest.raises(ValueError, match="steps"):
        solve(decay, X_0, "euler", steps=0)


def test_solver_passes_float32_time_for_float32_state():
    seen = []
    euler(lambda x, t: seen.append(t) or torch.zeros_like(x), X_0.float(), steps=4)
    assert [s.dtype for s in seen] == [torch.float32] * 4
    assert [s[0].item() for s in seen] == [0.0, 0.25, 0.5, 0.75]


def test_params_know_every_solver_by_name():
    from vaflow.config.method import SOLVER_NAMES

    assert set(SOLVER_NAMES) == set(SOLVERS)
