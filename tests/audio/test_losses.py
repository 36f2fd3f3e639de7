"""Audio losses: zero on identical inputs, positive otherwise; SI-SDR closed cases."""

import math

import pytest
import torch

from vaflow.audio.losses import MelL1Loss, MultiResolutionSTFTLoss, si_sdr, waveform_l1


@pytest.fixture
def signals() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    t = torch.arange(8000) / 16000
    clean = torch.sin(2 * math.pi * 440 * t).expand(2, 1, -1).clone()  # (B, C, N)
    return clean, clean + 0.05 * torch.randn_like(clean)


@pytest.mark.parametrize(
    "loss",
    [waveform_l1, MultiResolutionSTFTLoss(), MelL1Loss(sample_rate=16000)],
    ids=["waveform_l1", "mr_stft", "mel_l1"],
)
def test_loss_is_zero_for_identical_inputs_and_positive_otherwise(loss, signals):
    clean, noisy = signals
    assert loss(clean, clean).item() == 0.0
    assert loss(noisy, clean).item() > 0.0
    assert loss(noisy[:, 0], clean[:, 0]).shape == ()  # (B, N) input too
    # The loss grows with the error: half the noise scores lower, twice the noise higher.
    quieter_noise = clean + 0.5 * (noisy - clean)
    louder_noise = clean + 2.0 * (noisy - clean)
    assert loss(quieter_noise, clean) < loss(noisy, clean) < loss(louder_noise, clean)


def test_losses_are_differentiable(signals):
    clean, noisy = signals
    estimate = noisy.clone().requires_grad_(True)
    total = MultiResolutionSTFTLoss((256, 512))(estimate, clean) + MelL1Loss(16000)(estimate, clean)
    total.backward()
    assert torch.isfinite(estimate.grad).all() and estimate.grad.abs().sum() > 0


def test_stft_loss_handles_silence():
    silence = torch.zeros(1, 4096)
    assert torch.isfinite(MultiResolutionSTFTLoss()(torch.randn(1, 4096), silence))


def test_shape_mismatch_is_an_error(signals):
    clean, _ = signals
    with pytest.raises(ValueError, match="differ in shape"):
        waveform_l1(clean, clean[..., :-1])


def test_si_sdr_closed_cases(signals):
    clean, noisy = signals
    # A scaled copy is a perfect estimate up to scale: SI-SDR is limited only by eps.
    assert (si_sdr(0.3 * clean, clean) > 100).all()
    # Orthogonal noise of known power: SI-SDR = 10 log10(P_signal / P_noise).
    t = torch.arange(16000) / 16000
    s = torch.sin(2 * math.pi * 5 * t)[None]
    n = 0.1 * torch.sin(2 * math.pi * 7 * t)[None]  # orthogonal to s over whole periods
    torch.testing.assert_close(si_sdr(s + n, s), torch.tensor([20.0]), atol=1e-3, rtol=0)
    assert si_sdr(noisy, clean).shape == (2, 1)
    assert (si_sdr(noisy, clean) < si_sdr(clean + 0.01 * (noisy - clean), clean)).all()
