"""Audio reconstruction losses and metrics for training and checking the WaveVAE.

Every function takes waveforms (B, N) or (B, C, N); channels are folded into the batch. Losses return a scalar
tensor (mean over the batch); `si_sdr` is a metric and returns one value per item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaflow.models.mel import LogMel


def _fold_channels(x: Tensor) -> Tensor:
    """(B, N) or (B, C, N) -> (B·C, N)."""
    if x.dim() not in (2, 3):
        raise ValueError(f"expected audio (B, N) or (B, C, N), got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def _check_pair(estimate: Tensor, target: Tensor) -> None:
    if estimate.shape != target.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape")


def waveform_l1(estimate: Tensor, target: Tensor) -> Tensor:
    """Mean |estimate − target| over all samples; inputs (B, N) or (B, C, N), output ()."""
    _check_pair(estimate, target)
    return (estimate - target).abs().mean()


# FFT sizes of the multi-resolution STFT (Parallel WaveGAN's 4 scales); sizes longer than the signal are dropped.
STFT_SIZES = (256, 512, 1024, 2048)
# Magnitude floor of the log-magnitude term, relative to full scale (a full-scale sine reads 0.5): -100 dB. It
# sits below the synthetic world's noise floor (white noise of std 1e-3 reads 3e-5 to 8e-5 per bin at n_fft 2048
# to 256), so quiet passages still count, while bins far below anything audible no longer do: the old absolute
# clamp at 1e-7 (-190 dB re full scale at n_fft 1024) let near-silent bins dominate the loss, with gradients of
# 1e3-1e4 per sample on a near-silent estimate where this floor gives < 5 (tests/train/test_losses.py).
LOG_FLOOR = 1e-5


def stft_magnitude(x: Tensor, n_fft: int, hop_length: int, window: Tensor) -> Tensor:
    """|STFT| of x (B, N) relative to full scale -> (B, n_fft/2 + 1, frames): divided by the window's sum, so a
    full-scale sine reads 0.5 in its bin at every FFT size."""
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)
    return spec.abs() / window.sum()  # (B, F, frames)


def stft_sizes(n_samples: int) -> tuple[int, ...]:
    """The STFT_SIZES that fit a signal of n_samples (at least the smallest one)."""
    return tuple(n for n in STFT_SIZES if n <= n_samples) or STFT_SIZES[:1]


class MultiResolutionSTFTLoss(nn.Module):
    """Σ over FFT sizes of spectral convergence + log-magnitude L1 (Yamamoto et al. 2020, Parallel WaveGAN).

    Spectral convergence ‖|Y| − |X|‖_F / ‖|Y|‖_F weighs the loud bins; log-magnitude L1, |log(|Y| + floor) −
    log(|X| + floor)| on magnitudes relative to full scale, weighs the quiet ones down to `floor` (LOG_FLOOR);
    adding the floor rather than clamping at it bounds the gradient by 1/floor and keeps it non-zero for an
    estimate that is still below it. Spectral convergence is taken over the whole batch (the norms sum every
    item's bins), not per item: a training crop that holds only the noise floor between two events has a tiny
    ‖|Y|‖, and per item its ratio explodes (≈ 15 at the start of a small-VAE run) and drowns every other term;
    for one item the two agree. Each resolution uses a Hann window of n_fft samples and a hop of n_fft / 4.
    The sum is divided by the number of resolutions, so the scale does not depend on how many are used.
    """

    def __init__(self, fft_sizes: Sequence[int] = STFT_SIZES, floor: float = LOG_FLOOR) -> None:
        super().__init__()
        if not fft_sizes or any(int(n) < 4 for n in fft_sizes):
            raise ValueError(f"MultiResolutionSTFTLoss: FFT sizes must be >= 4, got {tuple(fft_sizes)}")
        if not floor > 0:
            raise ValueError(f"MultiResolutionSTFTLoss: floor must be > 0, got {floor}")
        self.fft_sizes = tuple(int(n) for n in fft_sizes)
        self.floor = float(floor)
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        """estimate, target (B, N) or (B, C, N) -> ()."""
        _check_pair(estimate, target)
        x, y = _fold_channels(estimate), _fold_channels(target)  # (B·C, N)
        total = x.new_zeros(())
        for n in self.fft_sizes:
            window = getattr(self, f"window_{n}")
            mag_x = stft_magnitude(x, n, n // 4, window)  # (B·C, F, frames)
            mag_y = stft_magnitude(y, n, n // 4, window)  # (B·C, F, frames)
            # Over the batch; the floor in the denominator keeps a silent target from dividing by zero.
            sc = torch.linalg.norm(mag_y - mag_x) / (torch.linalg.norm(mag_y) + self.floor)  # ()
            log_mag = ((mag_y + self.floor).log() - (mag_x + self.floor).log()).abs().mean()  # ()
            total = total + sc + log_mag
        return total / len(self.fft_sizes)


class MelL1Loss(nn.Module):
    """L1 between log-mel spectrograms (`vaflow.models.mel.LogMel`: magnitude, log floored at 1e-5)."""

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64) -> None:
        super().__init__()
        # power=1 (magnitude mel), as in the HiFi-GAN and DAC mel losses.
        self.mel = LogMel(sample_rate, n_fft, hop_length, n_mels, power=1.0, floor=1e-5)

    def log_mel(self, x: Tensor) -> Tensor:
        """x (B, N) or (B, C, N) -> log-mel (B·C, n_mels, frames)."""
        return self.mel(_fold_channels(x))

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        """estimate, target (B, N) or (B, C, N) -> ()."""
        _check_pair(estimate, target)
        return (self.log_mel(estimate) - self.log_mel(target)).abs().mean()


def loudness_l1(estimate: Tensor, target: Tensor, frame: int = 256, floor: float = 1e-4) -> Tensor:
    """Mean |log rms_y − log rms_x| over frames of `frame` samples, each level floored at `floor`: the error of the
    loudness contour in nepers (× 8.69 for dB), whatever the spectrum; inputs (B, N) or (B, C, N), output ().

    The level is ½·log(mean square + floor²), smooth at silence (no sqrt at 0); the floor (−80 dB re full scale)
    sits below the synthetic world's noise floor (−60 dB), so quiet passages count.
    """
    _check_pair(estimate, target)
    if frame < 1 or not floor > 0:
        raise ValueError(f"loudness_l1: need frame >= 1 and floor > 0, got {frame} and {floor}")
    x, y = _fold_channels(estimate), _fold_channels(target)  # (B·C, N)
    frame = min(frame, x.shape[-1])
    n = x.shape[-1] // frame * frame  # whole frames; a last partial one is left out
    level_x = 0.5 * (x[:, :n].reshape(len(x), -1, frame).pow(2).mean(-1) + floor**2).log()  # (B·C, n / frame)
    level_y = 0.5 * (y[:, :n].reshape(len(y), -1, frame).pow(2).mean(-1) + floor**2).log()  # (B·C, n / frame)
    return (level_y - level_x).abs().mean()


def si_sdr(estimate: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), per item: (B, N) or (B, C, N) -> (B,) or (B, C).

    Both signals are made zero-mean; the target is scaled by the projection α = ⟨ŝ, s⟩ / ‖s‖², and
    SI-SDR = 10 log10(‖α s‖² / ‖ŝ − α s‖²). A scaled copy of the target scores ≈ 10 log10(‖α s‖² / eps).
    """
    _check_pair(estimate, target)
    s_hat = estimate - estimate.mean(dim=-1, keepdim=True)  # (..., N)
    s = target - target.mean(dim=-1, keepdim=True)  # (..., N)
    alpha = (s_hat * s).sum(-1, keepdim=True) / (s.pow(2).sum(-1, keepdim=True) + eps)  # (..., 1)
    projection = alpha * s  # (..., N)
    noise = s_hat - projection  # (..., N)
    return 10 * torch.log10((projection.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))  # (...)
