"""The Oobleck WaveVAE of Stable Audio Open: audio (B, C, N) <-> latents (B, D, N / hop).

DESIGN §2: VAFlow's flow target `x_a` is the WaveVAE posterior of the audio (SAO 1.0: 44.1 kHz stereo, hop 2048,
64 channels). The embedded default trains a small mono WaveVAE of the same architecture inside the pipeline;
the paper setup imports the SAO 1.0 VAE from the user's checkpoint (DESIGN §3).

Read top to bottom: weight-normed convolutions and SnakeBeta, the residual unit and the encoder/decoder blocks,
the encoder, the decoder and the bottleneck, the WaveVAE, checkpoint import/export and the exported model folder.
The configuration and the size registry live in the torch-free `vaflow.config.sizes`, so that params validation
needs no torch.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaflow.config.sizes import (
    SIZES,
    WaveVAEConfig,
    get_config,
)
from vaflow.hashing import weights_hash
from vaflow.models.artifacts import (
    Folder,
    MissingModelFileError,
    ModelFileError,
    check_fit,
    read_tensors,
    save,
    save_weights,
)
from vaflow.models.posterior import Posterior

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


# SAO's KL term is Σ_D (μ² + σ² − log σ² − 1) averaged over batch and time: twice the Gaussian KL.
SAO_KL_SCALE = 1.0


class VAEBottleneck(nn.Module):
    """Encoder output (B, 2·D, T) -> Posterior: mean and scale halves, std = softplus(scale) + 1e-4."""

    def forward(self, h: Tensor) -> Posterior:
        mean, scale = h.chunk(2, dim=1)  # (B, D, T) each
        # softplus keeps σ > 0; the 1e-4 floor is SAO's, needed to reproduce its latents.
        std = F.softplus(scale) + 1e-4  # (B, D, T)
        return Posterior(mean=mean, std=std, channel_dim=1)


# --------------------------------------------------------------------------------------------
# The WaveVAE
# --------------------------------------------------------------------------------------------


@dataclass
class WaveVAEOutput:
    """Result of a training forward pass."""

    reconstruction: Tensor  # (B, C, N)
    posterior: Posterior  # mean, std (B, D, T)
    z: Tensor  # (B, D, T), the latents that were decoded
    kl: Tensor  # (), Posterior.kl(SAO_KL_SCALE, square_once=False)


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
        if not next(self.parameters()).is_meta:  # on the meta device it is built for a load: no init
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
        kl = posterior.kl(SAO_KL_SCALE, square_once=False)
        return WaveVAEOutput(reconstruction=reconstruction, posterior=posterior, z=z, kl=kl)


def build(name_or_config: str | WaveVAEConfig, device: torch.device | str | None = None) -> WaveVAE:
    """A freshly initialised WaveVAE of a named size or config (device 'meta' builds shapes only)."""
    config = get_config(name_or_config)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return WaveVAE(config)


# --------------------------------------------------------------------------------------------
# Checkpoints: import (strict key copy, vaflow.models.artifacts), export, the model folder
# --------------------------------------------------------------------------------------------

# Where the VAE lives inside a full Stable Audio Open checkpoint (the DiT is under `model.`).
SAO_PREFIX = "pretransform.model."
SAO_CHECKPOINT = (
    "the Stable Audio Open 1.0 VAE checkpoint (model.ckpt or model.safetensors from "
    "huggingface.co/stabilityai/stable-audio-open-1.0, or the VAE's own state dict)"
)


def _vae_tensors(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The VAE's tensors: those under `prefix` (full-model layout; the rest is ignored), else all (bare VAE)."""
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return dict(tensors)


def _describe(config: WaveVAEConfig) -> str:
    """The size name for a registered config, else the config itself."""
    names = [name for name, c in SIZES.items() if c == config]
    return f"size {names[0]!r}" if names else repr(config)


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
    Every parameter must be present with the right shape and no VAE key may be left over, else ModelFileError.
    `expected` describes the file for the missing-file message (default: SAO's checkpoint for the sao size).
    """
    path = Path(path)
    if config is None:
        config = _config_from_metadata(path)
    config = get_config(config)
    what = expected or (SAO_CHECKPOINT if config == SIZES["sao"] else "a WaveVAE weight file (.safetensors)")
    tensors = _vae_tensors(read_tensors(path, f"expected {what}"), prefix)
    with torch.device("meta"):  # shapes only: every value comes from the file, so skip the random init
        model = WaveVAE(config)
    check_fit(model.state_dict(), tensors, f"{path}: does not match the WaveVAE {_describe(config)}")
    state = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _config_from_metadata(path: Path) -> WaveVAEConfig:
    """The config `save_wavevae` stored in a safetensors header."""
    if path.suffix != ".safetensors" or not path.is_file():
        raise ModelFileError(
            f"{path}: no config given and none stored in the file (pass a size name or config)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ModelFileError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if "wavevae_config" not in meta:
        raise ModelFileError(
            f"{path}: no config given and none stored in the file (pass a size name or config)"
        )
    return WaveVAEConfig.from_dict(json.loads(meta["wavevae_config"]))


def _metadata(model: WaveVAE) -> dict[str, str]:
    # One metadata key: safetensors writes its metadata map in a per-process random order, and two keys would
    # make the same weights save to different bytes (and weight hashes) from run to run.
    return {"wavevae_config": json.dumps(model.config.to_dict(), sort_keys=True)}


def save_wavevae(model: WaveVAE, path: str | os.PathLike) -> Path:
    """Write the bare VAE state dict to `path` (.safetensors) atomically, with its config in the metadata."""
    return save_weights(model, path, _metadata(model))


# The exported model folder: written by `audio_vae`, read by `encode_audio` and the later stages. The weights hold
# the bare VAE state dict (its WaveVAEConfig in the safetensors metadata); vae.json holds size, mode, sample_rate,
# hop, latent_dim, audio_channels, weights and weights_hash.
FOLDER = Folder(
    "wavevae.safetensors",
    "vae.json",
    "expected the WaveVAE that the audio_vae stage exports (dvc repro audio_vae)",
)


def export_model(vae: WaveVAE, out_dir: str | os.PathLike, card: Mapping[str, Any]) -> dict[str, Any]:
    """Write the model folder `out_dir`: the weights and `vae.json` (`card` plus the VAE's geometry and weights
    hash); returns the card written."""
    card = {
        **card,
        "sample_rate": vae.config.sample_rate,
        "hop": vae.hop,
        "latent_dim": vae.latent_dim,
        "audio_channels": vae.config.audio_channels,
        "weights": FOLDER.weights,
    }
    return save(out_dir, FOLDER, vae, card, hash_key="weights_hash", metadata=_metadata(vae))


def load_model(model_dir: str | os.PathLike) -> tuple[WaveVAE, str]:
    """The exported WaveVAE of a model folder (eval mode, config from its metadata) and its weights hash.

    A missing file is MissingModelFileError (a FileNotFoundError) that says which stage writes it.
    """
    path = Path(model_dir) / FOLDER.weights
    if not path.is_file():
        raise MissingModelFileError(f"{path}: no such file; {FOLDER.rebuild}")
    return load_wavevae(path), weights_hash(path)
