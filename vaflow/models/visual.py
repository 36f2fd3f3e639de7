"""The visual-encoder interface: frames at an encoder's fps in, per-time-step features x_v out (paper §3, §4.5)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

__all__ = ["VisualEncoder", "as_frames"]


def as_frames(frames: torch.Tensor | np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """Check and convert frames to a uint8 tensor (..., H, W, 3) with (H, W) == input_size.

    Only uint8 is accepted: a float array could be in [0, 1] or [0, 255], and guessing wrong
    silently changes every feature.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a uint8 tensor or ndarray, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 in [0, 255], got dtype {frames.dtype}")
    if frames.ndim < 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (..., T, H, W, 3), got {tuple(frames.shape)}")
    if tuple(frames.shape[-3:-1]) != tuple(input_size):
        raise ValueError(
            f"frames are {tuple(frames.shape[-3:-1])} (H, W) but this encoder expects {tuple(input_size)}: "
            "resize frames to the encoder's input_size before encoding"
        )
    return frames


class VisualEncoder(nn.Module, ABC):
    """A frozen feature extractor: frames (T, H, W, 3) uint8 at `fps` -> features (T_v, D_v) float32.

    Subclasses set `fps` (frames per second they expect), `input_size` ((H, W) the frames must already
    have), `dim` (D_v), `model_name`, and `weights_hash` (sha256[:16] of the weight file, or "none"),
    and implement `encode_batch`. Features come back on the encoder's device.
    """

    kind: ClassVar[str]
    fps: float
    input_size: tuple[int, int]
    dim: int
    model_name: str
    weights_hash: str

    def __init__(self) -> None:
        super().__init__()
        # An encoder without parameters (pixels) still needs to know where to compute.
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device features are computed on."""
        return self._device_probe.device

    def train(self, mode: bool = True) -> VisualEncoder:
        """Stay in eval mode: features are frozen (paper §3), dropout or batch statistics must not leak in."""
        return super().train(False)

    def num_features(self, num_frames: int) -> int:
        """T_v for a clip of `num_frames` frames at `fps` (one feature per frame unless overridden)."""
        return num_frames

    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames (T, H, W, 3) uint8 at `fps`, already at `input_size` -> features (T_v, D_v) float32."""
        frames = as_frames(frames, self.input_size)
        if frames.ndim != 4:
            raise ValueError(
                f"encode takes one clip (T, H, W, 3), got {tuple(frames.shape)}; use encode_batch"
            )
        return self.encode_batch(frames[None])[0]

    @abstractmethod
    def encode_batch(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 at `fps`, already at `input_size` -> features (B, T_v, D_v) float32."""

    def identity(self) -> dict[str, Any]:
        """What produced the features, recorded beside them so later stages and evaluation can report it."""
        return {
            "kind": self.kind,
            "model_name": self.model_name,
            "weights_hash": self.weights_hash,
            "fps": float(self.fps),
            "input_size": [int(s) for s in self.input_size],
            "dim": int(self.dim),
            **self.extra_identity(),
        }

    def extra_identity(self) -> dict[str, Any]:
        """Kind-specific settings that change the features (e.g. L2 normalisation)."""
        return {}
