"""A multi-resolution STFT discriminator for `wavevae_screen.py --adv` only: does a short adversarial phase teach
the WaveVAE decoder the level and the precise tones its magnitude losses teach slowly?

Spectral L1 losses, faced with a tone whose exact frequency the decoder cannot yet place, are served best by a
quiet, smeared output; a discriminator asks for sharp, loud-enough spectra instead (the Oobleck of Stable Audio
Open, DAC and EnCodec all train with one). `Adversary` holds one discriminator per FFT size, each a stack of
weight-normed 2-D convolutions over the real and imaginary parts of the normalised STFT (time × frequency,
strided over frequency, as EnCodec's MS-STFT discriminator), and its own AdamW. From `start` on, the screen adds
to the generator's loss `adv_weight` × the hinge generator loss + `fm_weight` × the relative feature-matching L1
(Σ |f(x) − f(x̂)| / Σ |f(x)| per layer, averaged), and after each generator step takes one discriminator step on
the same batch (hinge loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass(frozen=True)
class AdvOptions:
    start: int = 300  # first step with the adversarial terms (and the first discriminator step)
    fft_sizes: tuple[int, ...] = (256, 512, 1024)
    channels: int = 16
    adv_weight: float = 1.0
    fm_weight: float = 2.0
    lr: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)


class STFTDiscriminator(nn.Module):
    """Audio (B, N) -> logits (B, 1, T', F') and the feature maps of every layer but the last."""

    def __init__(self, n_fft: int, channels: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = channels
        self.layers = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
            ]
        )
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(audio, self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        spec = spec / self.window.pow(2).sum().sqrt()  # (B, F, T), a white noise of std s reads ~s per bin
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, T, F)
        features = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2)
            features.append(h)
        return self.out(h), features


class Adversary(nn.Module):
    """The discriminators, their optimiser, and the two losses the screen needs."""

    def __init__(self, opts: AdvOptions) -> None:
        super().__init__()
        self.opts = opts
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, opts.channels) for n in opts.fft_sizes)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=opts.lr, betas=opts.betas)

    def generator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """real, fake (B, N); fake carries the generator's graph. -> weighted loss, {adv, fm} detached."""
        adv, fm = real.new_zeros(()), real.new_zeros(())
        for d in self.discriminators:
            with torch.no_grad():
                _, real_features = d(real)
            logits, fake_features = d(fake)
            adv = adv + F.relu(1 - logits).mean()
            fm = fm + sum(
                (r - f).abs().mean() / (r.abs().mean() + 1e-8)
                for r, f in zip(real_features, fake_features, strict=True)
            ) / len(real_features)
        n = len(self.discriminators)
        loss = self.opts.adv_weight * adv / n + self.opts.fm_weight * fm / n
        return loss, {"adv": (adv / n).detach(), "fm": (fm / n).detach()}

    def discriminator_step(self, real: Tensor, fake: Tensor) -> float:
        """One hinge step on real and (detached) fake audio (B, N); returns the loss."""
        loss = real.new_zeros(())
        for d in self.discriminators:
            loss = loss + F.relu(1 - d(real)[0]).mean() + F.relu(1 + d(fake.detach())[0]).mean()
        loss = loss / len(self.discriminators)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
