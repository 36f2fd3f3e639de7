"""Fundamental-frequency tracking (YIN) and the scores of a pitch track against a true pitch curve.

The synthetic world's continuous pitched classes (balloon, car) record their pitch per video frame; whether a
WaveVAE (or a generator) keeps that contour is measured by tracking the pitch of its audio at the same instants
and correlating the two. Pure numpy, arrays in and numbers out (DESIGN §6).

- `yin`: f0 and aperiodicity of audio at given instants (de Cheveigné & Kawahara 2002, steps 2-5);
- `pitch_correlation`: Pearson correlation of two pitch curves on a log-frequency scale;
- `cents_error`: the median absolute difference of two pitch curves in cents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PitchTrack", "cents_error", "pitch_correlation", "yin"]

# YIN's absolute threshold on the cumulative-mean-normalised difference (step 4): the paper's 0.1 gives its
# lowest gross-error rate; the first dip below it is taken, which avoids the sub-harmonic (octave-down) dips.
YIN_THRESHOLD = 0.1


@dataclass(frozen=True)
class PitchTrack:
    """A pitch track: f0 (Hz) and YIN aperiodicity at each instant, all (K,)."""

    times: np.ndarray  # (K,) seconds: the centre of each analysis frame
    f0: np.ndarray  # (K,) Hz, within [fmin, fmax]
    aperiodicity: (
        np.ndarray
    )  # (K,) d'(τ) at the chosen lag: 0 for a periodic frame, about 1 for noise or silence


def _frames(x: np.ndarray, sample_rate: int, times: np.ndarray, length: int) -> np.ndarray:
    """(K, length) frames of x centred on `times`, shifted to lie inside the signal (zero-padded if it is short)."""
    if x.size < length:
        x = np.concatenate([x, np.zeros(length - x.size)])
    centre = np.round(times * sample_rate).astype(np.int64)
    start = np.clip(centre - length // 2, 0, x.size - length)  # (K,)
    return x[start[:, None] + np.arange(length)]  # (K, length)


def _difference(frames: np.ndarray, window: int, max_lag: int) -> np.ndarray:
    """YIN step 2: d(τ) = Σ_{j<W} (x_j − x_{j+τ})² for τ = 0..max_lag, per frame -> (K, max_lag + 1).

    Expanded as E(0) + E(τ) − 2 r(τ): the energies of the two W-sample windows by cumulative sums, the
    cross-correlation r(τ) = Σ_{j<W} x_j x_{j+τ} by FFT.
    """
    k, length = frames.shape
    n_fft = 1 << int(np.ceil(np.log2(length + window)))
    head = np.fft.rfft(frames[:, :window], n_fft)  # (K, F)
    whole = np.fft.rfft(frames, n_fft)  # (K, F)
    r = np.fft.irfft(np.conj(head) * whole, n_fft)[:, : max_lag + 1]  # (K, max_lag + 1)
    sq = np.concatenate([np.zeros((k, 1)), np.cumsum(frames * frames, axis=1)], axis=1)  # (K, length + 1)
    lags = np.arange(max_lag + 1)
    energy = sq[:, lags + window] - sq[:, lags]  # (K, max_lag + 1): Σ_{j<W} x_{j+τ}²
    return np.maximum(energy[:, :1] + energy - 2 * r, 0.0)  # rounding can dip below 0


def _cmnd(d: np.ndarray) -> np.ndarray:
    """YIN step 3: d'(τ) = d(τ) · τ / Σ_{j=1..τ} d(j), d'(0) = 1; 1 where the sum is 0 (silence)."""
    tau = np.arange(d.shape[1])
    total = np.cumsum(d[:, 1:], axis=1)  # (K, max_lag)
    out = np.ones_like(d)
    safe = total > 0
    out[:, 1:][safe] = (d[:, 1:] * tau[1:])[safe] / total[safe]
    return out


def _first_dip(dn: np.ndarray, lo: int, threshold: float) -> np.ndarray:
    """YIN step 4: per frame, the first lag ≥ lo where d' falls below `threshold`, followed down to its local
    minimum; the global minimum over [lo, max_lag] when d' never falls below it -> (K,) int lags."""
    band = dn[:, lo:]  # (K, L)
    best = np.argmin(band, axis=1)  # (K,)
    below = band < threshold
    first = np.where(below.any(axis=1), np.argmax(below, axis=1), best)  # (K,)
    lag = first.copy()
    for i in np.flatnonzero(below.any(axis=1)):  # walk down the dip: few steps per frame
        j = lag[i]
        while j + 1 < band.shape[1] and band[i, j + 1] < band[i, j]:
            j += 1
        lag[i] = j
    return lag + lo


