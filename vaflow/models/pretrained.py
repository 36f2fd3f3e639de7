"""The pretrained embedded WaveVAE (`data/pretrained/wavevae/`): its card, written once after the `wavevae`
preset's `audio_vae` run by `vaflow pretrained wavevae` (vaflow.train.publish), and checked against the weights
before they are used.

The card says how the weights were made (every param of the run, the training world and the hash of its manifest,
the commit, the machine, the wall time) and what they reached on the test split; `read_card` refuses weights whose
sha256 is not the card's and a card for another size, sample rate or hop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vaflow import atomic
from vaflow.hashing import file_sha256
from vaflow.models import artifacts

CARD = "card.json"
WEIGHTS = "wavevae.safetensors"
# The one command that rebuilds the folder and its first phase (configs/wavevae-base.yaml, configs/wavevae.yaml),
# named by every error about it.
REBUILD = (
    "vaflow preset wavevae-base && dvc repro audio_vae && vaflow pretrained wavevae --out data/pretrained/wavevae-base"
    " && vaflow preset wavevae && dvc repro audio_vae && vaflow pretrained wavevae && vaflow preset default"
)


FOLDER = artifacts.Folder(WEIGHTS, CARD, f"rebuild the pretrained WaveVAE with: {REBUILD}")


class PretrainedError(artifacts.ModelFileError):
    """A pretrained WaveVAE folder that is missing, corrupted or made for another clip format."""


def card_checked(checkpoint: str | os.PathLike, default: str | os.PathLike) -> bool:
    """Whether an imported `checkpoint` is a pretrained folder's weights, to be checked by `read_card`: the
    `default` path (the embedded default's, whose absence must name the rebuild command) or weights with a card
    beside them. A user's SAO checkpoint has none and is loaded as it is."""
    path = Path(checkpoint)
    return path == Path(default) or (path.name == WEIGHTS and (path.parent / CARD).is_file())


def write_card(folder: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write `card` (with the weights' sha256 added) as `<folder>/card.json`; returns its path."""
    folder = Path(folder)
    card = {**card, "weights": WEIGHTS, "weights_sha256": file_sha256(folder / WEIGHTS)}
    atomic.write_json(folder / CARD, card)
    return folder / CARD


def read_card(
    folder: str | os.PathLike, *, size: str, sample_rate: int, hop: int | None = None
) -> dict[str, Any]:
    """The card of `folder`, checked: both files present, weights hash equal to the card's, and the card's size,
    sample rate and hop (when given) equal to what the pipeline expects. Else PretrainedError naming the file."""
    folder = Path(folder)
    card_path, weights = folder / CARD, folder / WEIGHTS
    if not weights.is_file():
        raise PretrainedError(f"{weights}: no such file; {FOLDER.rebuild}")
    try:
        card = artifacts.read_card(folder, FOLDER)
    except artifacts.ModelFileError as e:
        raise PretrainedError(str(e)) from None
    try:
        expected_hash = card["weights_sha256"]
        made = card["wavevae"]
    except (KeyError, TypeError) as e:
        raise PretrainedError(f"{card_path}: not a WaveVAE card ({type(e).__name__}: {e})") from None
    actual = file_sha256(weights)
    if actual != expected_hash:
        raise PretrainedError(
            f"{weights}: sha256 {actual[:16]}… does not match its card's {str(expected_hash)[:16]}… "
            f"(a corrupted or replaced file); restore it from git or rebuild it with: {REBUILD}"
        )
    for key, want in (("size", size), ("sample_rate", sample_rate), ("hop", hop)):
        if want is not None and made.get(key) != want:
            raise PretrainedError(
                f"{card_path}: trained with wavevae.{key} = {made.get(key)!r}, the params ask for {want!r}"
            )
    return card
