"""The proxy evaluators (DESIGN §6): training learns, calibration separates, cards round-trip, loaders refuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.stage_scripts import load_stage
from vaflow import config
from vaflow.data.clips import ClipBatches, MemoryClips, StreamedClips, load_split
from vaflow.eval import evaluators as ev
from vaflow.hashing import weights_hash
from vaflow.models import artifacts
from vaflow.models.evaluators import AudioClassifier, AVEmbedder, SyncClassifier
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


def _weights(data, train_clips, settings, folder):
    store, _, norm = train_clips
    nets = et.train_evaluators(store, norm, data[1], settings, folder)[0]
    return {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(settings, steps: int, **more):
    return settings.model_copy(
        update={"trainer": settings.trainer.model_copy(update={"steps": steps, **more})}
    )


def test_training_is_deterministic_for_a_seed(data, train_clips, tmp_path):
    short = _steps(FAST, 4)
    a, b = (
        _weights(data, train_clips, short, tmp_path / "a"),
        _weights(data, train_clips, short, tmp_path / "b"),
    )
    assert _same(a, b)
    assert not _same(a, _weights(data, train_clips, _steps(FAST, 4, seed=1), tmp_path / "c"))


def test_a_lengthened_run_resumes_to_the_weights_of_an_uninterrupted_one(data, train_clips, tmp_path):
    """The Trainer's exact resume holds for the evaluators: batch order and the sync negatives' draws included."""
    straight = _weights(data, train_clips, _steps(FAST, 6), tmp_path / "straight")
    _weights(data, train_clips, _steps(FAST, 3), tmp_path / "resumed")
    resumed = _weights(data, train_clips, _steps(FAST, 6), tmp_path / "resumed")  # continues from step 3
    assert _same(straight, resumed)
    assert not _same(straight, _weights(data, train_clips, _steps(FAST, 3), tmp_path / "short"))


def test_pooled_moments_give_the_mean_and_std_of_the_whole():
    parts = [np.random.RandomState(i).normal(i, 1 + i, size=(3, 5 + 7 * i)) * 10.0**i for i in range(4)]
    whole = np.concatenate([p.ravel() for p in parts])
    mean, std = et.pooled_mean_std([et._moments(p)[0] for p in parts])
    assert mean == pytest.approx(whole.mean(), rel=1e-12) and std == pytest.approx(
        whole.std(ddof=1), rel=1e-12
    )


def test_a_streamed_train_split_gives_the_batches_and_statistics_of_the_in_memory_one(
    world, data, train_clips
):
    """Above `in_memory_mb` the split is streamed: the same clips, labels and rejections, the same frames, log-mel
    to float rounding (each clip's alone vs chunks of 64) and the log-mel mean and std pooled from per-clip moments."""
    labels, cfg, _, _ = data
    broken = {**rows(world, "train")[0], "id": "broken", "path": str(world / "no.mp4")}
    split = [broken, *rows(world, "train")]
    memory, kept, norm = et.open_train_clips(split, labels, cfg, 1.0, 2, float("inf"), progress=False)
    streamed, kept_s, norm_s = et.open_train_clips(split, labels, cfg, 1.0, 2, 0, progress=False)
    assert isinstance(memory, MemoryClips) and isinstance(streamed, StreamedClips)
    assert kept_s.ids == kept.ids and kept_s.rejected == kept.rejected == [
        ("broken", "decode failed: no such file")
    ]
    assert norm == train_clips[2] and norm_s == pytest.approx(norm, rel=1e-5)
    for a, b in zip(ClipBatches(memory, 4, seed=3), ClipBatches(streamed, 4, seed=3), strict=True):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["label"], b["label"])
        assert a["label"].dtype == b["label"].dtype == torch.int64
        assert torch.allclose(a["mel"], b["mel"], atol=1e-4, rtol=1e-5)


