"""Training the WaveVAE inside the pipeline, and the reconstruction figures every WaveVAE is judged by.

Read top to bottom: the train clips (in memory or streamed), the crop stream the trainer draws from, the loss
module, and the test-set reconstruction metrics with their trivial baselines.

Scale: a train split whose decoded windows fit `trainer.in_memory_mb` (the embedded default's 256 clips × 2 s ×
16 kHz = 32 MB) is decoded once into memory on every rank; a larger one is streamed: checked once, then each rank
decodes its own crops' clips again, `trainer.num_workers` ffmpeg processes ahead of the step, with the same batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from vaflow import config
from vaflow.config import AudioVAEConfig, ClipConfig
from vaflow.data.clips import DecodedClips, MemoryClips, StreamedClips, open_clips, report_decoded
from vaflow.data.latents import load_clip
from vaflow.eval import reconstruction
from vaflow.eval.losses import MelL1Loss, MultiResolutionSTFTLoss, loudness_l1, stft_sizes, waveform_l1
from vaflow.eval.oracle import read_truth, truth_dir
from vaflow.hashing import weights_hash
from vaflow.models import pretrained
from vaflow.models.artifacts import ModelFileError
from vaflow.models.wavevae import SIZES, WaveVAE, build, load_wavevae
from vaflow.train.interface import StepTracker
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

# --------------------------------------------------------------------------------------------
# The clip bank
# --------------------------------------------------------------------------------------------


@dataclass
class ClipBank:
    """Decoded clips of one split: `audio` (N, n_samples) float32, their ids, and the clips that were rejected."""

    audio: Tensor  # (N, n_samples)
    ids: list[str]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


def load_bank(
    rows: pd.DataFrame, clip: ClipConfig, hop: int, workers: int = 2, progress: bool = True
) -> ClipBank:
    """Decode every clip of `rows` (manifest rows) through the clip policy (`latents.clip_audio`) into memory.

    Each clip becomes clip.padded_samples(hop) samples, exactly what `encode_audio` encodes; clips the policy or the
    decoder rejects are listed, not loaded. `workers` ffmpeg decoders run at once (they are subprocesses).
    """
    store, clips = open_train_clips(rows, clip, hop, workers, float("inf"), progress)
    return ClipBank(audio=store.tensors["audio"], ids=clips.ids, rejected=clips.rejected)


def open_train_clips(
    rows: pd.DataFrame, clip: ClipConfig, hop: int, workers: int, in_memory_mb: float, progress: bool = True
) -> tuple[MemoryClips | StreamedClips, DecodedClips]:
    """The clips of `rows` as {"audio": (n_samples,)} (`clips.open_clips`): in memory when their decoded windows
    take at most `in_memory_mb` MB, else streamed. Returns (store, kept rows and rejected clips)."""
    n_samples = clip.padded_samples(hop)

    def decode(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"audio": load_clip(row["path"], float(row["start"]), clip, n_samples)}

    return open_clips(rows.to_dict("records"), decode, {"audio": (n_samples,)}, n_samples * 4, in_memory_mb, workers, progress)  # fmt: skip


def even_subset(rows: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most `limit` rows, evenly spaced over `rows` (deterministic, covers the whole list)."""
    if len(rows) <= limit:
        return rows
    index = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return rows.iloc[index].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# The crop stream
# --------------------------------------------------------------------------------------------


