"""Raw-pixel features: down-sampled frames, a training-free stand-in for reconstruction features (paper §4.5)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vaflow.models.visual import VisualEncoder, as_frames

__all__ = ["PixelEncoder"]


class PixelEncoder(VisualEncoder):
    """Frames area-resized to (h, w), scaled to [-1, 1] and flattened channel-first: (T, 3·h·w)."""

    kind = "pixels"

    def __init__(
        self,
        fps: float = 10.0,  # same rate as CLIP (paper §4.5) so feature types compare at equal T_v
        input_size: tuple[int, int] = (64, 64),  # the synthetic world's frame size
        size: tuple[int, int] = (8, 8),  # 8x8x3 = 192 dims: coarse layout and colour, no semantics
    ) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.size = (int(size[0]), int(size[1]))
        if self.size[0] > self.input_size[0] or self.size[1] > self.input_size[1]:
            raise ValueError(
                f"size {self.size} must not exceed input_size {self.input_size}: area pooling only shrinks"
            )
        self.dim = 3 * self.size[0] * self.size[1]
        self.model_name = f"pixels-{self.size[0]}x{self.size[1]}"
        self.weights_hash = "none"

    @torch.inference_mode()
    def encode_batch(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 -> features (B, T, 3·h·w) float32 in [-1, 1]."""
        frames = as_frames(frames, self.input_size)
        if frames.ndim != 5:
            raise ValueError(f"encode_batch takes (B, T, H, W, 3), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        x = frames.to(self.device).flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0  # (B·T, 3, H, W)
        # Area interpolation averages every source pixel once, so small objects still register.
        x = F.interpolate(x, size=self.size, mode="area")  # (B·T, 3, h, w)
        x = x * 2.0 - 1.0
        return x.reshape(b, t, self.dim)  # (B, T, 3·h·w)

    def extra_identity(self) -> dict:
        return {"size": list(self.size)}
