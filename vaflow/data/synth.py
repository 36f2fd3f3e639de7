"""The synthetic audio-visual world (DESIGN §3): short clips whose sound is caused by what is visible.

Every clip shows one object of a class (optionally a second object of another class, and silent grey
distractors). Each class is a distinct visual object with a distinct sound:

- event classes make a sound at visible events (a ball touching the floor, a lamp flashing, ...), at random
  times drawn per clip, so timing can only be read from the video;
- continuous classes tie a sound parameter to a visual quantity (hum pitch to a balloon's height, engine pitch
  to a car's speed, ...).

Rendering is pure and deterministic in (seed, split, index): `render_clip` returns arrays plus a JSON-ready
ground truth (event onsets, parameter curves) that only the oracle metrics read. `generate` writes the world
exactly like a real source: `media/<id>.mp4` (H.264 + AAC), `truth/<id>.json` and `index.csv`.

Event onsets are snapped to video frames (time k / fps): the visual event is drawn exactly on frame k and the
sound starts at sample round(k / fps · sample_rate), so temporal alignment is exact up to the codecs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaflow import atomic
from vaflow.config import SPLITS, SynthConfig
from vaflow.data import media

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


# --------------------------------------------------------------------------------------------
# Classes: each renders its object into the scene and returns its sound and ground truth
# --------------------------------------------------------------------------------------------


@dataclass
class _Track:
    """What one object contributes: its sound (N,), its event onsets (s) and its parameter curve (T,)."""

    audio: np.ndarray
    events: list[float]
    curve: np.ndarray | None = None


@dataclass(frozen=True)
class SynthClass:
    """One kind of object: how it looks, how it sounds, and which ground truth it records."""

    name: str
    kind: Literal["event", "continuous"]
    # Sound parameter whose per-frame curve is recorded (continuous classes only).
    param: Param | None
    looks: str
    sounds: str
    render: Callable[[_Scene, _Slot, np.random.Generator], _Track]


def _ball(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """A red ball bouncing on a floor; a low thud at each floor contact."""
    u, sr = slot.unit, scene.sample_rate
    r = 0.09 * u
    floor_y = slot.y1 - 0.1 * slot.h
    top = slot.y0 + 0.08 * slot.h
    cx = np.linspace(*rng.uniform(slot.x0 + 0.25 * slot.w, slot.x1 - 0.25 * slot.w, 2), scene.n_frames)

    frames = _event_frames(rng, scene)
    hits = frames / scene.fps
    # Contacts outside the clip give the ball a full arc before the first and after the last audible bounce.
    before = hits[0] - rng.uniform(0.4, 0.8)
    after = max(hits[-1] + 0.3, scene.duration) + rng.uniform(0.1, 0.5)
    contacts = np.concatenate([[before], hits, [after]])
    reach = floor_y - r - top
    hop = np.diff(contacts)
    # Ballistic arcs: apex height g·Δ²/8 for a hop of Δ seconds, g set so a 0.6 s hop reaches the top.
    apex = np.clip((hop / 0.6) ** 2, 0.15, 1.0) * reach
    j = np.clip(np.searchsorted(contacts, scene.t, side="right") - 1, 0, len(hop) - 1)
    s = (scene.t - contacts[j]) / hop[j]
    height = 4 * apex[j] * s * (1 - s)

    rx, ry = np.full(scene.n_frames, r), np.full(scene.n_frames, r)
    rx[frames], ry[frames] = 1.25 * r, 0.75 * r  # squashed on the contact frame
    cy = floor_y - ry - height
    floor = _rect(scene, slot, (slot.x0 + slot.x1) / 2, floor_y + 0.02 * u, slot.w / 2, 0.02 * u)
    _paint(scene, floor, (120, 90, 60))
    _paint(scene, _ellipse(scene, slot, cx, cy, rx, ry), (225, 45, 40))

    audio = scene.silence()
    n = round(0.3 * sr)
    t = np.arange(n) / sr
    f = 55 + 110 * np.exp(-t / 0.03)  # pitch drops as the ball's surface rebounds
    body = np.sin(2 * np.pi * np.cumsum(f) / sr) * _envelope(n, sr, 0.001, 0.05)
    click = _band_noise(rng, n, sr, 20, 1500) * _envelope(n, sr, 0.0005, 0.004)
    # Louder after a higher fall (impact speed ∝ √apex).
    for k, a in zip(frames, apex[:-1], strict=True):
        _add(
            audio, scene.sample_of(k / scene.fps), (0.35 + 0.35 * np.sqrt(a / reach)) * (body + 0.25 * click)
        )
    return _Track(audio, hits.tolist())


def _lamp(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """A yellow lamp on a pole that flashes; a tone burst while it is lit."""
    u, sr = slot.unit, scene.sample_rate
    cx = rng.uniform(slot.x0 + 0.3 * slot.w, slot.x1 - 0.3 * slot.w)
    cy = rng.uniform(slot.y0 + 0.25 * slot.h, slot.y0 + 0.5 * slot.h)
    half = 0.09 * u
    frames = _event_frames(rng, scene)
    n_lit = max(1, round(0.1 * scene.fps))  # 100 ms flashes
    lit = np.zeros(scene.n_frames, bool)
    for k in frames:
        lit[k : k + n_lit] = True
    pole_top = cy + half
    _paint(
        scene,
        _rect(scene, slot, cx, (pole_top + slot.y1) / 2, 0.02 * u, (slot.y1 - pole_top) / 2),
        (95, 70, 45),
    )
    _paint(scene, _ellipse(scene, slot, cx, cy, 2.2 * half, 2.2 * half), (255, 235, 130), 0.45 * lit)
    color = np.where(lit[:, None], [[255, 245, 150]], [[95, 85, 25]])
    _paint(scene, _rect(scene, slot, cx, cy, half, half), color)

    audio = scene.silence()
    f0 = rng.uniform(1150, 1350)
    n = round(n_lit / scene.fps * sr)
    t = np.arange(n) / sr
    tone = np.sin(2 * np.pi * f0 * t) + 0.35 * np.sin(2 * np.pi * _cap(2 * f0, sr) * t)
    gate = np.minimum(np.minimum(t / 0.002, (n / sr - t) / 0.01), 1.0)  # 2 ms on, 10 ms off: no clicks
    for k in frames:
        _add(audio, scene.sample_of(k / scene.fps), 0.3 * tone * gate)
    return _Track(audio, (frames / scene.fps).tolist())


def _bird(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """A blue bird flying across; a rising chirp on each wing downstroke."""
    u, sr = slot.unit, scene.sample_rate
    xa, xb = rng.uniform(slot.x0 + 0.15 * slot.w, slot.x1 - 0.15 * slot.w, 2)
    if abs(xb - xa) < 0.3 * slot.w:
        xb = xa + 0.3 * slot.w * (1 if xa < (slot.x0 + slot.x1) / 2 else -1)
    heading = 1.0 if xb >= xa else -1.0
    cx = np.linspace(xa, xb, scene.n_frames)
    y_base = rng.uniform(slot.y0 + 0.3 * slot.h, slot.y0 + 0.6 * slot.h)
    cy = y_base + 0.04 * slot.h * np.sin(2 * np.pi * 0.7 * scene.t + rng.uniform(0, 2 * np.pi))
    frames = _event_frames(rng, scene)
    # Wing offset: raised (gliding) by default, lowered on the downstroke frames, level on the frame after.
    wing = np.full(scene.n_frames, -1.0)
    n_down = max(1, round(0.1 * scene.fps))
    for k in frames:
        wing[k : k + n_down] = 1.0
        if k + n_down < scene.n_frames:
            wing[k + n_down] = 0.0
    body = (60, 110, 240)
    _paint(scene, _ellipse(scene, slot, cx, cy, 0.085 * u, 0.05 * u), body)
    _paint(scene, _ellipse(scene, slot, cx + heading * 0.085 * u, cy - 0.03 * u, 0.035 * u, 0.035 * u), body)
    wings = _ellipse(scene, slot, cx - heading * 0.02 * u, cy + wing * 0.07 * u, 0.075 * u, 0.025 * u)
    _paint(scene, wings, (150, 190, 255))

    audio = scene.silence()
    fa, fb = rng.uniform(2300, 2700), rng.uniform(3900, 4500)
    n = round(0.08 * sr)
    s = np.arange(n) / n
    f = _cap(fa + (fb - fa) * s, sr)
    chirp = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.minimum(s * n / (0.003 * sr), 1.0) * (1 - s) ** 1.5
    for k in frames:
        _add(audio, scene.sample_of(k / scene.fps), 0.45 * chirp)
    return _Track(audio, (frames / scene.fps).tolist())


def _hammer(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """An orange hammer striking a steel anvil; a metallic clang at each strike."""
    u, sr = slot.unit, scene.sample_rate
    cx = rng.uniform(slot.x0 + 0.3 * slot.w, slot.x1 - 0.3 * slot.w)
    anvil_y = slot.y1 - 0.2 * slot.h
    anvil_hh, head_hw, head_hh = 0.05 * u, 0.07 * u, 0.045 * u
    frames = _event_frames(rng, scene)
    hits = frames / scene.fps
    # Lift 0 = resting on the anvil. The hammer falls in 0.1 s onto each strike and rises over 0.35 s.
    d = scene.t[:, None] - hits[None, :]
    lift = np.where(d < 0, np.clip(-d / 0.1, 0, 1), np.clip(d / 0.35, 0, 1)).min(axis=1)
    head_y = anvil_y - anvil_hh - head_hh - lift * 0.35 * slot.h
    _paint(scene, _rect(scene, slot, cx, anvil_y, 0.14 * u, anvil_hh), (75, 65, 120))
    _paint(scene, _rect(scene, slot, cx, head_y - 0.13 * u, 0.015 * u, 0.13 * u), (200, 170, 120))
    _paint(scene, _rect(scene, slot, cx, head_y, head_hw, head_hh), (250, 140, 20))

    audio = scene.silence()
    f0 = rng.uniform(420, 520)
    n = round(0.3 * sr)
    t = np.arange(n) / sr
    # Inharmonic partials of a free bar (ratios 1 : 2.76 : 5.40 : 8.93): the ear hears metal.
    clang = sum(
        a * np.sin(2 * np.pi * _cap(f0 * ratio, sr) * t) * np.exp(-t / tau)
        for ratio, a, tau in ((1.0, 1.0, 0.1), (2.76, 0.6, 0.07), (5.40, 0.4, 0.045), (8.93, 0.25, 0.03))
    )
    clang = clang * np.minimum(t / 0.0005, 1.0)
    for k in frames:
        _add(audio, scene.sample_of(k / scene.fps), 0.3 * clang)
    return _Track(audio, hits.tolist())


def _balloon(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """A magenta balloon rising and falling; a hum whose pitch follows its height (300-900 Hz)."""
    u, sr = slot.unit, scene.sample_rate
    height = _smooth_curve(rng, scene.t)  # 0 = lowest, 1 = highest
    rx, ry = 0.08 * u, 0.1 * u
    low, high = slot.y1 - 0.3 * slot.h, slot.y0 + 0.15 * slot.h
    cy = low + (high - low) * height
    cx = rng.uniform(slot.x0 + 0.3 * slot.w, slot.x1 - 0.3 * slot.w) + 0.04 * slot.w * np.sin(
        2 * np.pi * 0.5 * scene.t + rng.uniform(0, 2 * np.pi)
    )
    _paint(
        scene,
        _rect(scene, slot, cx, cy + ry + 0.08 * slot.h, 0.008 * u + 0.3, 0.08 * slot.h),
        (200, 200, 200),
    )
    _paint(scene, _ellipse(scene, slot, cx, cy, rx, ry), (230, 60, 200))

    pitch = 300 + 600 * height
    hum = _oscillator(scene.to_audio_rate(pitch), sr, [1.0, 0.25, 0.08], rng.uniform(0, 2 * np.pi))
    return _Track(0.2 * hum, [], pitch)


def _car(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """A green car driving across (wrapping round); a buzzing engine whose pitch follows its speed (70-220 Hz)."""
    u, sr = slot.unit, scene.sample_rate
    speed = _smooth_curve(rng, scene.t)  # 0 = slowest, 1 = fastest
    v = (0.15 + 0.75 * speed) * slot.w  # pixels per second
    x = rng.uniform(0, slot.w) + np.concatenate([[0.0], np.cumsum(v[:-1]) / scene.fps])
    x = slot.x0 + np.mod(x, slot.w)
    lane = rng.uniform(slot.y0 + 0.45 * slot.h, slot.y0 + 0.75 * slot.h)
    # Drawn twice, one slot width apart, so the car leaves one edge as it enters the other.
    for cx in (x, x - slot.w):
        _paint(scene, _rect(scene, slot, cx, lane, 0.13 * u, 0.04 * u), (40, 190, 70))
        _paint(scene, _rect(scene, slot, cx, lane - 0.065 * u, 0.065 * u, 0.03 * u), (150, 230, 160))
        for dx in (-0.08 * u, 0.08 * u):
            _paint(scene, _ellipse(scene, slot, cx + dx, lane + 0.04 * u, 0.03 * u, 0.03 * u), (35, 35, 35))

    pitch = 70 + 150 * speed
    engine = _oscillator(
        scene.to_audio_rate(pitch), sr, [k**-1.2 for k in range(1, 11)], rng.uniform(0, 2 * np.pi)
    )
    return _Track(0.15 * engine, [], pitch)


def _orb(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """A cyan orb that swells and shrinks; breathy noise whose loudness follows its size."""
    u, sr = slot.unit, scene.sample_rate
    size = _smooth_curve(rng, scene.t)
    r = (0.06 + 0.12 * size) * u
    cx = rng.uniform(slot.x0 + 0.35 * slot.w, slot.x1 - 0.35 * slot.w)
    cy = rng.uniform(slot.y0 + 0.35 * slot.h, slot.y1 - 0.35 * slot.h)
    _paint(scene, _ellipse(scene, slot, cx, cy, r, r), (40, 210, 220))
    _paint(scene, _ellipse(scene, slot, cx, cy, 0.4 * r, 0.4 * r), (190, 250, 250))

    loudness = 0.1 + 0.9 * size  # linear gain, 0.1 when smallest, 1 when largest
    breath = _band_noise(rng, scene.n_samples, sr, 250, 900)
    return _Track(0.15 * breath * scene.to_audio_rate(loudness), [], loudness)


def _rain(scene: _Scene, slot: _Slot, rng: np.random.Generator) -> _Track:
    """Light-blue drops falling; a patter whose click density follows the number of drops in view."""
    sr = scene.sample_rate
    fall = 0.7  # seconds for a drop to cross the slot
    rate = _smooth_curve(rng, scene.t)
    peak_rate = 40.0 * slot.w / scene.size  # drops per second at the curve's top
    # Poisson spawns by thinning: candidates at the peak rate, kept with probability rate(t).
    n_cand = rng.poisson(peak_rate * (scene.duration + fall))
    spawn = rng.uniform(-fall, scene.duration, n_cand)
    keep = rng.random(n_cand) < 0.05 + 0.95 * np.interp(spawn, scene.t, rate)
    spawn = spawn[keep]
    x = rng.uniform(slot.x0 + 1, slot.x1 - 1, spawn.size).astype(int)
    age = scene.t[:, None] - spawn[None, :]  # (T, drops)
    visible = (age >= 0) & (age < fall)
    count = visible.sum(axis=1).astype(np.float64)  # (T,) drops in view

    length = max(2, round(0.06 * slot.h))
    k, d = np.nonzero(visible)
    top = (slot.y0 + age[k, d] / fall * (slot.h - length)).astype(int)
    rows = np.clip(top[:, None] + np.arange(length)[None, :], int(slot.y0), int(slot.y1) - 1)
    scene.canvas[np.repeat(k, length), rows.ravel(), np.repeat(x[d], length)] = (170, 200, 255)

    # Clicks: a Poisson number per frame, proportional to the drops in view, at uniform times in the frame.
    clicks_per_drop = 12.0
    n_clicks = rng.poisson(clicks_per_drop * count / scene.fps)
    frame_of = np.repeat(np.arange(scene.n_frames), n_clicks)
    at = ((frame_of + rng.random(frame_of.size)) / scene.fps * sr).astype(int)
    at = at[at < scene.n_samples]
    impulses = scene.silence()
    np.add.at(impulses, at, rng.uniform(0.3, 1.0, at.size) * rng.choice([-1.0, 1.0], at.size))
    grain_n = round(0.004 * sr)
    grain = _band_noise(rng, 4 * grain_n, sr, 2500, 7000)[:grain_n] * _envelope(grain_n, sr, 0.0002, 0.001)
    patter = np.convolve(impulses, grain)[: scene.n_samples]
    hiss = _band_noise(rng, scene.n_samples, sr, 3000, 7000) * scene.to_audio_rate(
        count / max(count.max(), 1)
    )
    return _Track(0.2 * patter + 0.03 * hiss, [], count)


CLASSES: dict[str, SynthClass] = {
    c.name: c
    for c in (
        SynthClass(
            name="ball",
            kind="event",
            param=None,
            render=_ball,
            looks="red ball bouncing on a floor",
            sounds="low thud (165→55 Hz drop) on each floor contact",
        ),
        SynthClass(
            name="lamp",
            kind="event",
            param=None,
            render=_lamp,
            looks="yellow lamp on a pole, flashing for 100 ms",
            sounds="1.2 kHz tone burst while lit",
        ),
        SynthClass(
            name="bird",
            kind="event",
            param=None,
            render=_bird,
            looks="blue bird flying across, flapping",
            sounds="2.5→4.2 kHz chirp on each wing downstroke",
        ),
        SynthClass(
            name="hammer",
            kind="event",
            param=None,
            render=_hammer,
            looks="orange hammer striking a steel anvil",
            sounds="inharmonic metallic clang on each strike",
        ),
        SynthClass(
            name="balloon",
            kind="continuous",
            param="pitch_hz",
            render=_balloon,
            looks="magenta balloon on a string rising and falling",
            sounds="hum, 300-900 Hz pitch ∝ height",
        ),
        SynthClass(
            name="car",
            kind="continuous",
            param="pitch_hz",
            render=_car,
            looks="green car driving across",
            sounds="buzzing engine, 70-220 Hz pitch ∝ speed",
        ),
        SynthClass(
            name="orb",
            kind="continuous",
            param="loudness",
            render=_orb,
            looks="cyan orb swelling and shrinking",
            sounds="breathy 250-900 Hz noise, loudness ∝ size",
        ),
        SynthClass(
            name="rain",
            kind="continuous",
            param="density",
            render=_rain,
            looks="light-blue drops falling",
            sounds="high clicks, click density ∝ drops in view",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Distractors: silent grey shapes moving in straight lines
# --------------------------------------------------------------------------------------------


def _distractors(scene: _Scene, rng: np.random.Generator) -> None:
    s = scene.size
    frame = _Slot(0, 0, s, s)
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.04, 0.1) * s
        speed = rng.uniform(0.1, 0.35, 2) * s * rng.choice([-1.0, 1.0], 2)
        start = rng.uniform(r, s - r, 2)
        cx = _reflect(start[0] + speed[0] * scene.t, r, s - r)
        cy = _reflect(start[1] + speed[1] * scene.t, r, s - r)
        shape = (
            _ellipse(scene, frame, cx, cy, r, r)
            if rng.random() < 0.5
            else _rect(scene, frame, cx, cy, r, 0.7 * r)
        )
        _paint(scene, shape, (rng.uniform(70, 140),) * 3)


# --------------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------------


@dataclass
class SynthClip:
    """A rendered clip: frames (T, H, W, 3) uint8 at cfg.fps, audio (N,) float32 at cfg.sample_rate, ground truth."""

    id: str
    label: str
    frames: np.ndarray
    audio: np.ndarray
    truth: dict[str, Any]


def clip_id(split: str, index: int) -> str:
    """`synth_<split>_<index:06d>`: no dots or slashes, so it is a valid shard key and file stem."""
    return f"synth_{split}_{index:06d}"


def _hash_seed(*parts: Any) -> int:
    """A 64-bit seed from a stable hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def clip_label(cfg: SynthConfig, split: str, index: int) -> str:
    """The main class of a clip: each block of len(CLASSES) consecutive indices is a shuffle of all classes,
    so every split is balanced and indices 0..len(CLASSES)-1 cover every class once."""
    names = list(CLASSES)
    block, pos = divmod(index, len(names))
    order = np.random.default_rng(_hash_seed("label", cfg.seed, split, block)).permutation(len(names))
    return names[order[pos]]


