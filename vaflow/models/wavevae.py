"""The Oobleck WaveVAE of Stable Audio Open: audio (B, C, N) <-> latents (B, D, N / hop).

DESIGN §2: VAFlow's flow target `x_a` is the WaveVAE posterior of the audio (SAO 1.0: 44.1 kHz stereo, hop 2048,
64 channels). The embedded default trains a small mono WaveVAE of the same architecture inside the pipeline;
the paper setup imports the SAO 1.0 VAE from the user's checkpoint (DESIGN §3).

Read top to bottom: weight-normed convolutions and SnakeBeta, the residual unit and the encoder/decoder blocks,
the encoder, the decoder and the bottleneck, the WaveVAE, and checkpoint import/export. The configuration and the
size registry live in the torch-free `vaflow.config.sizes`, so that params validation needs no torch.

Module attribute names follow stable-audio-tools exactly (`encoder.layers.1.layers.0.layers.1.weight_g`, …),
so `WaveVAE(sizes "sao").state_dict()` has the names of the SAO checkpoint's keys under `pretransform.model.`,
and loading is a key copy.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaflow import atomic
from vaflow.config.sizes import (
    SIZES,
    WaveVAEConfig,
    get_config,
)
from vaflow.hashing import weights_hash  # noqa: F401  (re-exported: encode.py and tests import it from here)

# --------------------------------------------------------------------------------------------
# Layers: weight-normed convolutions and SnakeBeta
# --------------------------------------------------------------------------------------------


def _weight_norm(v: Tensor, g: Tensor) -> Tensor:
    """w = g · v / ‖v‖, the norm taken over every dim but 0 (Salimans & Kingma 2016; torch's old weight_norm)."""
    return v * (g / torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True))


def _split_weight(conv: nn.Module) -> None:
    """Replace `conv.weight` by `weight_g` (dim-0 norms) and `weight_v` (direction), the names in SAO's checkpoint.

    Own parameters rather than torch.nn.utils.weight_norm: same state-dict names and maths, but the module
    deep-copies (EMA), builds on the meta device and raises no deprecation warning.
    """
    v = conv.weight.detach()
    del conv.weight
    conv.weight_g = nn.Parameter(torch.empty(v.shape[0], 1, 1, device=v.device, dtype=v.dtype))
    conv.weight_v = nn.Parameter(v)


class WNConv1d(nn.Conv1d):
    """Conv1d with weight normalisation stored as `weight_g`, `weight_v`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _split_weight(self)

    @property
    def weight_normed(self) -> Tensor:
        """The effective convolution weight (C_out, C_in, K)."""
        return _weight_norm(self.weight_v, self.weight_g)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight_normed, self.bias)  # (B, C_out, L_out)


class WNConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d with weight normalisation over dim 0 (input channels), as torch's weight_norm does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _split_weight(self)

    @property
    def weight_normed(self) -> Tensor:
        """The effective transposed-convolution weight (C_in, C_out, K)."""
        return _weight_norm(self.weight_v, self.weight_g)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_normed
        return F.conv_transpose1d(
            x, w, self.bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )  # (B, C_out, L · stride)


_WN_CONVS = (WNConv1d, WNConvTranspose1d)


class SnakeBeta(nn.Module):
    """Snake with separate frequency and magnitude, both log-scale: x + sin²(e^α x) / (e^β + 1e-9)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(channels))  # log frequency, per channel
        self.beta = nn.Parameter(torch.empty(channels))  # log magnitude, per channel

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.exp()[None, :, None]  # (1, C, 1)
        # 1e-9 as in stable-audio-tools, so imported weights give the same outputs; the reciprocal is taken
        # per channel, so the full-size tensor sees a multiply instead of a divide.
        inv_beta = 1.0 / (self.beta.exp()[None, :, None] + 1e-9)  # (1, C, 1)
        s = torch.sin(alpha * x)  # (B, C, L)
        return torch.addcmul(x, s, s * inv_beta)  # (B, C, L): x + sin² / β


