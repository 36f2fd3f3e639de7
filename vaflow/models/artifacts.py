"""Model folders: the one on-disk format of every trained or imported network, and the alignment VAE / VAFlow cards.

A model folder holds a safetensors weights file and a JSON card beside it, both written atomically. Each kind of
folder is a `Folder` (its two file names and what rebuilds them); `save` writes one, `load` reads one back strictly
(card first, the model built from it, then every weight with its exact shape), and `check_fit` is the one report of
weights that do not fit a model. Every such problem is a `ModelFileError` naming the file and what rebuilds it.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vaflow import atomic
from vaflow.config.section import jsonable
from vaflow.errors import UserError
from vaflow.hashing import weights_hash
from vaflow.models.align_vae import AlignEncoder, AlignLossWeights, AlignVAE, AlignVAEConfig
from vaflow.models.dit import DiTConfig, VelocityDiT
from vaflow.models.vaflow import FlowSettings, VAFlow

__all__ = [
    "ALIGN",
    "FLOW",
    "Folder",
    "MissingModelFileError",
    "ModelFileError",
    "ModelMismatchError",
    "check_fit",
    "mismatch",
    "check_identity",
    "feature_identity",
    "load",
    "load_align_vae",
    "load_vaflow",
    "read_card",
    "read_tensors",
    "save",
    "save_align_vae",
    "save_weights",
    "save_vaflow",
    "wavevae_identity",
]

SHOW_KEYS = 5  # how many keys of each kind a mismatch report names


class ModelFileError(RuntimeError, UserError):
    """A model file that is missing, unreadable or does not fit its model; the message names the file and what
    rebuilds it."""


class MissingModelFileError(ModelFileError, FileNotFoundError):
    """A model file that does not exist; the message says what writes it."""


class ModelMismatchError(ValueError, UserError):
    """An exported model met data (features or WaveVAE latents) of another model than it was trained on."""


@dataclass(frozen=True)
class Folder:
    """One kind of model folder: its weights and card file names (weights None: the card names them), what
    rebuilds them (named by its errors), and the (key, value) pairs its card must hold (its format)."""

    weights: str | None
    card: str
    rebuild: str
    expect: tuple[tuple[str, Any], ...] = ()


# ----------------------------------------------------------------------------------------------------------------
# The format: save, read, check, load
# ----------------------------------------------------------------------------------------------------------------


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model`'s state dict (on the CPU) to `path` as safetensors, atomically, `metadata` in its header."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic.replacing(path) as tmp:
        save_file(state, str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return path


def save(
    out_dir: str | Path,
    folder: Folder,
    model: nn.Module,
    card: Mapping[str, Any],
    *,
    hash_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write `model`'s state dict as `<out_dir>/<folder.weights>` (safetensors, `metadata` in its header) and
    `card` as `<out_dir>/<folder.card>`, each atomically; `hash_key` adds the weights' hash to the card under that
    key. Returns the card written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = save_weights(model, out_dir / folder.weights, metadata)
    card = dict(card)
    if hash_key is not None:
        card[hash_key] = weights_hash(weights)
    atomic.write_json(out_dir / folder.card, card)
    return card


def read_card(
    model_dir: str | Path, folder: Folder, expect: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A model folder's JSON card, holding the values `folder.expect` and `expect` name (its format, ...); else
    ModelFileError naming the card and what rebuilds it (MissingModelFileError when there is none)."""
    path = Path(model_dir) / folder.card
    if not path.is_file():
        raise MissingModelFileError(f"{path}: no such file; {folder.rebuild}")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: not a JSON card ({err}); {folder.rebuild}") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: not a card (a JSON {type(card).__name__}); {folder.rebuild}")
    for key, want in (*folder.expect, *(expect or {}).items()):
        if card.get(key) != want:
            raise ModelFileError(f"{path}: {key} {card.get(key)!r}, expected {want!r}; {folder.rebuild}")
    return card


def read_tensors(path: str | Path, rebuild: str, unwrap: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Every tensor of a .safetensors file, or the (unwrapped) state dict of a torch .ckpt/.pt file; a missing or
    unreadable file is a ModelFileError naming it and `rebuild` (what writes it, or what it should be). `unwrap`:
    further keys of an outer dict that hold the state dict (as "state_dict" does), tried in order."""
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(f"{path}: no such file; {rebuild}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # any reader failure means the same thing: not a usable weight file
        raise ModelFileError(
            f"{path}: not a readable checkpoint; expected a torch .ckpt/.pt or a .safetensors file "
            f"({type(e).__name__}: {e}); {rebuild}"
        ) from e
    for key in ("state_dict", *unwrap):  # Lightning / stable-audio-tools training checkpoints, ...
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: not a state dict (expected a mapping of names to tensors); {rebuild}")
    return dict(obj)


def read_metadata(path: str | Path, rebuild: str) -> dict[str, str]:
    """The metadata map in a .safetensors file's header ({} when it has none); ModelFileError like read_tensors."""
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(f"{path}: no such file; {rebuild}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # any reader failure: not a safetensors file
        raise ModelFileError(f"{path}: not a readable safetensors file ({e}); {rebuild}") from e


def mismatch(expected: Mapping[str, Any], tensors: Mapping[str, Any]) -> str:
    """What keeps `tensors` from loading into a model whose state dict is `expected`: the missing, unexpected and
    wrongly shaped keys (file shape != model shape), the first SHOW_KEYS of each; empty when they fit."""
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in expected)
    shapes = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and hasattr(tensors[k], "shape") and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - SHOW_KEYS} more)" if len(keys) > SHOW_KEYS else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:SHOW_KEYS])}{more}")
    return "; ".join(parts)


