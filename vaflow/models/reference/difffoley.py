"""Diff-Foley's audio-visual alignment classifier, the paper's "Acc" metric (share of clips it judges in sync).

Reference code: luosiallen/Diff-Foley@0ba1e8a, `evaluation/align_acc.py` and `evaluation/config/eval_classifier.yaml`:
`Alignment_Classifier_metric` = a frozen latent-diffusion AutoencoderKL (`first_stage_model`), `Classifier_Backbone`
(`model`, a UNet encoder half with cross-attention to the video, ending in a sigmoid) and
`Video_Feat_Encoder_Posembed` (`cond_model`), plus the DDPM schedule buffers and `scale_factor` 0.18215.
Official checkpoint: `eval_classifier.ckpt` (HuggingFace SimianLuo/Diff-Foley, `diff_foley_ckpt/`), a Lightning
checkpoint whose "state_dict" holds this module's keys (per the fixtures' key list); `read_checkpoint` reads it
without importing or running anything Lightning pickled (see there). Input: the 16 kHz waveform's 128-mel log-mel in [0, 1] (512 frames,
8.192 s; `spec`) and 32 CAVP frames at 4 fps. Output: P(in sync) per clip (`probability`); Acc = `accuracy(prob)`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from vaflow.models import artifacts
from vaflow.models.reference import fit_length, load_strict

__all__ = [
    "CLIP_SECONDS",
    "NAME",
    "PROTOCOL",
    "SAMPLE_RATE",
    "SMALL",
    "AccFeatures",
    "ClassifierConfig",
    "DiffFoleyClassifier",
    "accuracy",
    "build",
    "from_file",
    "read_checkpoint",
    "spec",
]

NAME = "difffoley_eval_classifier"
EVALUATOR = "Diff-Foley alignment classifier (Acc)"  # how errors name it
SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 256
N_MELS = 128
F_MIN = 125.0
F_MAX = 7600.0
SPEC_FRAMES = 512  # the eval dataset's `truncate_spec`: spec[:, :512]
CLIP_SAMPLES = SPEC_FRAMES * HOP  # 131072, the config's `truncate`
CLIP_SECONDS = CLIP_SAMPLES / SAMPLE_RATE  # 8.192
# The 512 centred frames read samples [0, 511 * 256 + 512): the clip and the next 256 samples (16 ms).
READ_SAMPLES = (SPEC_FRAMES - 1) * HOP + N_FFT // 2  # 131328
VIDEO_FPS = 4  # CAVP features
VIDEO_FRAMES = int(VIDEO_FPS * CLIP_SAMPLES / SAMPLE_RATE)  # 32, the eval dataset's truncate_frame
THRESHOLD = 0.5  # predicted = torch.round(prob); torch rounds 0.5 to 0, so a clip counts iff prob > 0.5

PROTOCOL = {
    "evaluator": NAME,
    "sample_rate": SAMPLE_RATE,
    "clip_seconds": CLIP_SECONDS,
    "clip_samples": CLIP_SAMPLES,
    "fit": f"first {READ_SAMPLES} samples (what the first 512 centred frames read), zero-padded at the end: the "
    "first 512 frames of the whole waveform's spectrogram, as the eval dataset cuts spec[:, :512]; silence past "
    "the end of a shorter clip",
    "spec": {
        "stft": {"n_fft": N_FFT, "hop": HOP, "window": "hann (periodic)", "center": True, "pad": "zeros"},
        "magnitude_power": 1,
        "mel": {"n_mels": N_MELS, "f_min": F_MIN, "f_max": F_MAX, "scale": "slaney", "norm": "slaney"},
        "log": "max(1e-5) -> log10 -> x20 -> -20 -> +100 -> /100 -> clip [0, 1]",
        "frames": SPEC_FRAMES,
        "channels": "repeated to 3: (B, 3, 128, 512), no rescaling to [-1, 1]",
        "recipe": "Diff-Foley data_preprocess/wav2spec.py TRANSFORMS (librosa 0.11 stft/mel), in float64",
        "filterbank": "torchaudio melscale_fbanks (float32): within 1e-5 of librosa's [0, 1] values",
    },
    "video": {
        "features": "CAVP contrast_feat (L, 512)",
        "fps": VIDEO_FPS,
        "frames": VIDEO_FRAMES,
        "fit": "the first 32 frames (int(4 * 131072 / 16000)); fewer is an error",
    },
    "latent": "z = scale_factor (0.18215) * posterior sample (mean + std * noise; align_acc seeds torch 0) of "
    "AutoencoderKL.encode(spec), (B, 4, 16, 64); the mean gives the deterministic variant",
    "classifier": "prob = Classifier_Backbone(z, context=Video_Feat_Encoder_Posembed(video), timesteps=0), "
    "(B, 1) sigmoid",
    "acc": "mean over generated clips of round(prob) == 1, i.e. prob > 0.5 (every generated clip is labelled 1)",
    "checkpoint": "eval_classifier.ckpt (HuggingFace SimianLuo/Diff-Foley, diff_foley_ckpt/), Lightning "
    "checkpoint, weights under 'state_dict' (first_stage_model., model., cond_model., schedule buffers)",
    "reference_code": "luosiallen/Diff-Foley@0ba1e8a evaluation/align_acc.py, evaluation/dataset.py, "
    "evaluation/config/eval_classifier.yaml, diff_foley/modules/double_guidance/alignment_classifier_metric.py, "
    "alignment_backbone.py, diff_foley/models/autoencoder.py, diff_foley/modules/cond_stage/video_feat_encoder.py",
}


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierConfig:
    """The constructor arguments of eval_classifier.yaml; defaults are the official classifier's."""

    # AutoencoderKL ddconfig: SD-style first stage, 8x down-sampling, no attention but the middle one
    ae_ch: int = 128
    ae_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    ae_num_res_blocks: int = 2
    image_channels: int = 3  # the spec repeated to 3 channels
    z_channels: int = 4
    embed_dim: int = 4
    # Classifier_Backbone: legacy False, so the head width is ch // num_heads
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (2, 4)  # down-sampling factors with a SpatialTransformer
    num_heads: int = 8
    context_dim: int = 512
    # Video_Feat_Encoder_Posembed
    video_dim: int = 512  # CAVP feature width
    seq_len: int = 40  # learned positions (only the first 32 are read)
    # The schedule buffers (not used by Acc, but in the file) and the latent scale
    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.0120
    scale_factor: float = 0.18215


