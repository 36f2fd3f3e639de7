"""Audio clips → WaveVAE posterior latents `x_a` (DESIGN §2, §5): the clip policy and the `encode_audio` callables.

Read top to bottom: the clip policy (one function decides what a decoded clip becomes or why it is rejected), the
posterior encoder, and the `load`/`encode` callables and spec that `vaflow.data.extract` writes shards with (the
same core, journal and rejected lists as the visual features).

Latent layout in the shards: `mean` and `std` are float16 arrays shaped (T_a, D_a), time-major as the paper writes
x_a ∈ R^{T_a×D_a}; the WaveVAE itself is channel-major (B, D_a, T_a), so `posterior_latents` transposes once here
and a reader that decodes transposes back. float16 keeps ~3 significant digits, far below the posterior's own
spread (std), and halves the shards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from vaflow.config import ClipConfig
from vaflow.data import media
from vaflow.data.extract import ClipRejected, extraction_spec, rejection_reason
from vaflow.data.prepare import DURATION_TOLERANCE

# The exported WaveVAE folder that `audio_vae` writes and `encode_audio` reads (its format: vaflow.models.artifacts).
from vaflow.models.wavevae import FOLDER, WaveVAE, export_model, load_model

# --------------------------------------------------------------------------------------------
# The clip policy
# --------------------------------------------------------------------------------------------

# A clip may fall this much short of its padded window and is zero-padded: the same tolerance `prepare` accepts
# (container rounding, AAC priming), so a clip the manifest holds is never rejected here for its length.
PAD_TOLERANCE_S = DURATION_TOLERANCE
# RMS below which a clip counts as silent (−80 dBFS): a dead or muted track. Silence is rejected rather than
# encoded: in V2A data it means a broken recording, and as a target it teaches the model that a visible sound
# source may be mute. The quietest synthetic clips sit near 0.03 RMS (−30 dBFS), far above it.
SILENCE_RMS = 1e-4


def fit_length(audio: np.ndarray, n_samples: int, tolerance: int) -> np.ndarray:
    """The clip-length policy: audio (N,) -> (n_samples,).

    A longer clip loses its tail (the window starts where the manifest says, so the head is what was asked for);
    a clip at most `tolerance` samples short gets a zero tail; anything shorter raises ClipRejected("too short").
    """
    n = audio.shape[-1]
    if n >= n_samples:
        return audio[:n_samples]
    if n_samples - n > tolerance:
        raise ClipRejected(f"too short: {n} < {n_samples} samples")
    return np.concatenate([audio, np.zeros(n_samples - n, audio.dtype)])


def clip_audio(audio: np.ndarray, sample_rate: int, n_samples: int) -> np.ndarray:
    """The whole clip policy: decoded mono audio (N,) -> (n_samples,) float32 ready to encode, or ClipRejected.

    In order: NaN/Inf anywhere → rejected ("non-finite audio"); length by `fit_length` (tolerance PAD_TOLERANCE_S);
    samples beyond ±1 are clamped to [-1, 1] (a clipped recording is still the right sound, and the WaveVAE was
    trained on [-1, 1]); RMS below SILENCE_RMS → rejected ("silent audio").
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (N,), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ClipRejected("non-finite audio")
    audio = fit_length(audio, n_samples, round(PAD_TOLERANCE_S * sample_rate))
    audio = np.clip(audio, -1.0, 1.0)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise ClipRejected(f"silent audio (RMS {rms:.1e})")
    return audio


