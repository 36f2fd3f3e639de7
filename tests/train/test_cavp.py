"""CAVP training and evaluation, and the visual_encoder stage in every mode (train, import cavp/clip, none)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from tests.stage_scripts import load_stage
from tests.world import micro_world, prepare_world
from vaflow import config
from vaflow.data import features as vx
from vaflow.data.prepare import load_manifest
from vaflow.models.cavp import retrieval_topk
from vaflow.models.encoders import CAVP
from vaflow.train import cavp as training
from vaflow.train import checkpoint

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "stages" / "visual_encoder.py"
# CAVP at 4 fps sees 4 frames per clip.
WORLD = micro_world(train=8, test=4)
FAST = {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The prepared micro world (manifest.csv + media), built once."""
    return prepare_world(WORLD, tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite store for the module: creating its tables takes seconds, so it happens once, here."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def run(tmp_path, world, mlflow_uri, monkeypatch, request):
    """`run(visual_encoder=...)`: the stage's main() in tmp_path, its MLflow runs in an experiment of its own."""
    monkeypatch.chdir(tmp_path)  # the tracker's repo root (mlartifacts/) is then tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("VAFLOW_EXPERIMENT", request.node.name)

    def run(**visual_encoder):
        data = {**WORLD, "visual_encoder": visual_encoder}
        (tmp_path / "params.yaml").write_text(config.dump(config.validate(data)))
        load_stage("visual_encoder").main(
            ["--prepared", str(world), "--out", "enc", "--checkpoints", "ckpt", "--metrics", "metrics"]
        )
        return tmp_path

    return run


def _clip_rows(world: Path, split: str) -> list[dict]:
    return load_manifest(world / "manifest.csv", split).to_dict("records")


# ---------------------------------------------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------------------------------------------


def test_mel_front_end_follows_the_sample_rate():
    for rate, hop, n_fft in ((8000, 80, 256), (16000, 160, 512), (44100, 441, 2048)):
        cfg = training.cavp_config(4.0, rate, 32)
        assert (cfg.hop, cfg.n_fft, cfg.embed_dim) == (hop, n_fft, 32)
        assert cfg.mel_frames_per_frame == 25  # 10 ms hop at 4 fps, whatever the rate


def test_load_clips_decodes_windows_at_the_model_rate(world):
    cfg = training.cavp_config(4.0, 8000, 16)
    rows = _clip_rows(world, "test")
    rows.append({**rows[0], "id": "broken", "path": str(world / "missing.mp4")})
    data = training.load_clips(rows, cfg, duration=1.0)
    assert data.frames.shape == (4, 4, 64, 64, 3) and data.frames.dtype == torch.uint8
    assert data.mel.shape == (4, cfg.n_mels, 8000 // 80 + 1)
    assert data.ids == [r["id"] for r in rows[:4]]
    assert data.rejected == [("broken", "decode failed: no such file")]


def test_shifted_windows_do_not_overlap():
    pairs = training.shifted_offsets(num_frames=8, window=2, n=50, trials=4)
    assert pairs.shape == (50, 4, 2)
    assert ((pairs[..., 0] - pairs[..., 1]).abs() >= 2).all() and pairs.max() <= 6
    # Clips too short for two disjoint windows: shifted by at least one frame.
    assert (
        (training.shifted_offsets(3, 2, 5, 2)[..., 0] - training.shifted_offsets(3, 2, 5, 2)[..., 1]).abs()
        == 1
    ).all()


def test_evaluation_scores_retrieval_among_all_clips(world):
    """12 clips (both splits), so top-5 retrieval is not 1 by construction (chance 5/12, where 4 clips gave 5/4 -> 1):
    the scores are `retrieval_topk` of the clip embeddings computed in one batch, whatever the evaluation batch."""
    torch.manual_seed(0)
    model = CAVP(training.cavp_config(4.0, 8000, 16))
    data = training.load_clips(
        _clip_rows(world, "train") + _clip_rows(world, "test"), model.config, duration=1.0
    )
    ev = training.evaluate_cavp(model, data, batch_size=5, trials=2)
    assert (ev.n_clips, ev.top1_chance, ev.top5_chance, ev.temporal_trials) == (12, 1 / 12, 5 / 12, 24)
    with torch.no_grad():
        want = retrieval_topk(*model.eval().embed_clips(data.frames, data.mel), ks=(1, 5))
    assert (ev.top1, ev.top5) == (want["top1"], want["top5"])
    assert ev.top1 <= ev.top5 < 1  # an untrained model misses some clips even in its top 5
    assert 0 <= ev.temporal <= 1
    assert ev == training.evaluate_cavp(
        model, data, batch_size=12, trials=2
    )  # seeded trials, batch-independent


# ---------------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------------


def test_train_mode_end_to_end_and_resume(run, mlflow_uri):
    from mlflow.tracking import MlflowClient

    tmp = run(trainer={**FAST, "steps": 1})
    (ckpt,) = (tmp / "ckpt").iterdir()
    assert ckpt.name.startswith("visual_encoder-")
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 1

    tmp = run(trainer=FAST)  # a longer run of the same config continues from the checkpoint
    assert [p.name for p in (tmp / "ckpt").iterdir()] == [ckpt.name]
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 2
    spec = json.loads((tmp / "enc" / "encoder.json").read_text())
    rate = config.VisualEncoderConfig().frame_rate  # the default feeds every frame of the 20 fps video
    assert (
        spec["kind"] == "cavp" and spec["identity"]["fps"] == rate == 20.0 and spec["identity"]["dim"] == 64
    )
    encoder = vx.load_encoder(tmp / "enc")
    assert encoder.encode_batch(torch.zeros(1, 4, 64, 64, 3, dtype=torch.uint8)).shape == (1, 4, 64)

    metrics = json.loads((tmp / "metrics" / "visual_encoder.json").read_text())
    assert metrics["eval_clips"] == 4 and metrics["retrieval_top1_chance"] == 0.25
    assert metrics["temporal_discrimination_chance"] == 0.5
    for key in ("retrieval_top1", "retrieval_top5"):  # proportions of the 4 clips
        assert 0 <= metrics[key] <= 1 and (metrics[key] * 4) % 1 == 0, (key, metrics[key])
    assert 0 <= metrics["temporal_discrimination"] <= 1  # a proportion of trials (several per clip)
    assert metrics["retrieval_top5"] >= metrics["retrieval_top1"]
    assert math.isfinite(metrics["train_loss_temporal"]) and metrics["train_loss_temporal"] > 0
    steps = (tmp / "metrics" / "visual_encoder_steps.tsv").read_text().splitlines()
    assert steps[0].startswith("step\tloss\tloss_semantic\tloss_temporal") and len(steps) == 3

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs(client.get_experiment_by_name(os.environ["VAFLOW_EXPERIMENT"]).experiment_id)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    last = max(runs, key=lambda r: r.info.start_time)
    assert last.data.metrics["retrieval_top1"] == metrics["retrieval_top1"]
    assert last.data.params["visual_encoder.kind"] == "cavp" and last.data.tags["encoder.kind"] == "cavp"


def test_changed_config_starts_a_new_checkpoint_dir():
    base = config.Params()

    def sections(params):
        return {
            "visual_encoder": params.visual_encoder.model_dump(mode="json"),
            "clip": params.clip.model_dump(),
        }

    def with_(**ve):
        return config.validate(config.deep_merge(base.model_dump(mode="json"), {"visual_encoder": ve}))

    def run_dir(params):
        return checkpoint.run_dir("ckpt", "visual_encoder", sections(params))

    same = run_dir(base)
    assert run_dir(with_(trainer={"steps": 5000, "log_every": 7})) == same
    assert run_dir(with_(trainer={"lr": 3e-4})) != same
    assert run_dir(with_(cavp={"embed_dim": 32})) != same


def test_none_mode_writes_a_pixels_encoder(run):
    tmp = run(kind="pixels", mode="none", fps=0, pixels={"side": 4})  # fps 0: the kind's paper rate
    spec = json.loads((tmp / "enc" / "encoder.json").read_text())
    assert spec["kind"] == "pixels" and spec["weights"] is None
    assert spec["identity"]["dim"] == 48 and spec["identity"]["fps"] == 10.0
    assert vx.load_encoder(tmp / "enc").dim == 48
    assert json.loads((tmp / "metrics" / "visual_encoder.json").read_text())["feature_dim"] == 48
    assert (tmp / "metrics" / "visual_encoder_steps.tsv").read_text() == "step\n"


def test_cavp_import_copies_the_checkpoint_and_evaluates_it(run, tmp_path):
    torch.manual_seed(0)
    CAVP(training.cavp_config(4.0, 8000, 32)).save(tmp_path / "mine.safetensors")
    tmp = run(kind="cavp", mode="import", cavp={"checkpoint": str(tmp_path / "mine.safetensors")})
    spec = json.loads((tmp / "enc" / "encoder.json").read_text())
    assert spec["weights"] == "cavp.safetensors" and spec["identity"]["dim"] == 32
    assert (tmp / "enc" / "cavp.safetensors").read_bytes() == (tmp_path / "mine.safetensors").read_bytes()
    metrics = json.loads((tmp / "metrics" / "visual_encoder.json").read_text())
    assert metrics["eval_clips"] == 4 and "retrieval_top1" in metrics


def test_clip_import_copies_the_weights(run, tmp_path):
    import open_clip  # here, not at the top: only this test pays its import time; a broken install fails it

    name = "vaflow-test-stage-vit"
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 1, "layers": 1},
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.save(open_clip.create_model(name, pretrained_text=False).state_dict(), tmp_path / "w.bin")
    tmp = run(
        kind="clip", mode="import", fps=0, clip={"model_name": name, "weights": str(tmp_path / "w.bin")}
    )
    spec = json.loads((tmp / "enc" / "encoder.json").read_text())
    assert spec["weights"] == "clip.bin" and spec["options"]["model_name"] == name
    assert spec["identity"]["fps"] == 10.0 and spec["identity"]["dim"] == 16
    assert vx.load_encoder(tmp / "enc").input_size == (32, 32)


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            {"kind": "cavp", "mode": "import", "cavp": {"checkpoint": "/no/such/cavp.safetensors"}},
            "CAVP checkpoint",
        ),
        (
            {"kind": "clip", "mode": "import", "clip": {"weights": "/no/such/clip.bin"}},
            "open_clip state dict",
        ),
    ],
)
def test_missing_weights_exit_2_naming_the_file(run, capsys, settings, expected):
    with pytest.raises(SystemExit) as exit_info:
        run(**settings)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "/no/such/" in line and expected in line and "Traceback" not in err