OFFICIAL = ClassifierConfig()
# A few-MB variant of the same modules, for tests of loading and shapes (GroupNorm needs widths divisible by 32).
SMALL = ClassifierConfig(
    ae_ch=32,
    ae_ch_mult=(1, 1, 2, 2),
    ae_num_res_blocks=1,
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_heads=2,
    context_dim=32,
    video_dim=16,
    seq_len=40,
    timesteps=10,
)


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

    def __init__(self, c: ClassifierConfig) -> None:
        super().__init__()
        widths = [c.ae_ch * m for m in c.ae_ch_mult]
        self.conv_in = nn.Conv2d(c.image_channels, c.ae_ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = c.ae_ch
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(c.ae_num_res_blocks):
                blocks.append(ResnetBlock(ch, width))
                ch = width
            last = i == len(widths) - 1
            self.down.append(DownLevel(blocks, None if last else Downsample(ch)))
        self.mid = Mid(ch)
        self.norm_out = _ae_norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)  # (B, C_level, H_level / 2, W_level / 2), the last level not down-sampled
        h = self.mid(h)  # (B, C, H/8, W/8)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 z, H/8, W/8)


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, 8h, 8w); Acc never decodes, but the file holds its weights."""

    def __init__(self, c: ClassifierConfig) -> None:
        super().__init__()
        widths = [c.ae_ch * m for m in c.ae_ch_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(c.z_channels, ch, 3, padding=1)
        self.mid = Mid(ch)
        levels: list[UpLevel] = []
        for i in reversed(range(len(widths))):  # built from the lowest resolution up, stored highest first
            blocks = []
            for _ in range(c.ae_num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, widths[i]))
                ch = widths[i]
            levels.insert(0, UpLevel(blocks, Upsample(ch) if i != 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = _ae_norm(ch)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)

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

    def __init__(self, c: ClassifierConfig) -> None:
        super().__init__()
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x (B, 3, H, W) -> the posterior over (B, embed_dim, H/8, W/8)."""
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))  # moments (B, 2 e, H/8, W/8)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, embed_dim, h, w) -> (B, 3, 8h, 8w)."""
        return self.decoder(self.post_quant_conv(z))


# ----------------------------------------------------------------------------------------------------------------
# The classifier: Classifier_Backbone, the encoder half of latent-diffusion's openaimodel UNet, pooled to P(sync)
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


