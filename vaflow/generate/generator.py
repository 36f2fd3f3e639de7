"""What every generation path shares: the loaded models, per-clip prior draws, the guided solve, the WaveVAE
decode and 16-bit wav files (paper §3.3, Inference).

Inference is: x_v → alignment-VAE posterior N(μ, σ) → x_0 = μ + σ·ε → integrate Eq. 1 with the (guided, Eq. 10)
estimator from t = 0 to 1 → x̂_a → WaveVAE decoder. The only randomness is ε. Here every clip (and every extra
draw k of it) draws its ε from its own generator, seeded by a hash of (seed, clip id, k), on the CPU: a clip's audio
does not depend on which clips share its batch, nor on the batch size or the device.
"""

from __future__ import annotations

import hashlib
import os
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vaflow import atomic
from vaflow.config.section import DictConfig
from vaflow.flow.solvers import ADAPTIVE
from vaflow.hashing import weights_hash
from vaflow.models import artifacts
from vaflow.models.vaflow import VAFlow
from vaflow.models.wavevae import WaveVAE, load_model

__all__ = [
    "Models",
    "Sampler",
    "clip_seed",
    "decode_audio",
    "default_device",
    "load_models",
    "prior_noise",
    "read_wav",
    "sample_latents",
    "write_wav",
]


@dataclass(frozen=True)
class Sampler(DictConfig):
    """How x̂_a is drawn: the ODE solver and its steps, Eq. 10's γ, and whether the estimator sees x_v."""

    solver: str  # a name in vaflow.flow.SOLVERS
    steps: int  # uniform steps of the fixed-step solvers; dopri5 adapts its own
    cfg: float  # γ of Eq. 10; 0 = plain conditional
    # "zero": null features for the estimator (Table 4's zero-input row); the prior still sees x_v
    cond: Literal["video", "zero"]

    def applied_cfg(self, model: VAFlow) -> float:
        """The γ that actually acts. With the condition hidden (cond "zero", or an estimator without
        cross-attention) both branches of Eq. 10 are v(x_t, t, ∅), so (1 + γ)·v − γ·v = v: γ is moot, 0."""
        return self.cfg if self.cond == "video" and model.dit.config.cross_attention else 0.0


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Models:
    """The exported VAFlow (eval mode) with its card, and the WaveVAE that decodes its latents."""

    flow: VAFlow
    card: dict[str, Any]
    vae: WaveVAE
    vae_hash: str  # weights hash of the WaveVAE file
    flow_hash: str  # weights hash of vaflow.safetensors

    @property
    def latent_length(self) -> int:
        """T_a of one generated window (the training clip's)."""
        return int(self.card["latent"]["length"])

    @property
    def latent_dim(self) -> int:
        return int(self.card["latent"]["dim"])

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sample_rate)

    @property
    def window_samples(self) -> int:
        """Audio samples of one window: T_a·hop (what the WaveVAE decodes T_a latent frames to)."""
        return self.latent_length * self.vae.hop

    @property
    def window_seconds(self) -> float:
        """The training window in seconds, T_a·hop / sample rate: taken from the model, not from params."""
        return self.window_samples / self.sample_rate


def load_models(
    vaflow_dir: str | Path,
    audio_vae_dir: str | Path,
    features: Mapping[str, Any],
    device: torch.device | str = "cpu",
) -> Models:
    """Load the VAFlow model folder and the WaveVAE folder, refusing either when it is not the model the other
    was trained with: `features` is the visual-encoder identity of the features that will be fed (kind, model
    name, weight hash, fps, dim), checked against the card; the WaveVAE's weight hash, hop and latent width must
    be the card's. Raises MissingModelFileError (a FileNotFoundError) naming the stage to run, ModelFileError or
    ModelMismatchError."""
    vaflow_dir = Path(vaflow_dir)
    vae, vae_hash = load_model(audio_vae_dir)
    card = artifacts.read_card(vaflow_dir, artifacts.FLOW)
    wavevae = {
        "weights_hash": vae_hash,
        "hop": vae.hop,
        "latent_dim": vae.latent_dim,
        "latent_length": card["wavevae"].get("latent_length"),  # a property of the clips, not of the VAE
    }
    model, card = artifacts.load_vaflow(vaflow_dir, features, wavevae)
    flow_hash = weights_hash(vaflow_dir / artifacts.FLOW.weights)
    return Models(model.to(device), card, vae.to(device).eval(), vae_hash, flow_hash)


# ----------------------------------------------------------------------------------------------------------------
# Prior draws and the solve
# ----------------------------------------------------------------------------------------------------------------


def clip_seed(seed: int, clip_id: str, k: int = 0) -> int:
    """A 63-bit seed for draw k of clip `clip_id`: a stable hash (sha256, not Python's salted hash())."""
    digest = hashlib.sha256(f"{seed}\0{clip_id}\0{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def prior_noise(seeds: Sequence[int], shape: tuple[int, int]) -> torch.Tensor:
    """ε (B, T_a, D_a) float32 on the CPU, row i from a generator seeded with seeds[i] (batch-independent)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def sample_latents(
    model: VAFlow, x_v: torch.Tensor, eps: torch.Tensor, sampler: Sampler
) -> tuple[torch.Tensor, list[int]]:
    """x_v (B, T_v, D_v) and ε (B, T_a, D_a) → (x̂_a (B, T_a, D_a) in WaveVAE units, NFE per row).

    Fixed-step solvers integrate the batch in one solve (the same grid for every row, so rows stay
    independent). dopri5 picks one step size for the whole batch from an error norm over every row, which
    would couple the clips, so it solves each row alone.
    """
    options = {
        "solver": sampler.solver,
        "steps": sampler.steps,
        "cfg": sampler.applied_cfg(model),
        "cond": sampler.cond,
    }
    t_a = eps.shape[1]
    if sampler.solver in ADAPTIVE:
        rows = [model.generate(x_v[i : i + 1], t_a, eps=eps[i : i + 1], **options) for i in range(len(x_v))]
        return torch.cat([x for x, _ in rows]), [nfe for _, nfe in rows]
    x, nfe = model.generate(x_v, t_a, eps=eps, **options)
    return x, [nfe] * len(x_v)  # (B, T_a, D_a)


@torch.no_grad()
def decode_audio(vae: WaveVAE, latents: torch.Tensor) -> np.ndarray:
    """x̂_a (B, T_a, D_a), time-major as the shards → mono audio (B, T_a·hop) float32 (the VAE is channel-major)."""
    device = next(vae.parameters()).device
    audio = vae.decode_mono(latents.transpose(1, 2).to(device))  # (B, D_a, T_a) -> (B, T_a·hop)
    return audio.float().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# Wav files
# ----------------------------------------------------------------------------------------------------------------


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> bool:
    """Write mono audio (N,) as a 16-bit PCM wav, atomically (temporary sibling + rename).

    Samples beyond ±1 are clipped (the WaveVAE's output may overshoot slightly). NaN/Inf samples, which only a
    diverged model makes, are written as 0 and reported: returns False when the audio was not finite.
    """
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"{path}: expected mono audio (N,), got shape {audio.shape}")
    finite = bool(np.isfinite(audio).all())
    clean = np.clip(np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    pcm = np.round(clean * 32767).astype("<i2")
    with atomic.replacing(path) as tmp, wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return finite


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A 16-bit mono wav as written by `write_wav` → (audio (N,) float32 in [-1, 1], sample rate)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM")
        rate, data = f.getframerate(), f.readframes(f.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float32) / 32767, rate
