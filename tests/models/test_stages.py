"""The three VAFlow stage scripts on small synthetic shards: outputs, determinism, pass-through, bad input, and
shards read from a server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.served import serve
from tests.stage_scripts import load_stage
from vaflow import config
from vaflow.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[2]
T_V, D_V, T_A, D_A = 4, 8, 50, 4  # audio_vae.size tiny: hop 8, 4 channels; clip 0.05 s at 8 kHz -> 50 frames
FAST = {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2}
PARAMS = {
    "clip": {"duration": 0.05, "sample_rate": 8000},
    "audio_vae": {"mode": "train", "size": "tiny"},
    "train_align": {"channels": 8, "blocks": 1, "val": {"clips": 4, "every": 2}, "trainer": FAST},
    "flow": {"size": "tiny"},
    "train_flow": {"val": {"clips": 4, "times": 2, "every": 2}, "trainer": FAST},
    "joint_tune": {"val": {"clips": 4, "times": 2, "every": 2}, "trainer": FAST},
}
FEATURES = {"kind": "cavp", "model_name": "cavp", "weights_hash": "f00d", "fps": 4.0, "dim": D_V}
WAVEVAE = {"weights_hash": "beef", "hop": 8, "latent_dim": D_A, "latent_length": T_A}
SPLITS = {"train": 24, "val": 8}
PER_SHARD = 16


def _write_data(root: Path, t_a: int = T_A, features: dict = FEATURES) -> None:
    """Paired shards where the latents follow the features (a learnable toy), with both spec.json files (their
    `per_shard` and `splits` as the extraction stages write them: what lists a served split's shards)."""
    proj = np.random.default_rng(0).standard_normal((D_V, D_A))
    for split, n in SPLITS.items():
        ids = [f"{split}{i:03d}" for i in range(n)]
        feats = {i: np.random.default_rng(k).standard_normal((T_V, D_V)) for k, i in enumerate(ids)}

        def feature(i, feats=feats):
            return {"feat": feats[i].astype(np.float16)}

        def latent(i, feats=feats):
            mean = np.tanh(np.repeat(feats[i], -(-t_a // T_V), axis=0)[:t_a] @ proj)
            return {"mean": mean.astype(np.float16), "std": np.full((t_a, D_A), 0.05, np.float16)}

        write_shards(root / "features" / split, "visual", ids, feature, per_shard=PER_SHARD, progress=False)
        write_shards(root / "latents" / split, "audio", ids, latent, per_shard=PER_SHARD, progress=False)
    plan = {"per_shard": PER_SHARD, "splits": {split: {"clips": n} for split, n in SPLITS.items()}}
    (root / "features" / "spec.json").write_text(json.dumps({"encoder": features, **plan}))
    (root / "latents" / "spec.json").write_text(json.dumps({**WAVEVAE, "latent_length": t_a, **plan}))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def work(tmp_path, mlflow_uri, monkeypatch, request) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("VAFLOW_EXPERIMENT", request.node.name)
    (tmp_path / "params.yaml").write_text(config.dump(config.validate(PARAMS)))
    _write_data(tmp_path)
    return tmp_path


def _align(tag: str = "", features: str = "features") -> None:
    load_stage("train_align").main(["--prepared", "prepared", "--features", features, "--out", f"align{tag}", "--checkpoints", f"ck{tag}",
                                "--metrics", f"metrics{tag}"])  # fmt: skip


def _flow(tag: str = "", align: str = "align", features: str = "features", latents: str = "latents") -> None:
    load_stage("train_flow").main(["--prepared", "prepared", "--features", features, "--latents", latents, "--align", align,
                               "--out", f"flow{tag}", "--checkpoints", f"ck{tag}", "--metrics", f"metrics{tag}"])  # fmt: skip


def _tune(tag: str = "") -> None:
    load_stage("joint_tune").main(["--prepared", "prepared", "--features", "features", "--latents", "latents", "--flow", "flow",
                               "--out", f"vaflow{tag}", "--checkpoints", f"ck{tag}", "--metrics", f"metrics{tag}"])  # fmt: skip


def _metrics(work: Path, stage: str, tag: str = "") -> dict:
    return json.loads((work / f"metrics{tag}" / f"{stage}.json").read_text())


def test_a_stage_with_sources_trains_on_those_clips_of_the_manifest(work, capsys):
    """train_align on every prepared source, train_flow on VGGSound's clips only (the paper preset's §4.1 split)."""
    (work / "prepared").mkdir()
    head = "id,split,source,label,path,start,duration,media_duration,fps,width,height,sample_rate,channels,status"
    rows = [f"{split}{i:03d},{split},{'vggsound' if i % 2 else 'audioset_v2a'},x,v.mp4,0,1,1,4,8,8,8000,1,ok"
            for split, n in SPLITS.items() for i in range(n)]  # fmt: skip
    (work / "prepared" / "manifest.csv").write_text("\n".join([head, *rows]) + "\n")
    two = {"prepare": {"sources": ["vggsound", "audioset_v2a"]}, "train_flow": {**PARAMS["train_flow"], "sources": ["vggsound"]}}  # fmt: skip
    (work / "params.yaml").write_text(config.dump(config.validate({**PARAMS, **two})))
    _align()
    _flow()
    out = capsys.readouterr().out
    assert f"train: {SPLITS['train']} clips" in out  # both sources
    assert f"train: {SPLITS['train'] // 2} paired clips" in out  # VGGSound's half


def test_three_stages_write_models_and_metrics_and_repeat_exactly(work):
    _align()
    _align("2")  # a second clean run: its own checkpoints
    assert _metrics(work, "train_align") == _metrics(work, "train_align", "2")
    assert {"train_loss", "val_loss", "val_con", "val_kl", "val_rec"} <= set(_metrics(work, "train_align"))
    _flow()
    _flow("2")
    assert _metrics(work, "train_flow") == _metrics(work, "train_flow", "2")
    assert (work / "flow" / "vaflow.safetensors").read_bytes() == (
        work / "flow2" / "vaflow.safetensors"
    ).read_bytes()
    _tune()
    card = json.loads((work / "vaflow" / "vaflow.json").read_text())
    assert [t["stage"] for t in card["trained"]] == ["train_flow", "joint_tune"]
    assert card["features"] == FEATURES and card["latent"]["length"] == T_A
    assert {"val_loss", "val_flow", "val_kl", "train_loss_kl"} <= set(_metrics(work, "joint_tune"))
    steps = (work / "metrics" / "joint_tune_steps.tsv").read_text().splitlines()
    assert steps[0].split("\t")[0] == "step" and len(steps) == 3  # header + steps 2 and 4


def test_joint_tune_zero_steps_is_a_pass_through(work):
    _align()
    _flow()
    params = config.validate(
        {**PARAMS, "joint_tune": {**PARAMS["joint_tune"], "trainer": {**FAST, "steps": 0}}}
    )
    (work / "params.yaml").write_text(config.dump(params))
    _tune()
    assert (work / "vaflow" / "vaflow.safetensors").read_bytes() == (
        work / "flow" / "vaflow.safetensors"
    ).read_bytes()
    assert _metrics(work, "joint_tune")["tuned_steps"] == 0


def test_gaussian_prior_trains_without_the_encoder(work):
    _align()
    params = config.validate({**PARAMS, "flow": {"size": "tiny", "prior": "gaussian"}})
    (work / "params.yaml").write_text(config.dump(params))
    _flow()
    _tune()
    card = json.loads((work / "vaflow" / "vaflow.json").read_text())
    assert card["align"] is None and card["settings"]["prior"] == "gaussian"
    assert "val_kl" not in _metrics(work, "joint_tune")


def test_features_of_another_encoder_are_refused(work, capsys):
    _align()
    _write_data(work, features={**FEATURES, "weights_hash": "other"})
    with pytest.raises(SystemExit) as exit_info:
        _flow()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "trained on visual features" in err and "'f00d'" in err and "'other'" in err


def test_latents_of_another_length_name_the_clip_and_both_shapes(work, capsys):
    _align()
    _write_data(work, t_a=49)
    with pytest.raises(SystemExit):
        _flow()
    err = capsys.readouterr().err
    assert "error:" in err and "(49, 4)" in err and "(50, 4)" in err


def test_an_empty_train_split_is_an_error(work, capsys):
    for tar in (work / "features" / "train").glob("*.tar"):
        tar.unlink()
    with pytest.raises(SystemExit):
        _align()
    assert "no visual-*.tar shards for split 'train'" in capsys.readouterr().err


def test_a_rerun_over_a_finished_checkpoint_writes_the_same_complete_metrics(work):
    # DVC reruns a stage whose code changed; its finished checkpoint trains nothing, yet the metrics stay whole.
    _align()
    _flow()
    first = _metrics(work, "train_align"), _metrics(work, "train_flow")
    _align()
    _flow()
    assert (_metrics(work, "train_align"), _metrics(work, "train_flow")) == first
    assert "val_loss" in first[0] and "val_flow" in first[1]


def test_stages_train_from_a_server_as_from_the_folders(work):
    """`--features` / `--latents` as URLs (README "Shards on a server"): the same batches, so the same weights."""
    _align()
    _flow()
    with serve(work) as url:
        _align("2", features=f"{url}/features")
        _flow("2", align="align2", features=f"{url}/features", latents=f"{url}/latents")
    for model in ("align/align_vae.safetensors", "flow/vaflow.safetensors"):
        assert (work / model).read_bytes() == (work / model.replace("/", "2/", 1)).read_bytes(), model
    assert _metrics(work, "train_align") == _metrics(work, "train_align", "2")
    assert _metrics(work, "train_flow") == _metrics(work, "train_flow", "2")


def test_an_unreachable_server_is_one_error_naming_the_url(work, capsys):
    with serve(work) as url:
        pass  # closed: nothing listens there any more
    with pytest.raises(SystemExit) as exit_info:
        _align(features=f"{url}/features")
    assert exit_info.value.code == 2
    assert f"error: {url}/features/spec.json: cannot be read" in capsys.readouterr().err
