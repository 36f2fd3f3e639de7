"""`vaflow generate`: a new audio track for any video, from the pipeline's exported models.

In full: docs/library.md, `vaflow.generate.video`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vaflow.data import media
from vaflow.generate.generator import Models, Sampler, clip_seed, decode_audio, prior_noise, sample_latents
from vaflow.models.visual import VisualEncoder

__all__ = [
    "OVERLAP",
    "VideoResult",
    "add_window",
    "crossfade_ramp",
    "generate_video",
    "window_starts",
]

# Fraction of a window shared with its neighbour. A quarter of the embedded 2 s window is 0.5 s: long enough for
# a smooth fade, short enough that 3/4 of every window is new audio (1.33 windows generated per window of video).
OVERLAP = 0.25


def window_starts(total: int, window: int, overlap: float = OVERLAP) -> list[int]:
    """Start samples of the windows (each `window` samples) that cover [0, total): every (window − overlap·window)
    samples, the last one ending exactly at `total`; [0] when one window covers it all."""
    if total <= window:
        return [0]
    stride = max(1, window - round(window * overlap))
    return [*range(0, total - window, stride), total - window]


def crossfade_ramp(n: int) -> np.ndarray:
    """Fade-in weights (n,) float32, linear and strictly inside (0, 1): (i + ½)/n. The fading-out side takes
    1 − ramp, so the two weights sum to 1 at every sample and a signal equal on both sides passes unchanged."""
    return ((np.arange(n, dtype=np.float64) + 0.5) / n).astype(np.float32)


def add_window(out: np.ndarray, audio: np.ndarray, start: int, filled: int) -> int:
    """Write `audio` (N,) into `out` at `start`, cross-fading linearly with what `out` already holds in
    [start, filled); what falls past the end of `out` is dropped. Returns the new end of the filled part."""
    end = min(start + len(audio), len(out))
    n = max(0, min(filled, end) - start)
    if n:
        ramp = crossfade_ramp(n)
        out[start : start + n] = out[start : start + n] * (1 - ramp) + audio[:n] * ramp
    out[start + n : end] = audio[n : end - start]
    return max(filled, end)


@dataclass(frozen=True)
class VideoResult:
    """What `generate_video` wrote."""

    out: Path
    duration: float  # seconds of audio generated (the video's duration)
    windows: int
    nfe: int  # function evaluations, all windows together


def _input_error(err: media.MediaError) -> media.MediaError:
    """The same error on one line (without ffmpeg's stderr tail): the command's whole output is that line."""
    return media.MediaError(err.path, f"cannot use this video: {err.reason}")


def _window_frames(
    video: Path, encoder: VisualEncoder, start: float, seconds: float, n_frames: int, last: np.ndarray | None
) -> np.ndarray:
    """Frames (n_frames, H, W, 3) of [start, start + seconds] at the encoder's fps and size; past the video's end
    the last decoded frame (of this window, or of the previous one: `last`) is repeated."""
    try:
        frames = media.read_frames(video, encoder.fps, encoder.input_size, start, seconds)[:n_frames]
    except media.MediaError as err:
        raise _input_error(err) from None
    if not len(frames):
        if last is None:
            raise media.MediaError(video, "cannot use this video: no frame could be decoded")
        frames = last[None]
    pad = n_frames - len(frames)
    return np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)]) if pad else frames


def generate_video(
    video: str | Path,
    out: str | Path,
    models: Models,
    encoder: VisualEncoder,
    sampler: Sampler,
    seed: int = 0,
    progress: bool = True,
) -> VideoResult:
    """Generate audio for the whole of `video` window by window (see the module docstring) and write `out`, an
    mp4 with the input's video stream and the generated audio. A missing, unreadable or video-less input raises
    a one-line MediaError. The video stream is copied, or re-encoded as H.264 where an mp4 cannot hold it.
    """
    video, out = Path(video), Path(out)
    info = media.check_video(video)
    rate, window = models.sample_rate, models.window_samples
    total = max(1, round(info.duration * rate))
    starts = window_starts(total, window)
    n_frames = max(1, round(models.window_seconds * encoder.fps))  # as ClipConfig.n_frames for the window
    device = next(models.flow.parameters()).device
    audio = np.zeros(total, np.float32)
    filled, nfe, last = 0, 0, None
    show = progress and sys.stderr.isatty()
    for k, start in enumerate(tqdm(starts, desc="generate", unit="window", disable=not show)):
        frames = _window_frames(video, encoder, start / rate, models.window_seconds, n_frames, last)
        last = frames[-1]
        x_v = encoder.encode(frames)[None].float().to(device)  # (1, T_v, D_v)
        eps = prior_noise([clip_seed(seed, "window", k)], (models.latent_length, models.latent_dim))
        latents, n = sample_latents(models.flow, x_v, eps, sampler)  # (1, T_a, D_a)
        filled = add_window(audio, decode_audio(models.vae, latents)[0], start, filled)
        nfe += n[0]
    if not np.isfinite(audio).all():
        raise FloatingPointError(
            "the model generated non-finite audio (NaN/Inf): a diverged model; retrain it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    media.mux_audio(video, audio, rate, out, reencode=not media.mp4_holds(info.video_codec))
    return VideoResult(out, total / rate, len(starts), nfe)
