"""The one log-mel spectrogram of vaflow: torchaudio's mel filterbank over centred Hann STFT frames, floored, logged.

Every front end that turns audio into a log-mel goes through `LogMel` (a module, its filterbank and window as
buffers) or `log_mel` (the same, built for one call on the audio's device); each caller states its own settings:
- the WaveVAE's mel L1 loss: magnitude (power 1), natural log, floor 1e-5 (as the HiFi-GAN and DAC mel losses);
- the CAVP encoder and the proxy evaluators: power 2, natural log, floor 1e-5 (−50 dB);
- the gallery's spectrogram pictures: power 2, decibels, floor 1e-10 (−100 dB).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor

__all__ = ["LogMel", "log_mel"]


class LogMel(torchaudio.transforms.MelSpectrogram):
    """audio (..., N) -> log-mel (..., n_mels, F), F = N // hop + 1: log(max(mel, floor)), natural or in dB."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop: int,
        n_mels: int,
        *,
        power: float,
        floor: float,
        decibels: bool = False,
    ) -> None:
        # A subclass rather than a wrapper: the buffers keep torchaudio's names (spectrogram.window, mel_scale.fb),
        # so state dicts holding a mel loss read the same as before.
        super().__init__(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=power, center=True
        )
        if not floor > 0:
            raise ValueError(f"LogMel: floor must be > 0 (the log of silence), got {floor}")
        self.floor = floor
        self.decibels = decibels

    def forward(self, audio: Tensor) -> Tensor:
        """audio (..., N) -> (..., n_mels, F)."""
        # The floor keeps silence finite: log(0) would be −inf.
        mel = super().forward(audio).clamp_min(self.floor)
        return 10 * torch.log10(mel) if self.decibels else mel.log()


def log_mel(
    audio: Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    *,
    power: float,
    floor: float,
    decibels: bool = False,
) -> Tensor:
    """`LogMel` with these settings applied once to audio (..., N), built on the audio's device."""
    transform = LogMel(sample_rate, n_fft, hop, n_mels, power=power, floor=floor, decibels=decibels)
    return transform.to(audio.device)(audio)
