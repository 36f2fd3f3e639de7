"""ImageBind (huge): the vision and audio towers of facebookresearch/ImageBind@53680b0
`imagebind/models/imagebind_model.py::imagebind_huge`, with its audio/video input pipelines as av-benchmark
(hkchengrex/av-benchmark@050a5cd) runs them. Its video and audio embeddings give the IB-VA metric (`ib_score`).

Official checkpoint: `imagebind_huge.pth`, a plain state dict of all six modalities with no prefix (1311 tensors).
The towers are written here, not imported from PyPI `imagebind-unofficial`: importing its model module runs
`imagebind/__init__`, which needs setuptools<81 (pkg_resources), pytorchvideo 0.1.5 (broken on this torchvision
without a sys.modules patch), decord, av, pandas, fvcore. Only vision and audio are built (2.9 GB of the 4.8 GB in
fp32); `from_file` checks the whole file strictly (the text/depth/thermal/IMU keys by name and shape,
`other_modality_shapes`) and loads the vision and audio keys. The file is read with weights_only=True (mmap).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vaflow.models import artifacts
from vaflow.models.reference import fit_length, load_strict

__all__ = [
    "CLIP_SECONDS",
    "CONFIGS",
    "FRAME_RATE",
    "HUGE",
    "NAME",
    "PROTOCOL",
    "SAMPLE_RATE",
    "TINY",
    "ImageBind",
    "ImageBindConfig",
    "ImageBindFeatures",
    "audio_clip_timepoints",
    "audio_features",
    "audio_input",
    "from_file",
    "ib_score",
    "other_modality_shapes",
    "vision_features",
    "vision_input",
]

NAME = "imagebind"
EVALUATOR = "ImageBind"
SAMPLE_RATE = 16000
CLIP_SECONDS = 2.0  # each audio clip's window; three of them are spread over the whole input (no fitting)
CLIPS_PER_AUDIO = 3  # ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
NUM_MEL_BINS = 128
TARGET_FRAMES = 204  # fbank frames per clip: 2 s gives 198, zero-padded at the end (cut when longer)
FBANK_MEAN = -4.268  # AudioSet fbank statistics of ImageBind's load_and_transform_audio_data
FBANK_STD = 9.138
FRAME_RATE = 0.5  # video frames per second the vision tower sees (av-benchmark decodes int(0.5 * duration))
IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_SAMPLES = 400  # one 25 ms fbank frame at 16 kHz
OTHER_MODALITIES = ("text", "depth", "thermal", "imu")  # in the file, checked by shape, not built
PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
OTHER_PREFIXES = tuple(f"{part}.{m}." for part in PARTS for m in OTHER_MODALITIES)
TEXT_CONTEXT = 77
TEXT_VOCAB = 49408
IMU_KERNEL = 8  # upstream passes kernel_size=8 and Linear(48 = 6 channels x 8) whatever imu_kernel_size says
IMU_SAMPLES = 2000

PROTOCOL = {
    "evaluator": NAME,
    "sample_rate": SAMPLE_RATE,
    "audio": {
        "input": "the whole clip at 16 kHz (8 s in av-benchmark), not fitted to a window",
        "clips": "3 clips of 2 s, pytorchvideo ConstantClipsPerVideoSampler: start_k = k * max(d - 2, 0) / 3 "
        "(Fractions of the float duration d = N / 16000), samples int(start*16000):int((start+2)*16000)",
        "per_clip": "subtract the clip mean (in place on the waveform, as upstream), torchaudio kaldi fbank",
        "fbank": {
            "htk_compat": True,
            "sample_frequency": SAMPLE_RATE,
            "use_energy": False,
            "window_type": "hanning",
            "num_mel_bins": NUM_MEL_BINS,
            "dither": 0.0,
            "frame_length_ms": 25,
            "frame_shift_ms": 10,
            "other": "torchaudio defaults (remove_dc_offset, preemphasis 0.97, snip_edges, low_freq 20, log power)",
        },
        "fit": f"transpose to (128, frames), zero-pad at the end or cut to {TARGET_FRAMES} frames",
        "normalise": f"(x - ({FBANK_MEAN})) / {FBANK_STD}",
        "shape": "(B, 3, 1, 128, 204)",
    },
    "vision": {
        "frame_rate": FRAME_RATE,
        "frames": "int(0.5 * duration) frames, uint8 RGB (4 for 8 s)",
        "resize": "torchvision v2 Resize(224, BICUBIC, antialias=True): short side to 224",
        "scale": "uint8 / 255",
        "normalise": {"mean": CLIP_MEAN, "std": CLIP_STD},
        "crops": "SpatialCrop(224, 3): offsets 0, ceil((L - 224) / 2), L - 224 along the long side",
        "clips": "consecutive frame pairs of each crop: (B, 3 * (T - 1), 3, 2, 224, 224), ordered pair-major",
    },
    "embeddings": {
        "audio": "head (LayerNorm, cls token, Linear) -> L2 normalise -> x20 (fixed logit scale) -> mean over clips",
        "vision": "head (LayerNorm, cls token, Linear) -> L2 normalise -> mean over clips (not unit-norm)",
    },
    "ib_score": "cosine_similarity(video_emb, audio_emb, dim=-1), averaged over pairs",
    "ib_score_report_scale": 100,  # av-benchmark returns the cosine; the paper's IB-VA column is x100
    "checkpoint": "imagebind_huge.pth (https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth), plain "
    "state dict, no prefix",
    "reference_code": "facebookresearch/ImageBind@53680b0 imagebind/models/imagebind_model.py, imagebind/data.py; "
    "hkchengrex/av-benchmark@050a5cd extract_video.py, av_bench/evaluate.py, ImageBindAudioDataset",
}


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


def other_modality_shapes(config: ImageBindConfig = HUGE) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the checkpoint's text, depth, thermal and IMU tensors, which the model does not build."""
    c, E = config, config.out_embed_dim
    pre, shapes = "modality_preprocessors", {}
    Dt = c.text_embed_dim
    shapes[f"{pre}.text.pos_embed"] = (1, TEXT_CONTEXT, Dt)
    shapes[f"{pre}.text.mask"] = (TEXT_CONTEXT, TEXT_CONTEXT)  # the causal mask, a buffer
    shapes[f"{pre}.text.token_embedding.weight"] = (TEXT_VOCAB, Dt)
    for name, stem, D, k in (
        ("depth", "depth_stem", c.depth_embed_dim, c.depth_kernel_size),
        ("thermal", "rgbt_stem", c.thermal_embed_dim, c.thermal_kernel_size),
    ):
        shapes[f"{pre}.{name}.cls_token"] = (1, 1, D)
        shapes[f"{pre}.{name}.{stem}.proj.weight"] = (D, 1, k, k)
        shapes[f"{pre}.{name}.{stem}.norm_layer.weight"] = (D,)
        shapes[f"{pre}.{name}.{stem}.norm_layer.bias"] = (D,)
        shapes[f"{pre}.{name}.pos_embedding_helper.pos_embed"] = (1, 1 + (IMAGE_SIZE // k) ** 2, D)
    Di = c.imu_embed_dim
    shapes[f"{pre}.imu.pos_embed"] = (1, 1 + IMU_SAMPLES // IMU_KERNEL, Di)
    shapes[f"{pre}.imu.cls_token"] = (1, 1, Di)
    shapes[f"{pre}.imu.imu_stem.proj.weight"] = (Di, 6 * IMU_KERNEL)
    shapes[f"{pre}.imu.imu_stem.norm_layer.weight"] = (Di,)
    shapes[f"{pre}.imu.imu_stem.norm_layer.bias"] = (Di,)
    for name, D, n, h, bias_kv in (
        ("text", Dt, c.text_num_blocks, c.text_num_heads, False),
        ("depth", c.depth_embed_dim, c.depth_num_blocks, c.depth_num_heads, True),
        ("thermal", c.thermal_embed_dim, c.thermal_num_blocks, c.thermal_num_heads, True),
        ("imu", Di, c.imu_num_blocks, c.imu_num_heads, True),
    ):
        with torch.device("meta"):  # the same trunk as audio's: shapes only, no memory
            trunk = Transformer(D, n, h, pre_norm=False, bias_kv=bias_kv)
        shapes |= {f"modality_trunks.{name}.{k}": tuple(v.shape) for k, v in trunk.state_dict().items()}
    shapes["modality_heads.text.proj.0.weight"] = (Dt,)  # SelectEOSAndProject(Sequential(LayerNorm, Linear))
    shapes["modality_heads.text.proj.0.bias"] = (Dt,)
    shapes["modality_heads.text.proj.1.weight"] = (E, Dt)
    for name, D, linear in (
        ("depth", c.depth_embed_dim, 2),
        ("thermal", c.thermal_embed_dim, 2),
        ("imu", Di, 3),  # the IMU head has a Dropout before its projection
    ):
        shapes[f"modality_heads.{name}.0.weight"] = (D,)
        shapes[f"modality_heads.{name}.0.bias"] = (D,)
        shapes[f"modality_heads.{name}.{linear}.weight"] = (E, D)
    for name in OTHER_MODALITIES:
        shapes[f"modality_postprocessors.{name}.1.log_logit_scale"] = ()
    return shapes


def from_file(path: str | Path, config: ImageBindConfig = HUGE) -> ImageBind:
    """The vision and audio towers with the weights of the official `imagebind_huge.pth` at `path` (eval mode).

    The whole file must match `config` (every modality's keys and shapes, nothing else), else ModelFileError
    naming the keys; a missing file is MissingModelFileError. The model holds 2.9 GB (huge, fp32); the file is
    memory-mapped, only its vision and audio tensors are read (peak RSS 6.5 GB measured, half of it page cache).
    """
    rebuild = "expected the official ImageBind checkpoint (imagebind_huge.pth)"
    tensors = artifacts.read_tensors(path, rebuild)
    with torch.device("meta"):  # no initialisation: every value comes from the file
        model = ImageBind(config)
    others = {k: torch.empty(s, device="meta") for k, s in other_modality_shapes(config).items()}
    artifacts.check_fit(
        {**model.state_dict(), **others}, tensors, f"{path}: not the {EVALUATOR} checkpoint ({rebuild})"
    )
    model.to_empty(device="cpu")
    return load_strict(model, path, EVALUATOR, ignore=OTHER_PREFIXES, tensors=tensors)


# ----------------------------------------------------------------------------------------------------------------
# Audio input: three 2 s clips -> kaldi fbank (upstream imagebind/data.py load_and_transform_audio_data)
# ----------------------------------------------------------------------------------------------------------------


def _clip_starts(num_samples: int) -> list[Fraction]:
    """Clip starts in seconds: pytorchvideo's ConstantClipsPerVideoSampler spreads CLIPS_PER_AUDIO starts evenly
    over [0, duration - 2 s] (all 0 when the input is shorter than a clip); exact Fractions of the float
    duration, as it computes them."""
    max_start = Fraction(max(num_samples / SAMPLE_RATE - CLIP_SECONDS, 0.0))
    return [max_start / CLIPS_PER_AUDIO * k for k in range(CLIPS_PER_AUDIO)]


def audio_clip_timepoints(num_samples: int) -> Tensor:
    """(3, 2) float64 (start, end) seconds of the audio clips of an input of `num_samples` samples at 16 kHz."""
    starts = _clip_starts(num_samples)
    return torch.tensor([[float(s), float(s + Fraction(CLIP_SECONDS))] for s in starts], dtype=torch.float64)


def audio_input(wav: Tensor) -> Tensor:
    """The audio tower's input (B, 3, 1, 128, 204) from a mono float waveform `wav` (B, N) at 16 kHz, N >= 400."""
    if wav.ndim != 2 or not wav.is_floating_point():
        raise ValueError(
            f"ImageBind audio: expected a float waveform (B, N) at 16 kHz, got {tuple(wav.shape)} {wav.dtype}"
        )
    if wav.shape[1] < MIN_SAMPLES:
        raise ValueError(
            f"ImageBind audio: {wav.shape[1]} samples, need at least {MIN_SAMPLES} (25 ms at 16 kHz)"
        )
    # Upstream subtracts each clip's mean in place on a view of the loaded waveform, so clips that overlap
    # (inputs under 8 s) see the earlier clips' shifts: work on a copy the same way.
    wav = wav.detach().float().clone()
    clips = []
    for start in _clip_starts(wav.shape[1]):
        a, b = int(start * SAMPLE_RATE), int((start + Fraction(CLIP_SECONDS)) * SAMPLE_RATE)
        segment = wav[:, a:b]  # (B, n), a view
        segment -= segment.mean(dim=-1, keepdim=True)
        mels = []
        for row in segment:
            fbank = torchaudio.compliance.kaldi.fbank(
                row[None],
                htk_compat=True,
                sample_frequency=SAMPLE_RATE,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=NUM_MEL_BINS,
                dither=0.0,
                frame_length=25,
                frame_shift=10,
            )  # (frames, 128)
            mels.append(fit_length(fbank.T, TARGET_FRAMES))  # (128, 204)
        clips.append(torch.stack(mels))  # (B, 128, 204)
    x = torch.stack(clips, dim=1)[:, :, None]  # (B, 3, 1, 128, 204)
    return (x - FBANK_MEAN) / FBANK_STD


# ----------------------------------------------------------------------------------------------------------------
# Vision input: frames at 0.5 fps -> 3 crops -> frame pairs (av-benchmark VideoDataset + extract_video.py)
# ----------------------------------------------------------------------------------------------------------------


def _crop_offsets(length: int) -> tuple[int, int, int]:
    """SpatialCrop's start, centre and end offsets of a 224 window along a side of `length` pixels."""
    return 0, math.ceil((length - IMAGE_SIZE) / 2), length - IMAGE_SIZE


def vision_input(frames: Tensor) -> Tensor:
    """The vision tower's input (B, 3 * (T - 1), 3, 2, 224, 224) from uint8 RGB frames at 0.5 fps, (B, T, 3, H, W)
    or (T, 3, H, W), T >= 2."""
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5 or frames.shape[2] != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"ImageBind vision: expected uint8 RGB frames (B, T, 3, H, W) or (T, 3, H, W), got "
            f"{tuple(frames.shape)} {frames.dtype}"
        )
    B, T = frames.shape[:2]
    if T < 2:
        raise ValueError(
            f"ImageBind vision: {T} frame(s); the clips are consecutive pairs, so at least 2 are needed"
        )
    # v2.Resize(224, BICUBIC) on the uint8 frames: short side to 224, antialiased
    x = frames.flatten(0, 1)  # (B*T, 3, H, W)
    x = TF.resize(x, [IMAGE_SIZE], InterpolationMode.BICUBIC, antialias=True)  # (B*T, 3, h, w)
    x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), CLIP_MEAN, CLIP_STD)  # (B*T, 3, h, w)
    x = x.unflatten(0, (B, T))  # (B, T, 3, h, w)
    h, w = x.shape[-2:]
    if h > w:  # crops along the long side; the other side is already 224
        crops = [x[..., o : o + IMAGE_SIZE, :] for o in _crop_offsets(h)]
    else:
        crops = [x[..., o : o + IMAGE_SIZE] for o in _crop_offsets(w)]
    x = torch.stack(crops, dim=1)  # (B, 3, T, 3, 224, 224)
    pairs = torch.cat([x[:, :, i : i + 2] for i in range(T - 1)], dim=1)  # (B, 3(T-1), 2, 3, 224, 224)
    return pairs.transpose(2, 3).contiguous()  # (B, 3(T-1), 3, 2, 224, 224)


