"""Synchformer: the audio-visual offset classifier behind DeSync (MMAudio / av-benchmark).

Reference code: hkchengrex/av-benchmark@050a5cd `av_bench/synchformer/` (synchformer.py, motionformer.py,
video_model_builder.py, vit_helper.py, transformer.py, an AST patched from HF transformers' modeling_ast.py; the same
network as MMAudio `mmaudio/ext/synchformer` and v-iashin/Synchformer), `av_bench/extract.py`
(encode_audio_with_sync), `extract_video.py` (encode_video_with_sync) and `av_bench/evaluate.py` (DeSync).
Official checkpoint: `synchformer_state_dict.pth` (MMAudio release v0.1, md5 5b2f5594b0730f70e41e549b7c94390c, the
AudioSet 24-01-04T16-39-21 model), a plain state dict with no prefix, read with weights_only=True, loaded strictly.
The two segment encoders (MotionFormer, AST) are built in `synchformer_towers`.

Outputs: `vfeats` (B, S, 8, 768) of 25 fps video and `afeats` (B, S, 6, 768) of 16 kHz audio, one row per 0.64 s
segment (step 0.32 s); `logits` (B, 21) scores the offsets linspace(-2, 2, 21) s of 14 segments; DeSync is
|predicted offset| averaged over the first and the last 14 segments of the 8 s clip (`desync`, `desync_score`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vaflow.models.reference import fit_length, load_strict
from vaflow.models.reference.synchformer_towers import AST, DIM, MotionFormer

__all__ = [
    "CLIP_SECONDS",
    "NAME",
    "PROTOCOL",
    "SAMPLE_RATE",
    "VIDEO_FPS",
    "SyncScore",
    "Synchformer",
    "build",
    "class_grid",
    "desync_score",
    "fit_audio",
    "fit_frames",
    "from_file",
    "log_mel_segments",
    "pixel_segments",
]

NAME = "synchformer"
SAMPLE_RATE = 16000
CLIP_SECONDS = 8.0  # av-benchmark's audio_length: 8 s of audio and video
VIDEO_FPS = 25  # _SYNC_FPS: frames are decoded at 25 fps
CLIP_SAMPLES = 128000  # 8 s at 16 kHz; SynchformerAudioDataset cuts longer clips and refuses shorter ones
CLIP_FRAMES = 200  # 8 s at 25 fps; VideoDataset cuts longer videos and refuses shorter ones

AUDIO_SEGMENT = 10240  # samples per segment: 0.64 s, the 16 frames of a video segment
AUDIO_STEP = 5120  # half a segment
VIDEO_SEGMENT = 16  # frames per segment
VIDEO_STEP = 8  # half a segment
N_FFT = 1024
WIN = 400
HOP = 160
N_MELS = 128
MEL_FRAMES = 66  # AST's max_spec_t: 65 STFT frames of a segment, zero-padded (in log space) to 66
MEL_MEAN = -4.2677393  # AudioSet log-mel statistics; the std is doubled in the normalisation (AST's recipe)
MEL_STD = 4.5689974
IMAGE_SIZE = 224
WINDOW_SEGMENTS = 14  # the GlobalTransformer's sequence: 14 segments (1 + 14*8 + 1 + 14*6 = 198 positions)
OFFSETS = (-2.0, 2.0, 21)  # make_class_grid(-2, 2, 21): the offset classes in seconds


PROTOCOL = {
    "evaluator": NAME,
    "sample_rate": SAMPLE_RATE,
    "clip_seconds": CLIP_SECONDS,
    "clip_samples": CLIP_SAMPLES,
    "fit": "first 128000 samples / first 200 frames; shorter clips are refused (as av-benchmark's datasets do)",
    "audio": {
        "segments": f"{AUDIO_SEGMENT} samples, step {AUDIO_STEP} (24 segments in 8 s)",
        "mel": "torchaudio MelSpectrogram(16000, n_fft 1024, win 400, hop 160, 128 mels; hann, centred reflect, "
        "power 2, htk, no norm)",
        "log": "log(mel + 1e-6), zero-padded or cut to 66 frames",
        "normalise": f"(x - ({MEL_MEAN})) / (2 * {MEL_STD})",
        "features": "AST (12 layers, 128 x 66 input, 10x10 stride: 12 freq x 6 time patches) last hidden state "
        "after its final layernorm, CLS/distillation tokens dropped, pooled over frequency by freq_attn_agg: "
        "(B, S, 6, 768)",
    },
    "video": {
        "fps": VIDEO_FPS,
        "frames": "Resize(224, bicubic, antialias) + CenterCrop(224) on uint8, /255, Normalize(0.5, 0.5)",
        "segments": f"{VIDEO_SEGMENT} frames, step {VIDEO_STEP} (24 segments in 200 frames)",
        "features": "MotionFormer (divided space-time ViT-B/16, 2-frame tubelets: 8 x 14 x 14 tokens) after its "
        "final norm, CLS dropped, pooled over space by spatial_attn_agg: (B, S, 8, 768)",
    },
    "desync": "compare_v_a on segments [:14] and [-14:]; |linspace(-2, 2, 21)[argmax logits]| s, averaged over "
    "both windows and all clips",
    "checkpoint": "synchformer_state_dict.pth (MMAudio release v0.1, md5 5b2f5594b0730f70e41e549b7c94390c), "
    "plain state dict, no prefix",
    "reference_code": "hkchengrex/av-benchmark@050a5cd av_bench/synchformer/*, av_bench/extract.py, "
    "extract_video.py, av_bench/evaluate.py; same network as hkchengrex/MMAudio mmaudio/ext/synchformer",
}


# ----------------------------------------------------------------------------------------------------------------
# The offset classifier: GlobalTransformer (minGPT-style, 3 layers, 8 heads)
# ----------------------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """minGPT's multi-head self-attention without a causal mask."""

    def __init__(self, dim: int = DIM, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """`x` (B, T, D) -> (B, T, D)."""
        split = (self.heads, x.shape[-1] // self.heads)
        q, k, v = (lin(x).unflatten(-1, split).transpose(1, 2) for lin in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, d)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, T, D)


class Block(nn.Module):
    """minGPT's block: x + attn(ln1(x)), x + mlp(ln2(x)); `mlp` is Sequential(Linear, GELU, Linear, Dropout)."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, D)
        return x + self.mlp(self.ln2(x))  # (B, T, D)


class PositionTable(nn.Module):
    """A learned table added to the whole sequence (the checkpoint's `pos_emb_cfg`)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.empty(1, length, DIM))


class GlobalTransformer(nn.Module):
    """[OFF, 14*8 video tokens, MOD, 14*6 audio tokens] -> 3 blocks -> ln_f -> off_head on OFF: 21 logits."""

    def __init__(self, depth: int = 3, classes: int = OFFSETS[2]) -> None:
        super().__init__()
        self.vis_in_lnorm = nn.LayerNorm(DIM)
        self.aud_in_lnorm = nn.LayerNorm(DIM)
        self.OFF_tok = nn.Parameter(torch.empty(1, 1, DIM))
        self.MOD_tok = nn.Parameter(torch.empty(1, 1, DIM))
        self.pos_emb_cfg = PositionTable(2 + WINDOW_SEGMENTS * (8 + 6))
        self.blocks = nn.Sequential(*(Block() for _ in range(depth)))
        self.ln_f = nn.LayerNorm(DIM)
        self.off_head = nn.Linear(DIM, classes)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        """`v` (B, 112, D), `a` (B, 84, D) -> (B, 21)."""
        b = v.shape[0]
        off, mod = self.OFF_tok.expand(b, -1, -1), self.MOD_tok.expand(b, -1, -1)
        x = torch.cat([off, self.vis_in_lnorm(v), mod, self.aud_in_lnorm(a)], dim=1)  # (B, 198, D)
        x = self.blocks(x + self.pos_emb_cfg.pos_emb)  # (B, 198, D)
        return self.off_head(self.ln_f(x[:, 0]))  # (B, 21); ln_f is per token, so only OFF is normalised


# ----------------------------------------------------------------------------------------------------------------
# Synchformer
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncScore:
    """DeSync of a batch: offset logits and |predicted offset| of the first and the last 14 segments."""

    logits: Tensor  # (B, 2, 21): window 0 = segments [:14], window 1 = segments [-14:]
    offset: Tensor  # (B, 2) |class_grid[argmax logits]| in seconds
    desync: Tensor  # (B,) offset averaged over the two windows, seconds; the metric is its mean over clips


def class_grid() -> Tensor:
    """The 21 offset classes in seconds, (21,) float32: numpy.linspace(-2, 2, 21) cast to float32, computed as numpy
    does (start + i * step, the last exactly `stop`): torch.linspace would put -1.1e-16 s, not 0, in the middle."""
    lo, hi, num = OFFSETS
    grid = torch.arange(num, dtype=torch.float64) * ((hi - lo) / (num - 1)) + lo  # (21,)
    grid[-1] = hi
    return grid.float()


class Synchformer(nn.Module):
    """Video and audio segment encoders, their projections and the offset classifier (DeSync)."""

    def __init__(self) -> None:
        super().__init__()
        self.vfeat_extractor = MotionFormer(segment=VIDEO_SEGMENT)
        self.afeat_extractor = AST()
        self.vproj = nn.Linear(DIM, DIM)
        self.aproj = nn.Linear(DIM, DIM)
        self.transformer = GlobalTransformer()

    @torch.inference_mode()
    def afeats(self, wav: Tensor) -> Tensor:
        """`wav` (B, N) mono float at 16 kHz, N >= 10240 -> (B, S, 6, 768), S = (N - 10240) // 5120 + 1
        (encode_audio_with_sync; for the metric, fit the clip first with `fit_audio`)."""
        mel = log_mel_segments(wav.to(self.vproj.weight.device))  # (B, S, 128, 66)
        b, s = mel.shape[:2]
        return self.afeat_extractor(mel.flatten(0, 1)).view(b, s, 6, DIM)  # (B, S, 6, D)

    @torch.inference_mode()
    def vfeats(self, frames: Tensor) -> Tensor:
        """`frames` (B, T, 3, H, W) uint8 RGB at 25 fps, T >= 16 -> (B, S, 8, 768), S = (T - 16) // 8 + 1
        (encode_video_with_sync; for the metric, fit the clip first with `fit_frames`)."""
        x = pixel_segments(frames.to(self.vproj.weight.device))  # (B, S, 3, 16, 224, 224)
        b, s = x.shape[:2]
        return self.vfeat_extractor(x.flatten(0, 1)).view(b, s, 8, DIM)  # (B, S, 8, D)

    @torch.inference_mode()
    def logits(self, vfeats: Tensor, afeats: Tensor) -> Tensor:
        """compare_v_a: `vfeats` (B, 14, 8, 768), `afeats` (B, 14, 6, 768) -> offset logits (B, 21)."""
        if vfeats.shape[1:] != (WINDOW_SEGMENTS, 8, DIM) or afeats.shape[1:] != (WINDOW_SEGMENTS, 6, DIM):
            raise ValueError(
                f"Synchformer: compare_v_a reads 14 segments, vfeats (B, 14, 8, {DIM}) and afeats (B, 14, 6, {DIM}); "
                f"got {tuple(vfeats.shape)} and {tuple(afeats.shape)}"
            )
        device = self.vproj.weight.device
        v = self.vproj(vfeats.to(device)).flatten(1, 2)  # (B, 112, D)
        a = self.aproj(afeats.to(device)).flatten(1, 2)  # (B, 84, D)
        return self.transformer(v, a)  # (B, 21)

    @torch.inference_mode()
    def desync(self, vfeats: Tensor, afeats: Tensor) -> SyncScore:
        """av-benchmark's DeSync of features with S >= 14 segments: `vfeats` (B, S, 8, 768), `afeats`
        (B, S, 6, 768) -> SyncScore over segments [:14] and [-14:] (the same window when S == 14)."""
        if vfeats.shape[:2] != afeats.shape[:2] or vfeats.shape[1] < WINDOW_SEGMENTS:
            raise ValueError(
                f"Synchformer: DeSync needs video and audio features of the same >= 14 segments, got vfeats "
                f"{tuple(vfeats.shape)} and afeats {tuple(afeats.shape)}"
            )
        first = self.logits(vfeats[:, :WINDOW_SEGMENTS], afeats[:, :WINDOW_SEGMENTS])  # (B, 21)
        last = self.logits(vfeats[:, -WINDOW_SEGMENTS:], afeats[:, -WINDOW_SEGMENTS:])  # (B, 21)
        logits = torch.stack([first, last], dim=1)  # (B, 2, 21)
        offset = class_grid().to(logits.device)[logits.argmax(dim=-1)].abs()  # (B, 2)
        return SyncScore(logits=logits, offset=offset, desync=offset.mean(dim=1))


def build(device: str | torch.device = "cpu") -> Synchformer:
    """An uninitialised Synchformer on `device` (built on the meta device, then allocated): every weight comes
    from a file, so torch's default initialisation of 237 M parameters would be wasted time."""
    with torch.device("meta"):
        model = Synchformer()
    return model.to_empty(device=device).eval()


# ----------------------------------------------------------------------------------------------------------------
# The input pipelines
# ----------------------------------------------------------------------------------------------------------------


@cache
def _mel_transform(device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    """av-benchmark's `sync_mel_spectrogram`, kept out of the model so its buffers are not checkpoint keys."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, win_length=WIN, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS
    )
    return mel.to(device)


def log_mel_segments(wav: Tensor) -> Tensor:
    """`wav` (B, N) mono float at 16 kHz, N >= 10240 -> normalised log-mels of its segments (B, S, 128, 66)."""
    if wav.ndim != 2 or not wav.is_floating_point() or wav.shape[-1] < AUDIO_SEGMENT:
        raise ValueError(
            f"Synchformer: expected a float mono waveform (B, N) at {SAMPLE_RATE} Hz with N >= {AUDIO_SEGMENT}, "
            f"got {tuple(wav.shape)} {wav.dtype}"
        )
    x = wav.float().unfold(-1, AUDIO_SEGMENT, AUDIO_STEP)  # (B, S, 10240)
    x = torch.log(_mel_transform(x.device)(x) + 1e-6)  # (B, S, 128, 65)
    x = fit_length(x, MEL_FRAMES)  # (B, S, 128, 66), the pad is 0 in log space (pad_or_truncate)
    return (x - MEL_MEAN) / (2 * MEL_STD)  # (B, S, 128, 66)


def pixel_segments(frames: Tensor) -> Tensor:
    """`frames` (B, T, 3, H, W) uint8 RGB, T >= 16 -> normalised 224 x 224 segments (B, S, 3, 16, 224, 224)."""
    if (
        frames.ndim != 5
        or frames.shape[2] != 3
        or frames.dtype != torch.uint8
        or frames.shape[1] < VIDEO_SEGMENT
    ):
        raise ValueError(
            f"Synchformer: expected uint8 RGB frames (B, T, 3, H, W) at {VIDEO_FPS} fps with T >= {VIDEO_SEGMENT}, "
            f"got {tuple(frames.shape)} {frames.dtype}"
        )
    b, t = frames.shape[:2]
    x = frames.flatten(0, 1)  # (B*T, 3, H, W)
    x = TF.resize(x, [IMAGE_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)  # short side 224
    x = TF.center_crop(x, [IMAGE_SIZE])  # (B*T, 3, 224, 224) uint8
    x = TF.to_dtype(x, torch.float32, scale=True)  # (B*T, 3, 224, 224) in [0, 1]
    x = TF.normalize(x, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])  # [-1, 1]
    x = x.view(b, t, 3, IMAGE_SIZE, IMAGE_SIZE).unfold(
        1, VIDEO_SEGMENT, VIDEO_STEP
    )  # (B, S, 3, 224, 224, 16)
    return x.permute(0, 1, 2, 5, 3, 4)  # (B, S, 3, 16, 224, 224)


def fit_audio(wav: Tensor) -> Tensor:
    """`wav` (B, N) at 16 kHz cut to the first 8 s (B, 128000); shorter clips are a ValueError, as av-benchmark's
    SynchformerAudioDataset refuses them."""
    if wav.ndim != 2 or wav.shape[-1] < CLIP_SAMPLES:
        raise ValueError(
            f"Synchformer: DeSync reads {CLIP_SECONDS} s at {SAMPLE_RATE} Hz, (B, >= {CLIP_SAMPLES}) samples; "
            f"got {tuple(wav.shape)}"
        )
    return fit_length(wav, CLIP_SAMPLES)


def fit_frames(frames: Tensor) -> Tensor:
    """`frames` (B, T, 3, H, W) at 25 fps cut to the first 8 s (B, 200, 3, H, W); shorter videos are a
    ValueError, as av-benchmark's VideoDataset refuses them."""
    if frames.ndim != 5 or frames.shape[1] < CLIP_FRAMES:
        raise ValueError(
            f"Synchformer: DeSync reads {CLIP_SECONDS} s of video at {VIDEO_FPS} fps, (B, >= {CLIP_FRAMES}, 3, H, W); "
            f"got {tuple(frames.shape)}"
        )
    return frames[:, :CLIP_FRAMES]


def desync_score(model: Synchformer, wav: Tensor, frames: Tensor) -> SyncScore:
    """DeSync of B clips: `wav` (B, N >= 128000) mono float at 16 kHz, `frames` (B, T >= 200, 3, H, W) uint8 at
    25 fps; both cut to 8 s (24 segments each) -> SyncScore."""
    return model.desync(model.vfeats(fit_frames(frames)), model.afeats(fit_audio(wav)))


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def from_file(path: str | Path, device: str | torch.device = "cpu") -> Synchformer:
    """Synchformer with the official `synchformer_state_dict.pth` weights (a plain state dict, no prefix, read
    with weights_only=True), in eval mode on `device`; ModelFileError naming the evaluator and the first wrong
    keys if the file is another model's, MissingModelFileError if there is no file."""
    return load_strict(build(device), path, "Synchformer")
