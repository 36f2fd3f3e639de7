"""The params sections of the data, codec and visual stages: clip geometry, sources, the synthetic world, the
WaveVAE, the visual encoders and the two extraction stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vaflow.config.section import Section
from vaflow.config.trainer import ClipTrainerConfig, needs_steps
from vaflow.errors import did_you_mean

# --------------------------------------------------------------------------------------------
# Clip geometry shared by every stage
# --------------------------------------------------------------------------------------------


class ClipConfig(Section):
    """The audio-visual clip every stage works on."""

    # Seconds per clip. The paper uses 10 s VGGSound windows; 2 s keeps the CPU default fast.
    duration: float = Field(2.0, gt=0)
    # Audio rate of the pipeline (the WaveVAE's rate). SAO 1.0 runs at 44.1 kHz; 16 kHz suffices for the toy world.
    sample_rate: int = Field(16000, ge=4000)

    @property
    def n_samples(self) -> int:
        """Audio samples per clip."""
        return round(self.duration * self.sample_rate)

    def n_frames(self, fps: float) -> int:
        """Video frames per clip at `fps` (a visual encoder's rate: CLIP 10 fps, CAVP 4 fps)."""
        return max(1, round(self.duration * fps))

    def latent_length(self, hop: int) -> int:
        """`T_a`: WaveVAE latent frames per clip for a VAE that down-samples by `hop` (SAO: 2048 → 215 for 10 s)."""
        return self.n_samples // hop

    def padded_samples(self, hop: int) -> int:
        """Samples that encode to exactly `latent_length(hop)` frames; audio is trimmed or zero-padded to this."""
        return self.latent_length(hop) * hop


# --------------------------------------------------------------------------------------------
# prepare: sources and the synthetic world
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
# What `prepare.sources` may list (vaflow.data.sources lists each).
SOURCES = ("synth", "folder", "vggsound", "audioset_v2a")


class SynthConfig(Section):
    """The synthetic audio-visual world (DESIGN §3): sound caused by what is visible."""

    # Seed of the whole world; every clip derives its own seed from it and its index.
    seed: int = 0
    # Clips per split: 256 train clips is enough for the toy models to learn all classes in CPU minutes.
    clips_per_split: dict[str, int] = Field(default_factory=lambda: {"train": 256, "val": 32, "test": 64})
    # Square frame side in pixels; 64 keeps encode/decode cheap and objects still legible.
    size: int = Field(64, ge=16)
    # Video frame rate; 20 fps resolves events to 50 ms, finer than every visual encoder's rate.
    fps: int = Field(20, ge=1)
    # Clip length in seconds; must cover `clip.duration`.
    duration: float = Field(2.0, gt=0)
    # Audio rate of the written files.
    sample_rate: int = Field(16000, ge=4000)
    # Probability that a second object of another class shares the clip.
    second_object_p: float = Field(0.2, ge=0, le=1)
    # Probability of moving background distractors (silent).
    distractor_p: float = Field(0.5, ge=0, le=1)
    # Processes that render clips in parallel (0 = one per core).
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _known_splits(self) -> SynthConfig:
        unknown = sorted(set(self.clips_per_split) - set(SPLITS))
        if unknown:
            raise ValueError(f"clips_per_split has unknown split(s) {unknown}; valid: {list(SPLITS)}")
        if self.size % 2:
            raise ValueError(f"size: H.264 (yuv420p) needs an even frame size, got {self.size}")
        return self


class FolderSource(Section):
    """Any directory of videos."""

    # Directory searched recursively for video files.
    root: str = ""
    # Optional CSV with columns `file` (relative to root) and `label`, and optionally `split`.
    labels_csv: str = ""
    # Fraction of unlabelled-split clips assigned to the test split (deterministic by id hash).
    test_fraction: float = Field(0.1, ge=0, lt=1)


class VGGSoundSource(Section):
    """VGGSound: the official CSV (YouTube id, start seconds, label, split) plus a local video directory."""

    csv: str = ""
    # Videos named `<ytid>_<start:06d>.mp4` (the common release layout) or `<ytid>.mp4`.
    video_dir: str = ""
    # Fetch missing 10 s windows with yt-dlp (off by default: the pipeline never downloads implicitly).
    download: bool = False
    # yt-dlp processes at once: a download waits on the network, not on a core, so this is not `prepare.workers`.
    download_workers: int = Field(4, ge=1)
    # Further attempts after a failed download (a removed, private or unavailable video is not retried): YouTube
    # fails a share of requests transiently at this volume.
    download_retries: int = Field(2, ge=0)
    # Seconds before the first retry of a clip, doubled for each next one.
    download_backoff: float = Field(10.0, ge=0)
    # Downloads started per second at most, retries included, across all workers (0 = no limit); YouTube blocks
    # clients that start too many.
    download_rate: float = Field(1.0, ge=0)
    # Cap on clips per split (0 = all); handy for a first run on a subset.
    limit: int = Field(0, ge=0)


class AudioSetV2ASource(Section):
    """AudioSet-V2A: an id list (one `<ytid>_<start>` or `<ytid>` per line) plus a local video directory."""

    ids: str = ""
    video_dir: str = ""
    # AudioSet-V2A is used for training only (paper §4.1).
    split: Literal["train", "val", "test"] = "train"
    limit: int = Field(0, ge=0)


class PrepareConfig(Section):
    """The `prepare` stage: a source turned into a checked manifest."""

    # Where clips come from, listed in this order into one manifest whose `source` column names each clip's source.
    # The paper trains the alignment VAE on vggsound + audioset_v2a and the flow on vggsound's train split (§4.1).
    # An id listed twice keeps its first listing; a later one is rejected as a duplicate naming both sources.
    sources: list[str] = Field(default_factory=lambda: ["synth"])
    folder: FolderSource = FolderSource()
    vggsound: VGGSoundSource = VGGSoundSource()
    audioset_v2a: AudioSetV2ASource = AudioSetV2ASource()
    # `decode` fully decodes every file once (catches truncated media); `probe` only reads headers (fast).
    verify: Literal["probe", "decode"] = "decode"
    # Seconds a probe or decode may take before the file is rejected as unreadable.
    timeout: float = Field(120.0, gt=0)
    # Processes that check files in parallel (0 = one per core).
    workers: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed_source(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("sources"), str):
            raise ValueError(f"sources: a list of source names (sources: [{data['sources']}]), got text")
        if isinstance(data, dict) and "source" in data:
            raise ValueError(
                f"source: renamed to 'sources', a list (sources: [{data['source']}]); several sources are"
                " listed together, e.g. sources: [vggsound, audioset_v2a]"
            )
        return data

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        if not sources:
            raise ValueError(f"needs at least one source; known: {list(SOURCES)}")
        for name in sources:
            if name not in SOURCES:
                hint = did_you_mean(name, SOURCES)
                raise ValueError(f"unknown source {name!r}{hint}; known: {list(SOURCES)}")
        twice = sorted({name for name in sources if sources.count(name) > 1})
        if twice:
            raise ValueError(f"source(s) {twice} listed more than once")
        return sources

    @property
    def source(self) -> str:
        """The sources as one name (`vggsound+audioset_v2a`), for logs and model cards."""
        return "+".join(self.sources)


# --------------------------------------------------------------------------------------------
# Audio side: the WaveVAE and the latents
# --------------------------------------------------------------------------------------------


class AudioVAEConfig(Section):
    """The `audio_vae` stage: import a pretrained WaveVAE (the embedded default's, or Stable Audio Open's), or
    train one inside the pipeline."""

    # `import` a checkpoint: the embedded default imports the project's pretrained codec, as the paper imports
    # SAO 1.0's VAE; `train` one inside the pipeline (the micro preset, and the recipe that made that codec).
    mode: Literal["train", "import"] = "import"
    # A name from `vaflow.config.sizes.SIZES`: `small` trains in CPU minutes; `sao` is exactly SAO 1.0.
    size: str = "small"
    # `import` mode: the local checkpoint. The default is the pretrained codec committed in git with its card
    # (two presets rebuild it: `wavevae-base`, then `wavevae`; docs/wavevae.md); otherwise SAO's
    # `model.ckpt` / `model.safetensors`, or a bare VAE state dict. `train` mode ignores it.
    checkpoint: str = "data/pretrained/wavevae/wavevae.safetensors"
    # `train` mode: start from these WaveVAE weights (checked against their card when they have one) instead of a
    # random initialisation, with a fresh optimiser: the second phase of the pretrained codec's recipe
    # (configs/wavevae.yaml). '' starts from random weights. `import` mode ignores it.
    init: str = ""
    # Seconds per random training crop: 0.25 s holds an event and keeps a CPU step short. Every choice of this
    # recipe was measured against its alternatives on the default world: docs/wavevae.md has the figures.
    segment: float = Field(0.25, gt=0)
    # Loss weights (vaflow.eval.losses): multi-resolution STFT (spectral convergence pooled over the batch +
    # log-magnitude above a -100 dB floor), mel L1, waveform L1, KL, and the L1 of the frame loudness contour.
    # A small KL keeps the latent smooth (SAO trains with 1e-4).
    stft_weight: float = Field(1.0, ge=0)
    mel_weight: float = Field(1.0, ge=0)
    wave_weight: float = Field(0.0, ge=0)
    kl_weight: float = Field(1e-4, ge=0)
    loudness_weight: float = Field(0.0, ge=0)
    # 600 steps of 8 crops at lr 1e-3 when trained here; quality grows with steps (docs/wavevae.md has the figures).
    trainer: ClipTrainerConfig = ClipTrainerConfig(
        steps=600,
        batch_size=8,
        lr=1e-3,
        warmup_steps=50,
        schedule="cosine",
        checkpoint_every=200,
        log_every=50,
        ema_decay=0.99,
    )

    @model_validator(mode="after")
    def _known_size(self) -> AudioVAEConfig:
        from vaflow.config.sizes import SIZES

        if self.size not in SIZES:
            hint = did_you_mean(self.size, SIZES)
            raise ValueError(f"size: unknown WaveVAE size {self.size!r}{hint}; known: {sorted(SIZES)}")
        if self.mode == "import" and not self.checkpoint:
            raise ValueError("checkpoint: mode 'import' needs the path of the WaveVAE checkpoint")
        if self.mode == "train":
            needs_steps(self.trainer, "audio_vae")
        return self

    @property
    def hop(self) -> int:
        """Audio samples per latent frame of the chosen size."""
        from vaflow.config.sizes import SIZES

        return SIZES[self.size].hop

    @property
    def latent_dim(self) -> int:
        """`D_a`: latent channels of the chosen size (SAO 64)."""
        from vaflow.config.sizes import SIZES

        return SIZES[self.size].latent_dim


class EncodeAudioConfig(Section):
    """The `encode_audio` stage: media → shards of WaveVAE posterior (mean, std)."""

    # Clips encoded per forward pass.
    batch_size: int = Field(16, ge=1)
    # Clips per shard; 256 keeps shards a few MB at the default size.
    per_shard: int = Field(256, ge=1)
    # Threads decoding clips ahead of the encoder, each driving one ffmpeg process (0: one clip at a time).
    workers: int = Field(2, ge=0)
    # `python`, or `torchrun --nproc-per-node=N` to split the clips across processes.
    launcher: str = Field("python", min_length=1)


# --------------------------------------------------------------------------------------------
# Visual side: the encoder and the features
# --------------------------------------------------------------------------------------------


class CLIPOptions(Section):
    """open_clip settings (paper §4.5: CLIP per frame at 10 fps)."""

    model_name: str = "ViT-B-32"
    # Local open_clip weight file (never downloaded); required when kind is `clip`.
    weights: str = ""
    # L2-normalise each frame embedding, as CLIP's own similarity does.
    normalize: bool = True


class CAVPOptions(Section):
    """CAVP-style encoder settings (Diff-Foley's contrastive audio-visual pre-training, 4 fps)."""

    # `import` mode: a checkpoint of the same model saved by this stage.
    checkpoint: str = ""
    # Feature width D_v; 64 separates the synthetic world's classes and keeps extraction fast.
    embed_dim: int = Field(64, ge=8)


class PixelOptions(Section):
    """Down-sampled raw frames: the reconstruction-type stand-in."""

    # Side of the down-sampled frame; 8×8×3 = 192 features per frame.
    side: int = Field(8, ge=2)


class VisualEncoderConfig(Section):
    """The `visual_encoder` stage: which visual features feed the flow (paper §4.5)."""

    # `cavp` (trained here, temporally aware), `clip` (open_clip, imported) or `pixels` (no weights).
    kind: Literal["clip", "cavp", "pixels"] = "cavp"
    # `train` (cavp), `import` (clip, cavp) or `none` (pixels).
    mode: Literal["train", "import", "none"] = "train"
    # Frames per second fed to the encoder; 0 = the kind's paper rate (clip 10, cavp 4, pixels 10), which the paper
    # presets use. The embedded default feeds its CAVP stand-in every frame of the synthetic world's 20 fps video:
    # at Diff-Foley's 4 fps the flow cannot place the world's events in time (README, "The visual side").
    fps: float = Field(20, ge=0)
    clip: CLIPOptions = CLIPOptions()
    cavp: CAVPOptions = CAVPOptions()
    pixels: PixelOptions = PixelOptions()
    # 200 steps of 16 clips: longer runs overfit the 256 synthetic training clips (test retrieval peaks, then falls).
    trainer: ClipTrainerConfig = ClipTrainerConfig(
        steps=200, batch_size=16, lr=1e-3, warmup_steps=20, checkpoint_every=50, log_every=25, ema_decay=0.99
    )

    @model_validator(mode="after")
    def _mode_fits_kind(self) -> VisualEncoderConfig:
        allowed = {"clip": ("import",), "cavp": ("train", "import"), "pixels": ("none",)}[self.kind]
        if self.mode not in allowed:
            raise ValueError(
                f"mode: kind '{self.kind}' supports mode {' or '.join(allowed)}, got '{self.mode}'"
            )
        if self.kind == "clip" and not self.clip.weights:
            raise ValueError("clip.weights: kind 'clip' needs a local open_clip weight file")
        if self.kind == "cavp" and self.mode == "import" and not self.cavp.checkpoint:
            raise ValueError("cavp.checkpoint: mode 'import' needs the path of a CAVP checkpoint")
        if self.mode == "train":
            needs_steps(self.trainer, "visual_encoder")
        return self

    @property
    def frame_rate(self) -> float:
        """The encoder's input frame rate (the kind's paper rate unless `fps` is set)."""
        return self.fps or {"clip": 10.0, "cavp": 4.0, "pixels": 10.0}[self.kind]


class ExtractVisualConfig(Section):
    """The `extract_visual` stage: media → visual-feature shards in the audio latents' clip order."""

    batch_size: int = Field(16, ge=1)
    per_shard: int = Field(256, ge=1)
    # Threads decoding clips ahead of the encoder, each driving one ffmpeg process (0: one clip at a time).
    workers: int = Field(2, ge=0)
    launcher: str = Field("python", min_length=1)