class ClassifierBackbone(nn.Module):
    """Classifier_Backbone: latent (B, 4, h, w), context (B, T, 512), timesteps (B,) -> P(in sync) (B, 1)."""

    def __init__(self, c: ClassifierConfig) -> None:
        super().__init__()
        mc = c.model_channels
        emb_ch = 4 * mc
        self.model_channels = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def attention(ch: int) -> SpatialTransformer:  # legacy=False: heads fixed, width ch // heads each
            return SpatialTransformer(ch, c.num_heads, ch // c.num_heads, c.context_dim)

        blocks = [TimestepEmbedSequential(nn.Conv2d(c.embed_dim, mc, 3, padding=1))]
        ch, ds = mc, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mult * mc)]
                ch = mult * mc
                if ds in c.attention_resolutions:
                    layers.append(attention(ch))
                blocks.append(TimestepEmbedSequential(*layers))
            if level != len(c.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(UNetDownsample(ch)))
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_ch, ch), attention(ch), ResBlock(ch, emb_ch, ch)
        )
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, ch // 2, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(ch // 2, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))  # (B, 4 mc)
        h = x.float()  # (B, 4, h, w)
        for block in self.input_blocks:
            h = block(h, emb, context)  # (B, C_level, h_level, w_level)
        h = self.middle_block(h, emb, context)  # (B, C, h/4, w/4)
        h = self.pool(self.out(h)).flatten(1)  # (B, C/2)
        return self.sigmoid(self.classifier(h))  # (B, 1)


class VideoFeatEncoder(nn.Module):
    """Video_Feat_Encoder_Posembed: a Linear on each video frame's feature plus a learned position embedding."""

    def __init__(self, c: ClassifierConfig) -> None:
        super().__init__()
        self.embedder = nn.Sequential(nn.Linear(c.video_dim, c.context_dim))
        self.pos_emb = nn.Embedding(c.seq_len, c.context_dim)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)  # (T,)
        return self.embedder(x) + self.pos_emb(positions)[None]  # (B, T, D)


# ----------------------------------------------------------------------------------------------------------------
# The whole evaluator (Alignment_Classifier_metric)
# ----------------------------------------------------------------------------------------------------------------


def _schedule(c: ClassifierConfig) -> dict[str, Tensor]:
    """Alignment_Classifier_metric.register_schedule's buffers for the "linear" schedule (v_posterior 0, eps
    parameterisation), computed in float64 as upstream does in numpy and stored as float32; `lvlb_weights` (not in
    the file) from those float32 buffers, its first entry copied from the second as upstream."""
    betas = torch.linspace(c.linear_start**0.5, c.linear_end**0.5, c.timesteps, dtype=torch.float64) ** 2
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
    return {"scale_factor": torch.tensor(c.scale_factor), **buffers, "lvlb_weights": lvlb}


@dataclass(frozen=True)
class AccFeatures:
    """What the classifier read and said for a batch of clips."""

    prob: Tensor  # (B,) P(audio and video in sync), the sigmoid output; Acc counts prob > 0.5
    z: Tensor  # (B, 4, 16, 64) the scaled latent it classified (a posterior sample, or its mean)


