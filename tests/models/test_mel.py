"""The one log-mel: every front end built on it gives exactly what its own formula gave (a frozen copy of each
formula lives here), and a mel loss's state dict keeps torchaudio's buffer names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio

from vaflow.eval import gallery
from vaflow.eval.losses import MelL1Loss
from vaflow.models import cavp, mel
from vaflow.models.evaluators import EvaluatorConfig, MelFrontEnd


@pytest.fixture(scope="module")
def audio() -> torch.Tensor:
    """Two clips (2, N) at 16 kHz: a tone with a silent gap (the floor acts) plus noise."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / 16000
    x = torch.sin(2 * math.pi * 440 * t) * (t > 0.2)
    return torch.stack([x, 0.1 * torch.randn(8000, generator=g)])


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a, b), float((a - b).abs().max())


def test_mel_l1_loss_front_end_is_its_former_formula(audio):
    frozen = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64, power=1.0
    )
    stereo = torch.stack([audio, audio.flip(0)])  # (B, C, N): channels folded into the batch
    _same(MelL1Loss(16000).log_mel(stereo), frozen(stereo.reshape(-1, 8000)).clamp_min(1e-5).log())


def test_mel_l1_loss_state_keeps_torchaudio_names():
    assert sorted(MelL1Loss(16000).state_dict()) == ["mel.mel_scale.fb", "mel.spectrogram.window"]


@pytest.mark.parametrize("n_fft", [None, 512])
def test_cavp_log_mel_is_its_former_formula(audio, n_fft):
    frozen = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=n_fft or 4 * 160, hop_length=160, n_mels=64, power=2.0, center=True
    )
    _same(cavp.log_mel(audio.numpy(), 16000, 64, 160, n_fft), torch.log(frozen(audio).clamp_min(1e-5)))


def test_evaluator_front_end_is_its_former_formula(audio):
    c = EvaluatorConfig()
    frozen = torchaudio.transforms.MelSpectrogram(
        sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop, n_mels=c.n_mels, power=2.0, center=True
    )
    _same(MelFrontEnd(c).mel(audio), torch.log(frozen(audio).clamp_min(1e-5)))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_gallery_log_mel_is_its_former_formula(audio, rate):
    n_fft = 1 << max(6, round(np.log2(0.032 * rate)))
    frozen = torchaudio.transforms.MelSpectrogram(
        rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=64, power=2.0
    )
    want = (10 * torch.log10(frozen(audio[0]).clamp_min(1e-10))).numpy()
    got = gallery.log_mel(audio[0].numpy(), rate)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_log_mel_shape_and_floor():
    x = torch.zeros(3, 1600)
    out = mel.log_mel(x, 16000, 512, 160, 40, power=2.0, floor=1e-5)
    assert out.shape == (3, 40, 1600 // 160 + 1)
    assert torch.all(out == math.log(1e-5))
    db = mel.LogMel(16000, 512, 160, 40, power=2.0, floor=1e-10, decibels=True)(x)
    torch.testing.assert_close(db, torch.full_like(db, -100.0))
    with pytest.raises(ValueError, match="floor"):
        mel.LogMel(16000, 512, 160, 40, power=2.0, floor=0.0)