def load_clip(path: str, start: float, clip: ClipConfig, n_samples: int) -> np.ndarray:
    """Decode one clip's window at `clip.sample_rate` and apply `clip_audio`: (n_samples,) float32.

    Raises MediaError (decode failure) or ClipRejected (policy).
    """
    audio = media.read_audio(path, clip.sample_rate, start, clip.duration)
    return clip_audio(audio, clip.sample_rate, n_samples)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def posterior_latents(vae: WaveVAE, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono audio (B, N), N a multiple of hop -> posterior (mean, std), each (B, T_a, D_a) float32 on CPU."""
    device = next(vae.parameters()).device
    posterior = vae.encode_mono(audio.to(device))  # mean, std (B, D_a, T_a)
    mean = posterior.mean.float().transpose(1, 2).cpu()  # (B, T_a, D_a)
    std = posterior.std.float().transpose(1, 2).cpu()  # (B, T_a, D_a)
    return mean, std


@dataclass
class _Clip:
    """A decoded clip on its way from `AudioLoader` to `LatentEncoder`."""

    id: str
    audio: np.ndarray  # (n_samples,)
    meta: dict[str, Any]


class AudioLoader:
    """`load(id)` for `extract_split`: the clip's manifest window through the clip policy (`load_clip`).

    Raises MediaError (decode failure) or ClipRejected (policy); both become rejections with their reason.
    """

    def __init__(self, rows: pd.DataFrame, clip: ClipConfig, hop: int):
        """`rows`: manifest rows with id, path (absolute), start and label; `hop`: the WaveVAE's hop."""
        self.rows = {str(r["id"]): r for r in rows.to_dict("records")}
        self.clip, self.n_samples = clip, clip.padded_samples(hop)

    def __call__(self, clip_id: str) -> _Clip:
        r = self.rows[clip_id]
        audio = load_clip(r["path"], float(r["start"]), self.clip, self.n_samples)
        return _Clip(clip_id, audio, {"label": str(r.get("label", ""))})


class LatentEncoder:
    """`encode(clips)` for `extract_split`: a batch of decoded clips -> [{"mean", "std": (T_a, D_a) float16,
    "meta"}], with a ClipRejected("non-finite latents") in place of a clip whose latents overflow float16 or are
    NaN (so no NaN/Inf ever reaches a shard). The VAE runs on whatever device it is on."""

    def __init__(self, vae: WaveVAE, clip: ClipConfig):
        self.vae = vae
        self.t_a = clip.latent_length(vae.hop)
        if self.t_a < 1:
            raise ValueError(
                f"clip.duration {clip.duration}s is shorter than one latent frame of hop {vae.hop}"
            )

    def __call__(self, clips: list[_Clip]) -> list[dict[str, Any] | ClipRejected]:
        audio = torch.from_numpy(np.stack([c.audio for c in clips]))  # (B, N)
        mean, std = posterior_latents(self.vae, audio)  # (B, T_a, D_a)
        if mean.shape[1] != self.t_a:
            raise RuntimeError(f"the WaveVAE gave {mean.shape[1]} latent frames, expected T_a = {self.t_a}")
        mean16, std16 = mean.half().numpy(), std.half().numpy()  # (B, T_a, D_a)
        out: list[dict[str, Any] | ClipRejected] = []
        for i, c in enumerate(clips):
            if not (np.isfinite(mean16[i]).all() and np.isfinite(std16[i]).all()):
                out.append(ClipRejected("non-finite latents"))
            else:
                out.append({"mean": mean16[i], "std": std16[i], "meta": c.meta})
        return out


def latent_spec(
    vae: WaveVAE,
    vae_hash: str,
    clip: ClipConfig,
    per_shard: int,
    splits: Mapping[str, pd.DataFrame],
    code: str,
) -> dict[str, Any]:
    """The latent shards' `extraction_spec`: the WaveVAE keys (weights_hash, hop, latent_dim, latent_length:
    what the flow stages check a model against, `artifacts.wavevae_identity`), the sample layout and clip policy.

    `splits`: split name -> its manifest rows in clip order.
    """
    identity = {
        "weights_hash": vae_hash,
        "latent_length": clip.latent_length(vae.hop),
        "latent_dim": vae.latent_dim,
        "hop": vae.hop,
    }
    payload = {
        "layout": {"mean": "(T_a, D_a) float16", "std": "(T_a, D_a) float16"},
        "policy": {"pad_tolerance_s": PAD_TOLERANCE_S, "silence_rms": SILENCE_RMS},
    }
    return extraction_spec(identity, payload, clip, per_shard, splits, code)


__all__ = [
    "FOLDER",
    "PAD_TOLERANCE_S",
    "SILENCE_RMS",
    "AudioLoader",
    "LatentEncoder",
    "clip_audio",
    "export_model",
    "fit_length",
    "latent_spec",
    "load_clip",
    "load_model",
    "posterior_latents",
    "rejection_reason",
]
