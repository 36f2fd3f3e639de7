"""ODE solvers for dx/dt = f(x, t) from t = 0 (source x_0) to t = 1 (the generated x_1), Eq. 1/3.

Every solver sees only a callable f(x, t) with x (B, ...) and t a (B,) tensor of x's dtype and device, and
returns a `SolveResult`. Fixed-step solvers (euler, midpoint, rk4) use a uniform grid of `steps` intervals;
`dopri5` adapts its step to an error tolerance. The paper samples with Euler, midpoint and dopri5 (§4.1), and
compares training frameworks with dopri5 (§4.2). Grad mode is left to the caller (sampling wraps the solve in
no_grad); no state is updated in place, so a solve can also be differentiated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# f(x (B, ...), t (B,)) -> dx/dt (B, ...): what the solvers integrate.
Field = Callable[[Tensor, Tensor], Tensor]

T0, T1 = 0.0, 1.0  # the flow's time span: source at t = 0, target at t = 1


@dataclass(frozen=True)
class SolveResult:
    """The state at t = 1, the function evaluations made, and the accepted steps."""

    x: Tensor  # (B, ...) final state
    nfe: int  # number of calls of f actually made
    steps: int  # accepted steps (for dopri5, rejected attempts count in nfe but not here)


def _time(x: Tensor, t: float) -> Tensor:
    """The scalar time t as a (B,) tensor of x's dtype and device, the form f expects."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _check(x_0: Tensor, steps: int) -> None:
    if x_0.dim() < 1:
        raise ValueError(f"expected x_0 (B, ...), got a scalar of shape {tuple(x_0.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def euler(f: Field, x_0: Tensor, steps: int) -> SolveResult:
    """Euler with `steps` uniform steps; x_0 (B, ...) -> x (B, ...). Error O(1/steps), NFE = steps."""
    _check(x_0, steps)
    h = (T1 - T0) / steps
    x = x_0
    for i in range(steps):
        x = x + h * f(x, _time(x, T0 + i * h))
    return SolveResult(x=x, nfe=steps, steps=steps)


def midpoint(f: Field, x_0: Tensor, steps: int) -> SolveResult:
    """Explicit midpoint (RK2) with `steps` uniform steps; x_0 (B, ...) -> x (B, ...).

    Global error O(1/steps²), NFE = 2·steps.
    """
    _check(x_0, steps)
    h = (T1 - T0) / steps
    x = x_0
    for i in range(steps):
        t = T0 + i * h
        k1 = f(x, _time(x, t))
        x = x + h * f(x + (h / 2) * k1, _time(x, t + h / 2))
    return SolveResult(x=x, nfe=2 * steps, steps=steps)


def rk4(f: Field, x_0: Tensor, steps: int) -> SolveResult:
    """Classic 4th-order Runge–Kutta with `steps` uniform steps; x_0 (B, ...) -> x (B, ...).

    Global error O(1/steps⁴), NFE = 4·steps.
    """
    _check(x_0, steps)
    h = (T1 - T0) / steps
    x = x_0
    for i in range(steps):
        t = T0 + i * h
        k1 = f(x, _time(x, t))
        k2 = f(x + (h / 2) * k1, _time(x, t + h / 2))
        k3 = f(x + (h / 2) * k2, _time(x, t + h / 2))
        k4 = f(x + h * k3, _time(x, t + h))
        x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return SolveResult(x=x, nfe=4 * steps, steps=steps)


# Dormand–Prince 5(4) tableau (Dormand & Prince 1980; Hairer, Nørsett & Wanner, Solving ODEs I, §II.5).
# The 7th stage is evaluated at the 5th-order solution (its row equals _DP_B), so it is the next step's first
# stage: "first same as last" (FSAL), six new evaluations per attempted step.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = _DP_A[6]  # 5th-order weights, propagated (local extrapolation)
# Error weights: 5th-order minus the embedded 4th-order weights (5179/57600, 0, 7571/16695, 393/640,
# −92097/339200, 187/2100, 1/40).
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_DP_ORDER = 5
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0  # usual step-control constants (Hairer, §II.4)


def _rms(x: Tensor) -> float:
    """Root mean square over all elements, in float32 or wider (one number steers the whole batch)."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return math.sqrt(x.square().mean().item()) if x.numel() else 0.0


def _combine(x: Tensor, h: float, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """x + h·Σ w_j·k_j, skipping zero weights."""
    dx = sum((w * k for w, k in zip(weights, ks, strict=True) if w != 0.0), torch.zeros_like(x))
    return x + h * dx


def _initial_step(f: Field, x: Tensor, f_0: Tensor, rtol: float, atol: float) -> float:
    """Starting step size (Hairer, Nørsett & Wanner, §II.4, "starting step size"); costs one evaluation."""
    scale = atol + rtol * x.abs()
    d_0, d_1 = _rms(x / scale), _rms(f_0 / scale)
    h_0 = 0.01 * d_0 / d_1 if d_0 >= 1e-5 and d_1 >= 1e-5 else 1e-6
    h_0 = min(h_0, T1 - T0)
    f_1 = f(x + h_0 * f_0, _time(x, T0 + h_0))
    d_2 = _rms((f_1 - f_0) / scale) / h_0
    if max(d_1, d_2) <= 1e-15:
        h_1 = max(1e-6, h_0 * 1e-3)
    else:
        h_1 = (0.01 / max(d_1, d_2)) ** (1 / _DP_ORDER)
    h = min(100 * h_0, h_1, T1 - T0)
    return h if math.isfinite(h) and h > 0 else 1e-6  # a non-finite field: let step control fail loudly


def dopri5(
    f: Field, x_0: Tensor, rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 10_000
) -> SolveResult:
    """Adaptive Dormand–Prince 5(4) from t = 0 to 1; x_0 (B, ...) -> x (B, ...).

    A step is accepted when the RMS over all elements of err / (atol + rtol·max(|x|, |x_new|)) is ≤ 1; the
    next step size is h·clip(0.9·err^(−1/5), 0.2, 10) (at most h after a rejection). One step size serves the
    whole batch. NFE = 2 (f at x_0 and the starting-step probe) + 6 per attempted step, thanks to FSAL.
    Raises RuntimeError after `max_steps` attempts, or when the step size underflows (a non-finite field).
    """
    _check(x_0, 1)
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    nfe = 0

    def counted(x: Tensor, t: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return f(x, t)

    def field(x: Tensor, t: float) -> Tensor:
        return counted(x, _time(x, t))

    x, t = x_0, T0
    k_1 = field(x, t)
    h = _initial_step(counted, x, k_1, rtol, atol)
    accepted = rejected = 0
    while t < T1:
        if accepted + rejected >= max_steps:
            raise RuntimeError(
                f"dopri5 reached max_steps={max_steps} ({accepted} accepted, {rejected} rejected, nfe={nfe}) "
                f"at t={t:.6g} < {T1} with step {h:.3g}; loosen rtol={rtol}/atol={atol} or raise max_steps"
            )
        if h < 1e-10 * max(abs(t), 1.0):
            raise RuntimeError(
                f"dopri5 step size underflow (h={h:.3g}) at t={t:.6g} after {accepted} accepted and "
                f"{rejected} rejected steps (nfe={nfe}); the field may be non-finite or too stiff"
            )
        # Stretch a step that would stop just short of t = 1 (within 1%) to land exactly on it, which saves a
        # tiny last step (Hairer's codes do the same).
        last = t + 1.01 * h >= T1
        if last:
            h = T1 - t
        ks = [k_1]
        for i in range(1, 7):
            ks.append(field(_combine(x, h, _DP_A[i], ks), t + _DP_C[i] * h))
        x_new = _combine(x, h, _DP_B, ks[:6])  # the 5th-order solution, also the input of stage 7
        err_vec = _combine(torch.zeros_like(x), h, _DP_E, ks)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err = _rms(err_vec / scale)
        if math.isfinite(err) and err <= 1.0:
            x, k_1, accepted = x_new, ks[6], accepted + 1  # FSAL: f(x_new, t + h) is the next k_1
            t = T1 if last else t + h
            factor = _MAX_FACTOR if err == 0.0 else min(_MAX_FACTOR, _SAFETY * err ** (-1 / _DP_ORDER))
            h *= max(_MIN_FACTOR, factor)
        else:
            rejected += 1
            factor = _SAFETY * err ** (-1 / _DP_ORDER) if math.isfinite(err) else _MIN_FACTOR
            h *= min(1.0, max(_MIN_FACTOR, factor))
    return SolveResult(x=x, nfe=nfe, steps=accepted)


SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "euler": euler,
    "midpoint": midpoint,
    "rk4": rk4,
    "dopri5": dopri5,
}
ADAPTIVE = frozenset({"dopri5"})  # take rtol/atol; the others take steps


def solve(
    f: Field, x_0: Tensor, solver: str = "euler", steps: int = 25, rtol: float = 1e-5, atol: float = 1e-5
) -> SolveResult:
    """Integrate dx/dt = f(x, t) from x_0 (B, ...) at t = 0 to t = 1 with the named solver -> SolveResult.

    `steps` is the number of uniform steps of the fixed-step solvers; `rtol`/`atol` are the tolerances of the
    adaptive ones (dopri5), which ignore `steps` (it is still checked to be ≥ 1).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if solver in ADAPTIVE:
        return SOLVERS[solver](f, x_0, rtol=rtol, atol=atol)
    return SOLVERS[solver](f, x_0, steps=steps)
