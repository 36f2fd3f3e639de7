"""Exported models: the alignment VAE (stage 1) and VAFlow (stages 2-3), as safetensors weights plus a JSON card.

    <dir>/align_vae.safetensors + align_vae.json   {format, config, loss, features, trained}
    <dir>/vaflow.safetensors    + vaflow.json      {format, align, dit, settings, latent, features, wavevae, trained}

`features` is the identity of the visual encoder whose features the model was trained on (kind, model name,
weight hash, fps, dim) and `wavevae` that of the WaveVAE whose latents it generates (weights hash, hop, latent
geometry). Loading with the identities of the data at hand refuses a mismatch and names both sides: a flow trained
on CAVP features cannot silently be fed CLIP features, nor decode with another WaveVAE.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vaflow import atomic
from vaflow.config.section import jsonable
from vaflow.models.align_vae import AlignEncoder, AlignLossWeights, AlignVAE, AlignVAEConfig
from vaflow.models.dit import DiTConfig, VelocityDiT
from vaflow.models.vaflow import FlowSettings, VAFlow

__all__ = [
    "ALIGN_CARD",
    "FLOW_CARD",
    "ModelMismatchError",
    "check_identity",
    "feature_identity",
    "load_align_vae",
    "load_vaflow",
    "read_card",
    "save_align_vae",
    "save_vaflow",
    "wavevae_identity",
]

FORMAT = 1
ALIGN_CARD, ALIGN_WEIGHTS = "align_vae.json", "align_vae.safetensors"
FLOW_CARD, FLOW_WEIGHTS = "vaflow.json", "vaflow.safetensors"
_FEATURE_KEYS = ("kind", "model_name", "weight_hash", "fps", "dim")
_WAVEVAE_KEYS = ("vae_weights_hash", "hop", "latent_dim", "latent_length")


class ModelMismatchError(ValueError):
    """An exported model met data (features or WaveVAE latents) of another model than it was trained on."""


def feature_identity(features_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The visual-encoder identity in a feature folder's spec.json (what a model trained on it records)."""
    encoder = features_spec["encoder"]
    return {k: encoder.get(k) for k in _FEATURE_KEYS}


def wavevae_identity(latents_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The WaveVAE identity in a latent folder's spec.json."""
    return {k: latents_spec.get(k) for k in _WAVEVAE_KEYS}


def check_identity(what: str, recorded: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    """Raise ModelMismatchError naming both identities when `current` differs from the model's `recorded` one."""
    if jsonable(dict(recorded)) != jsonable(dict(current)):
        keys = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        raise ModelMismatchError(
            f"{where} was trained on {what} {dict(recorded)} but the current {what} is {dict(current)} "
            f"(differs in {keys}): retrain it on these data (dvc repro) or use the matching data"
        )


def read_card(model_dir: str | Path, card: str) -> dict[str, Any]:
    """A model folder's JSON card; a missing one names the stage that writes it."""
    path = Path(model_dir) / card
    if not path.is_file():
        stage = "train_align" if card == ALIGN_CARD else "train_flow / joint_tune"
        raise FileNotFoundError(f"{path} not found: run the {stage} stage first (dvc repro)")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ModelMismatchError(
            f"{path}: format {data.get('format')!r}, expected {FORMAT}; re-export the model"
        )
    return data


def _save(model: torch.nn.Module, out_dir: Path, weights: str, card: str, info: dict[str, Any]) -> Path:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic.replacing(out_dir / weights) as tmp:
        save_file(state, str(tmp))
    atomic.write_json(out_dir / card, {"format": FORMAT, **info})
    return out_dir / weights


def _load_state(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the model folder is incomplete; rerun the stage that writes it"
        )
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelMismatchError(
            f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}: not this model's weights"
        )


# ----------------------------------------------------------------------------------------------------------------
# Alignment VAE
# ----------------------------------------------------------------------------------------------------------------


def save_align_vae(
    model: AlignVAE, out_dir: str | Path, features: Mapping[str, Any], trained: Mapping
) -> Path:
    """Write the alignment VAE's weights and card; `features` is the feature identity it was trained on."""
    info = {
        "config": model.config.to_dict(),
        "loss": dataclasses.asdict(model.weights),
        "features": dict(features),
        "trained": dict(trained),
    }
    return _save(model, Path(out_dir), ALIGN_WEIGHTS, ALIGN_CARD, info)


def load_align_vae(model_dir: str | Path, features: Mapping[str, Any] | None = None) -> tuple[AlignVAE, dict]:
    """The exported alignment VAE (eval mode) and its card; `features` given: refuse other features."""
    model_dir = Path(model_dir)
    card = read_card(model_dir, ALIGN_CARD)
    if features is not None:
        check_identity("visual features", card["features"], features, model_dir)
    model = AlignVAE(AlignVAEConfig.from_dict(card["config"]), AlignLossWeights(**card["loss"]))
    _load_state(model, model_dir / ALIGN_WEIGHTS)
    return model.eval(), card


# ----------------------------------------------------------------------------------------------------------------
# VAFlow
# ----------------------------------------------------------------------------------------------------------------


def save_vaflow(
    model: VAFlow,
    out_dir: str | Path,
    latent_length: int,
    features: Mapping[str, Any],
    wavevae: Mapping[str, Any],
    trained: list[dict[str, Any]],
) -> Path:
    """Write VAFlow's weights (encoder, estimator, latent statistics) and its card."""
    encoder = model.encoder
    info = {
        "align": encoder.config.to_dict() if encoder is not None else None,
        "dit": model.dit.config.to_dict(),
        "settings": model.settings.to_dict(),
        "latent": {
            "length": latent_length,
            "dim": model.dit.config.latent_dim,
            "mean": model.latent_mean.tolist(),
            "std": model.latent_std.tolist(),
        },
        "features": dict(features),
        "wavevae": dict(wavevae),
        "trained": list(trained),
    }
    return _save(model, Path(out_dir), FLOW_WEIGHTS, FLOW_CARD, info)


def load_vaflow(
    model_dir: str | Path,
    features: Mapping[str, Any] | None = None,
    wavevae: Mapping[str, Any] | None = None,
    settings: FlowSettings | None = None,
) -> tuple[VAFlow, dict[str, Any]]:
    """The exported VAFlow (eval mode) and its card. `features` / `wavevae`: the identities of the data it
    will see (refused when they differ from the card's); `settings`: replace the stored training settings
    (stage 3 tunes a stage-2 model under its own settings)."""
    model_dir = Path(model_dir)
    card = read_card(model_dir, FLOW_CARD)
    if features is not None:
        check_identity("visual features", card["features"], features, model_dir)
    if wavevae is not None:
        check_identity("WaveVAE", card["wavevae"], wavevae, model_dir)
    stored = FlowSettings(**card["settings"])
    settings = settings or stored
    if settings.prior != stored.prior:
        raise ModelMismatchError(
            f"{model_dir}: trained with prior {stored.prior!r}, asked for {settings.prior!r}"
        )
    encoder = AlignEncoder(AlignVAEConfig.from_dict(card["align"])) if card["align"] else None
    dim = card["latent"]["dim"]
    model = VAFlow(
        encoder, VelocityDiT(DiTConfig.from_dict(card["dit"])), torch.zeros(dim), torch.ones(dim), settings
    )
    _load_state(model, model_dir / FLOW_WEIGHTS)
    return model.eval(), card
