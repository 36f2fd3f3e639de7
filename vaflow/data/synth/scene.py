"""The synthetic world's scene (time axes, pixel grids, canvas, drawing), random timing and curves, and the
sound primitives every class renders with (vaflow.data.synth)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from vaflow.config import SynthConfig

# Background colour (dark blue-grey): every object and distractor stands out against it.
BACKGROUND = (16.0, 18.0, 28.0)
# Shortest gap between two events of one object: long enough for each sound to decay (~25 dB) before the next.
MIN_EVENT_GAP = 0.3
# Events start after this many seconds and end this long before the clip does, so each one is fully in the clip.
EVENT_MARGIN = (0.1, 0.3)
# Events per second of clip for event classes, drawn uniformly in this range (2-4 events in a 2 s clip).
EVENT_RATE = (0.75, 2.0)
# Standard deviation of the white noise floor: real recordings are never digitally silent.
NOISE_FLOOR = 1e-3
# Peak amplitude of the written audio (headroom for the AAC encoder).
PEAK = 0.9
# Highest synthesised frequency as a fraction of the sample rate (keeps every partial below Nyquist).
MAX_FREQ_FRACTION = 0.45

Param = Literal["pitch_hz", "loudness", "density"]


# --------------------------------------------------------------------------------------------
# Scene: time axes, pixel grids, the canvas, and drawing primitives
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _pixel_grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as separable grids: xx (1, 1, W), yy (1, H, 1), float32."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, None, :], c[None, :, None]


@dataclass
class _Slot:
    """The box (pixels) an object lives in: the whole frame, or one half when two objects share the clip."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def unit(self) -> float:
        """Length that object sizes scale with: objects in a half-frame slot are drawn smaller."""
        return min(self.w, self.h)


@dataclass
class _Scene:
    """Time axes and the float canvas (T, H, W, 3) that objects are painted onto."""

    size: int
    fps: int
    sample_rate: int
    duration: float
    t: np.ndarray  # (T,) frame times, seconds
    t_audio: np.ndarray  # (N,) sample times, seconds
    xx: np.ndarray  # (1, 1, W)
    yy: np.ndarray  # (1, H, 1)
    canvas: np.ndarray  # (T, H, W, 3) float32, 0..255

    @classmethod
    def new(cls, cfg: SynthConfig) -> _Scene:
        n_frames = max(1, round(cfg.duration * cfg.fps))
        n_samples = max(1, round(cfg.duration * cfg.sample_rate))
        xx, yy = _pixel_grids(cfg.size)
        canvas = np.empty((n_frames, cfg.size, cfg.size, 3), np.float32)
        canvas[:] = BACKGROUND
        return cls(
            size=cfg.size,
            fps=cfg.fps,
            sample_rate=cfg.sample_rate,
            duration=cfg.duration,
            t=np.arange(n_frames) / cfg.fps,
            t_audio=np.arange(n_samples) / cfg.sample_rate,
            xx=xx,
            yy=yy,
            canvas=canvas,
        )

    @property
    def n_frames(self) -> int:
        return len(self.t)

    @property
    def n_samples(self) -> int:
        return len(self.t_audio)

    def silence(self) -> np.ndarray:
        return np.zeros(self.n_samples, np.float64)

    def to_audio_rate(self, per_frame: np.ndarray) -> np.ndarray:
        """A per-frame curve (T,) linearly interpolated to the audio rate (N,), held after the last frame."""
        return np.interp(self.t_audio, self.t, per_frame)

    def sample_of(self, time: float) -> int:
        return round(time * self.sample_rate)


def _per_frame(v: Any) -> np.ndarray:
    """A scalar or (T,) value shaped (T|1, 1, 1) to broadcast against the pixel grids."""
    return np.asarray(v, np.float32).reshape(-1, 1, 1)


@dataclass
class _Shape:
    """Anti-aliased coverage (T|1, h, w) of a shape inside the pixel box [r0, r0 + h) × [c0, c0 + w)."""

    alpha: np.ndarray
    r0: int
    c0: int


def _box(slot: _Slot, x_lo: Any, x_hi: Any, y_lo: Any, y_hi: Any) -> tuple[int, int, int, int]:
    """Pixel box (r0, r1, c0, c1) that holds a shape's extent over all frames, cut to its slot.

    Shapes are computed only inside it (objects are small, frames are not), and cutting at the slot keeps an
    object from painting over its neighbour's half."""
    c0 = max(int(np.floor(np.min(x_lo))) - 1, int(slot.x0))
    c1 = min(int(np.ceil(np.max(x_hi))) + 1, int(slot.x1))
    r0 = max(int(np.floor(np.min(y_lo))) - 1, int(slot.y0))
    r1 = min(int(np.ceil(np.max(y_hi))) + 1, int(slot.y1))
    return r0, max(r1, r0), c0, max(c1, c0)


def _ellipse(scene: _Scene, slot: _Slot, cx: Any, cy: Any, rx: Any, ry: Any) -> _Shape:
    """An axis-aligned ellipse; centre and radii (pixels) each a scalar or (T,)."""
    cx, cy, rx, ry = (_per_frame(v) for v in (cx, cy, rx, ry))
    r0, r1, c0, c1 = _box(slot, cx - rx, cx + rx, cy - ry, cy + ry)
    dx = (scene.xx[..., c0:c1] - cx) / rx  # (T, 1, w)
    dy = (scene.yy[:, r0:r1] - cy) / ry  # (T, h, 1)
    q = np.sqrt(dx * dx + dy * dy)  # (T, h, w), 1 on the outline
    # (1 - q) · r is the signed distance to the outline in pixels (exact for circles); ±0.5 px ramp.
    return _Shape(np.clip((1.0 - q) * np.minimum(rx, ry) + 0.5, 0.0, 1.0), r0, c0)


