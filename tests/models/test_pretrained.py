"""The committed pretrained WaveVAE: its card matches its weights, and it reconstructs freshly rendered clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vaflow import config
from vaflow.data.synth.world import render_clip
from vaflow.eval import reconstruction
from vaflow.models import pretrained
from vaflow.models.wavevae import load_wavevae

FOLDER = Path(__file__).resolve().parents[2] / "data" / "pretrained" / "wavevae"


def _card() -> dict:
    clip = config.Params().clip
    return pretrained.read_card(FOLDER, size="small", sample_rate=clip.sample_rate, hop=256)


def test_card_describes_the_run():
    card = _card()
    # Two phases: 12000 steps from random weights, then 500 from those with the loudness term; one card in the other.
    assert card["recipe"]["audio_vae"]["mode"] == "train" and card["steps"] == 500
    assert card["init"]["steps"] == 12000 and card["recipe"]["audio_vae"]["loudness_weight"] == 1.0
    base = pretrained.read_card(FOLDER.parent / "wavevae-base", size="small", sample_rate=16000, hop=256)
    assert card["init"]["weights_sha256"] == base["weights_sha256"]
    assert card["training_manifest_sha256"] == base["training_manifest_sha256"]
    assert card["command"] == pretrained.REBUILD and not card["code"]["uncommitted_changes"]
    # The training world is the default's with a larger train split: same seed, same val and test splits.
    default = config.Params().synth.model_dump(mode="json")
    world = card["training_world"]["synth"]
    assert world["clips_per_split"]["train"] > default["clips_per_split"]["train"]
    assert {**world, "clips_per_split": None} == {**default, "clips_per_split": None}
    assert world["clips_per_split"]["test"] == default["clips_per_split"]["test"]
    assert len(card["training_manifest_sha256"]) == 64 and len(card["commit"]) == 40


def test_reconstructs_fresh_test_clips_as_the_card_says():
    card = _card()
    vae = load_wavevae(FOLDER / pretrained.WEIGHTS)
    synth = config.Params().synth
    audio = torch.stack([torch.from_numpy(render_clip(synth, "test", i).audio) for i in range(4)])
    figures = reconstruction.reconstruction_metrics(vae, audio, reconstruction.mean_log_mel(audio, 16000))
    # Four clips of the 64 the card averages: within 0.1 of its figure (per-class figures span 0.27-0.45).
    assert abs(figures["test_mel_l1"] - card["test_figures"]["test_mel_l1"]) < 0.1
    assert abs(figures["test_loudness_db"]) < 4.0


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FOLDER, tmp_path / "wavevae")
    return tmp_path / "wavevae"


def test_corrupted_weights_are_refused(copy: Path):
    data = bytearray((copy / pretrained.WEIGHTS).read_bytes())
    data[-100] ^= 0xFF
    (copy / pretrained.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="does not match its card"):
        pretrained.read_card(copy, size="small", sample_rate=16000)


def test_missing_file_names_it_and_the_rebuild(copy: Path):
    (copy / pretrained.WEIGHTS).unlink()
    with pytest.raises(
        pretrained.PretrainedError, match=r"wavevae\.safetensors: no such file.*vaflow preset"
    ):
        pretrained.read_card(copy, size="small", sample_rate=16000)


def test_other_size_or_rate_is_refused(copy: Path):
    with pytest.raises(pretrained.PretrainedError, match="sample_rate = 16000, the params ask for 8000"):
        pretrained.read_card(copy, size="small", sample_rate=8000)
    with pytest.raises(pretrained.PretrainedError, match="size = 'small', the params ask for 'base'"):
        pretrained.read_card(copy, size="base", sample_rate=16000)
    (copy / pretrained.CARD).write_text(json.dumps({"weights_sha256": "x"}))
    with pytest.raises(pretrained.PretrainedError, match="not a WaveVAE card"):
        pretrained.read_card(copy, size="small", sample_rate=16000)


def test_the_default_imports_this_folder_and_dvc_tracks_it():
    import yaml

    assert Path(config.Params().audio_vae.checkpoint) == Path("data/pretrained/wavevae") / pretrained.WEIGHTS
    assert config.Params().audio_vae.mode == "import"
    dvc = yaml.safe_load((FOLDER.parents[2] / "dvc.yaml").read_text())
    paths = next(v["paths"] for v in dvc["vars"] if "paths" in v)
    assert Path(paths["pretrained"]) == Path(config.Params().audio_vae.checkpoint).parents[1]
    assert "${paths.pretrained}" in dvc["stages"]["audio_vae"]["deps"]
