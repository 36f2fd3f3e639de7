"""Flow matching: paths, training times and loss, condition dropout, guidance, ODE solvers, sampling.

Imports torch only: no model and no data code. The model enters as a callable velocity(x, t, cond).

- `path`: the linear path x_t = (1 − t)·x_0 + t·x_1 with velocity dx_t = x_1 − x_0 (Eq. 2/3), `PathSample`;
  training times t ~ U(0, 1) (Eq. 8) or logit-normal; `flow_loss`, the mean squared velocity error of Eq. 8.
  In VAFlow x_0 is the aligned video latent x_v^AE and x_1 the audio latent x_a (§3.1, §3.3).
- `guidance`: `drop_condition` zeroes x_v per row with probability p (0.1 in §3.3) during training;
  `guided` builds the classifier-free-guided field of Eq. 10, (1 + γ)·v(x_t, t, x_v) − γ·v(x_t, t, ∅), ∅ = 0.
- `solvers`: euler, midpoint, rk4 (fixed steps) and dopri5 (adaptive Dormand–Prince 5(4)) integrate
  dx/dt = f(x, t) from t = 0 to 1 (Eq. 1/3) and return `SolveResult(x, nfe, steps)`; `SOLVERS`, `solve`.
- `sampling`: `sample`, the guided solve that the sampling stage and `vaflow generate` call (§3.3, Inference).
- `diffusion`: the Gaussian-noise diffusion baseline of Figure 3 in the same time direction (noise at t = 0):
  cosine schedule x_t = sin(πt/2)·x_1 + cos(πt/2)·ε, `DiffusionSample` with the v and ε targets, their
  conversions, `diffusion_loss`, and the deterministic DDIM sampler `ddim` / `sample_diffusion`.
"""

from .diffusion import (
    PREDICTIONS,
    DiffusionSample,
    cosine_schedule,
    ddim,
    ddim_step,
    diffusion_loss,
    diffusion_path,
    eps_to_x1,
    sample_diffusion,
    to_x1_eps,
    v_to_x1_eps,
)
from .guidance import Field, Velocity, drop_condition, guided
from .path import TIME_KINDS, PathSample, flow_loss, linear_path, sample_time
from .sampling import sample
from .solvers import SOLVERS, SolveResult, dopri5, euler, midpoint, rk4, solve

__all__ = [
    "PREDICTIONS",
    "SOLVERS",
    "TIME_KINDS",
    "DiffusionSample",
    "Field",
    "PathSample",
    "SolveResult",
    "Velocity",
    "cosine_schedule",
    "ddim",
    "ddim_step",
    "diffusion_loss",
    "diffusion_path",
    "dopri5",
    "drop_condition",
    "eps_to_x1",
    "euler",
    "flow_loss",
    "guided",
    "linear_path",
    "midpoint",
    "rk4",
    "sample",
    "sample_diffusion",
    "sample_time",
    "solve",
    "to_x1_eps",
    "v_to_x1_eps",
]
