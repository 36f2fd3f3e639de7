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
"""

from .guidance import Field, Velocity, drop_condition, guided
from .path import TIME_KINDS, PathSample, flow_loss, linear_path, sample_time
from .sampling import sample
from .solvers import SOLVERS, SolveResult, dopri5, euler, midpoint, rk4, solve

__all__ = [
    "SOLVERS",
    "TIME_KINDS",
    "Field",
    "PathSample",
    "SolveResult",
    "Velocity",
    "dopri5",
    "drop_condition",
    "euler",
    "flow_loss",
    "guided",
    "linear_path",
    "midpoint",
    "rk4",
    "sample",
    "sample_time",
    "solve",
]
