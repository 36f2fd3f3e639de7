"""Audio clips → WaveVAE posterior latents `x_a` (DESIGN §2, §5): the clip policy and the encode-to-shards core.

Read top to bottom: the clip policy (one function decides what a decoded clip becomes or why it is rejected), the
exported-model folder that `audio_vae` writes and `encode_audio` reads, the posterior encoder, the shard-set spec
that keeps stale latents out of a persistent output, and `encode_split`.

Latent layout in the shards: `mean` and `std` are float16 arrays shaped (T_a, D_a), time-major as the paper writes
x_a ∈ R^{T_a×D_a}; the WaveVAE itself is channel-major (B, D_a, T_a), so `posterior_latents` transposes once here
and a reader that decodes transposes back. float16 keeps ~3 significant digits, far below the posterior's own
spread (std), and halves the shards.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vaflow import atomic
from vaflow.audio.wavevae import MissingCheckpointError, WaveVAE, load_wavevae, save_wavevae, weights_hash
from vaflow.config import ClipConfig
from vaflow.data import media
from vaflow.data.extract import ClipRejected, extract_split
from vaflow.data.prepare import DURATION_TOLERANCE

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
# Bumped when the policy changes what a clip encodes to, so that `encode_audio` redoes its shards.
POLICY_VERSION = 1


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


def rejection_reason(err: Exception) -> str:
    """One line for a rejected list: ffmpeg's short reason for a decode failure, the policy's message otherwise."""
    if isinstance(err, media.MediaError):
        return f"decode failed: {err.reason}"
    return " ".join(str(err).split())


# --------------------------------------------------------------------------------------------
# The exported model folder (written by `audio_vae`, read by `encode_audio` and later stages)
# --------------------------------------------------------------------------------------------

WEIGHTS_FILE = "wavevae.safetensors"  # bare VAE state dict, its WaveVAEConfig in the safetensors metadata
INFO_FILE = "vae.json"  # size, mode, sample_rate, hop, latent_dim, weights_hash, …


def export_model(vae: WaveVAE, out_dir: str | os.PathLike, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write `out_dir/wavevae.safetensors` and `out_dir/vae.json` (info plus the VAE's geometry and weight hash)."""
    out_dir = Path(out_dir)
    weights = save_wavevae(vae, out_dir / WEIGHTS_FILE)
    full = {
        **info,
        "sample_rate": vae.config.sample_rate,
        "hop": vae.hop,
        "latent_dim": vae.latent_dim,
        "audio_channels": vae.config.audio_channels,
        "weights": WEIGHTS_FILE,
        "weights_hash": weights_hash(weights),
    }
    atomic.write_text(out_dir / INFO_FILE, json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def load_model(model_dir: str | os.PathLike) -> tuple[WaveVAE, str]:
    """The exported WaveVAE (eval mode, config from its metadata) and its weight hash.

    A missing file is MissingCheckpointError (a FileNotFoundError) that says which stage writes it.
    """
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise MissingCheckpointError(
            f"{path}: no such file; expected the WaveVAE that the audio_vae stage exports (dvc repro audio_vae)"
        )
    return load_wavevae(path), weights_hash(path)


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
    """A decoded clip on its way from `load` to `encode` inside `extract_split`."""

    id: str
    audio: np.ndarray  # (n_samples,)
    meta: dict[str, Any]


def _latent_samples(vae: WaveVAE, clips: list[_Clip], t_a: int) -> list[dict[str, Any] | ClipRejected]:
    """Shard samples {"mean", "std": (T_a, D_a) float16, "meta"} for a batch; a ClipRejected in place of a clip
    whose latents are not finite in float16 (so no NaN/Inf ever reaches a shard)."""
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))  # (B, N)
    mean, std = posterior_latents(vae, audio)  # (B, T_a, D_a)
    if mean.shape[1] != t_a:
        raise RuntimeError(f"the WaveVAE gave {mean.shape[1]} latent frames, expected T_a = {t_a}")
    mean16, std16 = mean.half().numpy(), std.half().numpy()  # (B, T_a, D_a)
    out: list[dict[str, Any] | ClipRejected] = []
    for i, c in enumerate(clips):
        if not (np.isfinite(mean16[i]).all() and np.isfinite(std16[i]).all()):
            out.append(ClipRejected("non-finite latents"))
        else:
            out.append({"mean": mean16[i], "std": std16[i], "meta": c.meta})
    return out


# --------------------------------------------------------------------------------------------
# The shard-set spec and the rejected list (a persistent output shared by every rank)
# --------------------------------------------------------------------------------------------

SPEC_FILE = "spec.json"
_LOCK_FILE = ".lock"
_JOURNAL = ".rejected-r{rank}.tsv"  # per-rank append-only log of rejections, merged into rejected.csv
REJECTED_FILE = "rejected.csv"


