"""A sub-band WaveVAE for `wavevae_screen.py --bands` only: an Oobleck on M pseudo-QMF bands at 1/M of the rate.

The question it answers: does an Oobleck whose convolutions run on M critically sampled sub-bands (as multi-band
MelGAN and RAVE do) learn the synthetic world faster per CPU second than one on the waveform? The same hop then
needs M times fewer samples through the first and last stages, where an Oobleck spends most of a step.

The bank is the cosine-modulated one of Nguyen (1994): a Kaiser-windowed low-pass prototype h of `taps + 1`
coefficients and cut-off ω_c, band k analysed by h_k[n] = 2 h[n] cos((2k+1) π/(2M) (n − taps/2) + (−1)^k π/4) and
synthesised by the same cosine with the opposite phase term. Both directions are fixed (no parameters, nothing in the state dict); a round trip delays
nothing and reconstructs white noise at 64 dB SNR for 4 bands (`python benchmarks/pqmf_vae.py` checks it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaflow.models.wavevae import WaveVAE, WaveVAEConfig, WaveVAEOutput

__all__ = ["PQMF", "SubbandVAE", "cutoff_for", "prototype"]

# Prototype length and Kaiser β of every bank (multi-band MelGAN's); round-trip SNR on white noise: 67, 64 and
# 50 dB for 2, 4 and 8 bands (`python benchmarks/pqmf_vae.py`).
TAPS = 62
BETA = 9.0


def prototype(bands: int, taps: int = TAPS, beta: float = BETA, cutoff: float | None = None) -> np.ndarray:
    """The low-pass prototype (taps + 1,): an ideal low-pass at `cutoff` (× π rad/sample) under a Kaiser window."""
    if taps % 2:
        raise ValueError(
            f"PQMF: taps must be even (a symmetric filter with a whole-sample delay), got {taps}"
        )
    wc = math.pi * (cutoff if cutoff is not None else cutoff_for(bands, taps, beta))
    n = np.arange(taps + 1) - taps / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ideal = np.where(n == 0, wc / math.pi, np.sin(wc * n) / (math.pi * n))
    return ideal * np.kaiser(taps + 1, beta)


def _filters(bands: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Analysis and synthesis filters (bands, taps + 1) from the prototype h."""
    taps = len(h) - 1
    n = np.arange(taps + 1) - taps / 2
    k = np.arange(bands)[:, None]
    phase = (2 * k + 1) * math.pi / (2 * bands) * n  # (bands, taps + 1)
    sign = (-1.0) ** k * math.pi / 4
    return 2 * h * np.cos(phase + sign), 2 * h * np.cos(phase - sign)


def _flatness(bands: int, h: np.ndarray) -> float:
    """The ripple of the bank's alias-free overall response: max over ω of | |Σ_k A_k(ω) S_k(ω)| − 1 |."""
    analysis, synthesis = _filters(bands, h)
    grid = 4096
    overall = sum(
        np.fft.rfft(a, grid) * np.fft.rfft(s, grid) for a, s in zip(analysis, synthesis, strict=True)
    )
    # Σ_k A_k S_k / M is the round trip's alias-free part; the synthesis up-sampler's gain M cancels the 1/M.
    return float(np.abs(np.abs(overall) - 1).max())