class DiffFoleyClassifier(nn.Module):
    """Alignment_Classifier_metric: `first_stage_model`, `model`, `cond_model` and the schedule buffers."""

    def __init__(self, config: ClassifierConfig = OFFICIAL) -> None:
        super().__init__()
        self.config = config
        self.first_stage_model = AutoencoderKL(config)
        self.model = ClassifierBackbone(config)
        self.cond_model = VideoFeatEncoder(config)
        for name, value in _schedule(config).items():
            self.register_buffer(name, value, persistent=name != "lvlb_weights")

    def reset_buffers(self) -> None:
        """Put back the constructor's buffer values (after `to_empty`); loading a file then overwrites them."""
        for name, value in _schedule(self.config).items():
            getattr(self, name).copy_(value)

    def latent(self, spec: Tensor, noise: Tensor | None = None) -> Tensor:
        """spec (B, 3, 128, 512) -> z = scale_factor * (posterior sample with `noise` (B, 4, 16, 64), or its mean
        when None), (B, 4, 16, 64) (upstream encode_spec_z)."""
        posterior = self.first_stage_model.encode(spec)  # over (B, 4, 16, 64)
        z = posterior.mean if noise is None else posterior.sample(noise)  # (B, 4, 16, 64)
        return self.scale_factor * z  # (B, 4, 16, 64)

    def forward(self, z: Tensor, video_feat: Tensor) -> Tensor:
        """z (B, 4, 16, 64), video_feat (B, T, 512) -> P(in sync) (B, 1) at timestep 0 (upstream model_inference)."""
        context = self.cond_model(video_feat)  # (B, T, 512)
        t = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)  # (B,) "Constant" t = 0
        return self.model(z, timesteps=t, context=context)  # (B, 1)

    @torch.no_grad()
    def features(
        self,
        audio: Tensor,
        video_feat: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> AccFeatures:
        """P(in sync) of each clip. `audio`: a 16 kHz waveform (B, N) (turned into `spec`) or a spec
        (B, 3, 128, 512) in [0, 1]; `video_feat`: CAVP features (B, T >= 32, 512) at 4 fps, of which the first 32
        are read. The latent is the posterior mean unless `generator` (a seeded torch.Generator, whose device draws
        the noise; align_acc.py draws it on the CPU from torch.manual_seed(0)) or explicit `noise` (B, 4, 16, 64)
        is given, as the reference samples it."""
        x = spec(audio) if audio.ndim == 2 else audio
        c = self.config
        if x.ndim != 4 or x.shape[1:] != (c.image_channels, N_MELS, SPEC_FRAMES):
            raise ValueError(
                f"{EVALUATOR}: expected a waveform (B, N) at {SAMPLE_RATE} Hz or a spec (B, 3, 128, 512), "
                f"got {tuple(audio.shape)}"
            )
        b = x.shape[0]
        if video_feat.ndim != 3 or video_feat.shape[0] != b or video_feat.shape[1] < VIDEO_FRAMES:
            raise ValueError(
                f"{EVALUATOR}: expected video features (B={b}, T >= {VIDEO_FRAMES}, {c.video_dim}) at "
                f"{VIDEO_FPS} fps, got {tuple(video_feat.shape)}"
            )
        if generator is not None and noise is not None:
            raise ValueError(f"{EVALUATOR}: give a generator or the noise, not both")
        down = 2 ** (len(c.ae_ch_mult) - 1)  # 8
        latent_shape = (b, c.embed_dim, N_MELS // down, SPEC_FRAMES // down)  # (B, 4, 16, 64)
        if generator is not None:
            noise = torch.randn(latent_shape, generator=generator, device=generator.device)
        if noise is not None and tuple(noise.shape) != latent_shape:
            raise ValueError(f"{EVALUATOR}: noise must be {latent_shape}, got {tuple(noise.shape)}")
        device = self.scale_factor.device
        z = self.latent(x.to(device), None if noise is None else noise.to(device))  # (B, 4, 16, 64)
        prob = self(z, video_feat[:, :VIDEO_FRAMES].to(device).float())  # (B, 1)
        return AccFeatures(prob=prob[:, 0], z=z)

    def probability(
        self,
        audio: Tensor,
        video_feat: Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """`features(...).prob`: (B,) P(in sync) of each clip."""
        return self.features(audio, video_feat, generator=generator, noise=noise).prob


def accuracy(prob: Tensor) -> float:
    """Acc over generated clips: the share whose `prob` (N,) rounds to the label 1, i.e. prob > 0.5 (align_acc.py
    compares torch.round(prob), which rounds 0.5 down, with 1)."""
    if prob.numel() == 0:
        raise ValueError(f"{EVALUATOR}: accuracy of no clips")
    return (prob > THRESHOLD).float().mean().item()


# ----------------------------------------------------------------------------------------------------------------
# The input: Diff-Foley's wav2spec log-mel of the 16 kHz waveform
# ----------------------------------------------------------------------------------------------------------------


def spec(wav: Tensor) -> Tensor:
    """`wav` (B, N) mono at 16 kHz -> the classifier's spec (B, 3, 128, 512) float32 in [0, 1], on wav's device.

    As wav2spec.py's TRANSFORMS (librosa 0.11), in float64: |STFT| (n_fft 1024, hop 256, periodic Hann, centred,
    zero-padded) -> slaney mel (128, 125-7600 Hz, torchaudio's filterbank) -> max(1e-5) -> 20 log10 -> -20 -> +100
    -> /100 -> clip [0, 1]; the first 512 frames (the eval dataset's cut), repeated to 3 channels. Only the first
    131328 samples reach those frames; a shorter waveform is zero-padded (silence, which maps to 0).
    """
    if wav.ndim != 2 or wav.shape[-1] == 0 or not wav.is_floating_point():
        raise ValueError(
            f"{EVALUATOR}: expected a float mono waveform (B, N) at {SAMPLE_RATE} Hz, got {tuple(wav.shape)} "
            f"{wav.dtype}"
        )
    x = fit_length(wav, READ_SAMPLES).double()  # (B, 131328)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64, device=x.device)
    magnitude = torch.stft(
        x, N_FFT, HOP, window=window, center=True, pad_mode="constant", return_complex=True
    ).abs()  # (B, 513, 514)
    fbank = torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )  # (513, 128)
    mel = fbank.T.to(x) @ magnitude[..., :SPEC_FRAMES]  # (B, 128, 512)
    db = 20.0 * torch.log10(mel.clamp(min=1e-5))  # (B, 128, 512)
    out = ((db - 20.0 + 100.0) / 100.0).clamp(0.0, 1.0).float()  # (B, 128, 512)
    return out[:, None].repeat(1, 3, 1, 1)  # (B, 3, 128, 512)


# ----------------------------------------------------------------------------------------------------------------
# Loading the official Lightning checkpoint
# ----------------------------------------------------------------------------------------------------------------

REBUILD = "expected Diff-Foley's eval_classifier.ckpt (HuggingFace SimianLuo/Diff-Foley, diff_foley_ckpt/)"


class _Inert:
    """Stands in for each class or function a checkpoint's pickle names beyond torch's weights-only allow-list.

    Whatever way the unpickler uses it (called with arguments, instantiated, given state, filled with items), it
    yields an empty `collections.Counter`: a plain-data dict that torch's weights-only unpickler lets be filled
    (SETITEMS) and given attributes (BUILD). No code named by the file is imported or run."""

    def __new__(cls, *args: object, **kwargs: object) -> Counter:  # type: ignore[misc]
        return Counter()


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of the Lightning checkpoint at `path` (its "state_dict" entry; a plain state dict or
    .safetensors file is read as such).

    The file is read by torch's weights-only unpickler (weights_only=True, mmap), never plain pickle. Lightning
    checkpoints also pickle objects of its own and other packages (hyper_parameters as
    pytorch_lightning.utilities.parsing.AttributeDict, callback classes as keys, omegaconf configs, numpy scalars,
    ...), which that unpickler refuses; so every global the pickle names that torch does not already allow (listed
    statically by torch.serialization.get_unsafe_globals_in_checkpoint) is allow-listed under its name as `_Inert`,
    whose every use gives an empty Counter. Everything but "state_dict" (epoch, global_step, optimizer_states,
    lr_schedulers, callbacks, loops, hyper_parameters, versions) is then dropped. A global of a module torch blocks
    (os, sys) or an object whose pickled state is not a dict (a list subclass, functools.partial) still fails:
    ModelFileError. A missing file is MissingModelFileError. (Needs torch >= 2.5 for these serialization APIs.)
    """
    path = Path(path)
    if not path.is_file():
        raise artifacts.MissingModelFileError(f"{path}: no such file; {REBUILD}")
    if path.suffix == ".safetensors":
        return artifacts.read_tensors(path, REBUILD)
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        # not a zip checkpoint (legacy torch format, or not torch at all): read it as weights only, or say why not
        return artifacts.read_tensors(path, REBUILD)
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in foreign]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any reader failure: not a checkpoint this reader can use
        raise artifacts.ModelFileError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); {REBUILD}"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise artifacts.ModelFileError(
            f"{path}: no state dict (expected a Lightning checkpoint whose 'state_dict' maps names to tensors); "
            f"{REBUILD}"
        )
    return dict(obj)


def build(config: ClassifierConfig = OFFICIAL) -> DiffFoleyClassifier:
    """An uninitialised classifier (built on the meta device, then allocated on the CPU) with the constructor's
    buffers: every weight comes from a file, so initialising 95 M parameters would be wasted time."""
    with torch.device("meta"):
        model = DiffFoleyClassifier(config)
    model.to_empty(device="cpu")
    model.reset_buffers()
    return model.eval()


def from_file(path: str | Path, config: ClassifierConfig = OFFICIAL) -> DiffFoleyClassifier:
    """The classifier with the weights of the official `eval_classifier.ckpt` at `path`, in eval mode.

    Every key of the file's state dict must be one of this module's (including the schedule buffers and
    scale_factor, whose file values are loaded) with its shape, and none may be missing, else ModelFileError
    naming the evaluator and the keys (upstream loads with strict=False, which would pass a wrong file silently).
    """
    tensors = read_checkpoint(path)
    return load_strict(build(config), path, EVALUATOR, tensors=tensors)
