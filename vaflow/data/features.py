"""Visual features for the flow: the encoder directory, and the load/encode callables of `data.extract.extract_split`.

Encoder directory (written for every kind and mode, so feature extraction needs nothing but the directory):

    encoder.json       {"format", "kind", "options" (build_encoder arguments), "weights" (file name or null),
                        "identity" (VisualEncoder.identity(): kind, model name, weight hash, fps, input size, dim)}
    <kind>.<ext>       a copy of the weights (cavp: safetensors checkpoint; clip: the open_clip state dict)

Loading rebuilds the encoder from the copy and refuses it when its identity differs from the recorded one (e.g. a
replaced weight file), so features are never silently produced by another model than the one named beside them.

Feature shards: `<split>/visual-%06d.tar`, one sample per clip with `feat` (T_v, D_v) float16 and a meta dict that
names the encoder, written by `vaflow.data.extract` (the same core, spec folder, journal and rejected lists as the
audio latents). `feature_spec` is what the shards depend on; a rerun under another spec clears the stale shards.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vaflow import atomic
from vaflow.config import ClipConfig
from vaflow.config.section import jsonable
from vaflow.data import media, shards
from vaflow.data.extract import ClipRejected, extraction_spec
from vaflow.hashing import weights_hash
from vaflow.models.artifacts import Folder, ModelFileError, read_card
from vaflow.models.encoders import build_encoder
from vaflow.models.visual import VisualEncoder

__all__ = [
    "ENCODER",
    "ENCODER_FILE",
    "FEATURE_NAME",
    "FeatureEncoder",
    "FrameLoader",
    "compact_identity",
    "export_encoder",
    "feature_shards",
    "feature_spec",
    "load_encoder",
    "read_encoder_card",
]

ENCODER_FILE = "encoder.json"
ENCODER_FORMAT = "vaflow-visual-encoder-1"
# The encoder directory as a model folder: its card names the weights (a copy in the weights' own format).
ENCODER = Folder(
    None,
    ENCODER_FILE,
    "run the visual_encoder stage (dvc repro visual_encoder)",
    (("format", ENCODER_FORMAT),),
)
FEATURE_NAME = "visual"  # shard set name: <split>/visual-%06d.tar
# The build_encoder argument that names each kind's weight file.
_WEIGHTS_OPTION = {"cavp": "checkpoint", "clip": "weights"}


# ----------------------------------------------------------------------------------------------------------------
# The encoder directory
# ----------------------------------------------------------------------------------------------------------------


def export_encoder(
    out_dir: str | Path, kind: str, options: Mapping[str, Any], weights: str | Path | None = None
) -> VisualEncoder:
    """Validate the encoder `kind` built with `options` and `weights`, copy the weights into `out_dir`, and write
    `encoder.json`; returns the encoder (built from the source weights).

    `weights`: the weight file (cavp checkpoint, open_clip state dict or a folder holding one), None for `pixels`.
    A missing or unfit file raises ModelFileError naming it and what it should hold, before anything is written.
    """
    out_dir = Path(out_dir)
    options = dict(options)
    name = None
    if kind in _WEIGHTS_OPTION:
        if weights is None:
            raise ModelFileError(f"visual encoder '{kind}' needs a weight file")
        encoder = build_encoder(kind, **options, **{_WEIGHTS_OPTION[kind]: weights})
        source = Path(weights)
        if kind == "clip":
            from vaflow.models.clip import resolve_clip_weights

            source = resolve_clip_weights(options.get("model_name", "ViT-B-32"), weights)
        name = f"{kind}{''.join(source.suffixes[-1:]) or '.bin'}"
        target = out_dir / name
        out_dir.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
            with atomic.replacing(target) as tmp:
                shutil.copyfile(source, tmp)
        if weights_hash(target) != encoder.weights_hash:
            raise ModelFileError(f"{source} changed while it was copied to {target}; run the stage again")
    else:
        if weights is not None:
            raise ValueError(f"visual encoder '{kind}' takes no weight file, got {weights}")
        encoder = build_encoder(kind, **options)
    # A kind switch leaves the previous kind's weights behind when the stage is run by hand (DVC clears outs itself).
    for stale in out_dir.glob("*"):
        if stale.is_file() and stale.stem in _WEIGHTS_OPTION and stale.name != name:
            stale.unlink()
    card = {
        "format": ENCODER_FORMAT,
        "kind": kind,
        "options": jsonable(options),
        "weights": name,
        "identity": jsonable(encoder.identity()),
    }
    atomic.write_json(out_dir / ENCODER_FILE, card)
    return encoder


def read_encoder_card(encoder_dir: str | Path) -> dict[str, Any]:
    """The card (`encoder.json`) of an encoder directory; MissingModelFileError / ModelFileError say what is wrong."""
    return read_card(encoder_dir, ENCODER)


def load_encoder(encoder_dir: str | Path, device: str | torch.device = "cpu") -> VisualEncoder:
    """Rebuild the encoder an encoder directory describes, on `device`, checking it has the recorded identity."""
    encoder_dir = Path(encoder_dir)
    card = read_encoder_card(encoder_dir)
    kind, options = card["kind"], dict(card["options"])
    if card["weights"] is not None:
        options[_WEIGHTS_OPTION[kind]] = encoder_dir / card["weights"]
    encoder = build_encoder(kind, **options).to(device)
    recorded, rebuilt = card["identity"], jsonable(encoder.identity())
    if rebuilt != recorded:
        keys = sorted(k for k in set(recorded) | set(rebuilt) if recorded.get(k) != rebuilt.get(k))
        raise ModelFileError(
            f"{encoder_dir}: the encoder rebuilt from its files differs from {ENCODER_FILE} in {keys} "
            f"(a weight file was replaced?); {ENCODER.rebuild}"
        )
    return encoder


def compact_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields every feature sample carries (the full identity, with model config, is in spec.json)."""
    return {k: identity[k] for k in ("kind", "model_name", "weights_hash", "fps", "dim")}