@functools.cache
def cutoff_for(bands: int, taps: int = TAPS, beta: float = BETA) -> float:
    """The prototype cut-off (× π) that makes the bank's overall response flattest: a grid over (1/2M, 1/M), the
    ideal being just above 1/2M, then a golden-section search around the grid's best point."""

    def ripple(c: float) -> float:
        return _flatness(bands, prototype(bands, taps, beta, c))

    grid = np.linspace(0.5 / bands, 1.0 / bands, 65)
    i = int(np.argmin([ripple(c) for c in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if ripple(a) < ripple(b) else (a, hi)
    return float((lo + hi) / 2)


class PQMF(nn.Module):
    """Analysis (B, C, N) -> (B, C·M, N/M), band-major within each channel, and synthesis back."""

    def __init__(self, bands: int, taps: int = TAPS, beta: float = BETA) -> None:
        super().__init__()
        if bands < 2:
            raise ValueError(f"PQMF: needs at least 2 bands, got {bands}")
        self.bands, self.taps = bands, taps
        analysis, synthesis = _filters(bands, prototype(bands, taps, beta))
        # Non-persistent: derived from (bands, taps, beta), so checkpoints hold none of it.
        self.register_buffer(
            "analysis_filters", torch.from_numpy(analysis).float()[:, None, :], persistent=False
        )
        self.register_buffer(
            "synthesis_filters", torch.from_numpy(synthesis).float()[None, :, :], persistent=False
        )

    def analysis(self, audio: Tensor) -> Tensor:
        """audio (B, C, N), N a multiple of M -> sub-bands (B, C·M, N / M)."""
        b, c, n = audio.shape
        if n % self.bands:
            raise ValueError(f"PQMF: length {n} is not a multiple of the {self.bands} bands")
        x = F.pad(audio.reshape(b * c, 1, n), (self.taps // 2, self.taps // 2))  # (B·C, 1, N + taps)
        y = F.conv1d(x, self.analysis_filters.to(x.dtype), stride=self.bands)  # (B·C, M, N / M)
        return y.reshape(b, c * self.bands, n // self.bands)

    def synthesis(self, bands: Tensor) -> Tensor:
        """sub-bands (B, C·M, T) -> audio (B, C, T · M)."""
        b, cm, t = bands.shape
        if cm % self.bands:
            raise ValueError(f"PQMF: {cm} channels are not a whole number of {self.bands}-band groups")
        c = cm // self.bands
        y = bands.reshape(b * c, self.bands, t)
        # Zero-insertion up-sampling by M (gain M) as a transposed conv with a one-tap kernel per band.
        up = F.conv_transpose1d(y, y.new_full((self.bands, 1, 1), float(self.bands)), stride=self.bands,
                                groups=self.bands)  # fmt: skip
        up = F.pad(up, (0, self.bands - 1))  # (B·C, M, T·M): the transposed conv stops at the last non-zero
        x = F.conv1d(F.pad(up, (self.taps // 2, self.taps // 2)), self.synthesis_filters.to(up.dtype))
        return x.reshape(b, c, t * self.bands)


class SubbandVAE(nn.Module):
    """The WaveVAE interface the screen and the reconstruction figures use, for a mono Oobleck on `bands` bands.

    `config` describes the inner Oobleck at the band rate (its strides give hop / bands); the wrapper's own
    `config` is the outer view: mono, the full sample rate, hop = bands · Π strides.
    """

    def __init__(self, config: WaveVAEConfig, bands: int) -> None:
        super().__init__()
        if config.audio_channels != 1:
            raise ValueError("SubbandVAE: mono only")
        self.inner = WaveVAE(dataclasses.replace(config, audio_channels=bands))
        self.bank = PQMF(bands)
        self.encoder = self.inner.encoder  # training.narrow_posterior reaches the output conv through it
        self.config = SimpleNamespace(
            audio_channels=1,
            sample_rate=config.sample_rate,
            latent_dim=config.latent_dim,
            hop=bands * config.hop,
        )

    hop = property(lambda self: self.config.hop)
    latent_dim = property(lambda self: self.config.latent_dim)

    def encode(self, audio: Tensor):
        """audio (B, 1, N) -> Posterior (B, D, N / hop)."""
        return self.inner.encode(self.bank.analysis(audio))  # through (B, M, N / M)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, D, T) -> audio (B, 1, T · hop)."""
        return self.bank.synthesis(self.inner.decode(z))  # through (B, M, T · hop / M)

    def encode_mono(self, audio: Tensor):
        return self.encode(audio[:, None, :])

    def decode_mono(self, z: Tensor) -> Tensor:
        return self.decode(z)[:, 0]

    def forward(self, audio: Tensor, sample: bool = True) -> WaveVAEOutput:
        posterior = self.encode(audio)
        z = posterior.sample() if sample else posterior.mean
        return WaveVAEOutput(reconstruction=self.decode(z), posterior=posterior, z=z, kl=posterior.kl())


def main() -> None:
    """Round-trip SNR and delay of the bank on white noise, per band count."""
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(2, 1, 16384)
    edge = 256

    def snr(reference: Tensor, estimate: Tensor) -> float:
        e = (estimate - reference)[..., edge:-edge]
        return float(10 * torch.log10(reference[..., edge:-edge].pow(2).mean() / e.pow(2).mean()))

    for bands in (2, 4, 8):
        bank = PQMF(bands)
        out = bank.synthesis(bank.analysis(audio))
        print(
            f"{bands} bands: cut-off {cutoff_for(bands):.4f} π, round-trip SNR {snr(audio, out):.1f} dB "
            f"(against the input shifted by one sample: {snr(torch.roll(audio, 1, -1), out):.1f} dB)"
        )


if __name__ == "__main__":
    main()
