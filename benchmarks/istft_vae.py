"""A frame-rate WaveVAE with an STFT front-end and an iSTFT head, for `wavevae_screen.py --istft` only.

The question it answers: does a VAE that does all its work at the latent frame rate (62.5 Hz) learn the synthetic
world faster per CPU second than the Oobleck WaveVAE, whose first and last stages run at 16 kHz? Both trunks are
ConvNeXt stacks (depth-wise conv 7, LayerNorm, 3× MLP, layer scale) as in Vocos (Siuzdak 2023):

    encoder: log |STFT(x)| (n_fft, hop 256, Hann)  -> trunk -> mean, scale (2·D, T)
    decoder: z (D, T) -> trunk -> log-magnitude m, phase p (2·(n_fft/2 + 1), T) -> iSTFT -> x̂ (T · hop)

`phase` picks how p becomes the phase of each bin: "free" uses it as is (Vocos); "integrated" reads it as an
instantaneous-frequency deviation in (−π, π) around the bin's centre frequency and sums it over frames (a phase
vocoder's synthesis), so that a steady tone keeps a coherent phase from frame to frame. The decoder's predicted
magnitudes are kept so that a run can tell how much of them survives the overlap-add (`magnitude_kept`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaflow.models.wavevae import VAEBottleneck, WaveVAEConfig, WaveVAEOutput
from vaflow.train.wavevae import INITIAL_STD


@dataclass(frozen=True)
class ISTFTOptions:
    width: int = 256  # trunk channels
    depth: int = 6  # ConvNeXt blocks per trunk
    n_fft: int = 1024
    phase: str = "free"  # "free" | "integrated"
    # Weight of the direct spectral supervision (`spectral_loss`); 0: the output is judged by the stage's losses only.
    supervise: float = 0.0
    # The encoder also sees each bin's instantaneous-frequency deviation (phase advance over a hop).
    if_input: bool = False


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.dw = nn.Conv1d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.up = nn.Linear(channels, 3 * channels)
        self.down = nn.Linear(3 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dw(x).transpose(1, 2)  # (B, T, C)
        h = self.down(F.gelu(self.up(self.norm(h))))  # (B, T, C)
        return x + (self.gamma * h).transpose(1, 2)  # (B, C, T)


class Trunk(nn.Module):
    def __init__(self, cin: int, cout: int, opts: ISTFTOptions) -> None:
        super().__init__()
        self.embed = nn.Conv1d(cin, opts.width, 7, padding=3)
        self.norm_in = nn.LayerNorm(opts.width)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(opts.width, 1 / opts.depth) for _ in range(opts.depth)))
        self.norm_out = nn.LayerNorm(opts.width)
        self.out = nn.Conv1d(opts.width, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_in(self.embed(x).transpose(1, 2)).transpose(1, 2)  # (B, W, T)
        h = self.norm_out(self.blocks(h).transpose(1, 2)).transpose(1, 2)  # (B, W, T)
        return self.out(h)  # (B, cout, T)


class ISTFTVAE(nn.Module):
    """The WaveVAE interface the screen and the reconstruction figures use (mono, hop = config.hop)."""

    def __init__(self, config: WaveVAEConfig, opts: ISTFTOptions) -> None:
        super().__init__()
        if opts.phase not in ("free", "integrated"):
            raise ValueError(f"phase must be 'free' or 'integrated', got {opts.phase!r}")
        self.config, self.opts = config, opts
        bins = opts.n_fft // 2 + 1
        self.encoder = Trunk(bins * (2 if opts.if_input else 1), 2 * config.latent_dim, opts)
        self.decoder = Trunk(config.latent_dim, 2 * bins, opts)
        self.bottleneck = VAEBottleneck()
        self.last_magnitude: Tensor | None = None
        self.aux_loss: Tensor | None = None  # spectral_loss of the last forward, for the screen to add

    hop = property(lambda self: self.config.hop)
    latent_dim = property(lambda self: self.config.latent_dim)

    def _window(self, x: Tensor) -> Tensor:
        return torch.hann_window(self.opts.n_fft, device=x.device, dtype=x.dtype)

    def _centre_advance(self, bins: int, like: Tensor) -> Tensor:
        """Phase advance over one hop of each bin's centre frequency, (F, 1)."""
        k = torch.arange(bins, device=like.device, dtype=like.dtype)[:, None]
        return 2 * math.pi * k * self.hop / self.opts.n_fft

    def analyse(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Audio (B, C, N) -> log |STFT| relative to full scale (B·C, F, T) and the STFT's phase (B·C, F, T)."""
        b, c, n = audio.shape
        window = self._window(audio)
        spec = torch.stft(
            audio.reshape(b * c, n), self.opts.n_fft, self.hop, window=window, return_complex=True
        )
        spec = spec[..., : n // self.hop]  # (B·C, F, T)
        return (spec.abs() / window.sum() + 1e-5).log(), spec.angle()  # log-magnitude −11.5 … 0

    def encode(self, audio: Tensor):
        log_mag, phase = self.analyse(audio)  # (B, F, T) each
        features = (log_mag + 5) / 3
        if self.opts.if_input:
            advance = phase.diff(dim=-1, prepend=phase[..., :1]) - self._centre_advance(phase.shape[1], phase)
            features = torch.cat([features, _wrap(advance) / math.pi], dim=1)  # deviation in (−1, 1]
        return self.bottleneck(self.encoder(features))  # mean, std (B, D, T)

    def decode(self, z: Tensor) -> Tensor:
        m, p = self.decoder(z).chunk(2, dim=1)  # (B, F, T) each
        magnitude = (m - 5).exp().clamp(max=1e3)  # (B, F, T), starts quiet
        if self.opts.phase == "integrated":
            p = torch.cumsum(self._centre_advance(m.shape[1], m) + math.pi * torch.tanh(p), dim=-1)
        self.last_magnitude = magnitude.detach()
        self._last = (m - 5, p)  # predicted log |STFT| (absolute scale) and phase, for spectral_loss
        spec = torch.complex(magnitude * torch.cos(p), magnitude * torch.sin(p))  # (B, F, T)
        spec = torch.cat([spec, spec[..., -1:]], dim=-1)  # T + 1 frames: centred iSTFT of T · hop samples
        n = z.shape[-1] * self.hop
        return torch.istft(spec, self.opts.n_fft, self.hop, window=self._window(z), length=n)[:, None]

    def decode_mono(self, z: Tensor) -> Tensor:
        return self.decode(z)[:, 0]  # (B, N)

    def encode_mono(self, audio: Tensor):
        return self.encode(audio[:, None])

    def forward(self, audio: Tensor, sample: bool = True) -> WaveVAEOutput:
        posterior = self.encode(audio)
        z = posterior.sample() if sample else posterior.mean
        reconstruction = self.decode(z)
        if self.opts.supervise:
            self.aux_loss = self.opts.supervise * self.spectral_loss(audio)
        return WaveVAEOutput(reconstruction=reconstruction, posterior=posterior, z=z, kl=posterior.kl())

    def spectral_loss(self, audio: Tensor) -> Tensor:
        """The last decode's spectrum against the input's, bin by bin (an autoencoder knows the target's phase):
        log-magnitude L1, plus the anti-wrapped phase, group-delay and instantaneous-frequency errors of APNet (Ai &
        Ling 2023), each weighted by the target bin's share of the clip's magnitude so that noise-floor phases,
        which no latent can carry, count little."""
        log_mag, phase = self.analyse(audio)  # (B, F, T)
        m, p = self._last
        m = m - math.log(float(self._window(audio).sum()))  # relative to full scale, as log_mag
        weight = log_mag.exp()
        weight = (weight / weight.mean(dim=(1, 2), keepdim=True)).detach()  # (B, F, T), mean 1
        terms = [
            (m - log_mag).abs().mean(),
            (weight * _wrap(p - phase).abs()).mean(),
            (weight[:, 1:] * _wrap(p.diff(dim=1) - phase.diff(dim=1)).abs()).mean(),
            (weight[..., 1:] * _wrap(p.diff(dim=-1) - phase.diff(dim=-1)).abs()).mean(),
        ]
        return sum(terms)

    @torch.no_grad()
    def magnitude_kept(self, audio: Tensor) -> float:
        """Σ|STFT(decode(mean))| / Σ(predicted magnitudes) over clips (B, N): 1 when the overlap-add keeps what the
        decoder predicted, below 1 when the frames' phases cancel."""
        y = self.decode(self.encode(audio[:, None]).mean)[:, 0]  # (B, N)
        window = self._window(y)
        out = torch.stft(y, self.opts.n_fft, self.hop, window=window, return_complex=True)[
            ..., : y.shape[-1] // self.hop
        ]
        return float(out.abs().sum() / self.last_magnitude.sum())


def _wrap(x: Tensor) -> Tensor:
    """x wrapped to (−π, π]."""
    return x - 2 * math.pi * torch.round(x / (2 * math.pi))


@torch.no_grad()
def narrow_posterior(vae: ISTFTVAE, std: float = INITIAL_STD) -> ISTFTVAE:
    """training.narrow_posterior for this model: every posterior std starts near `std`."""
    out, d = vae.encoder.out, vae.latent_dim
    out.weight[d:] *= 0.1
    out.bias[d:] = math.log(math.expm1(std - 1e-4))
    return vae