def _activation(config: WaveVAEConfig, channels: int) -> nn.Module:
    return SnakeBeta(channels) if config.use_snake else nn.ELU()


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class ResidualUnit(nn.Module):
    """x + conv1(act(conv7_dilated(act(x)))): the residual unit of every block."""

    def __init__(self, config: WaveVAEConfig, channels: int, dilation: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _activation(config, channels),
            WNConv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation),
            _activation(config, channels),
            WNConv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)  # (B, C, L)


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9), activation, then a strided conv that down-samples by `stride`."""

    def __init__(self, config: WaveVAEConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(config, in_channels, dilation=1),
            ResidualUnit(config, in_channels, dilation=3),
            ResidualUnit(config, in_channels, dilation=9),
            _activation(config, in_channels),
            # kernel 2s, padding ceil(s/2): exactly L/s output frames for even s.
            WNConv1d(
                in_channels,
                out_channels,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, C_in, L) -> (B, C_out, L / stride)


class DecoderBlock(nn.Module):
    """Activation, a transposed conv that up-samples by `stride`, then three residual units (dilations 1, 3, 9)."""

    def __init__(self, config: WaveVAEConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _activation(config, in_channels),
            # kernel 2s, padding ceil(s/2): exactly L·s output samples for even s.
            WNConvTranspose1d(
                in_channels,
                out_channels,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
            ResidualUnit(config, out_channels, dilation=1),
            ResidualUnit(config, out_channels, dilation=3),
            ResidualUnit(config, out_channels, dilation=9),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, C_in, L) -> (B, C_out, L · stride)


# --------------------------------------------------------------------------------------------
# Encoder, decoder, bottleneck
# --------------------------------------------------------------------------------------------


def _stage_channels(config: WaveVAEConfig) -> list[int]:
    """Channels before and after each stage: channels · [1, *c_mults]."""
    return [config.channels * m for m in (1, *config.c_mults)]


class OobleckEncoder(nn.Module):
    """Audio (B, C, N) -> mean and scale (B, 2·D, N / hop)."""

    def __init__(self, config: WaveVAEConfig) -> None:
        super().__init__()
        ch = _stage_channels(config)
        self.layers = nn.Sequential(
            WNConv1d(config.audio_channels, ch[0], kernel_size=7, padding=3),
            *(EncoderBlock(config, ch[i], ch[i + 1], s) for i, s in enumerate(config.strides)),
            _activation(config, ch[-1]),
            WNConv1d(ch[-1], config.encoder_latent_dim, kernel_size=3, padding=1),
        )

    def forward(self, audio: Tensor) -> Tensor:
        return self.layers(audio)  # (B, C, N) -> (B, 2·D, N / hop)


class OobleckDecoder(nn.Module):
    """Latents (B, D, T) -> audio (B, C, T · hop)."""

    def __init__(self, config: WaveVAEConfig) -> None:
        super().__init__()
        ch = _stage_channels(config)
        n = len(config.strides)
        self.layers = nn.Sequential(
            WNConv1d(config.latent_dim, ch[-1], kernel_size=7, padding=3),
            *(DecoderBlock(config, ch[i + 1], ch[i], config.strides[i]) for i in reversed(range(n))),
            _activation(config, ch[0]),
            WNConv1d(ch[0], config.audio_channels, kernel_size=7, padding=3, bias=False),
            nn.Tanh() if config.final_tanh else nn.Identity(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)  # (B, D, T) -> (B, C, T · hop)


@dataclass
class Posterior:
    """Diagonal Gaussian posterior q(z | audio) over latents."""

    mean: Tensor  # (B, D, T)
    std: Tensor  # (B, D, T)

    @property
    def var(self) -> Tensor:
        return self.std * self.std  # (B, D, T)

    @property
    def logvar(self) -> Tensor:
        return torch.log(self.var)  # (B, D, T)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std · ε, ε ~ N(0, I); shape (B, D, T)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def kl(self) -> Tensor:
        """Σ_D (μ² + σ² − log σ² − 1), averaged over batch and time: SAO's KL term (2× the Gaussian KL)."""
        return (self.mean * self.mean + self.var - self.logvar - 1).sum(1).mean()


class VAEBottleneck(nn.Module):
    """Encoder output (B, 2·D, T) -> Posterior: mean and scale halves, std = softplus(scale) + 1e-4."""

    def forward(self, h: Tensor) -> Posterior:
        mean, scale = h.chunk(2, dim=1)  # (B, D, T) each
        # softplus keeps σ > 0; the 1e-4 floor is SAO's, needed to reproduce its latents.
        std = F.softplus(scale) + 1e-4  # (B, D, T)
        return Posterior(mean=mean, std=std)


# --------------------------------------------------------------------------------------------
# The WaveVAE
# --------------------------------------------------------------------------------------------


