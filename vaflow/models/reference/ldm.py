"""latent-diffusion's autoencoder and UNet blocks, as Diff-Foley's classifier uses them, and its DDPM schedule.

After CompVis/latent-diffusion `ldm/models/autoencoder.py`, `ldm/modules/diffusionmodules/{model,openaimodel}.py`,
`ldm/modules/attention.py`, `ldm/models/diffusion/ddpm.py`, as luosiallen/Diff-Foley@0ba1e8a vendors them. Sizes are
constructor arguments (`difffoley` passes its ClassifierConfig's); parameter names are the official checkpoint's keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AutoencoderKL",
    "DiagonalGaussian",
    "GroupNorm32",
    "ResBlock",
    "SpatialTransformer",
    "TimestepEmbedSequential",
    "UNetDownsample",
    "ddpm_schedule",
    "timestep_embedding",
]


# ----------------------------------------------------------------------------------------------------------------
# The first stage: latent-diffusion's AutoencoderKL (GroupNorm(32, eps 1e-6), swish)
# ----------------------------------------------------------------------------------------------------------------


def _ae_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice with a residual; a 1x1 `nin_shortcut` when the width changes (no time embedding)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _ae_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _ae_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C', H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C', H, W)
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h  # (B, C', H, W)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1 convolutions for q, k, v and the output."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _ae_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)  # (B, C, H, W)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, HW, C) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C), softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))  # (B, C, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after zero-padding right and bottom only (latent-diffusion's asymmetric pad)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour 2x up-sampling, then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class DownLevel(nn.Module):
    """One encoder resolution: its ResnetBlocks (`block`) and, but for the last, the `downsample` leaving it."""

    def __init__(self, blocks: list[ResnetBlock], downsample: Downsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)  # (B, C_level, H, W)
        return x if self.downsample is None else self.downsample(x)  # (B, C_level, H/2, W/2)


class UpLevel(nn.Module):
    """One decoder resolution: its ResnetBlocks (`block`) and, but for the first, the `upsample` leaving it."""

    def __init__(self, blocks: list[ResnetBlock], upsample: Upsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)  # (B, C_level, H, W)
        return x if self.upsample is None else self.upsample(x)  # (B, C_level, 2H, 2W)


class Mid(nn.Module):
    """The middle of the encoder or decoder: ResnetBlock, self-attention, ResnetBlock."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))  # (B, C, H, W)


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> the posterior's moments (B, 2 z_channels, H/8, W/8)."""

    def __init__(
        self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, in_channels: int, z_channels: int
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(ch, width))
                ch = width
            last = i == len(widths) - 1
            self.down.append(DownLevel(blocks, None if last else Downsample(ch)))
        self.mid = Mid(ch)
        self.norm_out = _ae_norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)  # (B, C_level, H_level / 2, W_level / 2), the last level not down-sampled
        h = self.mid(h)  # (B, C, H/8, W/8)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 z, H/8, W/8)


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, 8h, 8w); Acc never decodes, but the file holds its weights."""

    def __init__(
        self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, out_ch: int, z_channels: int
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(z_channels, ch, 3, padding=1)
        self.mid = Mid(ch)
        levels: list[UpLevel] = []
        for i in reversed(range(len(widths))):  # built from the lowest resolution up, stored highest first
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, widths[i]))
                ch = widths[i]
            levels.insert(0, UpLevel(blocks, Upsample(ch) if i != 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = _ae_norm(ch)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, C, h, w)
        for level in reversed(self.up):
            h = level(h)  # (B, C_level, 2 H_level, 2 W_level), the last level not up-sampled
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, 8h, 8w)


@dataclass(frozen=True)
class DiagonalGaussian:
    """The encoder's posterior N(mean, std^2) per latent element; log-variance clamped to [-30, 20] as upstream."""

    mean: Tensor  # (B, z, h, w)
    logvar: Tensor  # (B, z, h, w), clamped

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)  # (B, z, h, w) each
        return cls(mean, logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)  # (B, z, h, w)

    def sample(self, noise: Tensor) -> Tensor:
        """mean + std * noise, `noise` standard normal of the mean's shape."""
        return self.mean + self.std * noise  # (B, z, h, w)


