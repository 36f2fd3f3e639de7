"""The synthetic world's classes: each renders its object into the scene and returns its sound and ground truth;
and the silent distractors (vaflow.data.synth)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vaflow.data.synth.scene import (
    Param,
    _add,
    _band_noise,
    _cap,
    _ellipse,
    _envelope,
    _event_frames,
    _oscillator,
    _paint,
    _rect,
    _reflect,
    _Scene,
    _Slot,
    _smooth_curve,
)

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


__all__ = ["CLASSES", "SynthClass"]