def _rect(scene: _Scene, slot: _Slot, cx: Any, cy: Any, hw: Any, hh: Any) -> _Shape:
    """An axis-aligned rectangle of half-sizes (hw, hh); each argument a scalar or (T,)."""
    cx, cy, hw, hh = (_per_frame(v) for v in (cx, cy, hw, hh))
    r0, r1, c0, c1 = _box(slot, cx - hw, cx + hw, cy - hh, cy + hh)
    ax = np.clip(hw - np.abs(scene.xx[..., c0:c1] - cx) + 0.5, 0.0, 1.0)  # (T, 1, w)
    ay = np.clip(hh - np.abs(scene.yy[:, r0:r1] - cy) + 0.5, 0.0, 1.0)  # (T, h, 1)
    return _Shape(ax * ay, r0, c0)


def _paint(scene: _Scene, shape: _Shape, color: Any, weight: np.ndarray | None = None) -> None:
    """Alpha-blend `color` ((3,) or (T, 3)) onto the canvas with the shape's coverage, times `weight` (T,)."""
    alpha = shape.alpha if weight is None else shape.alpha * _per_frame(weight)
    _, h, w = alpha.shape
    color = np.asarray(color, np.float32)
    color = color[:, None, None, :] if color.ndim == 2 else color
    region = scene.canvas[:, shape.r0 : shape.r0 + h, shape.c0 : shape.c0 + w]
    region += alpha[..., None] * (color - region)


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions bouncing between lo and hi (a triangle wave), for straight-line motion inside a box."""
    span = max(hi - lo, 1e-6)
    m = np.mod(p - lo, 2 * span)
    return lo + np.where(m > span, 2 * span - m, m)


# --------------------------------------------------------------------------------------------
# Random timing and curves
# --------------------------------------------------------------------------------------------


def _event_frames(rng: np.random.Generator, scene: _Scene) -> np.ndarray:
    """Sorted frame indices of an object's events, at least MIN_EVENT_GAP apart, all inside the clip."""
    fps, last = scene.fps, scene.n_frames - 1
    k_lo = min(int(np.ceil(EVENT_MARGIN[0] * fps)), last)
    k_hi = max(int(np.floor((scene.duration - EVENT_MARGIN[1]) * fps)), k_lo)
    k_hi = min(k_hi, last)
    gap = max(1, int(np.ceil(MIN_EVENT_GAP * fps)))
    span = k_hi - k_lo + 1
    lo = max(1, round(EVENT_RATE[0] * scene.duration))
    hi = max(lo, round(EVENT_RATE[1] * scene.duration))
    n = min(int(rng.integers(lo, hi + 1)), 1 + (span - 1) // gap)
    # n distinct sorted draws from a shortened range, then spread by (gap - 1): every gap ≥ `gap` frames.
    picks = np.sort(rng.choice(span - (n - 1) * (gap - 1), size=n, replace=False))
    return k_lo + picks + np.arange(n) * (gap - 1)


def _smooth_curve(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A smooth random curve (T,) spanning exactly [0, 1]: a sum of three slow random sinusoids."""
    f = rng.uniform(0.2, 1.0, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    amp = rng.uniform(0.5, 1.0, 3)
    v = (amp[:, None] * np.sin(2 * np.pi * f[:, None] * t[None, :] + phase[:, None])).sum(0)
    span = v.max() - v.min()
    # Full-range curves make every clip's parameter sweep wide enough to be heard and measured.
    return (v - v.min()) / span if span > 1e-9 else np.full_like(v, 0.5)


# --------------------------------------------------------------------------------------------
# Sound primitives
# --------------------------------------------------------------------------------------------


def _cap(freq: Any, sr: int) -> Any:
    return np.minimum(freq, MAX_FREQ_FRACTION * sr)


def _oscillator(freq: np.ndarray, sr: int, harmonics: list[float], phase0: float = 0.0) -> np.ndarray:
    """A tone (N,) whose fundamental follows `freq` (N,) in Hz, with the given harmonic amplitudes."""
    phase = phase0 + 2 * np.pi * np.cumsum(freq) / sr
    out = np.zeros_like(phase)
    for k, a in enumerate(harmonics, start=1):
        # Partials above the cap would alias; they are faded out instead.
        out += a * np.sin(k * phase) * (k * freq < MAX_FREQ_FRACTION * sr)
    return out


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise (n,) band-limited to [lo, hi] Hz by zeroing FFT bins, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[(f < lo) | (f > _cap(hi, sr))] = 0
    x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def _envelope(n: int, sr: int, attack: float, decay: float) -> np.ndarray:
    """Linear attack then exponential decay (time constant `decay` seconds), (n,)."""
    t = np.arange(n) / sr
    return np.minimum(t / max(attack, 1e-6), 1.0) * np.exp(-np.maximum(t - attack, 0) / decay)


def _add(audio: np.ndarray, start: int, grain: np.ndarray) -> None:
    """Mix `grain` into `audio` from sample `start`, cut at the clip's end."""
    if start >= len(audio):
        return
    end = min(len(audio), start + len(grain))
    audio[start:end] += grain[: end - start]
