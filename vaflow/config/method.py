"""Params sections of the VAFlow method (paper §3.3, §4.1): the alignment VAE, the flow model and its three
training stages, sampling, and evaluation. `vaflow.config` assembles them with the data-side sections into `Params`.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from pydantic import Field, model_validator

from vaflow.config.section import Section
from vaflow.config.trainer import ClipTrainerConfig, TrainerConfig, needs_steps
from vaflow.errors import did_you_mean

# The ODE solvers of `vaflow.flow.SOLVERS`, named here so that validating params needs no torch
# (tests/flow/test_solvers.py checks that the two agree).
SOLVER_NAMES = ("euler", "midpoint", "rk4", "dopri5")

# --------------------------------------------------------------------------------------------
# VAFlow: the alignment VAE, the flow model and its three training stages (paper §3.3)
# --------------------------------------------------------------------------------------------


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
    # The prepared sources whose train (and val) clips this stage reads; [] = every source of `prepare.sources`. The
    # paper trains the alignment VAE on VGGSound + AudioSet-V2A and the flow on VGGSound only (§4.1).
    sources: list[str] = []
    val: ValidationConfig = ValidationConfig(every=100)
    # 200 steps of 32 clips: the loss has flattened by then (the README's default run gives the stage's time).
    trainer: TrainerConfig = TrainerConfig(
        steps=200, batch_size=32, lr=1e-3, warmup_steps=20, checkpoint_every=100, log_every=25, ema_decay=0.99
    )

    @model_validator(mode="after")
    def _trains(self) -> TrainAlignConfig:
        needs_steps(self.trainer, "train_align")
        _validation_fits(self.val, self.trainer)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel: must be odd (same-length convolutions), got {self.kernel}")
        return self


class FlowConfig(Section):
    """The flow model shared by `train_flow`, `joint_tune` and sampling (§3.2, Tables 3-4)."""

    # Source distribution: `video` (x_0 ~ N(μ, σ) from the alignment VAE: VAFlow) or `gaussian` (N(0, I)).
    prior: Literal["video", "gaussian"] = "video"
    # `flow`: flow matching (Eq. 8), sampled by `sample.solver`; `diffusion`: Figure 3's baseline, Gaussian-noise
    # diffusion with the cosine schedule and v-prediction, trained by the same estimator and sampled by DDIM in
    # `sample.steps` steps (it needs `prior: gaussian`; `sample.solver` does not apply).
    objective: Literal["flow", "diffusion"] = "flow"
    # DiT size from `vaflow.config.sizes.DIT_SIZES`: `small` trains in CPU minutes; dit_s/b/l/xl are the paper's
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
        from vaflow.config.sizes import DIT_SIZES

        if self.objective == "diffusion" and self.prior != "gaussian":
            raise ValueError(
                f"objective: diffusion starts from Gaussian noise; set prior: gaussian (not {self.prior!r})"
            )

        if self.size not in DIT_SIZES:
            hint = did_you_mean(self.size, DIT_SIZES)
            raise ValueError(f"size: unknown DiT size {self.size!r}{hint}; known: {sorted(DIT_SIZES)}")
        return self


# Suffixes of weight and card files: an `init` ending in one names a file, not a model folder.
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".ckpt", ".pt", ".pth")


def _model_folder(path: str, key: str) -> None:
    # An `init` names an exported model folder; a file of one (the weights, the card) or stray blanks are slips
    # that would otherwise surface as a missing card only once the stage runs.
    if path != path.strip():
        raise ValueError(f"{key}: leading or trailing blanks in {path!r}")
    name = PurePath(path)
    if name.suffix in _MODEL_FILE_SUFFIXES:
        raise ValueError(
            f"{key}: {path!r} is a file; give the exported model folder that holds vaflow.safetensors and "
            f"vaflow.json ({str(name.parent)!r}?)"
        )


class TrainFlowConfig(Section):
    """Stage 2 `train_flow`: the velocity estimator with the alignment VAE frozen (Eq. 8), trained from scratch
    or (`init`) fine-tuned from an exported VAFlow model."""

    # An exported VAFlow model folder (vaflow.safetensors + vaflow.json, as train_flow and joint_tune write them) to
    # fine-tune on these data: the stage starts from its estimator, its alignment-VAE encoder (the prior, frozen
    # as in stage 2) and its latent statistics, with a fresh optimiser for `trainer.steps`; train_align's model is
    # then not read. Its card must name these features' visual encoder and this WaveVAE, and the `flow` section
    # must describe it. "" (the default) builds a new estimator on train_align's prior: the paper's stage 2, and
    # the only start a pipeline that trains everything itself has.
    init: str = ""
    # The prepared sources whose train (and val) clips this stage reads; [] = every source of `prepare.sources`. The
    # paper trains the alignment VAE on VGGSound + AudioSet-V2A and the flow on VGGSound only (§4.1).
    sources: list[str] = []
    val: ValidationConfig = ValidationConfig(every=100)
    # 1200 steps of 32 clips: most of the embedded default's 10-minute budget, which its pretrained WaveVAE
    # leaves to VAFlow (the default run's stage times are in the README).
    trainer: TrainerConfig = TrainerConfig(
        steps=1200,
        batch_size=32,
        lr=1e-3,
        warmup_steps=50,
        checkpoint_every=200,
        log_every=50,
        ema_decay=0.99,
    )

    @model_validator(mode="after")
    def _trains(self) -> TrainFlowConfig:
        needs_steps(self.trainer, "train_flow")
        _validation_fits(self.val, self.trainer)
        if self.init:
            _model_folder(self.init, "init")
        return self


class JointTuneConfig(Section):
    """Stage 3 `joint_tune`: alignment-VAE encoder + estimator with Eq. 9; `trainer.steps: 0` passes stage 2's
    model (or `init`) through untouched (Table 3's "not tuned" rows)."""

    # An exported VAFlow model folder to tune instead of train_flow's output (which is then not read), with a fresh
    # optimiser for `trainer.steps` under its own training settings, as stage 2's model would be; its card must
    # name these features' visual encoder and this WaveVAE. "" (the default) tunes what train_flow just trained:
    # the paper's stage 3 follows its stage 2.
    init: str = ""
    # Eq. 9's λ_KL: the paper's alignment-VAE value keeps the tuned prior close to N(0, I).
    kl_weight: float = Field(8e-4, ge=0)
    # The prepared sources whose train (and val) clips this stage reads; [] = every source of `prepare.sources`. The
    # paper trains the alignment VAE on VGGSound + AudioSet-V2A and the flow on VGGSound only (§4.1).
    sources: list[str] = []
    val: ValidationConfig = ValidationConfig(every=100)
    # A lower lr than stage 2: the estimator is fine-tuned, the encoder starts from a useful prior.
    trainer: TrainerConfig = TrainerConfig(
        steps=300, batch_size=32, lr=3e-4, warmup_steps=20, checkpoint_every=100, log_every=50, ema_decay=0.99
    )

    @model_validator(mode="after")
    def _fits(self) -> JointTuneConfig:
        _validation_fits(self.val, self.trainer)
        if self.init:
            _model_folder(self.init, "init")
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
    # Finite and at most 20: beyond that guidance only amplifies the estimator's error into clipped noise.
    cfg: float = Field(1.0, ge=0, le=20, allow_inf_nan=False)
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
        if self.solver not in SOLVER_NAMES:
            hint = did_you_mean(self.solver, SOLVER_NAMES)
            raise ValueError(
                f"solver: unknown ODE solver {self.solver!r}{hint}; known: {sorted(SOLVER_NAMES)}"
            )
        return self


class ReferenceEvaluatorsConfig(Section):
    """Local weight files of the reference evaluators whose numbers the paper prints (paper §4.1 "Metrics", DESIGN
    §6); "" leaves one out. Each is the toolkits' official file, loaded strictly; nothing is downloaded."""

    # av-benchmark's PaSST-S (passt-s-f128-p16-s10-ap.476-swa.pt): fd_passt, kl_passt, is_passt.
    passt: str = ""
    # SpecVQGAN's Melception (melception-21-05-10T09-28-40.pt): fd_melception, kl_melception, is_melception.
    melception: str = ""
    # ImageBind huge (imagebind_huge.pth): ib_va.
    imagebind: str = ""
    # Diff-Foley's alignment classifier (eval_classifier.ckpt): acc, with `cavp_features`.
    sync_classifier: str = ""
    # Diff-Foley's CAVP features of the test videos, as its own extraction writes them: <clip id>.npz with
    # `feat` (frames × 512 at 4 fps). The classifier reads them; this pipeline does not compute them.
    cavp_features: str = ""
    # Synchformer (synchformer_state_dict.pth): desync.
    synchformer: str = ""
    # PANNs Cnn14 at 16 kHz (Cnn14_16k_mAP=0.438.pth): fd_panns, kl_panns, is_panns.
    panns: str = ""
    # Seed of the sync classifier's latent draw (Diff-Foley's script seeds 0): Acc is reported with it.
    seed: int = 0
    # Clips per forward pass; raise it on a GPU.
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _acc_needs_features(self) -> ReferenceEvaluatorsConfig:
        if self.sync_classifier and not self.cavp_features:
            raise ValueError(
                "cavp_features: the sync classifier (acc) reads Diff-Foley's CAVP features of the test videos"
            )
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
    # Seconds: smallest circular shift of a "shifted" (misaligned) pair, in training and calibration (DESIGN §6).
    min_shift: float = Field(0.25, gt=0)
    # The reference evaluators' weight files: each one given adds its metrics to every row (`fd_passt`, ...).
    reference: ReferenceEvaluatorsConfig = ReferenceEvaluatorsConfig()
    # The three networks train together, one loss each on disjoint weights: 120 steps of 32 clips are 15 passes
    # over the default's train split; the batch is also InfoNCE's in-batch negatives. AdamW at 2e-3 without
    # warm-up, schedule, clipping or averaging (ema_decay 0 ships the trained weights); the seed also draws the
    # initial weights and the calibration's halves and shifts. A train split above `in_memory_mb` is streamed.
    trainer: ClipTrainerConfig = ClipTrainerConfig(
        steps=120,
        batch_size=32,
        lr=2e-3,
        weight_decay=1e-4,
        warmup_steps=0,
        clip_grad=0.0,
        ema_decay=0.0,
        checkpoint_every=40,
        log_every=8,
    )

    @model_validator(mode="after")
    def _checks(self) -> EvaluatorsConfig:
        if self.mode == "import" and not self.source:
            raise ValueError("source: mode 'import' needs the folder of saved evaluators")
        if self.mode == "train":
            needs_steps(self.trainer, "evaluators")
        if self.trainer.batch_size < 2:
            raise ValueError("trainer.batch_size: InfoNCE and swapped pairs need at least 2 clips per batch")
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