# ----------------------------------------------------------------------------------------------------------------
# Load and encode callables for extract_split
# ----------------------------------------------------------------------------------------------------------------


class FrameLoader:
    """`load(id)` for extract_split: the clip's manifest window as frames (T, H, W, 3) uint8 at the encoder's fps
    and input size. A clip that does not decode (MediaError) or does not give T frames (ClipRejected with a
    one-line reason) is rejected."""

    def __init__(
        self, manifest: pd.DataFrame, encoder: VisualEncoder, num_frames: int, timeout: float = 120.0
    ):
        """`manifest`: rows with id, path (absolute), start, duration; `num_frames`: T = clip.n_frames(fps)."""
        self.rows = {str(r["id"]): r for r in manifest.to_dict("records")}
        self.fps, self.size = encoder.fps, encoder.input_size
        self.num_frames, self.timeout = num_frames, timeout

    def __call__(self, clip_id: str) -> tuple[str, np.ndarray]:
        row = self.rows[clip_id]
        path, start, duration = row["path"], float(row["start"]), float(row["duration"])
        # A MediaError is a rejection ("decode failed: …", `extract.rejection_reason`); a missing ffmpeg stops the run.
        frames = media.read_frames(path, self.fps, self.size, start, duration, timeout=self.timeout)
        if len(frames) < self.num_frames:
            raise ClipRejected(self._short_reason(path, start, duration, len(frames)))
        return clip_id, frames[: self.num_frames]

    def _short_reason(self, path: str, start: float, duration: float, got: int) -> str:
        # Tell a short file from one whose decoding stopped early: the container says how long it should be.
        try:
            length = media.probe(path, timeout=self.timeout).duration
        except media.MediaError:
            length = None
        have = f"{got} of {self.num_frames} frames at {self.fps:g} fps"
        if length is not None and length >= start + duration - 1 / self.fps:
            return f"truncated: decoded {have} though the file lasts {length:.2f}s"
        shown = "an unknown time" if length is None else f"{length:.2f}s"
        return f"too short: {have}; the file lasts {shown}, the window ends at {start + duration:g}s"


class FeatureEncoder:
    """`encode(inputs)` for extract_split: [(id, frames)] -> [{"feat": (T_v, D_v) float16, "meta": {...}}]."""

    def __init__(self, encoder: VisualEncoder, manifest: pd.DataFrame):
        self.encoder = encoder
        self.identity = compact_identity(encoder.identity())
        self.rows = {str(r["id"]): r for r in manifest.to_dict("records")}

    def __call__(self, inputs: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
        ids = [clip_id for clip_id, _ in inputs]
        frames = torch.from_numpy(np.stack([f for _, f in inputs]))  # (B, T, H, W, 3)
        feats = self.encoder.encode_batch(frames).float().cpu()  # (B, T_v, D_v)
        # float16 keeps ~3 significant digits, plenty for features the alignment VAE re-normalises; it overflows
        # past 65504, which no encoder here reaches, but a broken model would: refuse rather than store inf.
        half = feats.half()
        finite = torch.isfinite(half).flatten(1).all(1).tolist()  # (B,)
        if not all(finite):
            bad = [clip_id for clip_id, ok in zip(ids, finite, strict=True) if not ok]
            raise FloatingPointError(f"non-finite visual features (or beyond float16) for clips {bad[:5]}")
        out = []
        for clip_id, feat in zip(ids, half.numpy(), strict=True):
            row = self.rows[clip_id]
            meta = {
                "label": str(row.get("label", "")),
                "start": float(row["start"]),
                "duration": float(row["duration"]),
                "encoder": self.identity,
            }
            out.append({"feat": feat, "meta": meta})
        return out


# ----------------------------------------------------------------------------------------------------------------
# The feature set
# ----------------------------------------------------------------------------------------------------------------


def feature_shards(split_dir: str | Path) -> list[Path]:
    """The finished feature shards of one split, in shard order."""
    return shards.shard_paths(split_dir, FEATURE_NAME)


def feature_spec(
    encoder: VisualEncoder,
    clip: ClipConfig,
    num_frames: int,
    per_shard: int,
    splits: Mapping[str, pd.DataFrame],
    code: str,
) -> dict[str, Any]:
    """The feature shards' `extraction_spec`: the encoder's full identity (which `artifacts.feature_identity`
    reads back) and the frames per clip (`splits`: name -> manifest rows in clip order)."""
    identity = {"encoder": jsonable(encoder.identity())}
    return extraction_spec(identity, {"num_frames": num_frames}, clip, per_shard, splits, code)
