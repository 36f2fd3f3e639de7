"""Reconstruction figures against closed forms: loudness of a scaled copy, per-class means, oracle pitch and onset
scores of perfect and silent reconstructions, the choice of pitched clips and example clips, and the figure."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vaflow.eval import reconstruction
from vaflow.eval.oracle import Curve, Truth
from vaflow.eval.reconstruction import Batch, OracleFigures, ReconstructionFigures
from vaflow.models.wavevae import SIZES, build

SR = 16000
N = 16000  # 1 s clips


def _glide(f_lo: float, f_hi: float) -> tuple[torch.Tensor, Truth]:
    """A hum whose pitch rises linearly from f_lo to f_hi over the clip, and its ground truth at 20 fps."""
    t = np.arange(N) / SR
    f = f_lo + (f_hi - f_lo) * t
    audio = 0.2 * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.05 * np.sin(4 * np.pi * np.cumsum(f) / SR)
    frames = np.arange(20) / 20
    curve = Curve(fps=20.0, param="pitch_hz", values=f_lo + (f_hi - f_lo) * frames)
    truth = Truth(
        id="g", label="balloon", classes=("balloon",), events=(), curves={"balloon": curve}, duration=1.0
    )
    return torch.tensor(audio, dtype=torch.float32), truth


def _clicks(times: list[float]) -> tuple[torch.Tensor, Truth]:
    """Decaying 1 kHz bursts at `times` over a 1e-3 noise floor, and their ground truth as hammer events."""
    rng = np.random.default_rng(0)
    audio = 1e-3 * rng.standard_normal(N)
    k = np.arange(int(0.1 * SR))
    burst = 0.5 * np.sin(2 * np.pi * 1000 * k / SR) * np.exp(-k / (0.02 * SR))
    for at in times:
        start = int(at * SR)
        audio[start : start + len(burst)] += burst[: N - start]
    events = tuple(("hammer", at) for at in times)
    truth = Truth(id="c", label="hammer", classes=("hammer",), events=events, duration=1.0)
    return torch.tensor(audio, dtype=torch.float32), truth


def _batch(x: torch.Tensor, y: torch.Tensor) -> Batch:
    return Batch(start=0, audio=x, mean=y, sample=y)


def test_figures_of_a_scaled_copy_and_per_class_means():
    t = torch.arange(N) / SR
    x = torch.stack(
        [0.3 * torch.sin(2 * math.pi * 220 * t), 0.2 * torch.sin(2 * math.pi * 660 * t)]
    )  # (2, N)
    figures = ReconstructionFigures(SR, N, torch.zeros(64), labels=["low", "high"])
    figures.add(_batch(x, x))
    exact = figures.result()
    assert exact["test_mel_l1"] == 0.0 and exact["test_loudness_db"] == pytest.approx(0.0, abs=1e-6)
    assert exact["test_clips"] == 2 and {"test_mel_l1_low", "test_mel_l1_high"} <= set(exact)

    half = ReconstructionFigures(SR, N, torch.zeros(64), labels=["low", "high"])
    half.add(_batch(x, torch.stack([0.5 * x[0], x[1]])))  # the first clip 6.02 dB too quiet, the second exact
    scaled = half.result()
    assert scaled["test_loudness_db"] == pytest.approx(
        -10 * math.log10(4) / 2, abs=1e-3
    )  # mean of -6.02 and 0
    assert scaled["test_loudness_abs_db"] == pytest.approx(10 * math.log10(4) / 2, abs=1e-3)
    assert scaled["test_mel_l1_low"] == pytest.approx(
        math.log(2), abs=0.02
    )  # log-mel is off by log 2 everywhere
    assert scaled["test_mel_l1_high"] == 0.0
    assert scaled["test_loudness_db_low"] == pytest.approx(-10 * math.log10(4), abs=1e-3)
    assert scaled["test_loudness_db_high"] == pytest.approx(0.0, abs=1e-6)
    assert scaled["test_mel_l1"] == pytest.approx((scaled["test_mel_l1_low"] + 0.0) / 2)

    silent = reconstruction.loudness_db(torch.zeros(1, N), x[:1])
    assert float(silent) == reconstruction.LOUDNESS_FLOOR_DB  # a floor, not -inf


def test_oracle_figures_of_perfect_and_silent_reconstructions():
    glide, pitched = _glide(300.0, 600.0)
    clicks, events = _clicks([0.2, 0.5, 0.8])
    x = torch.stack([glide, clicks])  # (2, N)
    perfect = OracleFigures(SR, [pitched, events])
    perfect.add(_batch(x, x))
    got = perfect.result()
    assert got["oracle_pitch_clips"] == 1 and got["oracle_onset_clips"] == 1
    assert got["oracle_pitch_corr"] > 0.99 and got["oracle_pitch_cents"] < 20
    assert got["oracle_onset_f1"] == 1.0 and got["oracle_onset_f1_input"] == 1.0
    assert got["oracle_pitch_corr"] == got["oracle_pitch_corr_input"]

    silent = OracleFigures(SR, [pitched, events])
    silent.add(_batch(x, torch.zeros_like(x)))
    lost = silent.result()
    assert lost["oracle_onset_f1"] == 0.0 and lost["oracle_onset_recall"] == 0.0
    assert lost["oracle_pitch_corr"] < 0.5 and lost["oracle_pitch_corr_input"] > 0.99

    reversed_glide = OracleFigures(SR, [pitched, None])  # None: a clip without ground truth is not scored
    reversed_glide.add(_batch(x, torch.stack([glide.flip(0), clicks])))
    assert reversed_glide.result()["oracle_pitch_corr"] < -0.9  # the contour upside down
    assert reversed_glide.result()["oracle_onset_clips"] == 0


def test_only_clips_of_one_pitched_class_have_a_pitch_score():
    _, pitched = _glide(300.0, 600.0)
    assert reconstruction.pitched_curve(pitched)[0] == "balloon"
    mixed = dataclasses.replace(pitched, classes=("balloon", "hammer"))
    loudness = dataclasses.replace(
        pitched, curves={"balloon": Curve(20.0, "loudness", np.linspace(0.1, 1, 20))}
    )
    flat = dataclasses.replace(pitched, curves={"balloon": Curve(20.0, "pitch_hz", np.full(20, 300.0))})
    assert all(reconstruction.pitched_curve(t) is None for t in (mixed, loudness, flat))


def test_examples_are_distinct_classes_preferring_clips_that_hold_one_class():
    _, single = _glide(300.0, 600.0)
    mixed = dataclasses.replace(single, classes=("balloon", "car"))
    labels = ["balloon", "car", "balloon", "rain", "car"]
    truths = [mixed, single, single, single, single]
    assert reconstruction.pick_examples(labels, truths, 8) == [
        1,
        2,
        3,
    ]  # balloon from clip 2, not mixed clip 0
    assert reconstruction.pick_examples(labels, None, 2) == [0, 1]
    assert reconstruction.pick_examples(["car", "car"], [mixed, mixed], 4) == [
        0
    ]  # no single-class clip: the first


def test_evaluate_reconstruction_in_one_pass_writes_the_figure(tmp_path):
    torch.manual_seed(0)
    vae = build(dataclasses.replace(SIZES["tiny"], sample_rate=SR)).eval()
    glide, pitched = _glide(300.0, 600.0)
    clicks, events = _clicks([0.2, 0.5])
    audio = torch.stack([glide, clicks, 0.5 * glide])  # (3, N)
    figure = tmp_path / "mels.png"
    figures = reconstruction.evaluate_reconstruction(
        vae,
        audio,
        torch.zeros(64),
        ["balloon", "hammer", "balloon"],
        [pitched, events, None],
        figure,
        batch_size=2,
    )
    assert (
        figures["test_clips"] == 3
        and figures["oracle_pitch_clips"] == 1
        and figures["oracle_onset_clips"] == 1
    )
    assert figures["test_silence_dbfs"] <= 0 and math.isfinite(figures["test_silence_dbfs"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="labels"):
        reconstruction.evaluate_reconstruction(vae, audio, torch.zeros(64), ["balloon"])
    with pytest.raises(ValueError, match="clips"):
        next(reconstruction.reconstructions(vae, torch.zeros(0, N)))
