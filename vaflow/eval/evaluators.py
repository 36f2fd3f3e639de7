"""In-pipeline proxy evaluators (DESIGN §6, paper §4.1 "Metrics"): their cards, loading, and applying them.

Three networks (`vaflow.models.evaluators`), trained on the *train* split by `vaflow.train.evaluators`
and independent of the generator's own encoders, stand in for the paper's evaluators: an audio classifier
(Melception/PaSST: FD, KL, IS), a video-audio embedding model (ImageBind: IB-VA) and a synchronisation classifier
(Diff-Foley's: Acc.). Metrics computed with them are proxies and must be named so in every output.

Each evaluator is a folder entry `<name>.safetensors` + `<name>.json` (the card: config, labels, sample rate, mel
settings, weight hash, calibration figures). The `evaluate` stage calls `load_evaluators` and then
`audio_embed_and_logits`, `av_embeddings` and `sync_probability`.

Sections: cards (save and load), applying the evaluators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaflow.models import artifacts
from vaflow.models.evaluators import NETWORKS, AudioClassifier, AVEmbedder, EvaluatorConfig, SyncClassifier

__all__ = [
    "CARD_FORMAT",
    "NAMES",
    "STANDS_IN_FOR",
    "Evaluator",
    "audio_embed_and_logits",
    "av_embeddings",
    "folder",
    "load_evaluator",
    "load_evaluators",
    "log_mel_of",
    "save_evaluator",
    "sync_probability",
]

CARD_FORMAT = "vaflow-evaluator-1"
NAMES = ("audio_classifier", "av_embedder", "sync_classifier")
# What each proxy stands in for: written into its card, so every metric can name its evaluator.
STANDS_IN_FOR = {
    "audio_classifier": "proxy for Melception/PaSST: log-mel conv classifier (FD embedding, KL, IS)",
    "av_embedder": "proxy for ImageBind: contrastive frame/log-mel encoders (IB-VA)",
    "sync_classifier": "proxy for Diff-Foley's sync classifier: aligned vs shifted/swapped pairs (Acc)",
}
_RUN_STAGE = "run the evaluators stage: dvc repro evaluators"


# ----------------------------------------------------------------------------------------------------------------
# Cards: save and load
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Evaluator:
    """A loaded evaluator: its network (eval mode) and its card."""

    name: str
    model: nn.Module
    card: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        """What every metric computed with it records: name, proxy description, weight hash, sample rate."""
        c = self.card
        return {k: c[k] for k in ("name", "stands_in_for", "weights_hash", "sample_rate")}


def folder(name: str) -> artifacts.Folder:
    """The model folder entry of evaluator `name`: `<name>.safetensors` and its card `<name>.json`."""
    return artifacts.Folder(
        f"{name}.safetensors", f"{name}.json", _RUN_STAGE, (("format", CARD_FORMAT), ("name", name))
    )


def save_evaluator(
    out_dir: str | Path, name: str, model: nn.Module, labels: list[str], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Write `<name>.safetensors` and its card `<name>.json` to out_dir; returns the card.

    `extra` (training settings, calibration figures, ...) is merged into the card.
    """
    c: EvaluatorConfig = model.config
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "stands_in_for": STANDS_IN_FOR[name],
        "config": c.to_dict(),
        "labels": list(labels),
        "sample_rate": c.sample_rate,
        "mel": {"n_mels": c.n_mels, "hop": c.hop, "n_fft": c.n_fft, "log_floor": 1e-5},
        "video": {"fps": c.fps, "side": c.side},
        "weights": folder(name).weights,
        **extra,
    }
    return artifacts.save(out_dir, folder(name), model, card, hash_key="weights_hash")


def load_evaluator(model_dir: str | Path, name: str) -> Evaluator:
    """The evaluator `name` saved in `model_dir`, checked against its card (format, hash, exact weight shapes)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(NAMES)}")

    def build(card: dict[str, Any]) -> nn.Module:
        try:
            return NETWORKS[name](EvaluatorConfig.from_dict(card["config"]))
        except Exception as err:  # a config the networks refuse
            raise artifacts.ModelFileError(
                f"{Path(model_dir) / folder(name).card}: cannot build {name} from it ({err}); {_RUN_STAGE}"
            ) from None

    model, card = artifacts.load(model_dir, folder(name), build, hash_key="weights_hash")
    return Evaluator(name, model, card)


def load_evaluators(model_dir: str | Path) -> dict[str, Evaluator]:
    """All three evaluators of `model_dir` by name; they must share one sample rate."""
    loaded = {name: load_evaluator(model_dir, name) for name in NAMES}
    rates = {e.card["sample_rate"] for e in loaded.values()}
    if len(rates) != 1:
        raise artifacts.ModelFileError(
            f"{model_dir}: evaluators at different sample rates {sorted(rates)}; {_RUN_STAGE}"
        )
    return loaded


# ----------------------------------------------------------------------------------------------------------------
# Applying the evaluators (what the `evaluate` stage calls)
# ----------------------------------------------------------------------------------------------------------------


def log_mel_of(model: nn.Module, audio: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Raw log-mel (N, n_mels, F) of audio (N, samples) through `model`'s own front end, in chunks."""
    return torch.cat([model.front.mel(a) for a in audio.split(chunk)]) if len(audio) else audio


