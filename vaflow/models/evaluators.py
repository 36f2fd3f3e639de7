"""The three proxy evaluator networks (DESIGN §6), small enough to train on the train split in seconds on CPU.

Stand-ins for the paper's evaluators (§4.1 "Metrics"), independent of the generator's own encoders:
- `AudioClassifier` (Melception / PaSST stand-in): log-mel -> conv net -> class logits; its penultimate layer is
  FD's embedding, its logits give KL and IS;
- `AVEmbedder` (ImageBind stand-in, for IB-VA): a frame encoder and an audio encoder in one joint space;
- `SyncClassifier` (Diff-Foley's synchronisation classifier, for Acc.): frames + audio -> logit of "aligned".

Sections: config and mel front end, blocks, the three networks. Frames are (B, T, H, W, 3) uint8 at the config's
fps (any H, W: area-resized to its side). Networks take the raw log-mel (B, n_mels, F) of their own front end
(`front.mel(audio)`), so training computes it once per clip; `vaflow.eval.evaluators` applies them to audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaflow.config.section import DictConfig
from vaflow.models.cavp import log_mel

__all__ = ["EvaluatorConfig", "AudioClassifier", "AVEmbedder", "SyncClassifier", "NETWORKS", "mel_settings"]

# Mel front end in seconds, so it follows the sample rate (as the CAVP encoder's): a 10 ms hop resolves onsets
# well below one video frame; a ~32 ms window (next power of two) is the usual sound-event choice.
_MEL_HOP_S = 0.010
_MEL_WINDOW_S = 0.032


def mel_settings(sample_rate: int) -> tuple[int, int]:
    """(hop, n_fft) of a 10 ms hop and a ~32 ms power-of-two window at `sample_rate`."""
    return max(1, round(sample_rate * _MEL_HOP_S)), 2 ** math.ceil(math.log2(sample_rate * _MEL_WINDOW_S))


# ----------------------------------------------------------------------------------------------------------------
# Config and mel front end
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluatorConfig(DictConfig):
    """Input geometry and sizes shared by the three evaluators; saved whole into each evaluator's card."""

    sample_rate: int = 16000  # the pipeline's audio rate: generated audio is scored at the rate it is made
    n_mels: int = 64  # enough frequency detail to tell the synthetic world's sound classes apart
    hop: int = 160  # 10 ms at 16 kHz
    n_fft: int = 512  # 32 ms at 16 kHz
    fps: float = 8.0  # frames per second the video towers see: 125 ms, finer than the 0.25 s sync shifts
    side: int = 32  # frame side: objects are still legible, and the video towers stay cheap
    channels: tuple[int, ...] = (16, 32, 64)  # conv stages of every tower, each halving both axes
    embed_dim: int = (
        16  # classifier penultimate width = FD's dimension; below N of a 64-clip test split's halves
    )
    av_dim: int = 64  # joint video-audio space of the IB-VA stand-in
    num_classes: int = 8  # the synthetic world's classes (set from the label list at training time)

    def num_frames(self, num_samples: int) -> int:
        """Video frames T covering `num_samples` audio samples at `fps`."""
        return max(1, round(num_samples / self.sample_rate * self.fps))


class MelFrontEnd(nn.Module):
    """Audio (B, samples) -> log-mel (B, n_mels, F) (`mel`); `normalise` applies the train split's mean/std (buffers)."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        c = self.config
        return log_mel(audio, c.sample_rate, c.n_mels, c.hop, c.n_fft)  # (B, n_mels, F)

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        return ((mel - self.mean) / self.std).unsqueeze(1)  # (B, 1, n_mels, F)


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


def _conv_stack(c_in: int, channels: tuple[int, ...]) -> nn.Sequential:
    """3x3 stride-2 convs with GroupNorm (per-sample statistics: batch-size independent) and GELU."""
    layers: list[nn.Module] = []
    for c_out in channels:
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
            nn.GroupNorm(min(8, c_out), c_out),
            nn.GELU(),
        ]
        c_in = c_out
    return nn.Sequential(*layers)


def _frames_in(frames: torch.Tensor, side: int) -> torch.Tensor:
    """Frames (B, T, H, W, 3) uint8 -> (B·T, 3, side, side) float in [-1, 1], area-resized if H, W differ."""
    b, t, h, w, _ = frames.shape
    x = frames.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B·T, 3, H, W)
    if (h, w) != (side, side):
        x = F.interpolate(x, size=(side, side), mode="area")  # (B·T, 3, side, side)
    return x


class FrameEncoder(nn.Module):
    """Per-frame conv net: frames (B, T, H, W, 3) uint8 -> (B, T, 2C), spatial mean and max.

    The max matters: objects are small on a plain background, and a spatial mean alone washes them out.
    """

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.side = config.side
        self.convs = _conv_stack(3, config.channels)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = self.convs(_frames_in(frames, self.side))  # (B·T, C, h, w)
        return _pooled(x).view(b, t, -1)  # (B, T, 2C)


def _pooled(h: torch.Tensor) -> torch.Tensor:
    """Feature map (B, C, ...) -> (B, 2C): mean (keeps the timbre) and max (keeps short events) over the rest."""
    h = h.flatten(2)  # (B, C, L)
    return torch.cat([h.mean(2), h.amax(2)], dim=1)  # (B, 2C)


# ----------------------------------------------------------------------------------------------------------------
# The three networks
# ----------------------------------------------------------------------------------------------------------------


class AudioClassifier(nn.Module):
    """Log-mel conv classifier: log-mel (B, n_mels, F) -> (penultimate embedding (B, embed_dim), class logits (B, num_classes))."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.config = config
        self.front = MelFrontEnd(config)
        self.audio = _conv_stack(1, config.channels)
        c = config.channels[-1]
        self.embed = nn.Sequential(nn.Linear(2 * c, config.embed_dim), nn.GELU())
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.audio(self.front.normalise(mel))  # (B, C, n_mels', F')
        emb = self.embed(_pooled(h))  # (B, E)
        return emb, self.head(emb)  # (B, E), (B, num_classes)