def _parabolic(d: np.ndarray, dn: np.ndarray, lag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """YIN step 5: the vertex of the parabola through d at lag−1, lag, lag+1 -> (fractional lag, d' at lag).

    Interpolated on the raw difference d, as the paper does: d' is skewed by its running-mean normalisation,
    which biases the vertex (by about 2.5 cents at an 18-sample period)."""
    rows = np.arange(len(lag))
    inner = (lag > 0) & (lag < d.shape[1] - 1)
    lm, lp = np.clip(lag - 1, 0, None), np.clip(lag + 1, None, d.shape[1] - 1)
    a, b, c = d[rows, lm], d[rows, lag], d[rows, lp]
    curvature = a - 2 * b + c
    ok = inner & (curvature > 0)
    shift = np.where(ok, 0.5 * (a - c) / np.where(ok, curvature, 1.0), 0.0)
    return lag + np.clip(shift, -0.5, 0.5), dn[rows, lag]


def yin(
    audio: np.ndarray,
    sample_rate: int,
    times: Sequence[float] | np.ndarray,
    fmin: float,
    fmax: float,
    threshold: float = YIN_THRESHOLD,
) -> PitchTrack:
    """The pitch of audio (N,) at `times` (K,) seconds, searched within [fmin, fmax] Hz, by YIN -> PitchTrack.

    Each frame holds W + τ_max samples centred on its instant (shifted inwards at the clip's ends), with the
    integration window W = 2·τ_max and τ_max = ceil(sample_rate / fmin): two periods of the lowest pitch. The
    lag is the first dip of d' below `threshold` at or above τ_min = floor(sample_rate / fmax), else d'’s global
    minimum over the band, refined by parabolic interpolation; f0 = sample_rate / lag, clipped to [fmin, fmax].
    A frame always gets an f0: where its aperiodicity is near 1 (noise, silence) that f0 means nothing.
    """
    x = np.asarray(audio, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if x.ndim != 1 or t.ndim != 1:
        raise ValueError(f"yin: audio (N,) and times (K,) must be 1-D, got {x.shape} and {t.shape}")
    if not (np.isfinite(x).all() and np.isfinite(t).all()):
        raise ValueError("yin: audio and times must be finite")
    if sample_rate <= 0:
        raise ValueError(f"yin: sample_rate must be > 0, got {sample_rate}")
    if not (0 < fmin < fmax <= sample_rate / 4):
        raise ValueError(f"yin: need 0 < fmin < fmax <= sample_rate / 4, got fmin {fmin}, fmax {fmax}")
    if not 0 < threshold < 1:
        raise ValueError(f"yin: threshold must lie in (0, 1), got {threshold}")
    lo = max(2, int(np.floor(sample_rate / fmax)))
    max_lag = int(np.ceil(sample_rate / fmin))
    window = 2 * max_lag
    if t.size == 0:
        empty = np.zeros(0)
        return PitchTrack(times=t, f0=empty, aperiodicity=empty)
    frames = _frames(x, sample_rate, t, window + max_lag)  # (K, W + τ_max)
    d = _difference(frames, window, max_lag)  # (K, τ_max + 1)
    dn = _cmnd(d)  # (K, τ_max + 1)
    lag, value = _parabolic(d, dn, _first_dip(dn, lo, threshold))
    f0 = np.clip(sample_rate / lag, fmin, fmax)
    return PitchTrack(times=t, f0=f0, aperiodicity=np.minimum(value, 1.0))


def _log_pitch(f0: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    f = np.asarray(f0, dtype=np.float64)
    if f.ndim != 1 or f.size < 2:
        raise ValueError(f"{name}: expected a pitch curve (K,) with K >= 2, got shape {f.shape}")
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise ValueError(f"{name}: pitch values must be finite and > 0 Hz")
    return np.log2(f)


def pitch_correlation(tracked: np.ndarray | Sequence[float], truth: np.ndarray | Sequence[float]) -> float:
    """Pearson correlation of log2 f0 of two pitch curves (K,) at the same instants, in [−1, 1].

    On a log scale, so a glide counts by its musical interval whatever its register. A constant tracked curve
    (a tracker that found nothing) scores 0; a constant true curve has no contour to follow: ValueError.
    """
    a, b = _log_pitch(tracked, "tracked"), _log_pitch(truth, "truth")
    if a.shape != b.shape:
        raise ValueError(f"pitch curves differ in length: tracked {a.size}, truth {b.size}")
    b = b - b.mean()
    if not np.any(np.abs(b) > 1e-9):
        raise ValueError("truth: a constant pitch curve has no contour to correlate with")
    a = a - a.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def cents_error(tracked: np.ndarray | Sequence[float], truth: np.ndarray | Sequence[float]) -> float:
    """Median |1200 · log2(tracked / truth)| over the instants of two pitch curves (K,): cents (100 = a semitone)."""
    a, b = _log_pitch(tracked, "tracked"), _log_pitch(truth, "truth")
    if a.shape != b.shape:
        raise ValueError(f"pitch curves differ in length: tracked {a.size}, truth {b.size}")
    return float(np.median(np.abs(1200 * (a - b))))
