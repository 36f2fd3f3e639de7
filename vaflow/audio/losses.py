"""Audio reconstruction losses and metrics for training and checking the WaveVAE.

Every function takes waveforms (B, N) or (B, C, N); channels are folded into the batch. Losses return a scalar
tensor (mean over the batch); `si_sdr` is a metric and returns one value per item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio
from torch import Tensor, nn


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


def stft_magnitude(x: Tensor, n_fft: int, hop_length: int, window: Tensor) -> Tensor:
    """|STFT| of x (B, N) -> (B, n_fft/2 + 1, frames), floored at 1e-7 so that its log is finite."""
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)
    return spec.abs().clamp_min(1e-7)  # (B, F, frames)


class MultiResolutionSTFTLoss(nn.Module):
    """Σ over FFT sizes of spectral convergence + log-magnitude L1 (Yamamoto et al. 2020, Parallel WaveGAN).

    Spectral convergence ‖|Y| − |X|‖_F / ‖|Y|‖_F weighs the loud bins; log-magnitude L1 weighs the quiet ones.
    Each resolution uses a Hann window of n_fft samples and a hop of n_fft / 4. The sum is divided by the
    number of resolutions, so the scale does not depend on how many are used.
    """

    def __init__(self, fft_sizes: Sequence[int] = (256, 512, 1024, 2048)) -> None:
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
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
            # 1e-7 keeps a silent target from dividing by zero.
            sc = torch.linalg.norm(mag_y - mag_x, dim=(1, 2)) / (torch.linalg.norm(mag_y, dim=(1, 2)) + 1e-7)
            log_mag = (mag_y.log() - mag_x.log()).abs().mean(dim=(1, 2))  # (B·C,)
            total = total + (sc + log_mag).mean()
        return total / len(self.fft_sizes)


class MelL1Loss(nn.Module):
    """L1 between log-mel spectrograms (torchaudio MelSpectrogram, magnitude, log floored at 1e-5)."""

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64) -> None:
        super().__init__()
        # power=1 (magnitude mel), as in the HiFi-GAN and DAC mel losses.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=1.0
        )

    def log_mel(self, x: Tensor) -> Tensor:
        """x (B, N) or (B, C, N) -> log-mel (B·C, n_mels, frames)."""
        return self.mel(_fold_channels(x)).clamp_min(1e-5).log()

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        """estimate, target (B, N) or (B, C, N) -> ()."""
        _check_pair(estimate, target)
        return (self.log_mel(estimate) - self.log_mel(target)).abs().mean()


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