def render_clip(cfg: SynthConfig, split: str, index: int) -> SynthClip:
    """Render clip `index` of `split`; deterministic in (cfg.seed, split, index) and the rest of `cfg`.

    Returns frames (T, H, W, 3) uint8 with T = round(duration·fps), H = W = cfg.size, audio (N,) float32 with
    N = round(duration·sample_rate) and peak ≤ 0.9, and the ground-truth dict written as `truth/<id>.json`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; valid: {list(SPLITS)}")
    if index < 0:
        raise ValueError(f"clip index must be ≥ 0, got {index}")
    cid = clip_id(split, index)
    label = clip_label(cfg, split, index)
    # Independent streams, so e.g. toggling distractors does not change how the objects move.
    choose, background, noise, *objects = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence(_hash_seed("clip", cfg.seed, split, index)).spawn(5)
    )
    classes = [label]
    if choose.random() < cfg.second_object_p:
        classes.append(str(choose.choice([n for n in CLASSES if n != label])))
    with_distractors = choose.random() < cfg.distractor_p
    s, half = cfg.size, cfg.size // 2  # whole-pixel halves: objects are cut exactly at the border
    if len(classes) == 1:
        slots = [_Slot(0, 0, s, s)]
    else:
        slots = [_Slot(0, 0, half, s), _Slot(half, 0, s, s)]
        if choose.random() < 0.5:
            slots.reverse()

    scene = _Scene.new(cfg)
    if with_distractors:
        _distractors(scene, background)
    audio = noise.normal(0, NOISE_FLOOR, scene.n_samples)
    events: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for name, slot, rng in zip(classes, slots, objects, strict=False):
        cls = CLASSES[name]
        track = cls.render(scene, slot, rng)
        audio += track.audio
        events += [{"class": name, "time": round(float(t), 6)} for t in track.events]
        if track.curve is not None:
            values = [round(float(v), 4) for v in track.curve]
            curves[name] = {"fps": cfg.fps, "param": cls.param, "values": values}
    peak = float(np.abs(audio).max())
    if peak > PEAK:
        audio *= PEAK / peak
    events.sort(key=lambda e: (e["time"], e["class"]))

    truth = {
        "id": cid,
        "label": label,
        "split": split,
        "index": index,
        "classes": classes,
        "events": events,
        "curves": curves,
        "duration": cfg.duration,
        "fps": cfg.fps,
        "sample_rate": cfg.sample_rate,
        "size": cfg.size,
        "seed": cfg.seed,
    }
    frames = np.clip(scene.canvas + 0.5, 0, 255).astype(np.uint8)
    return SynthClip(cid, label, frames, audio.astype(np.float32), truth)


# --------------------------------------------------------------------------------------------
# The whole world on disk
# --------------------------------------------------------------------------------------------

INDEX_COLUMNS = ["id", "split", "label", "path", "duration", "fps", "sample_rate"]


def _media_path(out_dir: Path, cid: str) -> Path:
    return out_dir / "media" / f"{cid}.mp4"


def _truth_path(out_dir: Path, cid: str) -> Path:
    return out_dir / "truth" / f"{cid}.json"


def _index_row(truth: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": truth["id"],
        "split": truth["split"],
        "label": truth["label"],
        "path": f"media/{truth['id']}.mp4",
        "duration": truth["duration"],
        "fps": truth["fps"],
        "sample_rate": truth["sample_rate"],
    }


def _write_clip(job: tuple[SynthConfig, str, str, int]) -> dict[str, Any]:
    """Render one clip and write its mp4 then its truth JSON (the JSON last: its presence marks the clip done)."""
    cfg, out_dir, split, index = job
    clip = render_clip(cfg, split, index)
    out = Path(out_dir)
    media.write_video(_media_path(out, clip.id), clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
    atomic.write_text(_truth_path(out, clip.id), json.dumps(clip.truth, indent=1))
    return _index_row(clip.truth)


def _done_row(out_dir: Path, cid: str) -> dict[str, Any] | None:
    """The index row of a clip already on disk, or None when it must be (re)rendered."""
    truth_path = _truth_path(out_dir, cid)
    if not (_media_path(out_dir, cid).is_file() and truth_path.is_file()):
        return None
    try:
        return _index_row(json.loads(truth_path.read_text(encoding="utf-8")))
    except (ValueError, KeyError):
        return None  # a damaged sidecar: render the clip again


def generate(
    cfg: SynthConfig, out_dir: Path, workers: int | None = None, progress: bool = True
) -> pd.DataFrame:
    """Render every clip of every split in `cfg.clips_per_split` into `out_dir` and write `index.csv`.

    Writes `media/<id>.mp4`, `truth/<id>.json` and `index.csv` (columns INDEX_COLUMNS, `path` relative to
    `out_dir`). Clips whose mp4 and JSON both exist are skipped, so an interrupted run resumes. `workers`
    overrides `cfg.workers` (0 = one per core); 1 renders in this process. Returns the index sorted by split, id.
    """
    if cfg.size % 2:
        raise ValueError(f"synth.size must be even (H.264 yuv420p halves the chroma planes), got {cfg.size}")
    out_dir = Path(out_dir)
    (out_dir / "media").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    todo: list[tuple[SynthConfig, str, str, int]] = []
    for split in SPLITS:
        for index in range(cfg.clips_per_split.get(split, 0)):
            row = _done_row(out_dir, clip_id(split, index))
            if row is None:
                todo.append((cfg, str(out_dir), split, index))
            else:
                rows.append(row)

    n_workers = workers if workers is not None else cfg.workers
    n_workers = min(n_workers or os.cpu_count() or 1, max(len(todo), 1))
    with tqdm(total=len(todo), desc="synth", unit="clip", disable=not progress) as bar:
        if n_workers <= 1:
            for job in todo:
                rows.append(_write_clip(job))
                bar.update()
        else:
            # Chunks amortise inter-process overhead; several per worker keep the load balanced.
            chunk = max(1, min(16, len(todo) // (4 * n_workers)))
            with multiprocessing.get_context().Pool(n_workers) as pool:
                for row in pool.imap_unordered(_write_clip, todo, chunksize=chunk):
                    rows.append(row)
                    bar.update()

    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values(["split", "id"], ignore_index=True)
    tmp = out_dir / f".index.csv.{os.getpid()}.tmp"
    index.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "index.csv")
    return index


__all__ = [
    "CLASSES",
    "INDEX_COLUMNS",
    "SynthClass",
    "SynthClip",
    "clip_id",
    "clip_label",
    "generate",
    "render_clip",
]
