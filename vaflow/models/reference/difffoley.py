"""Diff-Foley's audio-visual alignment classifier, the paper's "Acc" metric (share of clips it judges in sync).

Reference code: luosiallen/Diff-Foley@0ba1e8a, `evaluation/align_acc.py` and `evaluation/config/eval_classifier.yaml`:
`Alignment_Classifier_metric` = a frozen latent-diffusion AutoencoderKL (`first_stage_model`), `Classifier_Backbone`
(`model`, a UNet encoder half with cross-attention to the video, ending in a sigmoid) and
`Video_Feat_Encoder_Posembed` (`cond_model`), plus the DDPM schedule buffers and `scale_factor` 0.18215.
Their latent-diffusion parts (AutoencoderKL, the UNet's blocks, the DDPM schedule) are built in `ldm`.
Official checkpoint: `eval_classifier.ckpt` (HuggingFace SimianLuo/Diff-Foley, `diff_foley_ckpt/`), a Lightning
checkpoint whose "state_dict" holds this module's keys (per the fixtures' key list); `read_checkpoint` reads it
without importing or running anything Lightning pickled (see there). Input: the 16 kHz waveform's 128-mel log-mel in [0, 1] (512 frames,
8.192 s; `spec`) and 32 CAVP frames at 4 fps. Output: P(in sync) per clip (`probability`); Acc = `accuracy(prob)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from vaflow.models import artifacts
from vaflow.models.reference import fit_length, load_strict
from vaflow.models.reference.ldm import (
    AutoencoderKL,
    GroupNorm32,
    ResBlock,
    SpatialTransformer,
    TimestepEmbedSequential,
    UNetDownsample,
    ddpm_schedule,
    timestep_embedding,
)

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
# The classifier: Classifier_Backbone, the encoder half of latent-diffusion's openaimodel UNet, pooled to P(sync)
# ----------------------------------------------------------------------------------------------------------------


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
    """Alignment_Classifier_metric's buffers: `scale_factor` and register_schedule's "linear" schedule."""
    return {
        "scale_factor": torch.tensor(c.scale_factor),
        **ddpm_schedule(c.timesteps, c.linear_start, c.linear_end),
    }


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
        self.first_stage_model = AutoencoderKL(
            ch=config.ae_ch,
            ch_mult=config.ae_ch_mult,
            num_res_blocks=config.ae_num_res_blocks,
            image_channels=config.image_channels,
            z_channels=config.z_channels,
            embed_dim=config.embed_dim,
        )
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