def segment_samples(seconds: float, sample_rate: int, hop: int, max_samples: int) -> int:
    """Training crop length: `seconds` rounded to a whole number of latent frames, within [hop, max_samples]."""
    frames = max(1, round(seconds * sample_rate / hop))
    return min(frames * hop, max_samples // hop * hop)


class CropStream:
    """Batches (B, segment) of random crops of clips (in memory or streamed): an epoch is a permutation of them.

    The permutation is cut into global batches of `batch_size × world`, of which rank r takes the r-th chunk, so
    N ranks together see what one process sees; a bank smaller than one global batch is repeated to fill it. Each
    crop starts at a uniform random sample. All draws come from a generator seeded by (seed, epoch), so the stream
    is reproducible and resumes exactly from `state_dict()` (epoch, position) without replaying. A streamed store
    gives the same batches as the same clips in memory.
    """

    def __init__(
        self,
        clips: Tensor | MemoryClips | StreamedClips,  # audio (N, n_samples), or a store of {"audio"}
        batch_size: int,
        segment: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
    ):
        """Clips of n_samples ≥ segment."""
        clips = MemoryClips({"audio": clips}) if isinstance(clips, Tensor) else clips
        if len(clips) == 0:
            raise ValueError("the clip bank is empty: no usable training clip")
        (self.n_samples,) = clips.shape("audio")
        if self.n_samples < segment:
            raise ValueError(f"crops of {segment} samples do not fit clips of {self.n_samples} samples")
        self.clips, self.batch_size, self.segment = clips, batch_size, segment
        self.rank, self.world, self.seed = rank, world, seed
        self.epoch, self.pos = 0, 0

    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor]:
        """(clip index, crop start) for every crop of `epoch`, all ranks: each (n_batches, world, batch_size)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n, per_step = len(self.clips), self.batch_size * self.world
        n_batches = max(1, n // per_step)
        reps = math.ceil(n_batches * per_step / n)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[: n_batches * per_step]
        starts = torch.randint(0, self.n_samples - self.segment + 1, (len(order),), generator=g)
        shape = (n_batches, self.world, self.batch_size)
        return order.view(shape), starts.view(shape)

    def __iter__(self) -> Iterator[Tensor]:
        epoch = self.epoch - 1 if self.pos else self.epoch  # mid-epoch after load_state_dict
        self.epoch = epoch + 1
        order, starts = self._epoch_plan(epoch)
        offsets = torch.arange(self.segment)  # (S,)
        rows = torch.arange(self.batch_size)[:, None]  # (B, 1)
        batches = self.clips.batches(order[self.pos :, self.rank])  # each (B, n_samples)
        for k, batch in zip(range(self.pos, len(order)), batches, strict=True):
            start = starts[k, self.rank]  # (B,)
            self.pos = k + 1
            yield batch["audio"][rows, start[:, None] + offsets]  # (B, S)
        self.pos = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


# --------------------------------------------------------------------------------------------
# The loss module
# --------------------------------------------------------------------------------------------


# Posterior std a WaveVAE trained here starts from. The Oobleck init gives std = softplus(~0) ≈ 0.69 against means
# of ~0.2, so the decoder first learns to use z's noise as its noise source and decode(mean) lags behind; starting
# narrow makes it an autoencoder first (synthetic world, small size, 300 steps: test mel L1 of decode(mean) 0.97 ->
# 0.88). The KL term widens σ later wherever the latent carries nothing.
INITIAL_STD = 0.05


# Frames of the loudness term: 16 ms, one latent frame of the small VAE at 16 kHz, short enough to follow an
# event's attack and decay.
LOUDNESS_FRAME_S = 0.016


@torch.no_grad()
def narrow_posterior(vae: WaveVAE, std: float = INITIAL_STD) -> WaveVAE:
    """Re-initialise the scale half of the encoder's output conv so that every posterior std starts near `std`."""
    out = vae.encoder.layers[-1]  # WNConv1d to 2·D channels: mean, then scale (VAEBottleneck's split)
    d = vae.latent_dim
    out.weight_g[d:] *= 0.1  # scale ≈ its bias: the same narrow σ for every input at first
    out.bias[d:] = math.log(math.expm1(std - 1e-4))  # softplus⁻¹(std − the bottleneck's 1e-4 floor)
    return vae


