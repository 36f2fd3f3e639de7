"""ImageBind (huge): the vision and audio towers of facebookresearch/ImageBind@53680b0
`imagebind/models/imagebind_model.py::imagebind_huge`, with its audio/video input pipelines as av-benchmark
(hkchengrex/av-benchmark@050a5cd) runs them. Its video and audio embeddings give the IB-VA metric (`ib_score`).

Official checkpoint: `imagebind_huge.pth`, a plain state dict of all six modalities with no prefix (1311 tensors).
The towers are written in this package (`imagebind_towers`), not imported from PyPI `imagebind-unofficial`:
importing its model module runs `imagebind/__init__`, which needs setuptools<81 (pkg_resources), pytorchvideo 0.1.5
(broken on this torchvision without a sys.modules patch), decord, av, pandas, fvcore. Only vision and audio are built
(2.9 GB of the 4.8 GB in fp32); `from_file` checks the whole file strictly (the text/depth/thermal/IMU keys by name
and shape, `other_modality_shapes`) and loads the vision and audio keys. The file is read with weights_only=True
(mmap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vaflow.models import artifacts
from vaflow.models.reference import fit_length, load_strict
from vaflow.models.reference.imagebind_towers import (
    CONFIGS,
    HUGE,
    IMAGE_SIZE,
    TINY,
    ImageBind,
    ImageBindConfig,
    Transformer,
)

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
# Loading: the whole official file checked, its vision and audio tensors loaded
# ----------------------------------------------------------------------------------------------------------------


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
