"""The alignment VAE `ε_φ` (paper §3.2-3.3): video features `x_v` (T_v, D_v) to a Gaussian prior over audio-latent
shapes `x_v^AE` (T_a, D_a), and back.

Read top to bottom: the config, the 1-D conv blocks, encoder, decoder, the VAE, the losses of
Eq. 4-7. The encoder first interpolates `x_v` in time from T_v to T_a (linear), so every conv runs at the audio
latent rate; the decoder mirrors it and interpolates back to T_v. Only the encoder survives training: stage 2
draws the flow's source `x_0 ~ N(μ, σ)` from it and stage 3 tunes it (Eq. 9); the decoder exists for Eq. 5-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaflow.config.section import DictConfig
from vaflow.models.posterior import Posterior

__all__ = [
    "AlignEncoder",
    "AlignLossWeights",
    "AlignVAE",
    "AlignVAEConfig",
    "Posterior",
    "contrastive_loss",
    "kl_divergence",
]


# ----------------------------------------------------------------------------------------------------------------
# Config (the posterior is `vaflow.models.posterior.Posterior`, channels last)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignVAEConfig(DictConfig):
    """Shapes and widths of the alignment VAE; the four lengths/dims come from the data, the rest are sizes."""

    feature_dim: int  # D_v: the visual encoder's width (CLIP ViT-L/14 768; the embedded CAVP 64)
    feature_length: int  # T_v: visual frames per clip (CLIP 10 fps × 10 s = 100)
    latent_dim: int  # D_a: the WaveVAE latent width (SAO 64)
    latent_length: int  # T_a: WaveVAE latent frames per clip (SAO: 215 for 10 s)
    channels: int = 64  # conv width; the paper gives no size, 64 suffices for the embedded world's 8 classes
    blocks: int = 2  # residual conv blocks in each of encoder and decoder
    kernel: int = 5  # odd, so 'same' padding keeps the length: 5 frames see ±2 latent frames of context

    def __post_init__(self) -> None:
        for name in ("feature_dim", "feature_length", "latent_dim", "latent_length", "channels", "kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"AlignVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.kernel % 2 == 0:
            raise ValueError(f"AlignVAEConfig.kernel must be odd (same-length convs), got {self.kernel}")


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


class ResBlock1d(nn.Module):
    """Pre-activation residual block: GroupNorm → SiLU → Conv1d, twice."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        groups = 8 if channels % 8 == 0 else 1
        self.net = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv1d(channels, channels, kernel, padding=kernel // 2),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv1d(channels, channels, kernel, padding=kernel // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)  # (B, C, T)


def _resample(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, D) → (B, length, D), linear in time (the paper's interpolation of x_v to T_a)."""
    if x.shape[1] == length:
        return x
    y = F.interpolate(x.transpose(1, 2), size=length, mode="linear", align_corners=False)  # (B, D, length)
    return y.transpose(1, 2)  # (B, length, D)


# ----------------------------------------------------------------------------------------------------------------
# Encoder, decoder, VAE
# ----------------------------------------------------------------------------------------------------------------


class AlignEncoder(nn.Module):
    """`E_εφ`: x_v (B, T_v, D_v) → posterior over x_v^AE (B, T_a, D_a)."""

    def __init__(self, config: AlignVAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.proj_in = nn.Conv1d(c.feature_dim, c.channels, c.kernel, padding=c.kernel // 2)
        self.blocks = nn.Sequential(*[ResBlock1d(c.channels, c.kernel) for _ in range(c.blocks)])
        self.norm_out = nn.GroupNorm(8 if c.channels % 8 == 0 else 1, c.channels)
        self.proj_out = nn.Conv1d(c.channels, 2 * c.latent_dim, 1)

    def forward(self, x_v: torch.Tensor, latent_length: int | None = None) -> Posterior:
        """x_v (B, T_v, D_v) → Posterior (B, T_a, D_a); `latent_length` overrides T_a (other window lengths)."""
        x = _resample(x_v, latent_length or self.config.latent_length)  # (B, T_a, D_v)
        h = self.proj_in(x.transpose(1, 2))  # (B, C, T_a)
        h = self.blocks(h)  # (B, C, T_a)
        h = self.proj_out(F.silu(self.norm_out(h)))  # (B, 2·D_a, T_a)
        mean, scale = h.transpose(1, 2).chunk(2, dim=-1)  # (B, T_a, D_a) each
        # softplus + floor, as the SAO WaveVAE's bottleneck: σ stays positive and never collapses to exactly 0.
        # Time-major (B, T_a, D_a) like the audio latents: the channels are the last axis.
        return Posterior(mean, F.softplus(scale) + 1e-4, channel_dim=-1)


class AlignDecoder(nn.Module):
    """`D_εφ`: x_v^AE (B, T_a, D_a) → x̂_v (B, T_v, D_v)."""

    def __init__(self, config: AlignVAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.proj_in = nn.Conv1d(c.latent_dim, c.channels, c.kernel, padding=c.kernel // 2)
        self.blocks = nn.Sequential(*[ResBlock1d(c.channels, c.kernel) for _ in range(c.blocks)])
        self.norm_out = nn.GroupNorm(8 if c.channels % 8 == 0 else 1, c.channels)
        self.proj_out = nn.Conv1d(c.channels, c.feature_dim, 1)

    def forward(self, z: torch.Tensor, feature_length: int | None = None) -> torch.Tensor:
        h = self.proj_in(z.transpose(1, 2))  # (B, C, T_a)
        h = self.blocks(h)  # (B, C, T_a)
        h = self.proj_out(F.silu(self.norm_out(h)))  # (B, D_v, T_a)
        return _resample(h.transpose(1, 2), feature_length or self.config.feature_length)  # (B, T_v, D_v)


@dataclass(frozen=True)
class AlignLossWeights:
    """Eq. 7's weights and Eq. 6's settings; the defaults are the paper's (§3.3)."""

    kl: float = 8e-4  # λ_KL
    rec: float = 1.0  # λ_rec
    con: float = 1.0  # λ_con
    clip_frames: int = 8  # K: adjacent frames pooled at the clip scale
    temperature: float = 0.7  # τ


class AlignVAE(nn.Module):
    """Encoder and decoder of the alignment VAE; `forward` is the stage-1 objective (Eq. 7)."""

    def __init__(self, config: AlignVAEConfig, weights: AlignLossWeights | None = None):
        super().__init__()
        self.config = config
        self.weights = weights or AlignLossWeights()
        self.encoder = AlignEncoder(config)
        self.decoder = AlignDecoder(config)

    def forward(
        self, x_v: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x_v (B, T_v, D_v) → (Eq. 7 loss, {"kl", "rec", "con"} detached). `generator` fixes the draws
        (ε, the frame and window positions): validation passes one so every evaluation sees the same ones."""
        w = self.weights
        posterior = self.encoder(x_v)  # (B, T_a, D_a) ×2
        x_hat = self.decoder(posterior.sample(generator))  # (B, T_v, D_v)
        kl = kl_divergence(posterior)  # Eq. 4
        rec = F.mse_loss(x_hat, x_v)  # Eq. 5
        con = contrastive_loss(x_hat, x_v, w.clip_frames, w.temperature, generator)  # Eq. 6
        loss = w.kl * kl + w.rec * rec + w.con * con  # Eq. 7
        return loss, {"kl": kl.detach(), "rec": rec.detach(), "con": con.detach()}


# ----------------------------------------------------------------------------------------------------------------
# Losses (Eq. 4-6)
# ----------------------------------------------------------------------------------------------------------------


def kl_divergence(posterior: Posterior) -> torch.Tensor:
    """Eq. 4: KL(N(μ, σ²) ‖ N(0, I)), summed over the D_a channels and averaged over batch and time.

    The channel sum follows the SAO WaveVAE bottleneck, whose KL weight (1e-4) the paper's 8e-4 is in line with:
    a per-element mean would make λ_KL = 8e-4 negligible and leave the prior free to drift off N(0, I).
    """
    return posterior.kl(0.5)


def _pool_scales(
    x_hat: torch.Tensor, x: torch.Tensor, clip_frames: int, generator: torch.Generator | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eq. 6's f_s at the three scales for both inputs: [(f_s(x̂_v), f_s(x_v))] each (B, D_v).

    frame: one frame per clip, drawn at random; clip: a random window of K adjacent frames, mean-pooled (K is
    capped at T_v); global: the mean over all frames. x̂_v and x_v of a clip use the same positions.
    """
    b, t_v, _ = x.shape
    rows = torch.arange(b, device=x.device)
    frame = torch.randint(t_v, (b,), generator=generator, device=generator.device if generator else None)
    frame = frame.to(x.device)
    k = min(clip_frames, t_v)
    start = torch.randint(
        t_v - k + 1, (b,), generator=generator, device=generator.device if generator else None
    )
    window = start.to(x.device)[:, None] + torch.arange(k, device=x.device)  # (B, K)
    scales = []
    for y in (x_hat, x):
        scales.append(
            (
                y[rows, frame],  # frame: (B, D_v)
                y[rows[:, None], window].mean(1),  # clip: (B, D_v)
                y.mean(1),  # global: (B, D_v)
            )
        )
    return list(zip(scales[0], scales[1], strict=True))


def contrastive_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    clip_frames: int = 8,
    temperature: float = 0.7,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 6: InfoNCE between reconstructed and true features, summed over the frame, clip and global scales.

    x_hat, x: (B, T_v, D_v). For each scale the pooled features are L2-normalised and row i of x̂_v is scored
    against every x_v of the batch (the negatives x' ∈ B); the loss is the cross-entropy of picking its own clip,
    averaged over the batch. A batch of one has no negative: the loss is then 0.
    """
    target = torch.arange(x.shape[0], device=x.device)
    total = x.new_zeros(())
    for f_hat, f in _pool_scales(x_hat, x, clip_frames, generator):
        logits = F.normalize(f_hat, dim=-1) @ F.normalize(f, dim=-1).T / temperature  # (B, B)
        total = total + F.cross_entropy(logits, target)
    return total
