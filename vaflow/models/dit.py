"""The velocity estimator v_θ(x_t, t, x_v): a Stable-Audio-Open-1.0-style DiT (paper §3.2, §4.1).

In full: docs/library.md, `vaflow.models.dit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaflow.config.section import DictConfig
from vaflow.config.sizes import DIT_SIZES, check_dit_shape
from vaflow.errors import did_you_mean

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig(DictConfig):
    """Architecture of the velocity DiT; passed whole into every constructor (build one with `dit_config`)."""

    # D_a: audio-latent channels, the velocity's dim (the WaveVAE's latent_dim; SAO 1.0: 64). From the data.
    latent_dim: int
    # D_v: visual-feature channels fed to the cond embedder (CLIP ViT-L/14: 768). From the data.
    cond_dim: int
    # Model width, blocks and attention heads: a size from `vaflow.config.sizes.DIT_SIZES`.
    width: int
    depth: int
    heads: int
    # SwiGLU hidden = ff_mult · width; 4 as SAO 1.0 (and most transformers).
    ff_mult: int = 4
    # Paper §3.2: cross-attention to x_v is "critical"; false builds Table 4's no-CA variant.
    cross_attention: bool = True
    # RoPE base θ (RoFormer's 10000): the slowest rotation's period far exceeds any latent length (215 for 10 s).
    rope_base: float = 10000.0
    # Fourier features of t fed to the time MLP; 256 as SAO 1.0's timestep features.
    time_features: int = 256

    def __post_init__(self) -> None:
        check_dit_shape("DiTConfig", self.width, self.depth, self.heads, self.ff_mult)
        for name in ("latent_dim", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.time_features < 2 or self.time_features % 2:
            raise ValueError(
                f"DiTConfig: time_features {self.time_features} must be even (cos and sin halves)"
            )
        if self.rope_base <= 1:
            raise ValueError(f"DiTConfig: rope_base must be > 1, got {self.rope_base}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head (64 for every paper size); even, as RoPE rotates pairs."""
        return self.width // self.heads

    @property
    def ff_hidden(self) -> int:
        """SwiGLU hidden width."""
        return self.ff_mult * self.width


# --------------------------------------------------------------------------------------------
# Rotary position embedding (RoFormer, Su et al. 2021): 1-D, over the T_a + 1 token positions
# --------------------------------------------------------------------------------------------
# Every channel of a head is rotated (SAO rotates only max(head_dim / 2, 32) of them); pairs are (i, i + d/2),
# the rotate-half layout of GPT-NeoX and SAO.


def rope_cos_sin(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """positions (L,) -> cos, sin (L, head_dim), float32; channel pairs (i, i + head_dim/2) share a frequency."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[:, None] * inv_freq[None, :]  # (L, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., L, head_dim) by position: pair (x_i, x_{i+d/2}) turns by angle pos·θ_i.

    A rotation, so norms are kept, and q_m·k_n depends on m − n only. Computed in float32, returned in x's dtype.
    """
    xf = x.float()  # (..., L, Dh)
    x1, x2 = xf.chunk(2, dim=-1)  # (..., L, Dh/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (..., L, Dh): the 90° turn of each pair
    return (xf * cos + rotated * sin).to(x.dtype)  # (..., L, Dh)


# --------------------------------------------------------------------------------------------
# Embedders
# --------------------------------------------------------------------------------------------


class FourierFeatures(nn.Module):
    """Learned random Fourier features of a scalar: [cos 2πwt, sin 2πwt] (SAO's timestep features)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim // 2, 1))

    def forward(self, t: Tensor) -> Tensor:
        f = 2 * math.pi * t[:, None] * self.weight[:, 0]  # (B, dim / 2)
        return torch.cat([f.cos(), f.sin()], dim=-1)  # (B, dim)


def _mlp(dim_in: int, width: int, bias: bool) -> nn.Sequential:
    """Linear -> SiLU -> Linear, SAO's embedder shape."""
    return nn.Sequential(nn.Linear(dim_in, width, bias=bias), nn.SiLU(), nn.Linear(width, width, bias=bias))


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, W) -> (B, H, L, W / H)."""
    b, n, w = x.shape
    return x.view(b, n, heads, w // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, H, L, Dh) -> (B, L, H · Dh)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the T_a + 1 tokens, RoPE on queries and keys (paper §3.2)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        # Bias-free projections, as SAO's Attention.
        self.to_qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.to_out = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        qkv = self.to_qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (3, B, H, L, Dh)
        q, k = apply_rope(qkv[:2], cos, sin).unbind(0)  # (B, H, L, Dh) each: one rotation for both
        v = qkv[2]  # (B, H, L, Dh)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, Dh)
        return self.to_out(_merge_heads(h))  # (B, L, W)


class CrossAttention(nn.Module):
    """Multi-head attention from the sequence to the embedded video features, RoPE on one shared timeline.

    Queries are rotated at their sequence positions and keys at the video frames' positions on the same audio
    timeline (`video_positions`), so the attention score of audio token i and video frame j depends on how far
    apart they are in time: without it the keys carry no time at all and the estimator could not align a sound
    with the frame that causes it (the paper's sync accuracy, Table 4, rests on the cross-attention).
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.to_q = nn.Linear(config.width, config.width, bias=False)
        self.to_kv = nn.Linear(config.width, 2 * config.width, bias=False)
        self.to_out = nn.Linear(config.width, config.width, bias=False)

    def forward(
        self, x: Tensor, c: Tensor, rope_x: tuple[Tensor, Tensor], rope_c: tuple[Tensor, Tensor]
    ) -> Tensor:
        q = apply_rope(_split_heads(self.to_q(x), self.heads), *rope_x)  # (B, H, L, Dh)
        k, v = (_split_heads(y, self.heads) for y in self.to_kv(c).chunk(2, dim=-1))  # (B, H, T_v, Dh) each
        k = apply_rope(k, *rope_c)  # (B, H, T_v, Dh): a zero (null) key stays zero
        h = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, Dh)
        return self.to_out(_merge_heads(h))  # (B, L, W)


