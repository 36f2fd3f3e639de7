"""ImageBind's network: its config (`HUGE`, `TINY`) and the vision and audio towers (tokeniser, transformer trunk,
head, postprocessor each) under the official checkpoint's key names, after facebookresearch/ImageBind@53680b0
`imagebind/models/` (imagebind_model.py, multimodal_preprocessors.py, transformer.py, helpers.py). `imagebind`
holds the input pipelines, the features and the loading; it re-exports the names here that callers use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CONFIGS", "HUGE", "IMAGE_SIZE", "TINY", "ImageBind", "ImageBindConfig", "Transformer"]

IMAGE_SIZE = 224  # the vision tower's input side


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBindConfig:
    """Upstream `ImageBindModel`'s constructor arguments (same names), defaults those of `imagebind_huge`."""

    video_frames: int = 2  # frames per vision clip (PadIm2Video repeats a single image to 2)
    kernel_size: tuple[int, int, int] = (2, 14, 14)  # vision Conv3d patch: 2 frames x 14 x 14 pixels
    audio_kernel_size: int = 16  # audio Conv2d patch on the (128, 204) fbank, overlapping ...
    audio_stride: int = 10  # ... with stride 10: 12 x 19 = 228 patches
    out_embed_dim: int = 1024  # the joint embedding space
    vision_embed_dim: int = 1280  # ViT-H/14
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    audio_embed_dim: int = 768  # ViT-B-like audio tower
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_drop_path: float = 0.1  # training only: stochastic depth is the identity at eval
    text_embed_dim: int = 1024  # the other modalities: only their keys' shapes are needed
    text_num_blocks: int = 24
    text_num_heads: int = 16
    depth_embed_dim: int = 384
    depth_kernel_size: int = 16
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    thermal_embed_dim: int = 768
    thermal_kernel_size: int = 16
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    imu_embed_dim: int = 512
    imu_kernel_size: int = 8
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_drop_path: float = 0.7

    @classmethod
    def from_dict(cls, d: dict) -> ImageBindConfig:
        """The config of upstream keyword arguments (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        """JSON-able keyword arguments."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def vision_grid(self) -> tuple[int, int, int]:
        """Patch grid (frames, rows, columns) of one vision clip: (1, 16, 16) at 224 px."""
        kt, kh, kw = self.kernel_size
        return self.video_frames // kt, IMAGE_SIZE // kh, IMAGE_SIZE // kw

    @property
    def audio_grid(self) -> tuple[int, int]:
        """Patch grid (mel, time) of one audio clip: (12, 19) for 128 x 204 with kernel 16, stride 10."""
        k, s = self.audio_kernel_size, self.audio_stride
        return (self.audio_num_mel_bins - k) // s + 1, (self.audio_target_len - k) // s + 1


HUGE = ImageBindConfig()
# The fixture's tiny model (imagebind_tiny_keys.json "config"): the real input geometry, widths 16-32, 1-2 blocks.
TINY = ImageBindConfig(
    out_embed_dim=16,
    vision_embed_dim=32,
    vision_num_blocks=2,
    vision_num_heads=2,
    audio_embed_dim=32,
    audio_num_blocks=2,
    audio_num_heads=2,
    text_embed_dim=32,
    text_num_blocks=1,
    text_num_heads=2,
    depth_embed_dim=16,
    depth_num_blocks=1,
    depth_num_heads=2,
    thermal_embed_dim=16,
    thermal_num_blocks=1,
    thermal_num_heads=2,
    imu_embed_dim=16,
    imu_num_blocks=1,
    imu_num_heads=2,
)
CONFIGS = {"imagebind_huge": HUGE, "imagebind_tiny": TINY}


# ----------------------------------------------------------------------------------------------------------------
# Tokenisers (upstream multimodal_preprocessors.py)
# ----------------------------------------------------------------------------------------------------------------


class PatchStem(nn.Module):
    """Patchify convolution to a token sequence, optionally layer-normed (upstream PatchEmbedGeneric)."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return x if self.norm_layer is None else self.norm_layer(x)  # (B, N, D)


class PosEmbedding(nn.Module):
    """Learned positions of the cls token and the patches (upstream SpatioTemporalPosEmbeddingHelper)."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))


class Tokenizer(nn.Module):
    """Patches plus a cls token plus positions (upstream RGBDTPreprocessor / AudioPreprocessor)."""

    def __init__(self, stem: PatchStem, num_patches: int, dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.rgbt_stem = stem
        self.pos_embedding_helper = PosEmbedding(1 + num_patches, dim)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.rgbt_stem(x)  # (B, N, D)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.pos_embedding_helper.pos_embed  # (B, 1 + N, D)


# ----------------------------------------------------------------------------------------------------------------
# Transformer trunk (upstream transformer.py: pre-norm blocks, nn.MultiheadAttention parameter names)
# ----------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters, optionally one learned extra key/value."""

    def __init__(self, dim: int, num_heads: int, bias_kv: bool):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        # add_bias_kv: a learned key and value appended to the (projected) sequence, as MultiheadAttention does
        self.bias_k = nn.Parameter(torch.empty(1, 1, dim)) if bias_kv else None
        self.bias_v = nn.Parameter(torch.empty(1, 1, dim)) if bias_kv else None
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # (B, L, D) each
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, D)], dim=1)  # (B, L + 1, D)
            v = torch.cat([v, self.bias_v.expand(B, 1, D)], dim=1)  # (B, L + 1, D)
        q, k, v = (
            t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v)
        )  # (B, H, L(+1), Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, Dh), scale 1/sqrt(Dh) as MultiheadAttention
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, D)


