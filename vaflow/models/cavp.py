"""CAVP-style contrastive audio-visual pre-training (after Diff-Foley, paper §4.5), trained inside the pipeline.

Two towers with one feature per video frame, a semantic and a temporal contrast (docs/design.md, "CAVP-style
encoder"). Sections: config and audio features, blocks, towers, the model, checkpoints, extraction, metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaflow.config.section import DictConfig
from vaflow.hashing import weights_hash
from vaflow.models import mel as melspec
from vaflow.models.artifacts import ModelFileError, check_fit, read_metadata, read_tensors, save_weights
from vaflow.models.visual import VisualEncoder, as_frames

__all__ = ["CAVPConfig", "CAVP", "CAVPEncoder", "log_mel", "retrieval_topk", "temporal_discrimination"]

_CHECKPOINT_FORMAT = "vaflow-cavp-1"


# ----------------------------------------------------------------------------------------------------------------
# Config and audio features
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CAVPConfig(DictConfig):
    """Sizes and loss settings of a CAVP model; saved whole into its checkpoint."""

    fps: float = 4.0  # paper §4.5: CAVP features at 4 fps
    image_size: int = 64  # the synthetic world's frames are 64x64
    sample_rate: int = 16000  # audio rate the mel front end expects
    n_mels: int = 64  # enough frequency detail to tell the synthetic world's sound classes apart
    hop: int = 160  # 10 ms mel hop: 25 mel frames per video frame at 4 fps, fine enough for onsets
    n_fft: int = 512  # 32 ms window at 16 kHz
    # Conv stems: each stage halves both axes (64 px -> 4x4 = grid). Narrow early stages keep CPU training of the
    # embedded default to seconds per epoch of 256 clips; the synthetic world needs colour and shape, not texture.
    video_channels: tuple[int, ...] = (8, 16, 32, 64)
    audio_channels: tuple[int, ...] = (8, 16, 32, 64)  # over (mels, time) of the log-mel
    grid: int = 4  # spatial (video) / mel (audio) bins kept before flattening, so position and pitch survive
    width: int = 128  # temporal-model width
    # Residual temporal conv blocks per tower: receptive field 1 + (kernel - 1)·layers.
    temporal_layers: int = 2
    temporal_kernel: int = 3  # frames each temporal conv sees
    embed_dim: int = 64  # D_v of the extracted features
    window: int = 2  # frames per temporal-contrast window (0.5 s at 4 fps)
    num_windows: int = 4  # windows drawn per clip: one positive each, the others its negatives
    temperature: float = 0.07  # initial InfoNCE temperature (CLIP's); learnt afterwards
    semantic_weight: float = 1.0  # Diff-Foley weighs the two contrasts equally
    temporal_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("image_size", "sample_rate", "n_mels", "hop", "n_fft", "grid", "width", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CAVPConfig.{name} must be positive, got {getattr(self, name)}")
        if self.fps <= 0 or self.temperature <= 0:
            raise ValueError(f"CAVPConfig.fps, temperature must be > 0, got {self.fps}, {self.temperature}")
        if self.window < 1 or self.num_windows < 2:
            raise ValueError("CAVPConfig: window >= 1, num_windows >= 2 (temporal contrast needs negatives)")
        if self.temporal_kernel % 2 != 1:
            raise ValueError(f"CAVPConfig.temporal_kernel must be odd to keep T, got {self.temporal_kernel}")
        if not self.video_channels or not self.audio_channels:
            raise ValueError("CAVPConfig.video_channels and audio_channels need at least one stage")

    @property
    def mel_frames_per_frame(self) -> float:
        """Mel frames per video frame: sample_rate / (hop · fps)."""
        return self.sample_rate / (self.hop * self.fps)

    def num_frames(self, num_mel_frames: int) -> int:
        """Video frames T_v covered by `num_mel_frames` centred mel frames (F = N // hop + 1)."""
        return max(1, round((num_mel_frames - 1) / self.mel_frames_per_frame))


def log_mel(
    audio: torch.Tensor | np.ndarray, sample_rate: int, n_mels: int, hop: int, n_fft: int | None = None
) -> torch.Tensor:
    """Log-mel power spectrogram: audio (B, N) float -> (B, n_mels, F), F = N // hop + 1 (centred frames)."""
    audio = torch.as_tensor(audio).float()
    if audio.ndim != 2:
        raise ValueError(f"audio must be (B, N), got {tuple(audio.shape)}")
    # Floor at 1e-5 (-50 dB): silence between events must not become -inf.
    return melspec.log_mel(audio, sample_rate, n_fft or 4 * hop, hop, n_mels, power=2.0, floor=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


def _conv_stage(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv with stride 2, GroupNorm, GELU: halves both spatial axes."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        # Per-sample statistics: batch-size independent, same in train and eval.
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
    )


class TemporalBlock(nn.Module):
    """Pre-norm residual 1-D conv over time: mixes neighbouring frames, keeps T."""

    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, width)
        self.conv1 = nn.Conv1d(width, width, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(width, width, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(self.norm(x)))  # (B, C, T)
        return x + self.conv2(h)  # (B, C, T)


class TemporalHead(nn.Module):
    """Temporal conv stack then a per-step projection head: (B, T, width) -> (B, T, embed_dim)."""

    def __init__(self, config: CAVPConfig) -> None:
        super().__init__()
        w, k = config.width, config.temporal_kernel
        self.blocks = nn.ModuleList([TemporalBlock(w, k) for _ in range(config.temporal_layers)])
        self.norm = nn.LayerNorm(w)
        self.proj = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, config.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, width, T)
        for block in self.blocks:
            x = block(x)  # (B, width, T)
        x = self.norm(x.transpose(1, 2))  # (B, T, width)
        return self.proj(x)  # (B, T, D)


# ----------------------------------------------------------------------------------------------------------------
# Towers
# ----------------------------------------------------------------------------------------------------------------


class VideoTower(nn.Module):
    """Per-frame 2-D conv stem, then temporal convs: frames (B, T, 3, H, W) -> (B, T, D)."""

    def __init__(self, config: CAVPConfig) -> None:
        super().__init__()
        chans = (3, *config.video_channels)
        self.stem = nn.Sequential(*[_conv_stage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        # A coarse grid, not a global mean: keep where things are.
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.embed = nn.Linear(chans[-1] * config.grid**2, config.width)
        self.head = TemporalHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        h = self.stem(x.flatten(0, 1))  # (B·T, C, H/2^s, W/2^s)
        h = self.pool(h).flatten(1)  # (B·T, C·grid²)
        h = self.embed(h).reshape(b, t, -1)  # (B, T, width)
        return self.head(h)  # (B, T, D)


class AudioTower(nn.Module):
    """2-D conv stem over the log-mel, per-step features pooled in time to T_v: (B, n_mels, F) -> (B, T_v, D)."""

    def __init__(self, config: CAVPConfig) -> None:
        super().__init__()
        chans = (1, *config.audio_channels)
        self.stem = nn.Sequential(*[_conv_stage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        # A few mel bands survive: pitch tells classes apart.
        self.pool = nn.AdaptiveAvgPool2d((config.grid, None))
        self.embed = nn.Linear(chans[-1] * config.grid, config.width)
        self.head = TemporalHead(config)

    def forward(self, mel: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.stem(mel[:, None])  # (B, C, n_mels/2^s, F/2^s)
        h = self.pool(h)  # (B, C, grid, F')
        h = self.embed(h.flatten(1, 2).transpose(1, 2))  # (B, F', width)
        # Average the audio steps that fall in each video frame, so feature t of both towers covers the same time.
        h = F.adaptive_avg_pool1d(h.transpose(1, 2), num_frames).transpose(1, 2)  # (B, T_v, width)
        return self.head(h)  # (B, T_v, D)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


def _info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the last two axes of (..., N, N) logits whose diagonal holds the positives."""
    n = logits.shape[-1]
    flat = logits.reshape(-1, n, n)  # (G, N, N)
    target = torch.arange(n, device=logits.device).repeat(flat.shape[0])  # (G·N,)
    forward = F.cross_entropy(flat.reshape(-1, n), target)  # video -> audio
    backward = F.cross_entropy(flat.transpose(1, 2).reshape(-1, n), target)  # audio -> video
    return (forward + backward) / 2


class CAVP(nn.Module):
    """Contrastive audio-visual model: a video and an audio tower with per-frame outputs, two InfoNCE losses."""

    def __init__(self, config: CAVPConfig | None = None) -> None:
        super().__init__()
        self.config = config or CAVPConfig()
        self.video = VideoTower(self.config)
        self.audio = AudioTower(self.config)
        # Separate learnt temperatures: the two tasks reach different similarity margins.
        self.logit_scale_semantic = nn.Parameter(torch.empty(()))
        self.logit_scale_temporal = nn.Parameter(torch.empty(()))
        if not next(self.parameters()).is_meta:  # on the meta device it is built for a load: no init
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation in one place."""
        for m in self.modules():
            # Linear layers: Xavier-uniform with zero bias keeps the projection heads' output scale near the input's.
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            # Convs keep PyTorch's Kaiming-uniform default: fan-in scaling suits these shallow GELU stems.
        for m in self.modules():
            # Each temporal block starts as the identity, so an untrained stack passes per-frame features through.
            if isinstance(m, TemporalBlock):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)
        # CLIP's initialisation: logits scaled by 1/temperature, learnt in log space.
        with torch.no_grad():
            self.logit_scale_semantic.fill_(math.log(1 / self.config.temperature))
            self.logit_scale_temporal.fill_(math.log(1 / self.config.temperature))

    def log_mel(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Audio (B, N) at config.sample_rate -> log-mel (B, n_mels, F) with this model's front end."""
        c = self.config
        return log_mel(audio, c.sample_rate, c.n_mels, c.hop, c.n_fft)

    def encode_video(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames (B, T, H, W, 3), uint8 or float in [0, 1] -> per-frame features (B, T, D)."""
        x = torch.as_tensor(frames)
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"frames must be (B, T, H, W, 3), got {tuple(x.shape)}")
        device = self.logit_scale_semantic.device
        x = x.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # (B, T, H, W, 3) in [0, 1]
        x = (x * 2.0 - 1.0).permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W) in [-1, 1]
        return self.video(x)  # (B, T, D)

    def encode_audio(self, mel: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Log-mel (B, n_mels, F) -> features (B, T_v, D); T_v = num_frames or config.num_frames(F)."""
        if mel.ndim != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"mel must be (B, {self.config.n_mels}, F), got {tuple(mel.shape)}")
        t_v = num_frames if num_frames is not None else self.config.num_frames(mel.shape[-1])
        return self.audio(mel.to(self.logit_scale_semantic.device).float(), t_v)  # (B, T_v, D)

    def _check_lengths(self, frames: torch.Tensor, mel: torch.Tensor) -> int:
        t = frames.shape[1]
        expected = self.config.num_frames(mel.shape[-1])
        if abs(expected - t) > 1:
            raise ValueError(
                f"{t} video frames but the mel covers {expected} frames at {self.config.fps} fps "
                f"({mel.shape[-1]} mel frames, hop {self.config.hop} at {self.config.sample_rate} Hz): "
                "check the fps and sample rate of the inputs"
            )
        return t

    def embed_clips(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip-level unit embeddings: mean over time of each tower's features -> video (B, D), audio (B, D)."""
        t = self._check_lengths(frames, mel)
        v = self.encode_video(frames).mean(1)  # (B, D)
        a = self.encode_audio(mel, t).mean(1)  # (B, D)
        return F.normalize(v, dim=-1), F.normalize(a, dim=-1)

    def sample_offsets(
        self, batch: int, num_frames: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Distinct window starts per clip: (B, K) int64, K = min(num_windows, T - window + 1)."""
        choices = num_frames - self.config.window + 1
        k = min(self.config.num_windows, choices)
        if k < 2:
            raise ValueError(
                f"clips of {num_frames} frames hold fewer than 2 windows of {self.config.window} frames: "
                "temporal contrast needs longer clips or a shorter window"
            )
        return torch.rand(batch, choices, generator=generator).argsort(dim=1)[:, :k]  # (B, K)

    def embed_windows(
        self, frames: torch.Tensor, mel: torch.Tensor, offsets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings of W-frame windows starting at `offsets` (B, K) -> video (B, K, D), audio (B, K, D).

        Each window is encoded on its own, cut from the inputs: windows encoded inside the whole clip could be
        matched by their position (conv padding shows where the clip edges are) instead of by their content.
        """
        frames = torch.as_tensor(frames)
        t = self._check_lengths(frames, mel)
        b, k = offsets.shape
        w = self.config.window
        if offsets.min() < 0 or offsets.max() > t - w:
            raise ValueError(f"window offsets must lie in [0, {t - w}] for {t} frames and window {w}")
        offsets = offsets.to(frames.device)
        rows = torch.arange(b, device=frames.device)[:, None, None]  # (B, 1, 1)
        frame_idx = offsets[:, :, None] + torch.arange(w, device=frames.device)  # (B, K, W)
        clips = frames[rows, frame_idx].flatten(0, 1)  # (B·K, W, H, W, 3)
        per = self.config.mel_frames_per_frame  # video frame o starts at mel frame o·per (centred frames)
        length = max(1, round(w * per))
        starts = offsets.to(mel.device).double() * per
        starts = starts.round().long().clamp(max=mel.shape[-1] - length)  # (B, K)
        mel_idx = starts[:, :, None] + torch.arange(length, device=mel.device)  # (B, K, L)
        mel_rows = torch.arange(b, device=mel.device)[:, None, None]
        crops = mel.transpose(1, 2)[mel_rows, mel_idx]  # (B, K, L, n_mels)
        crops = crops.flatten(0, 1).transpose(1, 2)  # (B·K, n_mels, L)
        v = self.encode_video(clips).mean(1).reshape(b, k, -1)  # (B, K, D)
        a = self.encode_audio(crops, w).mean(1).reshape(b, k, -1)  # (B, K, D)
        return F.normalize(v, dim=-1), F.normalize(a, dim=-1)

    def semantic_loss(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Semantic InfoNCE over clip embeddings video (N, D), audio (N, D): clip i's positive is its own audio, the
        other N - 1 clips are its negatives. Under DDP, N is the global batch: pass the rows of every rank, gathered
        with their gradients (vaflow.train.cavp.CAVPObjective)."""
        # CLIP's cap keeps the softmax from saturating.
        scale = self.logit_scale_semantic.exp().clamp(max=100.0)
        return _info_nce(scale * video @ audio.T)  # logits (N, N)

    def temporal_loss(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Temporal InfoNCE over window embeddings video (B, K, D), audio (B, K, D): each window's positive is the
        audio at its own offset, the clip's other K - 1 windows its negatives. Negatives never cross clips, so the
        loss is a mean of per-clip terms: the mean over ranks of local losses is the global one, with no gather."""
        scale = self.logit_scale_temporal.exp().clamp(max=100.0)
        return _info_nce(scale * torch.einsum("bkd,bjd->bkj", video, audio))  # logits (B, K, K)

    def loss(
        self,
        frames: torch.Tensor,
        mel: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        offsets: torch.Tensor | None = None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Diff-Foley's CAVP objective on frames (B, T, H, W, 3) and log-mel (B, n_mels, F).

        `offsets` (B, K): the temporal windows' starts (default: `sample_offsets` with `generator`). `gather`:
        (B, D) -> (N, D), the clip embeddings of every rank with their gradients, so the semantic negatives are the
        global batch under DDP (default: this batch only). Returns (total, {"semantic": ..., "temporal": ...}); the
        parts are detached, for logging.
        """
        frames = torch.as_tensor(frames)
        # Semantic contrast: whole clips, the other clips in the (global) batch are the negatives.
        v, a = self.embed_clips(frames, mel)  # (B, D), (B, D)
        if gather is not None:
            v, a = gather(v), gather(a)  # (N, D), (N, D)
        semantic = self.semantic_loss(v, a)
        # Temporal contrast: windows of the same clip at other offsets are the negatives.
        if offsets is None:
            offsets = self.sample_offsets(frames.shape[0], frames.shape[1], generator)  # (B, K)
        v_w, a_w = self.embed_windows(frames, mel, offsets)  # (B, K, D), (B, K, D)
        temporal = self.temporal_loss(v_w, a_w)
        total = self.config.semantic_weight * semantic + self.config.temporal_weight * temporal
        return total, {"semantic": semantic.detach(), "temporal": temporal.detach()}

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints: safetensors, the config as JSON metadata, strict loading
    # ------------------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the weights and config to one safetensors file, atomically (`artifacts.save_weights`)."""
        # One metadata key: safetensors writes its metadata map in a per-process random order, and two keys would
        # make the same weights save to different bytes (and weight hashes) from run to run.
        save_weights(self, path, {_CHECKPOINT_FORMAT: json.dumps(self.config.to_dict(), sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CAVP:
        """Rebuild a model from a file written by `save`; every key must fit (`artifacts.check_fit`)."""
        path = Path(path)
        expected = (
            "expected a CAVP checkpoint written by CAVP.save (safetensors with the config as JSON metadata)"
        )
        metadata = read_metadata(path, expected)
        # {format: config} as written by `save`; {"format": ..., "config": ...} as written before it.
        config_json = metadata.get(_CHECKPOINT_FORMAT)
        if config_json is None and metadata.get("format") == _CHECKPOINT_FORMAT:
            config_json = metadata.get("config")
        if config_json is None:
            raise ModelFileError(
                f"{path} has no CAVP metadata (format {metadata.get('format')!r}, want {_CHECKPOINT_FORMAT!r}); "
                f"{expected}"
            )
        try:
            config = CAVPConfig.from_dict(json.loads(config_json))
        except (ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: bad CAVP config in metadata: {e}") from e
        with torch.device("meta"):  # shapes only: every value comes from the file
            model = cls(config)
        state = read_tensors(path, expected)
        check_fit(model.state_dict(), state, f"{path} does not fit a CAVP model with its own config")
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device)


# ----------------------------------------------------------------------------------------------------------------
# Extraction wrapper
# ----------------------------------------------------------------------------------------------------------------


class CAVPEncoder(VisualEncoder):
    """A trained CAVP video tower as a frozen visual encoder: (T, H, W, 3) uint8 at config.fps -> (T, D)."""

    kind = "cavp"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        batch_size: int = 16,  # clips per forward pass
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self._setup(CAVP.load(checkpoint), weights_hash(checkpoint), batch_size)
        self.to(device)

    @classmethod
    def from_model(cls, model: CAVP, *, weights_hash: str = "none", batch_size: int = 16) -> CAVPEncoder:
        """Wrap a CAVP model in memory (right after training, benchmarks); `weights_hash` says what it holds."""
        self = cls.__new__(cls)
        VisualEncoder.__init__(self)
        self._setup(model, weights_hash, batch_size)
        return self.to(model.logit_scale_semantic.device)

    def _setup(self, model: CAVP, weights_hash: str, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        c = model.config
        self.fps = c.fps  # the rate the temporal convs were trained at (paper §4.5: 4 fps)
        self.input_size = (c.image_size, c.image_size)
        self.dim = c.embed_dim
        self.model_name = f"cavp-w{c.width}-d{c.embed_dim}"
        self.weights_hash = weights_hash
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def encode_batch(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 -> per-frame features (B, T, D) float32, `batch_size` clips at a time."""
        frames = as_frames(frames, self.input_size)
        if frames.ndim != 5:
            raise ValueError(f"encode_batch takes (B, T, H, W, 3), got {tuple(frames.shape)}")
        cuda = self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        out = []
        for start in range(0, frames.shape[0], self.batch_size):
            with autocast:
                out.append(
                    self.model.encode_video(frames[start : start + self.batch_size]).float()
                )  # (n, T, D)
        return torch.cat(out)  # (B, T, D)

    def extra_identity(self) -> dict[str, Any]:
        return {"config": self.model.config.to_dict()}


# ----------------------------------------------------------------------------------------------------------------
# Metrics (pure: arrays in, numbers out)
# ----------------------------------------------------------------------------------------------------------------


def _unit_rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_topk(
    video_emb: torch.Tensor | np.ndarray, audio_emb: torch.Tensor | np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Video -> audio retrieval by cosine similarity among all N clips: video_emb (N, D), audio_emb (N, D).

    Returns {"top{k}": fraction of clips whose own audio ranks within the top k}. Ties count against the
    true pair, so constant embeddings score chance or below, never 1. Chance is k / N.
    """
    v, a = _unit_rows(video_emb), _unit_rows(audio_emb)
    if v.shape != a.shape:
        raise ValueError(f"video {v.shape} and audio {a.shape} embeddings must have the same shape")
    sim = v @ a.T  # (N, N)
    true = np.diag(sim)  # (N,)
    rivals = (sim >= true[:, None]).sum(axis=1) - 1  # other clips scoring at least as high as the true pair
    return {f"top{k}": float(np.mean(rivals < k)) for k in ks}


def temporal_discrimination(
    video_emb: torch.Tensor | np.ndarray,
    aligned_audio_emb: torch.Tensor | np.ndarray,
    shifted_audio_emb: torch.Tensor | np.ndarray,
) -> float:
    """Fraction of clips whose video window (N, D) is closer (cosine) to the aligned audio window (N, D)
    than to the same clip's audio window shifted in time (N, D); strict, so ties count as failures. Chance 0.5.
    """
    v, a, s = _unit_rows(video_emb), _unit_rows(aligned_audio_emb), _unit_rows(shifted_audio_emb)
    if not v.shape == a.shape == s.shape:
        raise ValueError(f"shapes differ: video {v.shape}, aligned {a.shape}, shifted {s.shape}")
    return float(np.mean((v * a).sum(1) > (v * s).sum(1)))
