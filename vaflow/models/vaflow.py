"""VAFlow as one module: the alignment-VAE encoder (the video prior), the DiT velocity estimator and the latent
normalisation, with the stage-2/3 objective (Eq. 8, 9) as `forward` and sampling as `generate` (§3.3).

The flow runs in normalised latent space: `x_1 = (x_a − m) / s` with per-channel statistics (m, s) of the
training latents, stored as buffers so they travel with the weights; `generate` undoes it. The alignment VAE's KL
pulls its prior towards N(0, I), so a unit-scale target keeps the transport `x_1 − x_0` well-proportioned.

Priors (`prior`): `video` draws `x_0 ~ N(μ, σ)` from the alignment-VAE encoder on `x_v` (VAFlow); `gaussian` draws
`x_0 ~ N(0, I)` of the same shape (the flow baseline of Table 3), and then holds no encoder at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vaflow import flow
from vaflow.config.section import DictConfig
from vaflow.models.align_vae import AlignEncoder, kl_divergence
from vaflow.models.dit import VelocityDiT
from vaflow.models.posterior import Posterior

__all__ = ["FlowSettings", "VAFlow", "latent_statistics"]


@dataclass(frozen=True)
class FlowSettings(DictConfig):
    """How the flow is trained (stages 2 and 3); sampling settings are arguments of `generate`."""

    prior: Literal["video", "gaussian"] = "video"
    objective: Literal["flow", "diffusion"] = "flow"  # diffusion: Figure 3's baseline (v-prediction, DDIM)
    cond_dropout: float = 0.1  # §3.3: x_v zeroed with p = 0.1, so one model serves CFG's null branch
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"  # Eq. 8: t ~ U(0, 1)
    time_loc: float = 0.0  # logit-normal only
    time_scale: float = 1.0  # logit-normal only
    kl_weight: float = 0.0  # Eq. 9's λ_KL when the encoder is tuned (stage 3); 0 in stage 2
    tune_encoder: bool = False  # stage 3: the encoder learns with the estimator; stage 2: frozen


def latent_statistics(
    sum_x: torch.Tensor, sum_x2: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (D_a,) of latent samples from running sums over `count` frames.

    sum_x: Σ μ over clips and frames; sum_x2: Σ (μ² + σ²), the second moment of a posterior draw μ + σ·ε.
    The std is floored at 1e-3 so a dead channel cannot blow the normalised target up.
    """
    if count < 2:
        raise ValueError(f"latent statistics need at least 2 latent frames, got {count}")
    mean = sum_x / count
    var = (sum_x2 / count - mean.square()).clamp_min(0)
    return mean.float(), var.sqrt().clamp_min(1e-3).float()