class WaveVAELoss(nn.Module):
    """The WaveVAE with its training objective, so that DDP sees one forward: stft_weight·MR-STFT +
    mel_weight·mel L1 + wave_weight·L1 + kl_weight·KL (the Oobleck/SAO recipe without GAN) + loudness_weight·the
    L1 of the log RMS contour over LOUDNESS_FRAME_S frames (see AudioVAEConfig for why each weight is what it is).

    Clips are mono; a multi-channel VAE gets the mono signal in every channel (WaveVAE.encode_mono's mapping) and
    is asked to reconstruct every channel. The spectral losses run in float32 even under bf16 autocast.
    """

    def __init__(self, vae: WaveVAE, cfg: AudioVAEConfig, segment: int) -> None:
        super().__init__()
        self.vae = vae
        self.stft = MultiResolutionSTFTLoss(stft_sizes(segment))
        self.mel = MelL1Loss(vae.config.sample_rate)
        self.loudness_frame = max(1, round(LOUDNESS_FRAME_S * vae.config.sample_rate))
        self.weights = {
            "stft": cfg.stft_weight,
            "mel": cfg.mel_weight,
            "wave": cfg.wave_weight,
            "kl": cfg.kl_weight,
            "loudness": cfg.loudness_weight,
        }

    def forward(self, audio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """audio (B, N) in [-1, 1] -> (weighted loss (), detached parts {wave, kl, and stft, mel, loudness unless
        weighted 0})."""
        x = audio[:, None, :].expand(-1, self.vae.config.audio_channels, -1)  # (B, C, N)
        out = self.vae(x)  # reconstruction (B, C, N), kl ()
        with torch.autocast(x.device.type, enabled=False):
            y = out.reconstruction.float()  # (B, C, N)
            parts = {"wave": waveform_l1(y, x), "kl": out.kl.float()}
            # The spectral losses dominate a step's cost: skip one whose weight is 0 (the same set on every rank).
            if self.weights["stft"]:
                parts["stft"] = self.stft(y, x)
            if self.weights["mel"]:
                parts["mel"] = self.mel(y, x)
            if self.weights["loudness"]:
                parts["loudness"] = loudness_l1(y, x, self.loudness_frame)
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return loss, {k: v.detach() for k, v in parts.items()}


def run_identity(cfg: AudioVAEConfig, clip: ClipConfig, code: str) -> dict[str, Any]:
    """What names a training run's checkpoint folder (`run_dir`): the two sections, the stage's code identity and,
    with `cfg.init`, the initial weights' hash (other weights at the same path are another run)."""
    identity: dict[str, Any] = {"audio_vae": cfg, "clip": clip, "code": code}
    if cfg.init:
        identity["init"] = weights_hash(cfg.init)
    return identity


def loss_fn(model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The trainer's `loss_fn`: through `model(...)` (a WaveVAELoss, possibly DDP-wrapped)."""
    loss, parts = model(batch)
    return loss, {k: float(v) for k, v in parts.items()}


__all__ = [
    "ClipBank",
    "CropStream",
    "WaveVAELoss",
    "even_subset",
    "load_bank",
    "loss_fn",
    "open_train_clips",
    "run_identity",
    "segment_samples",
]


# ----------------------------------------------------------------------------------------------------------------
# The audio_vae stage's work: train (or take an imported VAE), then measure the test split
# ----------------------------------------------------------------------------------------------------------------

# Test clips scored (evenly spaced over the split) and train clips averaged into the mean-spectrum baseline:
# all of them in the synthetic world; a bound on the work at VGGSound scale.
EVAL_CLIPS = 512
MEAN_SPECTRUM_CLIPS = 256
EVAL_BATCH = 8
# Test clips of distinct classes (one of each class of the synthetic world) drawn in the mel comparison figure,
# written beside the metrics file.
FIGURE_CLIPS = 8
FIGURE_NAME = "audio_vae_mels.png"


def train(
    params: config.Params, manifest, ckpt_dir: Path, tracker: StepTracker, init: WaveVAE | None
) -> tuple[WaveVAE, torch.Tensor, dict]:
    """Train on random crops of the train clips, from `init` or from random weights; returns (EMA VAE, train mean
    log-mel, final train losses)."""
    cfg, clip = params.audio_vae, params.clip
    # A trained VAE runs at the pipeline's rate, whatever its size's nominal one.
    vae_config = dataclasses.replace(SIZES[cfg.size], sample_rate=clip.sample_rate)
    rows = manifest[manifest["split"] == "train"]
    store, kept = open_train_clips(
        rows, clip, vae_config.hop, cfg.trainer.num_workers, cfg.trainer.in_memory_mb
    )
    report_decoded("train", len(store), kept.rejected, store.how)
    segment = segment_samples(cfg.segment, clip.sample_rate, vae_config.hop, store.shape("audio")[0])
    seed_everything(cfg.trainer.seed)  # the same initial weights on every rank and every rerun
    vae = init if init is not None else narrow_posterior(build(vae_config))
    model = WaveVAELoss(vae, cfg, segment)

    def stream(spec):
        return CropStream(store, spec.batch_size, segment, spec.rank, spec.world_size, spec.seed)

    sections = {"audio_vae": cfg.model_dump(mode="json"), "clip": clip.model_dump(mode="json")}
    trainer = Trainer(model, loss_fn, stream, cfg.trainer, ckpt_dir, tracker, stage_config=sections)
    result = trainer.fit()
    if isinstance(store, MemoryClips):
        mean_spectrum = reconstruction.mean_log_mel(store.tensors["audio"], clip.sample_rate)
    else:
        mean_spectrum = train_mean_spectrum(params, manifest, vae_config.hop)
    return result.ema.vae, mean_spectrum, {f"train_{k}": v for k, v in result.losses.items()}


def load_checked(path: str, params: config.Params) -> WaveVAE:
    """Load a checkpoint strictly: a missing file or a key/shape mismatch is a ModelFileError naming the file.
    A pretrained folder's weights (the embedded default's) are first checked against their card: hash, size,
    sample rate and hop."""
    cfg = params.audio_vae
    default = config.AudioVAEConfig.model_fields["checkpoint"].default
    if pretrained.card_checked(path, default):
        pretrained.read_card(
            Path(path).parent, size=cfg.size, sample_rate=params.clip.sample_rate, hop=SIZES[cfg.size].hop
        )
    return load_wavevae(path, cfg.size)


def initial_vae(params: config.Params) -> WaveVAE | None:
    """`audio_vae.init`'s weights (None for a random start); they must run at the clip's rate."""
    if not params.audio_vae.init:
        return None
    vae = load_checked(params.audio_vae.init, params)
    if vae.config.sample_rate != params.clip.sample_rate:
        raise ModelFileError(
            f"{params.audio_vae.init}: audio_vae.init runs at {vae.config.sample_rate} Hz, clip.sample_rate is "
            f"{params.clip.sample_rate}"
        )
    return vae


def train_mean_spectrum(params: config.Params, manifest, hop: int) -> torch.Tensor:
    """The mean-spectrum baseline of an imported VAE, from a subset of the train clips."""
    rows = even_subset(manifest[manifest["split"] == "train"], MEAN_SPECTRUM_CLIPS)
    bank = load_bank(rows, params.clip, hop)
    if not bank.ids:
        raise config.ConfigError("no usable train clip for the mean-spectrum baseline")
    return reconstruction.mean_log_mel(bank.audio, params.clip.sample_rate)


def evaluate(
    vae: WaveVAE, params: config.Params, manifest, mean_spectrum: torch.Tensor, prepared: Path, figure: Path
) -> dict:
    """Test-split reconstruction figures, baselines and (synthetic world) oracle figures; writes the figure."""
    rows = even_subset(manifest[manifest["split"] == "test"], EVAL_CLIPS)
    bank = load_bank(rows, params.clip, vae.hop)
    if not bank.ids:
        raise config.ConfigError("no usable test clip to measure the reconstruction on")
    labels = dict(zip(rows["id"], rows["label"].astype(str), strict=True))
    folder = truth_dir(prepared)
    truths = [read_truth(folder, cid) for cid in bank.ids] if folder is not None else None
    figures = reconstruction.evaluate_reconstruction(
        vae.eval(), bank.audio, mean_spectrum, [labels[cid] for cid in bank.ids], truths, figure, FIGURE_CLIPS,
        EVAL_BATCH, progress=True,
    )  # fmt: skip
    return figures | {"test_rejected": float(len(bank.rejected))}