@dataclass
class WaveVAEOutput:
    """Result of a training forward pass."""

    reconstruction: Tensor  # (B, C, N)
    posterior: Posterior  # mean, std (B, D, T)
    z: Tensor  # (B, D, T), the latents that were decoded
    kl: Tensor  # (), Posterior.kl()


class WaveVAE(nn.Module):
    """Oobleck encoder + VAE bottleneck + Oobleck decoder (SAO 1.0's `pretransform.model`).

    Mono/stereo: `encode_mono` / `decode_mono` let a mono pipeline use a VAE with any number of channels:
    the mono signal is duplicated into every channel on the way in, and the channels are averaged on the way out
    (for a mono VAE both are a reshape).
    """

    def __init__(self, config: WaveVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = OobleckEncoder(config)
        self.decoder = OobleckDecoder(config)
        self.bottleneck = VAEBottleneck()
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Every init rule of the model, each with its reason."""
        for m in self.modules():
            if isinstance(m, _WN_CONVS):
                # v and bias: PyTorch's conv default (Kaiming-uniform, a=√5), which stable-audio-tools keeps.
                nn.init.kaiming_uniform_(m.weight_v, a=math.sqrt(5))
                # g = ‖v‖, so the normalised weight starts equal to v (the data-free weight-norm init).
                m.weight_g.copy_(torch.linalg.vector_norm(m.weight_v, dim=(1, 2), keepdim=True))
                if m.bias is not None:
                    fan_in = m.weight_v[0].numel()
                    nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            elif isinstance(m, SnakeBeta):
                # log-scale α = β = 0: unit frequency and magnitude, i.e. the plain Snake x + sin²(x).
                nn.init.zeros_(m.alpha)
                nn.init.zeros_(m.beta)

    @property
    def hop(self) -> int:
        return self.config.hop

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def _check_length(self, n: int) -> None:
        if n % self.hop:
            raise ValueError(
                f"WaveVAE: audio length {n} is not a multiple of the hop {self.hop}; "
                f"trim or pad it first (ClipConfig.padded_samples)"
            )

    def encode(self, audio: Tensor) -> Posterior:
        """audio (B, C, N), N a multiple of hop -> Posterior with mean, std (B, D, N / hop)."""
        if audio.dim() != 3 or audio.shape[1] != self.config.audio_channels:
            raise ValueError(
                f"WaveVAE.encode: expected audio (B, {self.config.audio_channels}, N), got {tuple(audio.shape)}"
            )
        self._check_length(audio.shape[-1])
        h = self.encoder(audio)  # (B, 2·D, T)
        return self.bottleneck(h)  # mean, std (B, D, T)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, D, T) -> audio (B, C, T · hop)."""
        if z.dim() != 3 or z.shape[1] != self.config.latent_dim:
            raise ValueError(
                f"WaveVAE.decode: expected z (B, {self.config.latent_dim}, T), got {tuple(z.shape)}"
            )
        return self.decoder(z)  # (B, C, T · hop)

    def encode_mono(self, audio: Tensor) -> Posterior:
        """Mono audio (B, N) -> Posterior (B, D, N / hop); the signal is duplicated into every VAE channel."""
        x = audio[:, None, :].expand(-1, self.config.audio_channels, -1)  # (B, C, N)
        return self.encode(x)  # mean, std (B, D, T)

    def decode_mono(self, z: Tensor) -> Tensor:
        """z (B, D, T) -> mono audio (B, T · hop), the mean of the VAE's channels."""
        return self.decode(z).mean(dim=1)  # (B, C, N) -> (B, N)

    def forward(self, audio: Tensor, sample: bool = True) -> WaveVAEOutput:
        """Training pass: audio (B, C, N) -> reconstruction (B, C, N), posterior, z, KL."""
        posterior = self.encode(audio)  # mean, std (B, D, T)
        z = posterior.sample() if sample else posterior.mean  # (B, D, T)
        reconstruction = self.decode(z)  # (B, C, N)
        return WaveVAEOutput(reconstruction=reconstruction, posterior=posterior, z=z, kl=posterior.kl())


def build(name_or_config: str | WaveVAEConfig, device: torch.device | str | None = None) -> WaveVAE:
    """A freshly initialised WaveVAE of a named size or config (device 'meta' builds shapes only)."""
    config = get_config(name_or_config)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return WaveVAE(config)


# --------------------------------------------------------------------------------------------
# Checkpoints: import (strict key copy), export, hash
# --------------------------------------------------------------------------------------------

# Where the VAE lives inside a full Stable Audio Open checkpoint (the DiT is under `model.`).
SAO_PREFIX = "pretransform.model."
SAO_CHECKPOINT = (
    "the Stable Audio Open 1.0 VAE checkpoint (model.ckpt or model.safetensors from "
    "huggingface.co/stabilityai/stable-audio-open-1.0, or the VAE's own state dict)"
)


class CheckpointError(RuntimeError):
    """A weight file that is missing, unreadable, or does not match the model; the message names the file."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The weight file does not exist; the message says what should be there."""


@dataclass
class _KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, first: int = 5) -> str:
        parts = []
        for what, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
        ):
            if keys:
                more = f" (+{len(keys) - first} more)" if len(keys) > first else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:first])}{more}")
        return "; ".join(parts)