class VAFlow(nn.Module):
    """Video prior + velocity estimator in normalised latent space (Eq. 8-10)."""

    def __init__(
        self,
        encoder: AlignEncoder | None,
        dit: VelocityDiT,
        latent_mean: torch.Tensor,
        latent_std: torch.Tensor,
        settings: FlowSettings,
    ):
        super().__init__()
        if settings.prior == "video" and encoder is None:
            raise ValueError("prior 'video' needs the alignment-VAE encoder")
        if settings.objective == "diffusion" and settings.prior != "gaussian":
            raise ValueError("objective 'diffusion' starts from Gaussian noise: it needs prior 'gaussian'")
        self.settings = settings
        self.encoder = encoder if settings.prior == "video" else None
        self.dit = dit
        self.register_buffer("latent_mean", latent_mean.detach().float().clone())  # (D_a,)
        self.register_buffer("latent_std", latent_std.detach().float().clone())  # (D_a,)
        if self.encoder is not None:
            self.encoder.requires_grad_(settings.tune_encoder)

    # -- latent space ---------------------------------------------------------------------------

    def normalize(self, x_a: torch.Tensor) -> torch.Tensor:
        return (x_a - self.latent_mean) / self.latent_std  # (B, T_a, D_a)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean  # (B, T_a, D_a)

    def posterior(self, x_v: torch.Tensor, latent_length: int) -> Posterior | None:
        """The video prior's N(μ, σ) (B, T_a, D_a), or None for the Gaussian prior."""
        if self.encoder is None:
            return None
        return self.encoder(x_v, latent_length)

    def draw_prior(
        self,
        x_v: torch.Tensor,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_0 (B, T_a, D_a): μ + σ·ε from the encoder (video prior) or ε (Gaussian prior); ε is drawn from
        `generator` unless given (per-clip noise that does not depend on how clips are batched)."""
        posterior = self.posterior(x_v, shape[1])
        if eps is None:
            eps = torch.randn(shape, generator=generator, device=x_v.device, dtype=x_v.dtype)
        eps = eps.to(device=x_v.device, dtype=x_v.dtype)
        return eps if posterior is None else posterior.mean + posterior.std * eps

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """v_θ(x_t, t, x_v) (B, T_a, D_a); cond None = null (zero) features."""
        return self.dit(x, t, cond)

    # -- training -------------------------------------------------------------------------------

    def loss_at(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        x_v: torch.Tensor,
        t: torch.Tensor,
        eps_a: torch.Tensor,
        eps_0: torch.Tensor,
        cond: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective at given draws: WaveVAE posterior (mean, std) (B, T_a, D_a), x_v (B, T_v, D_v), t (B,),
        ε for the latent sample and for the prior (B, T_a, D_a), and the (possibly dropped) condition."""
        x_1 = self.normalize(mean + std * eps_a)  # a fresh latent sample x_a, normalised (B, T_a, D_a)
        posterior = self.posterior(x_v, x_1.shape[1])
        if posterior is None:
            x_0 = eps_0  # Gaussian prior (B, T_a, D_a)
        else:
            x_0 = posterior.mean + posterior.std * eps_0  # video prior x_v^AE (B, T_a, D_a)
        if (
            self.settings.objective == "diffusion"
        ):  # Figure 3's baseline: x_0 is the noise ε of x_t = α·x_1 + σ·ε
            noised = flow.diffusion_path(x_1, x_0, t)
            loss = flow.diffusion_loss(self.dit(noised.x_t, t, cond), noised.v)
            parts = {"diffusion": loss.detach()}
        else:
            path = flow.linear_path(x_0, x_1, t)  # Eq. 3
            loss = flow.flow_loss(self.dit(path.x_t, t, cond), path.dx_t)  # Eq. 8
            parts = {"flow": loss.detach()}
        if posterior is not None and self.settings.tune_encoder:
            kl = kl_divergence(posterior)  # Eq. 9: λ_KL·KL keeps the tuned prior near N(0, I)
            loss = loss + self.settings.kl_weight * kl
            parts["kl"] = kl.detach()
        return loss, parts

    def forward(
        self, mean: torch.Tensor, std: torch.Tensor, x_v: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training draw of Eq. 8 (stage 2) or Eq. 9 (stage 3): fresh x_a, t, x_0 and condition dropout."""
        s = self.settings
        t = flow.sample_time(mean.shape[0], s.time_sampling, s.time_loc, s.time_scale, device=mean.device)
        eps_a, eps_0 = torch.randn_like(mean), torch.randn_like(mean)
        cond = flow.drop_condition(x_v, s.cond_dropout) if self.dit.config.cross_attention else None
        return self.loss_at(mean, std, x_v, t, eps_a, eps_0, cond)

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        x_v: torch.Tensor,
        latent_length: int,
        solver: str = "euler",
        steps: int = 25,
        cfg: float = 0.0,
        cond: Literal["video", "zero"] = "video",
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """x_v (B, T_v, D_v) → (audio latents x̂_a (B, T_a, D_a) in WaveVAE units, NFE).

        The only randomness is the draw of x_0 (§3.3): ε from `generator`, or `eps` (B, T_a, D_a) itself.
        `cond="zero"` hides x_v from the estimator (Table 4's zero-input row; the prior still sees it); `cfg` is
        Eq. 10's γ (0 = plain conditional).
        """
        shape = (x_v.shape[0], latent_length, self.dit.config.latent_dim)
        x_0 = self.draw_prior(x_v, shape, generator, eps)  # (B, T_a, D_a)
        c = x_v if cond == "video" and self.dit.config.cross_attention else None
        if c is None and cfg:
            raise ValueError(
                "cfg > 0 needs a visible condition (cond 'video' and a model with cross-attention)"
            )
        if self.settings.objective == "diffusion":  # DDIM over the estimator's v-predictions; no ODE solver
            result = flow.sample_diffusion(self.velocity, x_0, cond=c, steps=steps, cfg=cfg)
        else:
            result = flow.sample(self.velocity, x_0, cond=c, solver=solver, steps=steps, cfg=cfg)
        return self.denormalize(result.x), result.nfe
