"""Audio losses: zero on identical inputs, positive otherwise; SI-SDR closed cases."""

import math

import pytest
import torch

from vaflow.eval.losses import MelL1Loss, MultiResolutionSTFTLoss, loudness_l1, si_sdr, waveform_l1


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


def test_stft_log_term_ignores_what_lies_far_below_its_floor():
    """A tone burst then digital silence: an estimate that adds noise at −120 dB re full scale is as good as exact
    (the old absolute 1e-7 floor scored it ≈ 2.4, as bad as a wrong pitch), while a wrong pitch costs much."""
    t = torch.arange(8192) / 16000
    burst = torch.where(t < 0.25, 0.5 * torch.sin(2 * math.pi * 440 * t), torch.zeros_like(t))[None]  # (1, N)
    hiss = 1e-6 * torch.randn(1, 8192, generator=torch.Generator().manual_seed(0))
    wrong = torch.where(t < 0.25, 0.5 * torch.sin(2 * math.pi * 520 * t), torch.zeros_like(t))[None]
    loss = MultiResolutionSTFTLoss()
    assert loss(burst + hiss, burst) < 0.05
    assert loss(wrong, burst) > 1.0


def test_stft_gradient_is_bounded_near_silence():
    """d log(|X| + floor) / d|X| <= 1/floor: a near-silent estimate gets a moderate gradient at every level (the
    old absolute 1e-7 floor gave gradients of 800-16000 per sample here)."""
    target = 0.1 * torch.randn(1, 4096, generator=torch.Generator().manual_seed(0))
    for level in (1e-9, 1e-7, 1e-5):
        noise = torch.randn(1, 4096, generator=torch.Generator().manual_seed(1))
        estimate = (level * noise).requires_grad_(True)
        MultiResolutionSTFTLoss()(estimate, target).backward()
        assert torch.isfinite(estimate.grad).all() and estimate.grad.abs().max() < 50, level


def test_spectral_convergence_pools_the_batch():
    """A near-silent item beside a loud one does not dominate the loss: its spectral error weighs by its energy."""
    t = torch.arange(4096) / 16000
    loud = 0.5 * torch.sin(2 * math.pi * 440 * t)
    quiet = 1e-3 * torch.randn(4096, generator=torch.Generator().manual_seed(0))
    target = torch.stack([loud, quiet])  # (2, N)
    off = target.clone()
    off[1] = 2e-3 * torch.randn(4096, generator=torch.Generator().manual_seed(1))  # the quiet item wrong
    loss = MultiResolutionSTFTLoss()
    alone = loss(off[1:], target[1:])  # alone, the quiet item's relative error is all there is
    assert loss(off, target) < 0.5 * alone


def test_stft_loss_rejects_bad_settings():
    with pytest.raises(ValueError, match="floor"):
        MultiResolutionSTFTLoss(floor=0.0)
    with pytest.raises(ValueError, match="FFT sizes"):
        MultiResolutionSTFTLoss(fft_sizes=())


def test_loudness_l1_closed_form():
    """A gain of g on the whole signal is |log g| nepers in every frame above the floor; timing matters."""
    t = torch.arange(4096) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t)[None]  # (1, N)
    assert loudness_l1(tone, tone) == 0.0
    torch.testing.assert_close(loudness_l1(0.5 * tone, tone), torch.tensor(math.log(2.0)), atol=2e-3, rtol=0)
    burst = torch.where(t < 0.1, tone[0], torch.zeros_like(t))[None]
    late = torch.where(t >= 0.15, tone[0], torch.zeros_like(t))[None]  # as loud overall, at the wrong time
    assert loudness_l1(late, burst) > 2.0
    silent = torch.zeros_like(tone).requires_grad_(True)  # a digitally silent estimate still gets a gradient
    loudness_l1(silent, tone).backward()
    assert torch.isfinite(silent.grad).all()
    with pytest.raises(ValueError, match="frame"):
        loudness_l1(tone, tone, frame=0)
