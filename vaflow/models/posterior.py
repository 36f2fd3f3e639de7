"""The diagonal Gaussian posterior of both VAEs: the WaveVAE's q(z | audio) and the alignment VAE's prior over x_v^AE.

The two differ only in layout and in how their KL is scaled, so both are explicit: `channel_dim` names the latent
channel axis (WaveVAE latents are channel-major (B, D, T), the alignment VAE's time-major (B, T, D)), and `kl`
takes the factor in front of the channel sum (1 for SAO's bottleneck term, ½ for the Gaussian KL of Eq. 4) and the
order its gradient is formed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Posterior"]


@dataclass
class Posterior:
    """N(mean, std²) elementwise; mean and std share one shape, `channel_dim` is its latent-channel axis."""

    mean: Tensor
    std: Tensor
    # No default: a KL summed over the wrong axis would still be a number, so every maker names its layout.
    channel_dim: int = field(kw_only=True)  # 1 for (B, D, T), -1 for (B, T, D)

    @property
    def var(self) -> Tensor:
        """σ², same shape as mean."""
        return self.std * self.std

    @property
    def logvar(self) -> Tensor:
        """log σ², same shape as mean."""
        return torch.log(self.var)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """The reparameterised draw z = μ + σ·ε, ε ~ N(0, I), same shape as mean; gradients flow to μ and σ."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def kl(self, scale: float, *, square_once: bool = True) -> Tensor:
        """scale · Σ_channels (μ² + σ² − log σ² − 1), averaged over every other axis: ().

        scale ½ is KL(N(μ, σ²) ‖ N(0, I)) per position; scale 1 is twice it, the SAO bottleneck's term.
        `square_once`: σ² formed once for both of its terms (the alignment VAE's Eq. 4), or once per term through
        `var` and `logvar` (the WaveVAE's); the value is the same, the rounding of the gradient is not, and each
        VAE keeps the one it was trained with.
        """
        if square_once:
            var = self.std.square()
            terms = self.mean.square() + var - var.log() - 1
        else:
            terms = self.mean * self.mean + self.var - self.logvar - 1
        per_position = terms.sum(self.channel_dim).mean()
        return per_position if scale == 1 else scale * per_position
