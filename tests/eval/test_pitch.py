"""YIN pitch tracking against closed forms: steady tones, harmonic tones, glides; the curve scores' edge cases."""

import numpy as np
import pytest

from vaflow.eval.pitch import cents_error, pitch_correlation, yin

SR = 16000


def _tone(freq: np.ndarray | float, seconds: float = 1.0, harmonics=(1.0,), phase: float = 0.3) -> np.ndarray:
    """A tone whose fundamental follows `freq` (Hz, scalar or per sample), with the given partial amplitudes."""
    n = int(seconds * SR)
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    phi = phase + 2 * np.pi * np.cumsum(f) / SR
    return sum(a * np.sin(k * phi) for k, a in enumerate(harmonics, start=1))


@pytest.mark.parametrize("freq", [73.0, 196.0, 440.0, 880.0])
def test_steady_tone_is_tracked_to_a_cent(freq):
    times = np.linspace(0.05, 0.95, 10)
    track = yin(0.3 * _tone(freq), SR, times, fmin=50, fmax=1000)
    assert track.f0.shape == track.aperiodicity.shape == times.shape
    assert np.abs(1200 * np.log2(track.f0 / freq)).max() < 1.0
    assert track.aperiodicity.max() < 0.01  # a pure tone is periodic


def test_harmonic_tone_gives_its_fundamental_not_an_octave():
    # A strong second partial and a 1/k^1.2 tail (the car's engine): f0 is the fundamental, not 2·f0 or f0/2.
    harmonics = [k**-1.2 for k in range(1, 11)]
    track = yin(0.15 * _tone(110.0, harmonics=harmonics), SR, np.linspace(0.1, 0.9, 9), fmin=40, fmax=600)
    assert np.abs(1200 * np.log2(track.f0 / 110.0)).max() < 2.0
    weak_fundamental = [0.3, 1.0, 0.8]  # the period is still that of the fundamental
    track = yin(_tone(300.0, harmonics=weak_fundamental), SR, [0.5], fmin=150, fmax=1200)
    assert abs(track.f0[0] - 300.0) < 1.0


def test_linear_glide_follows_the_instantaneous_frequency():
    # f(t) = 300 + 600·t over 1 s: the tracker at instant t reads f(t) (frames are 2-3 periods long).
    n = SR
    t_audio = np.arange(n) / SR
    audio = 0.2 * _tone(300 + 600 * t_audio)
    times = np.linspace(0.05, 0.95, 19)
    truth = 300 + 600 * times
    track = yin(audio, SR, times, fmin=200, fmax=1200)
    assert np.abs(1200 * np.log2(track.f0 / truth)).max() < 15.0  # a glide moves within a frame
    assert pitch_correlation(track.f0, truth) > 0.999
    assert cents_error(track.f0, truth) < 5.0


def test_silence_and_noise_are_aperiodic():
    times = np.linspace(0.1, 0.9, 5)
    silent = yin(np.zeros(SR), SR, times, fmin=60, fmax=800)
    assert np.all(silent.aperiodicity == 1.0) and np.all((silent.f0 >= 60) & (silent.f0 <= 800))
    noise = np.random.default_rng(0).standard_normal(SR)
    assert yin(noise, SR, times, fmin=60, fmax=800).aperiodicity.min() > 0.3


def test_frames_at_the_clip_edges_stay_inside_the_signal():
    audio = 0.5 * _tone(250.0, seconds=0.5)
    track = yin(audio, SR, [0.0, 0.5], fmin=100, fmax=500)  # the first and the last instant
    assert np.abs(track.f0 - 250.0).max() < 0.5


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="fmin"):
        yin(np.zeros(100), SR, [0.0], fmin=500, fmax=100)
    with pytest.raises(ValueError, match="1-D"):
        yin(np.zeros((2, 100)), SR, [0.0], fmin=50, fmax=500)
    with pytest.raises(ValueError, match="finite"):
        yin(np.full(100, np.nan), SR, [0.0], fmin=50, fmax=500)
    with pytest.raises(ValueError, match="sample_rate"):
        yin(np.zeros(100), 0, [0.0], fmin=50, fmax=500)
    assert yin(np.zeros(100), SR, [], fmin=50, fmax=500).f0.shape == (0,)


def test_curve_scores_closed_cases():
    truth = np.array([200.0, 250.0, 300.0, 350.0])
    assert pitch_correlation(2 * truth, truth) == pytest.approx(1.0)  # an octave off keeps the contour
    assert cents_error(2 * truth, truth) == pytest.approx(1200.0)
    assert pitch_correlation(truth[::-1], truth) < -0.9  # the contour reversed
    assert pitch_correlation(np.full(4, 220.0), truth) == 0.0  # nothing tracked: no contour
    with pytest.raises(ValueError, match="constant"):
        pitch_correlation(truth, np.full(4, 220.0))
    with pytest.raises(ValueError, match="length"):
        pitch_correlation(truth[:3], truth)
    with pytest.raises(ValueError, match="> 0"):
        cents_error(np.array([0.0, 100.0]), np.array([100.0, 100.0]))
