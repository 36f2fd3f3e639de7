"""Typed pipeline parameters: one section per stage, validated, with derived lengths computed once.

`params.yaml` is the embedded default and is exactly `Params()` written out (see `vaflow preset`).
Presets in `configs/` are overlays: only the keys they change, merged onto the defaults.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A params file that does not validate; the message names every bad key."""


class Section(BaseModel):
    """Base of every params section: unknown keys and wrong types are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# The shared trainer's section is embedded in every training stage's section. It is imported here, after
# `Section`, because its module builds on `Section` (a deliberate, import-order-safe cycle).
from vaflow.train.config import TrainerConfig  # noqa: E402

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

    source: Literal["synth", "folder", "vggsound", "audioset_v2a"] = "synth"
    folder: FolderSource = FolderSource()
    vggsound: VGGSoundSource = VGGSoundSource()
    audioset_v2a: AudioSetV2ASource = AudioSetV2ASource()
    # `decode` fully decodes every file once (catches truncated media); `probe` only reads headers (fast).
    verify: Literal["probe", "decode"] = "decode"
    # Seconds a probe or decode may take before the file is rejected as unreadable.
    timeout: float = Field(120.0, gt=0)
    # Processes that check files in parallel (0 = one per core).
    workers: int = Field(0, ge=0)


# --------------------------------------------------------------------------------------------
# Audio side: the WaveVAE and the latents
# --------------------------------------------------------------------------------------------


class AudioVAEConfig(Section):
    """The `audio_vae` stage: train a small Oobleck WaveVAE, or import Stable Audio Open's."""

    # `train` inside the pipeline (the embedded default), or `import` a checkpoint (paper scale: SAO 1.0).
    mode: Literal["train", "import"] = "train"
    # A name from `vaflow.audio.wavevae.SIZES`: `small` trains in CPU minutes; `sao` is exactly SAO 1.0.
    size: str = "small"
    # `import` mode: the local checkpoint (SAO `model.ckpt` / `model.safetensors`, or a bare VAE state dict).
    checkpoint: str = ""
    # Seconds per random training crop; 0.25 s holds an event and keeps a CPU step short.
    segment: float = Field(0.25, gt=0)
    # Loss weights. Mel L1 carries the reconstruction: with the multi-resolution STFT term on, short CPU runs
    # settle on an input-independent hum (its log-magnitude floor lets near-silent bins dominate), so it is off
    # by default. A small KL keeps the latent smooth without collapsing it (SAO trains with 1e-4).
    stft_weight: float = Field(0.0, ge=0)
    mel_weight: float = Field(1.0, ge=0)
    wave_weight: float = Field(0.0, ge=0)
    kl_weight: float = Field(1e-4, ge=0)
    # 600 steps of 8 crops: about 3 CPU minutes, enough to beat the silence and mean-spectrum baselines clearly.
    trainer: TrainerConfig = TrainerConfig(
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
        from vaflow.audio.wavevae import SIZES

        if self.size not in SIZES:
            near = difflib.get_close_matches(self.size, list(SIZES), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"size: unknown WaveVAE size {self.size!r}{hint}; known: {sorted(SIZES)}")
        if self.mode == "import" and not self.checkpoint:
            raise ValueError("checkpoint: mode 'import' needs the path of the WaveVAE checkpoint")
        if self.mode == "train":
            _needs_steps(self.trainer, "audio_vae")
        return self

    @property
    def hop(self) -> int:
        """Audio samples per latent frame of the chosen size."""
        from vaflow.audio.wavevae import SIZES

        return SIZES[self.size].hop

    @property
    def latent_dim(self) -> int:
        """`D_a`: latent channels of the chosen size (SAO 64)."""
        from vaflow.audio.wavevae import SIZES

        return SIZES[self.size].latent_dim


class EncodeAudioConfig(Section):
    """The `encode_audio` stage: media → shards of WaveVAE posterior (mean, std)."""

    # Clips encoded per forward pass.
    batch_size: int = Field(16, ge=1)
    # Clips per shard; 256 keeps shards a few MB at the default size.
    per_shard: int = Field(256, ge=1)
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
    # Frames per second fed to the encoder; 0 = the kind's paper rate (clip 10, cavp 4, pixels 10).
    fps: float = Field(0, ge=0)
    clip: CLIPOptions = CLIPOptions()
    cavp: CAVPOptions = CAVPOptions()
    pixels: PixelOptions = PixelOptions()
    # 200 steps of 16 clips: longer runs overfit the 256 synthetic training clips (test retrieval peaks, then falls).
    trainer: TrainerConfig = TrainerConfig(
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
            _needs_steps(self.trainer, "visual_encoder")
        return self

    @property
    def frame_rate(self) -> float:
        """The encoder's input frame rate (the kind's paper rate unless `fps` is set)."""
        return self.fps or {"clip": 10.0, "cavp": 4.0, "pixels": 10.0}[self.kind]


class ExtractVisualConfig(Section):
    """The `extract_visual` stage: media → visual-feature shards in the audio latents' clip order."""

    batch_size: int = Field(16, ge=1)
    per_shard: int = Field(256, ge=1)
    launcher: str = Field("python", min_length=1)


# --------------------------------------------------------------------------------------------
# VAFlow: the alignment VAE, the flow model and its three training stages (paper §3.3)
# --------------------------------------------------------------------------------------------


def _needs_steps(trainer: TrainerConfig, stage: str) -> None:
    if trainer.steps < 1:
        raise ValueError(f"trainer.steps: {stage} must train at least 1 step (0 is only for joint_tune)")


def _validation_fits(val: ValidationConfig, trainer: TrainerConfig) -> None:
    # Validation runs at logging steps (its figures join that step's log row).
    if val.every % trainer.log_every:
        raise ValueError(
            f"val.every ({val.every}) must be a multiple of trainer.log_every ({trainer.log_every})"
        )


class ValidationConfig(Section):
    """A training stage's validation loss on the `val` split, with fixed draws so curves compare across runs."""

    # First N clips of the val split (in shard order); 0 turns validation off. 64 keeps it a second on CPU.
    clips: int = Field(64, ge=0)
    # Points of the fixed t grid the flow loss is averaged over (midpoints of `times` equal bins of [0, 1]).
    times: int = Field(8, ge=1)
    # Steps between validations (also at the last step); 0 = only at the last step.
    every: int = Field(100, ge=0)
    # Seed of the fixed draws (latent samples, prior noise, frame positions).
    seed: int = 0


class TrainAlignConfig(Section):
    """Stage 1 `train_align`: the alignment VAE alone, on the train split's features (Eq. 4-7)."""

    # Conv width, residual blocks per side and kernel of the 1-D conv encoder/decoder. The paper gives no size
    # ("comparable parameter scales" per feature type); 64 channels hold the embedded world's features.
    channels: int = Field(64, ge=1)
    blocks: int = Field(2, ge=0)
    kernel: int = Field(5, ge=1)
    # Eq. 7's weights and Eq. 6's settings, the paper's values (§3.3).
    kl_weight: float = Field(8e-4, ge=0)
    rec_weight: float = Field(1.0, ge=0)
    con_weight: float = Field(1.0, ge=0)
    clip_frames: int = Field(8, ge=1)  # K adjacent frames at the clip scale
    temperature: float = Field(0.7, gt=0)  # τ
    val: ValidationConfig = ValidationConfig(every=100)
    # 200 steps of 32 clips (~30 s on 2 cores): the loss has flattened (7.62 at step 200, 7.51 at 300).
    trainer: TrainerConfig = TrainerConfig(
        steps=200, batch_size=32, lr=1e-3, warmup_steps=20, checkpoint_every=100, log_every=25, ema_decay=0.99
    )

    @model_validator(mode="after")
    def _trains(self) -> TrainAlignConfig:
        _needs_steps(self.trainer, "train_align")
        _validation_fits(self.val, self.trainer)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel: must be odd (same-length convolutions), got {self.kernel}")
        return self


class FlowConfig(Section):
    """The flow model shared by `train_flow`, `joint_tune` and sampling (§3.2, Tables 3-4)."""

    # Source distribution: `video` (x_0 ~ N(μ, σ) from the alignment VAE: VAFlow) or `gaussian` (N(0, I)).
    prior: Literal["video", "gaussian"] = "video"
    # DiT size from `vaflow.models.sizes.DIT_SIZES`: `small` trains in CPU minutes; dit_s/b/l/xl are the paper's
    # 142M/264M/527M/1.05B scales (§4.3).
    size: str = "small"
    # Cross-attention to x_v in every block; false is Table 4's "no CA" variant.
    cross_attention: bool = True
    # Probability of zeroing x_v per clip in training (§3.3: 0.1), which trains CFG's null branch.
    cond_dropout: float = Field(0.1, ge=0, le=1)
    # t ~ U(0, 1) as Eq. 8, or logit-normal(time_loc, time_scale) (denser mid-path sampling).
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    time_loc: float = 0.0
    time_scale: float = Field(1.0, gt=0)
    # torch.compile the estimator for training (GPU runs; compiling costs more than it saves on the CPU default).
    compile: bool = False

    @model_validator(mode="after")
    def _known_size(self) -> FlowConfig:
        from vaflow.models.sizes import DIT_SIZES

        if self.size not in DIT_SIZES:
            near = difflib.get_close_matches(self.size, list(DIT_SIZES), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"size: unknown DiT size {self.size!r}{hint}; known: {sorted(DIT_SIZES)}")
        return self


class TrainFlowConfig(Section):
    """Stage 2 `train_flow`: the velocity estimator with the alignment VAE frozen (Eq. 8)."""

    val: ValidationConfig = ValidationConfig(every=100)
    # 300 steps of 32 clips (~0.5 s each on 2 cores): with train_align and joint_tune, about 4 CPU minutes.
    trainer: TrainerConfig = TrainerConfig(
        steps=300,
        batch_size=32,
        lr=1e-3,
        warmup_steps=50,
        checkpoint_every=100,
        log_every=50,
        ema_decay=0.99,
    )

    @model_validator(mode="after")
    def _trains(self) -> TrainFlowConfig:
        _needs_steps(self.trainer, "train_flow")
        _validation_fits(self.val, self.trainer)
        return self


class JointTuneConfig(Section):
    """Stage 3 `joint_tune`: alignment-VAE encoder + estimator with Eq. 9; `trainer.steps: 0` passes stage 2's
    model through untouched (Table 3's "not tuned" rows)."""

    # Eq. 9's λ_KL: the paper's alignment-VAE value keeps the tuned prior close to N(0, I).
    kl_weight: float = Field(8e-4, ge=0)
    val: ValidationConfig = ValidationConfig(every=50)
    # A lower lr than stage 2: the estimator is fine-tuned, the encoder starts from a useful prior.
    trainer: TrainerConfig = TrainerConfig(
        steps=100, batch_size=32, lr=3e-4, warmup_steps=20, checkpoint_every=50, log_every=50, ema_decay=0.99
    )

    @model_validator(mode="after")
    def _fits(self) -> JointTuneConfig:
        _validation_fits(self.val, self.trainer)
        return self


# --------------------------------------------------------------------------------------------
# Sampling (paper §3.3, Inference; §4.1)
# --------------------------------------------------------------------------------------------


class SampleConfig(Section):
    """The `sample` stage: the test split's features → generated audio; also `vaflow generate`'s defaults."""

    # ODE solver from `vaflow.flow.SOLVERS`: the paper samples with euler, midpoint and dopri5 (§4.1). Euler is the
    # cheapest per step, and a flow trained on straight paths (Eq. 3) is nearly straight to integrate.
    solver: str = "euler"
    # Uniform steps of euler/midpoint/rk4 (dopri5 adapts its own): 25 Euler steps = 25 NFE per clip (each of 2B
    # rows with CFG), a common flow-matching budget that stays seconds for the whole test split on CPU.
    steps: int = Field(25, ge=1)
    # γ of Eq. 10; 0 = plain conditional. The paper samples with CFG (Table 4: conditioning + CFG is best) but does
    # not give γ; 1 (= guidance scale 2 in the w·v_c − (w−1)·v_∅ form) is a moderate default for a small model.
    cfg: float = Field(1.0, ge=0)
    # `video`: the estimator sees x_v; `zero`: null features (Table 4's zero-input row), the prior still sees x_v.
    # With the condition hidden, Eq. 10's two branches coincide and γ has no effect (recorded as cfg_applied 0).
    cond: Literal["video", "zero"] = "video"
    # Seed of the prior draws; each clip's draw k uses a stable hash of (seed, clip id, k), whatever the batching.
    seed: int = 0
    # Draws per forward pass (no sample depends on it); 16 as the extraction stages' batches; raise it on a GPU.
    batch_size: int = Field(16, ge=1)
    # Draws per clip: 1 for the metrics; more to hear the prior's diversity (§3.3), written as <id>-<k>.wav.
    samples_per_clip: int = Field(1, ge=1)
    # Test clips (in shard order) that also get an mp4 of their original video with the generated audio: enough
    # to see and hear, few enough that muxing stays seconds.
    mux: int = Field(8, ge=0)

    @model_validator(mode="after")
    def _known_solver(self) -> SampleConfig:
        from vaflow.flow.solvers import SOLVERS

        if self.solver not in SOLVERS:
            near = difflib.get_close_matches(self.solver, list(SOLVERS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"solver: unknown ODE solver {self.solver!r}{hint}; known: {sorted(SOLVERS)}")
        return self


class EvaluatorsConfig(Section):
    """The `evaluators` stage: proxy evaluators for FD/KL/IS, IB-VA and Acc (DESIGN §6), trained on the train split."""

    # `train` the three evaluators on the train split, or `import` a folder that this stage wrote elsewhere.
    mode: Literal["train", "import"] = "train"
    # `import` mode: the folder holding <name>.safetensors + <name>.json of all three evaluators.
    source: str = ""
    # Frames per second the video towers see: 125 ms steps, finer than the shortest misalignment (min_shift).
    fps: float = Field(8.0, gt=0)
    # Frame side in pixels: the synthetic world's objects stay legible at 32 and the towers stay cheap.
    side: int = Field(32, ge=8)
    # Mel bins of the log-mel front end: enough to tell the world's sound classes apart.
    n_mels: int = Field(64, ge=8)
    # Classifier penultimate width = FD's dimension; 16 < 32 clips per half of the 64-clip test split, so the
    # calibration FD of two halves (and FD of 64 generated vs 64 real clips) is not rank-deficient.
    embed_dim: int = Field(16, ge=2)
    # Joint video-audio space of the IB-VA stand-in.
    av_dim: int = Field(64, ge=2)
    # Passes over the train split, per evaluator: the default world's calibration figures stop improving by 15.
    epochs: int = Field(15, ge=1)
    # Clips per step; also the in-batch negatives of InfoNCE.
    batch_size: int = Field(32, ge=2)
    # AdamW learning rate: the small nets converge within the epochs above.
    lr: float = Field(2e-3, gt=0)
    # Seconds: smallest circular shift of a "shifted" (misaligned) pair, in training and calibration (DESIGN §6).
    min_shift: float = Field(0.25, gt=0)
    # Seed of the initial weights, batch order, shifts and swaps.
    seed: int = 0

    @model_validator(mode="after")
    def _source_for_import(self) -> EvaluatorsConfig:
        if self.mode == "import" and not self.source:
            raise ValueError("source: mode 'import' needs the folder of saved evaluators")
        return self


class EvaluateConfig(Section):
    """The `evaluate` stage: the paper-style table, metrics/eval.json and the gallery (DESIGN §6)."""

    # Seconds: a detected onset matches a true event within ±tolerance; 50 ms is mir_eval's onset default.
    onset_tolerance: float = Field(0.05, gt=0)
    # IS splits (torch-fidelity's 10); fewer clips than splits use one clip per split, said in the table.
    is_splits: int = Field(10, ge=1)
    # dBFS: a clip whose RMS is below this is "silent" (a dead model), counted and left out of every metric.
    # 10 dB under the synthetic world's noise floor (−60 dBFS), which every real clip is above.
    silent_db: float = Field(-70.0, lt=0)
    # Test clips (in shard order) shown in reports/index.html with their video, audio and mel images.
    gallery: int = Field(16, ge=0)


# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------


class Params(Section):
    """All of `params.yaml`."""

    clip: ClipConfig = ClipConfig()
    synth: SynthConfig = SynthConfig()
    prepare: PrepareConfig = PrepareConfig()
    audio_vae: AudioVAEConfig = AudioVAEConfig()
    encode_audio: EncodeAudioConfig = EncodeAudioConfig()
    visual_encoder: VisualEncoderConfig = VisualEncoderConfig()
    extract_visual: ExtractVisualConfig = ExtractVisualConfig()
    train_align: TrainAlignConfig = TrainAlignConfig()
    flow: FlowConfig = FlowConfig()
    train_flow: TrainFlowConfig = TrainFlowConfig()
    joint_tune: JointTuneConfig = JointTuneConfig()
    sample: SampleConfig = SampleConfig()
    evaluators: EvaluatorsConfig = EvaluatorsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _vae_rate_matches_clip(self) -> Params:
        # A trained VAE learns at clip.sample_rate; an imported one has its rate baked into its weights.
        if self.audio_vae.mode != "import":
            return self
        from vaflow.audio.wavevae import SIZES

        rate = SIZES[self.audio_vae.size].sample_rate
        if rate != self.clip.sample_rate:
            raise ValueError(
                f"audio_vae.size '{self.audio_vae.size}' runs at {rate} Hz but clip.sample_rate is"
                f" {self.clip.sample_rate}: set clip.sample_rate to {rate} or pick another size"
            )
        return self

    @model_validator(mode="after")
    def _synth_covers_clip(self) -> Params:
        if self.prepare.source == "synth" and self.synth.duration < self.clip.duration:
            raise ValueError(
                f"synth.duration ({self.synth.duration}) is shorter than clip.duration ({self.clip.duration}):"
                " every synthetic clip would be rejected"
            )
        return self

    @model_validator(mode="after")
    def _shards_pair_by_position(self) -> Params:
        # The flow reads audio shard i with visual shard i (vaflow.data.pairs): both must cut the clip list alike.
        if self.encode_audio.per_shard != self.extract_visual.per_shard:
            raise ValueError(
                f"encode_audio.per_shard ({self.encode_audio.per_shard}) and extract_visual.per_shard "
                f"({self.extract_visual.per_shard}) must agree: audio and visual shards are paired by position"
            )
        return self


# --------------------------------------------------------------------------------------------
# Loading, validation messages, presets
# --------------------------------------------------------------------------------------------


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` (the parent of a bad key) inside `model`."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (valid keys: {', '.join(valid)})"
            lines.append(f"{source}: {key}: unknown key{hint}")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{source}: {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def validate(data: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping; raises ConfigError naming each bad key (and the nearest valid key for typos)."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, Params, source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return validate(data, str(path))


def deep_merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged into a copy of `base`, recursing into nested mappings."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def presets() -> list[str]:
    """Names of the presets shipped in `configs/` plus `default`."""
    return ["default", *sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))]


def preset(name: str) -> Params:
    """The defaults with the overlay `configs/<name>.yaml` applied (`default` applies none)."""
    base = Params().model_dump(mode="json")
    if name == "default":
        return validate(base, "defaults")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        near = difflib.get_close_matches(name, presets(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; available: {', '.join(presets())}")
    overlay = yaml.safe_load(path.read_text()) or {}
    return validate(deep_merge(base, overlay), str(path))


def dump(params: Params) -> str:
    """`params` as the YAML text of a full params file."""
    header = "# vaflow parameters: the embedded default. Switch presets with `vaflow preset NAME`.\n"
    return header + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def section_dict(params: Params, name: str) -> dict[str, Any]:
    """One section as a flat {dotted.key: value} mapping (for MLflow params)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk(name, getattr(params, name).model_dump(mode="json"))
    return flat


__all__ = [
    "SPLITS",
    "ClipConfig",
    "ConfigError",
    "EvaluatorsConfig",
    "FlowConfig",
    "JointTuneConfig",
    "Params",
    "PrepareConfig",
    "SampleConfig",
    "Section",
    "SynthConfig",
    "TrainAlignConfig",
    "TrainFlowConfig",
    "ValidationConfig",
    "deep_merge",
    "dump",
    "load",
    "preset",
    "presets",
    "validate",
]