def test_the_evaluators_train_alike_on_a_streamed_split(world, data, tmp_path):
    """Three steps on the streamed split follow the in-memory run's losses to float rounding."""
    labels, cfg, _, _ = data
    split = rows(world, "train")
    losses = []
    for mb in (float("inf"), 0):
        store, _, norm = et.open_train_clips(split, labels, cfg, 1.0, 2, mb, progress=False)
        losses.append(et.train_evaluators(store, norm, cfg, _steps(FAST, 3), tmp_path / str(mb))[1])
    assert losses[0].keys() == losses[1].keys() and len(losses[0]) == 4  # the sum and each network's
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_the_objective_sums_three_losses_over_disjoint_networks(data):
    """One optimiser over the three networks equals three: their weights are disjoint and the loss is the sum."""
    labels, cfg, train, _ = data
    nets = {"audio_classifier": AudioClassifier(cfg), "av_embedder": AVEmbedder(cfg), "sync_classifier": SyncClassifier(cfg)}  # fmt: skip
    objective = et.EvaluatorObjective(nets)
    owned = [{id(p) for p in net.parameters()} for net in nets.values()]
    assert sum(map(len, owned)) == len(set().union(*owned)) == len(list(objective.parameters()))
    mel = ev.log_mel_of(nets["audio_classifier"], train.audio[:4])
    label = torch.tensor([labels.index(x) for x in train.labels[:4]])
    total, parts = objective(train.frames[:4], mel, label, et.sync_negatives(mel, 1, 3))
    assert set(parts) == set(nets) and torch.isclose(total, sum(parts.values()))
    assert all(v > 0 for v in parts.values())


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
        assert card["weights_hash"] and card["sample_rate"] == 8000 and card["labels"] == labels
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
    card_path.write_text(json.dumps({**card, "weights_hash": weights_hash(weights)}))
    refused("does not fit its card's AudioClassifier")
    weights.unlink()
    refused("audio_classifier.safetensors: no such file")


# ---------------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------------


def test_stage_trains_then_imports(tmp_path, world):
    stage, clip = load_stage("evaluators"), config.validate(WORLD).clip
    settings = FAST.model_copy(update={"trainer": FAST.trainer.model_copy(update={"steps": 4})})
    with Tracker("evaluators", metrics_dir=tmp_path / "metrics", mlflow=False, root=tmp_path) as tracker:
        stage.run(settings, clip, world, tmp_path / "trained", tmp_path / "checkpoints", tracker)
    metrics = json.loads((tmp_path / "metrics" / "evaluators.json").read_text())
    for key in ("audio_classifier.accuracy", "av_embedder.ib_real", "sync_classifier.acc_shifted"):
        assert key in metrics
    card = json.loads((tmp_path / "trained" / "sync_classifier.json").read_text())
    assert card["training"]["clips"] == 16 and card["calibration"]["split"] == "test"

    imported = settings.model_copy(update={"mode": "import", "source": str(tmp_path / "trained")})
    with Tracker("evaluators", metrics_dir=tmp_path / "m2", mlflow=False, root=tmp_path) as tracker:
        stage.run(imported, clip, world, tmp_path / "imported", tmp_path / "checkpoints", tracker)
    again = json.loads((tmp_path / "m2" / "evaluators.json").read_text())
    assert again == metrics  # the same evaluators on the same test clips
    assert (
        ev.load_evaluators(tmp_path / "imported")["av_embedder"].card["weights_hash"]
        == (json.loads((tmp_path / "trained" / "av_embedder.json").read_text())["weights_hash"])
    )
    with pytest.raises(ValueError, match="sample_rate=16000"):
        stage.run(
            imported,
            config.ClipConfig(duration=1.0, sample_rate=16000),
            world,
            tmp_path / "x",
            tmp_path,
            tracker,
        )


def test_stage_main_reads_its_section(tmp_path, world, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # the tracker's repo root (mlartifacts/) is then tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("VAFLOW_EXPERIMENT", request.node.name)
    data = {**WORLD, "evaluators": {"trainer": {"steps": 2, "batch_size": 8, "warmup_steps": 0}}}
    (tmp_path / "params.yaml").write_text(config.dump(config.validate(data)))
    flags = ["--prepared", str(world), "--checkpoints", "checkpoints", "--metrics", "metrics"]
    load_stage("evaluators").main([*flags, "--out", "ev"])
    assert set(ev.load_evaluators(tmp_path / "ev")) == set(ev.NAMES)
    assert "sync_classifier.acc_aligned" in json.loads((tmp_path / "metrics" / "evaluators.json").read_text())
    with pytest.raises(SystemExit) as exit_info:  # a missing import folder: one `error:` line, exit 2
        data["evaluators"] = {"mode": "import", "source": str(tmp_path / "nowhere")}
        (tmp_path / "params.yaml").write_text(config.dump(config.validate(data)))
        load_stage("evaluators").main([*flags, "--out", "ev2"])
    assert exit_info.value.code == 2
