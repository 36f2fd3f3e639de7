"""`vaflow pretrained wavevae`: a trained run of a checkout becomes a pretrained folder whose card the import stage
accepts; a run that is not the checkout's (import mode, code changed after training) is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.data.test_latents import load_stage, write_params
from tests.train.test_wavevae import _world
from vaflow.cli import main as cli
from vaflow.hashing import file_sha256
from vaflow.models import pretrained
from vaflow.train import publish

REPO = Path(__file__).resolve().parents[2]
RATE = 16000  # the tiny size's rate, so that the published codec can be imported
PARAMS = {"clip": {"duration": 1.0, "sample_rate": RATE}, "audio_vae": {"mode": "train", "size": "tiny", "segment": 0.2,
          "trainer": {"steps": 4, "batch_size": 2, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 2}}}  # fmt: skip


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def trained(stage_env) -> Path:
    """A checkout (the stage's code, dvc.yaml, a commit) whose audio_vae stage trained a tiny codec."""
    root = stage_env
    for name in ("stages", "vaflow"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    _git(root, "init", "-q")
    _git(root, "add", "stages", "vaflow", "dvc.yaml")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "checkout")
    _world(root / "data", sample_rate=RATE)  # data/prepared, as dvc.yaml's paths say
    write_params(root / "params.yaml", PARAMS)
    load_stage("audio_vae").main([
        "--params", "params.yaml", "--prepared", "data/prepared", "--out", "data/models/audio_vae",
        "--checkpoints", "data/checkpoints", "--metrics", "metrics",
    ])  # fmt: skip
    return root


def test_publish_writes_a_card_the_stage_accepts(trained: Path, capsys):
    cli(["pretrained", "wavevae", "--out", "pub"])
    assert "pub/card.json: card written" in capsys.readouterr().out
    card = pretrained.read_card(trained / "pub", size="tiny", sample_rate=RATE, hop=8)
    assert card["commit"] == _git(trained, "rev-parse", "HEAD") and not card["code"]["uncommitted_changes"]
    assert card["recipe"]["audio_vae"]["trainer"]["steps"] == 4 and card["steps"] == 4 and card["seed"] == 0
    assert card["command"] == pretrained.REBUILD and card["training_world"]["prepare_source"] == "synth"
    assert card["training_manifest_sha256"] == file_sha256(trained / "data/prepared/manifest.csv")
    metrics = json.loads((trained / "metrics/audio_vae.json").read_text())
    assert (
        card["test_figures"]["test_mel_l1"] == metrics["test_mel_l1"]
        and "train_loss" not in card["test_figures"]
    )
    assert card["wall_time_s"]["training"] >= 0 and card["machine"]["cores"] >= 1
    assert (trained / "pub/wavevae.safetensors").read_bytes() == (
        trained / "data/models/audio_vae/wavevae.safetensors"
    ).read_bytes()

    # The published folder is what the import stage takes, card checked.
    params = {
        **PARAMS,
        "audio_vae": {"mode": "import", "size": "tiny", "checkpoint": "pub/wavevae.safetensors"},
    }
    write_params(trained / "params.yaml", params)
    load_stage("audio_vae").main([
        "--params", "params.yaml", "--prepared", "data/prepared", "--out", "imported",
        "--checkpoints", "data/checkpoints", "--metrics", "metrics2",
    ])  # fmt: skip
    assert (
        json.loads((trained / "metrics2/audio_vae.json").read_text())["test_mel_l1"] == metrics["test_mel_l1"]
    )


def test_publish_refuses_a_run_that_is_not_the_checkouts(trained: Path):
    with (trained / "vaflow/eval/losses.py").open("a") as f:
        f.write("# changed after training\n")
    with pytest.raises(pretrained.PretrainedError, match="code or params changed after training"):
        publish.publish(trained, trained / "pub")
    write_params(
        trained / "params.yaml",
        {**PARAMS, "audio_vae": {"mode": "import", "size": "tiny", "checkpoint": "x"}},
    )
    with pytest.raises(pretrained.PretrainedError, match="audio_vae.mode is 'import'"):
        publish.publish(trained, trained / "pub")
    assert not (trained / "pub").exists()  # nothing written


def test_a_second_phase_carries_the_first_phases_card(trained: Path):
    first = publish.publish(trained, trained / "base")
    params = {**PARAMS, "audio_vae": {**PARAMS["audio_vae"], "init": "base/wavevae.safetensors",
                                      "loudness_weight": 1.0}}  # fmt: skip
    write_params(trained / "params.yaml", params)
    load_stage("audio_vae").main([
        "--params", "params.yaml", "--prepared", "data/prepared", "--out", "data/models/audio_vae",
        "--checkpoints", "data/checkpoints", "--metrics", "metrics",
    ])  # fmt: skip
    card = pretrained.read_card(
        publish.publish(trained, trained / "pub").parent, size="tiny", sample_rate=RATE
    )
    assert card["init"] == json.loads(first.read_text())
    assert card["recipe"]["audio_vae"]["init"] == "base/wavevae.safetensors"
    assert card["weights_sha256"] != card["init"]["weights_sha256"]