def media_fingerprint(rows: pd.DataFrame) -> str:
    """sha256 of each clip's (id, split, path, start, duration, file size, mtime): which media the latents are of.

    Ids alone are not enough: a regenerated synthetic world keeps its ids and paths but changes the audio.
    """
    h = hashlib.sha256()
    for r in rows.itertuples(index=False):
        try:
            st = os.stat(r.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1  # a missing file is rejected when encoded; its absence is part of the state
        h.update(f"{r.id}\t{r.split}\t{r.path}\t{r.start!r}\t{r.duration!r}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:16]


def latent_spec(vae: WaveVAE, vae_hash: str, clip: ClipConfig, per_shard: int, rows: pd.DataFrame) -> dict:
    """Everything the shards' content depends on; a different spec means the old shards must go."""
    return {
        "vae_weights_hash": vae_hash,
        "clip": clip.model_dump(mode="json"),
        "per_shard": per_shard,
        "latent_length": clip.latent_length(vae.hop),
        "latent_dim": vae.latent_dim,
        "hop": vae.hop,
        "layout": {"mean": "(T_a, D_a) float16", "std": "(T_a, D_a) float16"},
        "policy": {
            "version": POLICY_VERSION,
            "pad_tolerance_s": PAD_TOLERANCE_S,
            "silence_rms": SILENCE_RMS,
        },
        "media": media_fingerprint(rows),
    }


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on `root` shared by every rank (flock: released by the OS if a process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def reset_if_changed(root: str | os.PathLike, spec: Mapping[str, Any]) -> bool:
    """Make `root` hold shards of `spec` only: when `root/spec.json` is missing or differs, delete everything in
    `root` and write the new spec. Returns True when something was deleted.

    Every rank calls it before writing; the first one through the lock clears, the others then find the spec
    matching, so ranks never delete each other's new shards.
    """
    root = Path(root)
    with _locked(root):
        path = root / SPEC_FILE
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old == json.loads(json.dumps(spec)):
            return False
        stale = [p for p in root.iterdir() if p.name != _LOCK_FILE]
        for p in stale:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        atomic.write_text(path, json.dumps(spec, indent=2, sort_keys=True) + "\n")
        return bool(stale)


def _merge_rejections(out_dir: Path, order: Sequence[str]) -> list[tuple[str, str]]:
    """Union of every rank's journal, in clip order, written to `out_dir/rejected.csv` (under the lock, so the last
    rank to finish writes the complete list)."""
    with _locked(out_dir):
        reasons: dict[str, str] = {}
        for journal in sorted(out_dir.glob(_JOURNAL.format(rank="*"))):
            for line in journal.read_text().splitlines():
                clip_id, _, reason = line.partition("\t")
                if clip_id:
                    reasons[clip_id] = reason
        rows = [(i, reasons[i]) for i in order if i in reasons]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["id", "reason"])
        writer.writerows(rows)
        atomic.write_text(out_dir / REJECTED_FILE, text.getvalue())
    return rows


# --------------------------------------------------------------------------------------------
# One split
# --------------------------------------------------------------------------------------------


@dataclass
class SplitReport:
    """What `encode_split` did for one split (this rank) and the split's rejected list (all ranks so far)."""

    written: int = 0  # shards this call finished
    skipped: int = 0  # shards already finished before
    encoded: int = 0  # clips this call wrote
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), whole split

    def reason_counts(self) -> dict[str, int]:
        """Rejections per reason (the text before the first ':' or '(')."""
        counts: dict[str, int] = {}
        for _, reason in self.rejected:
            key = reason.split(":")[0].split("(")[0].strip()
            counts[key] = counts.get(key, 0) + 1
        return counts


def encode_split(
    vae: WaveVAE,
    rows: pd.DataFrame,
    out_dir: str | os.PathLike,
    clip: ClipConfig,
    batch_size: int,
    per_shard: int,
    rank: int = 0,
    world: int = 1,
    name: str = "audio",
    progress: bool = True,
) -> SplitReport:
    """Encode the clips `rows` (manifest rows: id, path, start, label; in this order) into `out_dir/<name>-%06d.tar`.

    Each sample: `mean`, `std` (T_a, D_a) float16 with T_a = clip.latent_length(vae.hop), and `meta` {id, label}.
    Rank `rank` of `world` writes shards i with i % world == rank; finished shards are skipped (a killed run
    resumes). Rejected clips (decode failure, `clip_audio` policy, non-finite latents) are left out and listed in
    `out_dir/rejected.csv` (id, reason) together with those of the other ranks and of earlier, interrupted runs.
    The VAE runs on whatever device it is on.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_samples = clip.padded_samples(vae.hop)
    t_a = clip.latent_length(vae.hop)
    if t_a < 1:
        raise ValueError(f"clip.duration {clip.duration}s is shorter than one latent frame of hop {vae.hop}")
    by_id = {r.id: r for r in rows.itertuples(index=False)}
    ids = list(by_id)

    with open(out_dir / _JOURNAL.format(rank=rank), "a") as journal:

        def note(clip_id: str, err: Exception) -> None:
            journal.write(f"{clip_id}\t{rejection_reason(err)}\n")
            journal.flush()

        def load(clip_id: str) -> _Clip:
            r = by_id[clip_id]
            try:
                audio = load_clip(r.path, r.start, clip, n_samples)
            except media.FFmpegNotFoundError as err:  # a setup problem: stop, do not reject every clip
                raise RuntimeError(str(err)) from err
            except (media.MediaError, ClipRejected) as err:
                note(clip_id, err)
                raise
            return _Clip(clip_id, audio, {"label": str(getattr(r, "label", ""))})

        def encode(batch: list[_Clip]) -> list[Any]:
            samples = _latent_samples(vae, batch, t_a)
            for c, s in zip(batch, samples, strict=True):
                if isinstance(s, ClipRejected):
                    note(c.id, s)
            # extract_split re-raises an exception found in place of a sample when the writer reaches that clip.
            return samples

        report = extract_split(
            ids, out_dir, name, load, encode, batch_size, per_shard, rank=rank, world=world, progress=progress
        )
    return SplitReport(
        written=len(report.written),
        skipped=len(report.skipped),
        encoded=report.n_samples,
        rejected=_merge_rejections(out_dir, ids),
    )


__all__ = [
    "INFO_FILE",
    "PAD_TOLERANCE_S",
    "SILENCE_RMS",
    "SplitReport",
    "WEIGHTS_FILE",
    "clip_audio",
    "encode_split",
    "export_model",
    "fit_length",
    "latent_spec",
    "load_clip",
    "load_model",
    "media_fingerprint",
    "posterior_latents",
    "rejection_reason",
    "reset_if_changed",
]