# ----------------------------------------------------------------------------------------------------------------
# Features and the IB score
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBindFeatures:
    """`embedding` (B, E): the mean over clips of `clips` (B, S, E), the postprocessed per-clip embeddings."""

    embedding: Tensor
    clips: Tensor


def _features(model: ImageBind, x: Tensor, modality: str) -> ImageBindFeatures:
    """Per-clip embeddings and their mean (the model's weights' device and dtype)."""
    p = next(model.parameters())
    clips = model(x.to(p.device, p.dtype), modality)  # (B, S, E)
    return ImageBindFeatures(embedding=clips.mean(dim=1), clips=clips)


@torch.inference_mode()
def audio_features(model: ImageBind, wav: Tensor) -> ImageBindFeatures:
    """Audio embedding of a mono waveform `wav` (B, N) at 16 kHz (the whole clip): the mean over 3 clips of the
    normalised, x20 clip embeddings. Outputs on the model's device."""
    return _features(model, audio_input(wav), "audio")


@torch.inference_mode()
def vision_features(model: ImageBind, frames: Tensor) -> ImageBindFeatures:
    """Video embedding of uint8 RGB frames at 0.5 fps, (B, T, 3, H, W) or (T, 3, H, W): the mean over the
    3 crops x (T - 1) frame pairs of the unit-norm clip embeddings. Outputs on the model's device."""
    return _features(model, vision_input(frames), "vision")


def ib_score(video_emb: Tensor, audio_emb: Tensor) -> Tensor:
    """Per-pair cosine similarity (B,) of `video_emb` and `audio_emb` (B, E); IB-VA is its mean, reported x100
    (PROTOCOL["ib_score_report_scale"])."""
    return F.cosine_similarity(video_emb, audio_emb, dim=-1)
