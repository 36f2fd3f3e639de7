"""The reference evaluators of the paper's metrics (paper §4.1 "Metrics", DESIGN §6), key-compatible with their
official checkpoints and loaded only from local files: PaSST and Melception (FD, KL, IS), ImageBind (IB-VA),
Diff-Foley's synchronisation classifier (Acc), Synchformer (DeSync) and PANNs Cnn14 at 16 kHz.

Each module holds one network whose parameter names equal the official file's keys, its exact input pipeline
(waveform at the model's rate → what the network reads) and `from_file(path)`, which loads through `load_strict`.
Three keep their network's building blocks in a companion module: `ldm` (difffoley), `synchformer_towers` and
`imagebind_towers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from vaflow.errors import UserError
from vaflow.models import artifacts

__all__ = ["MissingPackageError", "fit_length", "load_strict"]


class MissingPackageError(ImportError, UserError):
    """An evaluator whose package is not installed; the message names both and the pip line."""

    def __init__(self, evaluator: str, requirement: str) -> None:
        super().__init__(
            f"the {evaluator} evaluator needs the package {requirement} (pip install {requirement}, pinned in "
            "requirements.lock)"
        )


def load_strict(
    model: nn.Module,
    path: str | Path,
    evaluator: str,
    *,
    unwrap: Iterable[str] = (),
    ignore: Iterable[str] = (),
    tensors: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """Load `evaluator`'s official checkpoint at `path` into `model` strictly and put it in eval mode.

    `unwrap`: keys of an outer dict the reference loader descends into when present (e.g. "model"); `ignore`: key
    prefixes the reference loader drops (training state only). Any other missing, unexpected or wrongly shaped key is
    a ModelFileError naming the file, the evaluator and the first mismatching keys; a missing file is
    MissingModelFileError. `tensors` (already read) skips reading `path`.
    """
    rebuild = f"expected the official {evaluator} checkpoint"
    if tensors is None:
        tensors = artifacts.read_tensors(path, rebuild, unwrap=tuple(unwrap))
    drop = tuple(ignore)
    kept = {k: v for k, v in tensors.items() if not (drop and k.startswith(drop))}
    artifacts.check_fit(model.state_dict(), kept, f"{path}: not the {evaluator} checkpoint ({rebuild})")
    model.load_state_dict(kept, strict=True)
    return model.eval()


def fit_length(wav: Tensor, n: int) -> Tensor:
    """`wav` (..., N) cut to its first `n` samples or zero-padded at the end to `n`, as the reference toolkits fit a
    clip to their model's window."""
    if wav.shape[-1] >= n:
        return wav[..., :n]
    return F.pad(wav, (0, n - wav.shape[-1]))
