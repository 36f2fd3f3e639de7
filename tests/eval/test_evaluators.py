"""The proxy evaluators (DESIGN §6): training learns, calibration separates, cards round-trip, loaders refuse."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaflow import config
from vaflow.data.clips import load_split
from vaflow.eval import evaluators as ev
from vaflow.hashing import weights_hash
from vaflow.models import artifacts
from vaflow.tracking import Tracker
from vaflow.train import evaluators as et

from .world import FAST, WORLD, rows

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "stages" / "evaluators.py"
# ---------------------------------------------------------------------------------------------------------------
# Data, training and calibration
# ---------------------------------------------------------------------------------------------------------------


def test_load_split_decodes_windows_at_the_evaluator_rate(world, data):
    labels, cfg, train, test = data
    assert train.frames.shape == (16, 8, 32, 32, 3) and train.frames.dtype == torch.uint8
    assert train.audio.shape == (16, 8000) and train.audio.dtype == torch.float32
    assert len(labels) == 8 and set(train.labels) == set(labels) and len(test) == 8
    test_rows = rows(world, "test")[:1] + [
        {**rows(world, "test")[0], "id": "broken", "path": str(world / "no.mp4")}
    ]
    some = load_split(test_rows, cfg, 1.0)
    assert len(some) == 1 and some.rejected == [("broken", "decode failed: no such file")]


def test_training_learns_each_task_on_the_train_split(data, trained):
    labels, _, train, _ = data
    fig = et.calibrate(trained, train, labels, FAST.min_shift)
    assert fig["audio_classifier"]["accuracy"] >= 0.5 > fig["audio_classifier"]["accuracy_chance"] == 1 / 8
    assert fig["av_embedder"]["ib_real"] > fig["av_embedder"]["ib_shuffled"] + 20
    sync = fig["sync_classifier"]
    assert sync["acc_aligned"] >= 0.75 and sync["acc_shifted"] <= 0.25 and sync["acc_swapped"] <= 0.5


def test_calibration_reports_every_figure_on_test_clips(data, trained):
    labels, cfg, _, test = data
    fig = et.calibrate(trained, test, labels, FAST.min_shift)
    assert set(fig["audio_classifier"]) == {
        "accuracy", "accuracy_chance", "clips", "fd_halves", "fd_halves_n", "fd_halves_reliable"
    }  # fmt: skip
    # 4 clips per half for a 16-dim embedding: computed, and flagged as unreliable.
    assert (
        fig["audio_classifier"]["fd_halves_n"] == 4 and fig["audio_classifier"]["fd_halves_reliable"] == 0.0
    )
    assert np.isfinite(fig["audio_classifier"]["fd_halves"]) and fig["audio_classifier"]["fd_halves"] >= -1e-6
    assert -100 <= fig["av_embedder"]["ib_shuffled"] <= 100 and fig["av_embedder"]["clips"] == 8
    assert {"acc_aligned", "acc_shifted", "acc_swapped"} <= set(fig["sync_classifier"])
    assert fig == et.calibrate(trained, test, labels, FAST.min_shift)  # seeded shifts and halves


def test_training_is_deterministic_for_a_seed(data):
    labels, cfg, train, _ = data
    short = FAST.model_copy(update={"epochs": 2})

    def weights(settings, fn=et.train_sync_classifier):
        return fn(train, cfg, settings)[0].state_dict()

    a, b = weights(short), weights(short)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = weights(short.model_copy(update={"seed": 1}))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    x = et.train_audio_classifier(train, labels, cfg, short)[0].state_dict()
    y = et.train_audio_classifier(train, labels, cfg, short)[0].state_dict()
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_shifts_stay_at_least_min_shift_away(data):
    audio = torch.arange(8000.0).repeat(50, 1)
    shifted = et._shift_audio(audio, 8000, 0.25, seed=3)
    k = 8000 - shifted[:, 0]  # a roll by k puts sample 8000 - k first
    assert ((k >= 2000) & (k <= 6000)).all()
    with pytest.raises(ValueError, match="no circular shift"):
        et._shift_audio(audio[:, :3000], 8000, 0.25, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Applying, saving and loading
# ---------------------------------------------------------------------------------------------------------------


def test_apply_functions_check_their_inputs(data, trained):
    _, cfg, _, test = data
    emb, logits = ev.audio_embed_and_logits(trained["audio_classifier"], test.audio.numpy(), 8000)
    assert emb.shape == (8, cfg.embed_dim) and logits.shape == (8, 8) and emb.dtype == np.float64
    up = torch.nn.functional.interpolate(test.audio[:, None], scale_factor=2, mode="linear")[:, 0]
    assert (
        ev.audio_embed_and_logits(trained["audio_classifier"], up, 16000)[0].shape == emb.shape
    )  # resampled
    bad = test.audio.clone()
    bad[2, 5] = float("nan")
    with pytest.raises(ValueError, match="1 of 8 audio rows contain NaN"):
        ev.audio_embed_and_logits(trained["audio_classifier"], bad, 8000)
    with pytest.raises(ValueError, match="want 8 \\(at 8 fps\\)"):
        ev.sync_probability(trained["sync_classifier"], test.frames[:, :4], test.audio)
    with pytest.raises(TypeError, match="expected a SyncClassifier"):
        ev.sync_probability(trained["av_embedder"], test.frames, test.audio)
    v, a = ev.av_embeddings(trained["av_embedder"], test.frames, test.audio)
    assert v.shape == a.shape == (8, cfg.av_dim) and np.allclose(np.linalg.norm(v, axis=1), 1)


def _outputs(models, test):
    return (
        *ev.audio_embed_and_logits(models["audio_classifier"], test.audio, 8000),
        *ev.av_embeddings(models["av_embedder"], test.frames, test.audio),
        ev.sync_probability(models["sync_classifier"], test.frames, test.audio),
    )


def test_save_load_round_trip_gives_identical_outputs(tmp_path, data, trained):
    labels, _, _, test = data
    for name, model in trained.items():
        card = ev.save_evaluator(tmp_path, name, model, labels, {"calibration": {"x": 1.0}})
        assert card["weight_hash"] and card["sample_rate"] == 8000 and card["labels"] == labels
    loaded = ev.load_evaluators(tmp_path)
    assert loaded["sync_classifier"].identity()["name"] == "sync_classifier"
    assert "proxy" in loaded["audio_classifier"].identity()["stands_in_for"]
    card = json.loads((tmp_path / "audio_classifier.json").read_text())
    assert (
        card["mel"] == {"n_mels": 64, "hop": 80, "n_fft": 256, "log_floor": 1e-5}
        and card["calibration"]["x"] == 1
    )
    for a, b in zip(_outputs(trained, test), _outputs(loaded, test), strict=True):
        assert np.array_equal(a, b)


def test_loader_refuses_missing_and_wrong_files(tmp_path, data, trained):
    labels = data[0]
    with pytest.raises(FileNotFoundError, match="dvc repro evaluators"):
        ev.load_evaluators(tmp_path / "nowhere")
    ev.save_evaluator(tmp_path, "audio_classifier", trained["audio_classifier"], labels, {})
    card_path, weights = tmp_path / "audio_classifier.json", tmp_path / "audio_classifier.safetensors"
    card = json.loads(card_path.read_text())

    def refused(match):
        with pytest.raises(artifacts.ModelFileError, match=match) as info:
            ev.load_evaluator(tmp_path, "audio_classifier")
        assert "dvc repro evaluators" in str(info.value)

    card_path.write_text("not json")
    refused("audio_classifier.json: not a JSON card")
    card_path.write_text(json.dumps({**card, "format": "something-else"}))
    refused("format 'something-else', expected 'vaflow-evaluator-1'")
    card_path.write_text(json.dumps(card))
    weights.write_bytes(weights.read_bytes()[:-4] + b"abcd")
    refused("corrupted or not the weights its card describes")
    # Weights of another shape, with a matching hash: the file is an evaluator, but not this one.
    ev.save_evaluator(tmp_path, "av_embedder", trained["av_embedder"], labels, {})
    shutil.copyfile(tmp_path / "av_embedder.safetensors", weights)
    card_path.write_text(json.dumps({**card, "weight_hash": weights_hash(weights)}))
    refused("does not fit its card's AudioClassifier")
    weights.unlink()
    refused("audio_classifier.safetensors: no such file")


# ---------------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------------


def _stage():
    spec = importlib.util.spec_from_file_location("stage_evaluators", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_trains_then_imports(tmp_path, world):
    stage, clip = _stage(), config.validate(WORLD).clip
    settings = FAST.model_copy(update={"epochs": 2})
    with Tracker("evaluators", metrics_dir=tmp_path / "metrics", mlflow=False, root=tmp_path) as tracker:
        stage.run(settings, clip, world, tmp_path / "trained", tracker)
    metrics = json.loads((tmp_path / "metrics" / "evaluators.json").read_text())
    for key in ("audio_classifier.accuracy", "av_embedder.ib_real", "sync_classifier.acc_shifted"):
        assert key in metrics
    card = json.loads((tmp_path / "trained" / "sync_classifier.json").read_text())
    assert card["training"]["clips"] == 16 and card["calibration"]["split"] == "test"

    imported = settings.model_copy(update={"mode": "import", "source": str(tmp_path / "trained")})
    with Tracker("evaluators", metrics_dir=tmp_path / "m2", mlflow=False, root=tmp_path) as tracker:
        stage.run(imported, clip, world, tmp_path / "imported", tracker)
    again = json.loads((tmp_path / "m2" / "evaluators.json").read_text())
    assert again == metrics  # the same evaluators on the same test clips
    assert (
        ev.load_evaluators(tmp_path / "imported")["av_embedder"].card["weight_hash"]
        == (json.loads((tmp_path / "trained" / "av_embedder.json").read_text())["weight_hash"])
    )
    with pytest.raises(ValueError, match="sample_rate=16000"):
        stage.run(
            imported, config.ClipConfig(duration=1.0, sample_rate=16000), world, tmp_path / "x", tracker
        )


def test_stage_main_reads_its_section(tmp_path, world, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # the tracker's repo root (mlartifacts/) is then tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("VAFLOW_EXPERIMENT", request.node.name)
    data = {**WORLD, "evaluators": {"epochs": 1, "batch_size": 8}}
    (tmp_path / "params.yaml").write_text(config.dump(config.validate(data)))
    _stage().main(["--prepared", str(world), "--out", "ev", "--metrics", "metrics"])
    assert set(ev.load_evaluators(tmp_path / "ev")) == set(ev.NAMES)
    assert "sync_classifier.acc_aligned" in json.loads((tmp_path / "metrics" / "evaluators.json").read_text())
    with pytest.raises(SystemExit) as exit_info:  # a missing import folder: one `error:` line, exit 2
        data["evaluators"] = {"mode": "import", "source": str(tmp_path / "nowhere")}
        (tmp_path / "params.yaml").write_text(config.dump(config.validate(data)))
        _stage().main(["--prepared", str(world), "--out", "ev2", "--metrics", "metrics"])
    assert exit_info.value.code == 2
