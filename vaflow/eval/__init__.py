"""Evaluation: pure metrics, evaluators, reports (paper §4.1 "Metrics", DESIGN §6).

- `metrics`: numpy arrays in, numbers out, each following its reference toolkit: `frechet_distance` (FD, with
  an `FDResult` that flags N <= D as unreliable), `kl_divergence` (KL(p_gt ‖ p_gen) matched by clip id),
  `inception_score` (IS, seed-2020 shuffle, 10 splits), `ib_score` (IB-VA ×100), `sync_accuracy` (Acc.), and
  the synthetic world's oracle `onset_f1` with its spectral-flux `detect_onsets`.
"""

from .metrics import (
    FDResult,
    OnsetScore,
    detect_onsets,
    frechet_distance,
    ib_score,
    inception_score,
    kl_divergence,
    onset_f1,
    sync_accuracy,
)

__all__ = [
    "FDResult",
    "OnsetScore",
    "detect_onsets",
    "frechet_distance",
    "ib_score",
    "inception_score",
    "kl_divergence",
    "onset_f1",
    "sync_accuracy",
]