def _net(model: nn.Module | Evaluator, kind: type[nn.Module]) -> nn.Module:
    net = model.model if isinstance(model, Evaluator) else model
    if not isinstance(net, kind):
        raise TypeError(f"expected a {kind.__name__} evaluator, got {type(net).__name__}")
    return net


def _audio_in(audio: np.ndarray | torch.Tensor, sample_rate: int, config: EvaluatorConfig) -> torch.Tensor:
    """Audio (N, samples) as finite float32 at the evaluator's rate (resampled if `sample_rate` differs)."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"audio must be (N, samples), got shape {tuple(x.shape)}")
    if not len(x):
        raise ValueError("no audio rows to score")
    bad = int((~torch.isfinite(x)).any(1).sum())
    if bad:
        raise ValueError(
            f"{bad} of {len(x)} audio rows contain NaN or inf: count and drop them before scoring"
        )
    if sample_rate != config.sample_rate:
        import torchaudio

        x = torchaudio.functional.resample(x, sample_rate, config.sample_rate)
    return x


def _frames_in(frames: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    """Frames as an (n, T, H, W, 3) uint8 tensor, or a ValueError saying what was given."""
    x = torch.as_tensor(np.asarray(frames))
    if x.ndim != 5 or x.shape[-1] != 3 or x.dtype != torch.uint8 or len(x) != n:
        raise ValueError(f"frames must be ({n}, T, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
    return x


@torch.no_grad()
def audio_embed_and_logits(
    classifier: AudioClassifier | Evaluator, audio: np.ndarray, sample_rate: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Audio (N, samples) float32 at `sample_rate` -> (FD embedding (N, E), class logits (N, C)), float64."""
    net = _net(classifier, AudioClassifier)
    x = _audio_in(audio, sample_rate, net.config)
    parts = [net(log_mel_of(net, chunk)) for chunk in x.split(batch_size)]
    emb = torch.cat([p[0] for p in parts])  # (N, E)
    logits = torch.cat([p[1] for p in parts])  # (N, C)
    return emb.double().numpy(), logits.double().numpy()


@torch.no_grad()
def av_embeddings(
    model: AVEmbedder | Evaluator, frames: np.ndarray, audio: np.ndarray, sample_rate: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, T, H, W, 3) uint8 at the card's fps, audio (N, samples) -> unit video and audio embeddings
    (N, D) each, float64 (`sample_rate` defaults to the evaluator's)."""
    net = _net(model, AVEmbedder)
    x = _audio_in(audio, sample_rate or net.config.sample_rate, net.config)
    f = _frames_in(frames, len(x))
    v = torch.cat([net.embed_video(chunk) for chunk in f.split(64)])
    a = torch.cat([net.embed_audio(log_mel_of(net, chunk)) for chunk in x.split(64)])
    return v.double().numpy(), a.double().numpy()


@torch.no_grad()
def sync_probability(
    model: SyncClassifier | Evaluator, frames: np.ndarray, audio: np.ndarray, sample_rate: int | None = None
) -> np.ndarray:
    """P(aligned) (N,) float64 of frames (N, T, H, W, 3) uint8 at the card's fps with audio (N, samples).

    T must be round(seconds · fps) of the audio's length: the classifier compares the two on one time grid.
    """
    net = _net(model, SyncClassifier)
    x = _audio_in(audio, sample_rate or net.config.sample_rate, net.config)
    f = _frames_in(frames, len(x))
    want = net.config.num_frames(x.shape[1])
    if f.shape[1] != want:
        raise ValueError(
            f"{f.shape[1]} frames for {x.shape[1]} samples: want {want} (at {net.config.fps:g} fps)"
        )
    logits = [net(fc, log_mel_of(net, xc)) for fc, xc in zip(f.split(64), x.split(64), strict=True)]
    return torch.sigmoid(torch.cat(logits)).double().numpy()