class SwiGLU(nn.Module):
    """Gated feed-forward: silu(a) · b with [a, b] = Linear(x) (Shazeer 2020; SAO's GLU feed-forward)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.width, 2 * config.ff_hidden)
        self.linear_out = nn.Linear(config.ff_hidden, config.width)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.proj(x).chunk(2, dim=-1)  # (B, L, hidden) each
        return self.linear_out(F.silu(a) * b)  # (B, L, W)


class DiTBlock(nn.Module):
    """Pre-norm block: x += SA(LN x); x += CA(LN x, c) when the config has cross-attention; x += FF(LN x)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(config.width)
        self.self_attn = SelfAttention(config)
        # One class for both Table 4 variants: the cross-attention sub-layer is simply absent without CA.
        self.cross_attend_norm = nn.LayerNorm(config.width) if config.cross_attention else None
        self.cross_attn = CrossAttention(config) if config.cross_attention else None
        self.ff_norm = nn.LayerNorm(config.width)
        self.ff = SwiGLU(config)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, c: Tensor | None, rope_c: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        x = x + self.self_attn(self.pre_norm(x), cos, sin)  # (B, L, W)
        if self.cross_attn is not None:  # structural (fixed at construction), not a branch on values
            x = x + self.cross_attn(self.cross_attend_norm(x), c, (cos, sin), rope_c)  # (B, L, W)
        return x + self.ff(self.ff_norm(x))  # (B, L, W)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class VelocityDiT(nn.Module):
    """v_θ(x_t, t, x_v): audio-latent velocity from the interpolated state, the time and the video features."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.timestep_features = FourierFeatures(config.time_features)
        self.to_timestep_embed = _mlp(config.time_features, w, bias=True)
        # Bias-free as SAO's cond projection: null (zero) features then embed to exactly zero keys and values.
        self.to_cond_embed = _mlp(config.cond_dim, w, bias=False) if config.cross_attention else None
        self.proj_in = nn.Linear(config.latent_dim, w, bias=False)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        # A final norm, which SAO's transformer lacks: with pre-norm blocks the residual stream's scale grows
        # with depth, and the output projection should see the same scale at every size (GPT-2, DiT).
        self.final_norm = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, config.latent_dim, bias=False)
        if not next(self.parameters()).is_meta:  # on the meta device it is built for a load: no init
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """Every initialisation rule of the model, in one place (also valid on the meta device)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # Xavier-uniform: keeps activation variance roughly constant through each linear (as DiT).
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    # Zero biases: the initial function has no offsets; the weights alone break symmetry.
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                # Identity affine: each pre-norm starts as a plain standardisation.
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Fourier frequencies w ~ N(0, 1) (SAO's std 1): for t in [0, 1] the features span from near-constant
        # to a few cycles, so nearby times are told apart without aliasing.
        nn.init.normal_(self.timestep_features.weight, std=1.0)
        # Zero output projection: the initial velocity is exactly 0, so training starts from the identity
        # transport x_1 = x_0 (loss E‖x_1 − x_0‖²) rather than from a random field (DiT zeroes its final layer).
        nn.init.zeros_(self.proj_out.weight)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """x_t (B, T_a, D_a), t (B,) or () in [0, 1], cond x_v (B, T_v, D_v) or None -> v (B, T_a, D_a).

        `cond=None` means null (zero) features — CFG's unconditional branch (Eq. 10) and Table 4's zero-input row.
        A zero condition embeds to identical keys (zero, with the bias-free embedder), so the attention weights are
        uniform and the output is the same for every T_v: zeros of shape (B, 1, D_v) are exact. Without
        cross-attention `cond` is ignored.

        Positions: the time token sits at RoPE position 0 and audio token i at position i + 1. The velocity is read
        at the audio positions 1 … T_a — the paper's "first T_a outputs" of the T_a + 1, meaning the outputs of
        the audio tokens, as SAO drops its prepended tokens' outputs. Video frame j of T_v (centre (j + ½)/T_v of
        the clip) sits where an audio token centred at the same instant would: (j + ½)·T_a/T_v + ½.
        """
        cfg = self.config
        if x_t.dim() != 3 or x_t.shape[-1] != cfg.latent_dim:
            raise ValueError(f"VelocityDiT: expected x_t (B, T_a, {cfg.latent_dim}), got {tuple(x_t.shape)}")
        b, n, _ = x_t.shape
        t = t.reshape(-1).expand(b).to(self.timestep_features.weight.dtype)  # (B,)
        time = self.to_timestep_embed(self.timestep_features(t))  # (B, W)
        x = torch.cat([time[:, None], self.proj_in(x_t)], dim=1)  # (B, 1 + T_a, W): time token first
        positions = torch.arange(n + 1, device=x_t.device)  # (1 + T_a,)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_base)  # (1 + T_a, Dh) each
        c, rope_c = None, None
        if self.to_cond_embed is not None:  # structural: only the CA variant reads x_v
            if cond is None:
                cond = x_t.new_zeros(b, 1, cfg.cond_dim)  # (B, 1, D_v): null features
            elif cond.dim() != 3 or cond.shape[0] != b or cond.shape[-1] != cfg.cond_dim:
                raise ValueError(
                    f"VelocityDiT: expected cond ({b}, T_v, {cfg.cond_dim}), got {tuple(cond.shape)}"
                )
            c = self.to_cond_embed(cond)  # (B, T_v, W): once per forward, shared by every block
            t_v = cond.shape[1]
            frames = (torch.arange(t_v, device=x_t.device) + 0.5) * (n / t_v) + 0.5  # (T_v,) audio timeline
            rope_c = rope_cos_sin(frames, cfg.head_dim, cfg.rope_base)  # (T_v, Dh) each
        for block in self.blocks:
            x = block(x, cos, sin, c, rope_c)  # (B, 1 + T_a, W)
        return self.proj_out(self.final_norm(x[:, 1:]))  # (B, T_a, D_a): drop the time token


# --------------------------------------------------------------------------------------------
# Size factories
# --------------------------------------------------------------------------------------------


def dit_config(size: str, latent_dim: int, cond_dim: int, cross_attention: bool = True) -> DiTConfig:
    """The DiTConfig of a registry size (`vaflow.config.sizes.DIT_SIZES`) for the data's D_a and D_v."""
    if size not in DIT_SIZES:
        raise ValueError(
            f"unknown DiT size {size!r}{did_you_mean(size, DIT_SIZES)}; known: {sorted(DIT_SIZES)}"
        )
    s = DIT_SIZES[size]
    return DiTConfig(
        latent_dim=latent_dim,
        cond_dim=cond_dim,
        width=s.width,
        depth=s.depth,
        heads=s.heads,
        ff_mult=s.ff_mult,
        cross_attention=cross_attention,
    )


def count_parameters(config: DiTConfig) -> int:
    """Parameters of VelocityDiT(config), built on the meta device (no memory, even for 1.05B)."""
    with torch.device("meta"):
        model = VelocityDiT(config)
    return sum(p.numel() for p in model.parameters())