class AutoencoderKL(nn.Module):
    """latent-diffusion's KL autoencoder: Encoder + `quant_conv` to the posterior, `post_quant_conv` + Decoder."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        image_channels: int,
        z_channels: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        sizes = {"ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks, "z_channels": z_channels}
        self.encoder = Encoder(in_channels=image_channels, **sizes)
        self.decoder = Decoder(out_ch=image_channels, **sizes)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x (B, 3, H, W) -> the posterior over (B, embed_dim, H/8, W/8)."""
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))  # moments (B, 2 e, H/8, W/8)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, embed_dim, h, w) -> (B, 3, 8h, 8w)."""
        return self.decoder(self.post_quant_conv(z))


# ----------------------------------------------------------------------------------------------------------------
# The UNet's blocks (openaimodel, attention): what Classifier_Backbone stacks
# ----------------------------------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """The UNet's normalization(): GroupNorm(32, C) (eps 1e-5) computed in float32."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """t (B,) -> (B, dim) sinusoids [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim/2)) (openaimodel's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class ResBlock(nn.Module):
    """The UNet residual block: norm-SiLU-conv, plus the projected time embedding, norm-SiLU-conv; 1x1 skip."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)  # (B, C', H, W)
        h = h + self.emb_layers(emb)[:, :, None, None]  # (B, C', H, W)
        return self.skip_connection(x) + self.out_layers(h)  # (B, C', H, W)


class UNetDownsample(nn.Module):
    """The UNet's down-sampler: a stride-2 3x3 convolution with padding 1 (`op`)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (B, C, ceil(H/2), ceil(W/2))


class CrossAttention(nn.Module):
    """Multi-head attention of x (B, N, D) to a context (B, M, D_ctx), itself when none; bias-free q, k, v."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, _ = x.shape

        def split(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, L, dim_head)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, dim_head), scale dim_head^-0.5
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # (B, N, D)


class GEGLU(nn.Module):
    """Linear to twice the width, then value * GELU(gate) (exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, dim_out) each
        return value * F.gelu(gate)  # (B, N, dim_out)


class FeedForward(nn.Module):
    """The transformer MLP: GEGLU to 4x the width, then a Linear back (`net.0`, `net.2`)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, N, D)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, then the feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, N, D)
        x = x + self.attn2(self.norm2(x), context)  # (B, N, D)
        return x + self.ff(self.norm3(x))  # (B, N, D)


class SpatialTransformer(nn.Module):
    """Feature map -> tokens (GroupNorm(32, eps 1e-6), 1x1 conv) -> one transformer block -> 1x1 conv, residual."""

    def __init__(self, ch: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)  # attention_openai's Normalize, not GroupNorm32
        self.proj_in = nn.Conv2d(ch, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, context_dim)])
        self.proj_out = nn.Conv2d(inner, ch, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, inner)
        for block in self.transformer_blocks:
            y = block(y, context)  # (B, HW, inner)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w))  # (B, C, H, W)


class TimestepEmbedSequential(nn.Sequential):
    """A UNet stage: ResBlocks get the time embedding, SpatialTransformers the context, the rest x alone."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# ----------------------------------------------------------------------------------------------------------------
# DDPM's noise schedule (ldm/models/diffusion/ddpm.py register_schedule), the classifier's buffers
# ----------------------------------------------------------------------------------------------------------------


def ddpm_schedule(timesteps: int, linear_start: float, linear_end: float) -> dict[str, Tensor]:
    """DDPM.register_schedule's buffers for the "linear" schedule (v_posterior 0, eps parameterisation), computed in
    float64 as upstream does in numpy and stored as float32; `lvlb_weights` (not in the checkpoint) from those
    float32 buffers, its first entry copied from the second as upstream."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    cum = torch.cumprod(alphas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), cum[:-1]])
    variance = betas * (1.0 - prev) / (1.0 - cum)
    buffers = {
        "betas": betas,
        "alphas_cumprod": cum,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": cum.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - cum).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - cum).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / cum).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / cum - 1.0).sqrt(),
        "posterior_variance": variance,
        "posterior_log_variance_clipped": variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - cum),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - cum),
    }
    buffers = {k: v.float() for k, v in buffers.items()}
    lvlb = buffers["betas"] ** 2 / (
        2 * buffers["posterior_variance"] * alphas.float() * (1 - buffers["alphas_cumprod"])
    )
    lvlb[0] = lvlb[1]  # the variance is 0 at t = 0
    return {**buffers, "lvlb_weights": lvlb}