def check_fit(expected: Mapping[str, Any], tensors: Mapping[str, Any], where: str) -> None:
    """The one report of weights that do not fit a model: ModelFileError `<where>: <mismatch>` unless every key of
    `expected` (the model's state dict) is in `tensors` with its shape and no other key is."""
    report = mismatch(expected, tensors)
    if report:
        raise ModelFileError(f"{where}: {report}")


def load(
    model_dir: str | Path,
    folder: Folder,
    build: Callable[[dict[str, Any]], nn.Module],
    *,
    expect: Mapping[str, Any] | None = None,
    hash_key: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A model folder read back strictly: its card (`read_card`, with `expect`), the model `build(card)` makes,
    and every weight of the file loaded into it with its exact shape; `hash_key`: the card key holding the
    weights' hash, checked first. Returns the model in eval mode and its card; else ModelFileError."""
    model_dir = Path(model_dir)
    card = read_card(model_dir, folder, expect)
    weights = model_dir / folder.weights
    if not weights.is_file():
        raise MissingModelFileError(
            f"{weights}: no such file (named by {model_dir / folder.card}); {folder.rebuild}"
        )
    if hash_key is not None and (found := weights_hash(weights)) != card.get(hash_key):
        raise ModelFileError(
            f"{weights}: corrupted or not the weights its card describes (hash {found}, the card's "
            f"{card.get(hash_key)}); {folder.rebuild}"
        )
    with torch.device("meta"):  # shapes only: every value comes from the file, so no random initialisation
        model = build(card)
    tensors = read_tensors(weights, folder.rebuild)
    expected = model.state_dict()
    check_fit(
        expected, tensors, f"{weights}: does not fit its card's {type(model).__name__} ({folder.rebuild})"
    )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True, assign=True)
    if left := _on_meta(model):
        raise RuntimeError(
            f"{type(model).__name__}: {left} are not in its state dict; build it off the meta device"
        )
    return model.eval(), card


def _on_meta(model: nn.Module) -> list[str]:
    """Tensors of `model` still on the meta device: parameters, buffers and plain tensor attributes."""
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    for prefix, module in model.named_modules():
        left += [
            f"{prefix}.{k}".lstrip(".")
            for k, v in vars(module).items()
            if isinstance(v, Tensor) and v.is_meta
        ]
    return left


# ----------------------------------------------------------------------------------------------------------------
# The alignment VAE and VAFlow folders, and the identities of the data they were trained on
# ----------------------------------------------------------------------------------------------------------------

FORMAT = 1
# The card key of the weights' hash: every load checks the file against it, so a damaged file is named as such.
WEIGHTS_HASH = "weights_hash"
ALIGN = Folder(
    "align_vae.safetensors",
    "align_vae.json",
    "run the train_align stage first (dvc repro)",
    (("format", FORMAT),),
)
FLOW = Folder(
    "vaflow.safetensors",
    "vaflow.json",
    "run the train_flow / joint_tune stage first (dvc repro)",
    (("format", FORMAT),),
)
_FEATURE_KEYS = ("kind", "model_name", "weights_hash", "fps", "dim")
_WAVEVAE_KEYS = ("weights_hash", "hop", "latent_dim", "latent_length")


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


# ----------------------------------------------------------------------------------------------------------------
# Alignment VAE
# ----------------------------------------------------------------------------------------------------------------


def save_align_vae(
    model: AlignVAE, out_dir: str | Path, features: Mapping[str, Any], trained: Mapping
) -> Path:
    """Write the alignment VAE's weights and card; `features` is the feature identity it was trained on."""
    card = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "loss": dataclasses.asdict(model.weights),
        "features": dict(features),
        "trained": dict(trained),
    }
    save(out_dir, ALIGN, model, card, hash_key=WEIGHTS_HASH)
    return Path(out_dir) / ALIGN.weights


def load_align_vae(model_dir: str | Path, features: Mapping[str, Any] | None = None) -> tuple[AlignVAE, dict]:
    """The exported alignment VAE (eval mode) and its card; `features` given: refuse other features."""
    model_dir = Path(model_dir)

    def build(card: dict[str, Any]) -> AlignVAE:
        if features is not None:
            check_identity("visual features", card["features"], features, model_dir)
        return AlignVAE(AlignVAEConfig.from_dict(card["config"]), AlignLossWeights(**card["loss"]))

    return load(model_dir, ALIGN, build, hash_key=WEIGHTS_HASH)


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
    card = {
        "format": FORMAT,
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
    save(out_dir, FLOW, model, card, hash_key=WEIGHTS_HASH)
    return Path(out_dir) / FLOW.weights


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

    def build(card: dict[str, Any]) -> VAFlow:
        if features is not None:
            check_identity("visual features", card["features"], features, model_dir)
        if wavevae is not None:
            check_identity("WaveVAE", card["wavevae"], wavevae, model_dir)
        stored = FlowSettings(**card["settings"])
        chosen = settings or stored
        if chosen.prior != stored.prior:
            raise ModelMismatchError(
                f"{model_dir}: trained with prior {stored.prior!r}, asked for {chosen.prior!r}"
            )
        encoder = AlignEncoder(AlignVAEConfig.from_dict(card["align"])) if card["align"] else None
        dim = card["latent"]["dim"]
        dit = VelocityDiT(DiTConfig.from_dict(card["dit"]))
        return VAFlow(encoder, dit, torch.zeros(dim), torch.ones(dim), chosen)

    return load(model_dir, FLOW, build, hash_key=WEIGHTS_HASH)