class AVEmbedder(nn.Module):
    """Two towers into one unit-norm space, trained with InfoNCE: frames -> (B, av_dim), log-mel -> (B, av_dim)."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels[-1]
        self.video = FrameEncoder(config)
        self.video_proj = nn.Sequential(nn.Linear(2 * c, c), nn.GELU(), nn.Linear(c, config.av_dim))
        self.front = MelFrontEnd(config)
        self.audio = _conv_stack(1, config.channels)
        self.audio_proj = nn.Sequential(nn.Linear(2 * c, c), nn.GELU(), nn.Linear(c, config.av_dim))
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / 0.07))
        )  # CLIP's initial temperature, learnt

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        v = self.video_proj(self.video(frames).mean(1))  # (B, av_dim): mean over time
        return F.normalize(v, dim=-1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.audio(self.front.normalise(mel))  # (B, C, n_mels', F')
        return F.normalize(self.audio_proj(_pooled(h)), dim=-1)  # (B, av_dim)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_video(frames), self.embed_audio(mel)  # (B, av_dim), (B, av_dim)


class SyncClassifier(nn.Module):
    """Frames (B, T, H, W, 3) + log-mel (B, n_mels, F) -> logit of "aligned" (B,), from per-frame video and audio features compared over time.

    Both towers keep time: video per frame (frame and its difference to the previous frame, so motion and onsets
    are visible), audio pooled over mel bins and resampled to the T video steps. A temporal conv over the joined
    sequence sees whether audio events and visual changes happen together.
    """

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels[-1]
        self.side = config.side
        self.video = _conv_stack(6, config.channels)
        self.front = MelFrontEnd(config)
        self.audio = _conv_stack(1, config.channels)
        self.temporal = nn.Sequential(
            nn.Conv1d(2 * c, c, 3, padding=1), nn.GELU(), nn.Conv1d(c, c, 3, padding=1), nn.GELU()
        )
        self.head = nn.Linear(2 * c, 1)

    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 -> per-frame features (B, C, T); training reuses them for both pairs."""
        b, t = frames.shape[:2]
        x = _frames_in(frames, self.side).view(b, t, 3, self.side, self.side)  # (B, T, 3, s, s)
        diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)  # (B, T, 3, s, s)
        v = self.video(torch.cat([x, diff], dim=2).flatten(0, 1))  # (B·T, C, h, w)
        return v.mean(dim=(2, 3)).view(b, t, -1).transpose(1, 2)  # (B, C, T)

    def score(self, video: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Video features (B, C, T) and log-mel (B, n_mels, F) -> logit of "aligned" (B,)."""
        a = self.audio(self.front.normalise(mel)).mean(2)  # (B, C, F'): mean over mel bins
        a = F.adaptive_avg_pool1d(a, video.shape[2])  # (B, C, T): audio on the video's time grid
        h = self.temporal(torch.cat([video, a], dim=1))  # (B, C, T)
        return self.head(_pooled(h)).squeeze(1)  # (B,)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.score(self.video_features(frames), mel)  # (B,)


# Evaluator name -> network class: the card's `name` picks the class when loading.
NETWORKS: dict[str, type[nn.Module]] = {
    "audio_classifier": AudioClassifier,
    "av_embedder": AVEmbedder,
    "sync_classifier": SyncClassifier,
}