def _read_tensors(path: Path) -> Mapping[str, Tensor]:
    """All tensors of a .safetensors file, or the (unwrapped) state dict of a torch .ckpt/.pt file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # any reader failure means the same thing: not a usable checkpoint
        raise CheckpointError(
            f"{path}: not a readable checkpoint; expected a torch .ckpt/.pt or a .safetensors file "
            f"({type(e).__name__}: {e})"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning / stable-audio-tools training checkpoints
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return obj


def _vae_tensors(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The VAE's tensors: those under `prefix` (full-model layout; the rest is ignored), else all (bare VAE)."""
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return dict(tensors)


def _describe(config: WaveVAEConfig) -> str:
    """The size name for a registered config, else the config itself."""
    names = [name for name, c in SIZES.items() if c == config]
    return f"size {names[0]!r}" if names else repr(config)


def _compare_keys(model: nn.Module, tensors: Mapping[str, Tensor]) -> _KeyReport:
    expected = model.state_dict()
    report = _KeyReport(
        missing=[k for k in expected if k not in tensors],
        unexpected=sorted(k for k in tensors if k not in expected),
    )
    for k, v in expected.items():
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape):
            report.wrong_shape.append(f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}")
    return report


def load_wavevae(
    path: str | os.PathLike,
    config: str | WaveVAEConfig | None = None,
    *,
    prefix: str = SAO_PREFIX,
    expected: str | None = None,
) -> WaveVAE:
    """Load a WaveVAE strictly from a local .safetensors / .ckpt / .pt file; the model is returned in eval mode.

    The file holds either a full Stable Audio Open model (VAE under `prefix`, other keys such as the DiT's
    `model.` ignored), possibly wrapped in {"state_dict": ...}, or a bare VAE state dict (as `save_wavevae`
    writes). `config` is a size name or config; None reads it from the metadata `save_wavevae` stores.
    Every parameter must be present with the right shape and no VAE key may be left over, else CheckpointError.
    `expected` describes the file for the missing-file message (default: SAO's checkpoint for the sao size).
    """
    path = Path(path)
    if config is None:
        config = _config_from_metadata(path)
    config = get_config(config)
    if not path.is_file():
        what = expected or (
            SAO_CHECKPOINT if config == SIZES["sao"] else "a WaveVAE weight file (.safetensors)"
        )
        raise MissingCheckpointError(f"{path}: no such file; expected {what}")
    tensors = _vae_tensors(_read_tensors(path), prefix)
    with torch.device("meta"):  # shapes only: every value comes from the file, so skip the random init
        model = WaveVAE(config)
    report = _compare_keys(model, tensors)
    if report:
        raise CheckpointError(f"{path}: does not match the WaveVAE {_describe(config)}: {report.describe()}")
    state = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _config_from_metadata(path: Path) -> WaveVAEConfig:
    """The config `save_wavevae` stored in a safetensors header."""
    if path.suffix != ".safetensors" or not path.is_file():
        raise CheckpointError(
            f"{path}: no config given and none stored in the file (pass a size name or config)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if "wavevae_config" not in meta:
        raise CheckpointError(
            f"{path}: no config given and none stored in the file (pass a size name or config)"
        )
    return WaveVAEConfig.from_dict(json.loads(meta["wavevae_config"]))


def save_wavevae(model: WaveVAE, path: str | os.PathLike) -> Path:
    """Write the bare VAE state dict to `path` (.safetensors) atomically, with its config in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in a per-process random order, and two keys would
    # make the same weights save to different bytes (and weight hashes) from run to run.
    metadata = {"wavevae_config": json.dumps(model.config.to_dict(), sort_keys=True)}
    with atomic.replacing(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path