class Mlp(nn.Module):
    """Two-layer GELU MLP, hidden 4x."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, L, D)


class Block(nn.Module):
    """Pre-norm transformer block (upstream BlockWithMasking; drop path is the identity at eval)."""

    def __init__(self, dim: int, num_heads: int, bias_kv: bool):
        super().__init__()
        self.attn = Attention(dim, num_heads, bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm_1(x))  # (B, L, D)
        return x + self.mlp(self.norm_2(x))  # (B, L, D)


class Transformer(nn.Module):
    """A modality trunk (upstream SimpleTransformer), batch-first; vision has a LayerNorm before the blocks."""

    def __init__(self, dim: int, num_blocks: int, num_heads: int, pre_norm: bool, bias_kv: bool):
        super().__init__()
        # Index 0 as upstream's Sequential(LayerNorm or Identity, Rearrange "b l d -> l b d"); we stay batch-first.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity())
        self.blocks = nn.Sequential(*[Block(dim, num_heads, bias_kv) for _ in range(num_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.pre_transformer_layer(x))  # (B, L, D)


# ----------------------------------------------------------------------------------------------------------------
# Heads and postprocessors (upstream helpers.py)
# ----------------------------------------------------------------------------------------------------------------


class ClsToken(nn.Module):
    """The first token of the sequence (upstream SelectElement(index=0))."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]  # (B, D)


class Normalize(nn.Module):
    """L2 normalisation of the last axis."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)  # (B, E)


class LogitScale(nn.Module):
    """A fixed scale exp(log_logit_scale), capped at 100, stored as a buffer (upstream LearnableLogitScaling,
    learnable=False)."""

    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=100) * x  # (B, E)


def _head(dim: int, out_dim: int) -> nn.Sequential:
    """LayerNorm, cls token, projection to the joint space (keys 0 and 2)."""
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), ClsToken(), nn.Linear(dim, out_dim, bias=False))


# ----------------------------------------------------------------------------------------------------------------
# The model: vision and audio towers under the official key names
# ----------------------------------------------------------------------------------------------------------------


class ImageBind(nn.Module):
    """ImageBind's vision and audio towers; parameter names are the official checkpoint's keys. No weight
    initialisation: the weights always come from the official file (`from_file`), so build it on the meta device
    when size matters."""

    def __init__(self, config: ImageBindConfig = HUGE):
        super().__init__()
        self.config = c = config
        kt, kh, kw = c.vision_grid
        # Index 0 is upstream's PadIm2Video(repeat, 2), a no-op on the 2-frame clips that vision_input makes.
        vision_stem = PatchStem(
            nn.Sequential(
                nn.Identity(),
                nn.Conv3d(3, c.vision_embed_dim, c.kernel_size, stride=c.kernel_size, bias=False),
            )
        )
        audio_stem = PatchStem(
            nn.Conv2d(1, c.audio_embed_dim, c.audio_kernel_size, stride=c.audio_stride, bias=False),
            nn.LayerNorm(c.audio_embed_dim),
        )
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": Tokenizer(vision_stem, kt * kh * kw, c.vision_embed_dim),
                "audio": Tokenizer(audio_stem, math.prod(c.audio_grid), c.audio_embed_dim),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": Transformer(
                    c.vision_embed_dim, c.vision_num_blocks, c.vision_num_heads, pre_norm=True, bias_kv=False
                ),
                "audio": Transformer(
                    c.audio_embed_dim, c.audio_num_blocks, c.audio_num_heads, pre_norm=False, bias_kv=True
                ),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {
                "vision": _head(c.vision_embed_dim, c.out_embed_dim),
                "audio": _head(c.audio_embed_dim, c.out_embed_dim),
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": Normalize(), "audio": nn.Sequential(Normalize(), LogitScale(20.0))}
        )

    def forward(self, x: Tensor, modality: str) -> Tensor:
        """Per-clip embeddings (B, S, E) of `x`: vision (B, S, 3, 2, 224, 224) or audio (B, S, 1, 128, 204)."""
        c = self.config
        clip = {
            "vision": (3, c.video_frames, IMAGE_SIZE, IMAGE_SIZE),
            "audio": (1, c.audio_num_mel_bins, c.audio_target_len),
        }[modality]
        if tuple(x.shape[2:]) != clip:
            raise ValueError(
                f"ImageBind {modality}: expected clips (B, S, {', '.join(map(str, clip))}), got {tuple(x.shape)}"
            )
        B, S = x.shape[:2]
        tokens = self.modality_preprocessors[modality](x.flatten(0, 1))  # (B*S, 1 + N, D)
        tokens = self.modality_trunks[modality](tokens)  # (B*S, 1 + N, D)
        emb = self.modality_heads[modality](tokens)  # (B*S, E)
        emb = self.modality_postprocessors[modality](emb)  # (B*S, E): unit norm (vision), norm 20 (audio)
        return emb.unflatten(0, (B, S))  # (B, S, E)
