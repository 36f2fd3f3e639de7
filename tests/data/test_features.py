"""Visual feature extraction: the encoder directory, and the extract_visual stage (resume after SIGKILL, clip order
shared with the audio latents, bad media rejected with reasons, stale shards cleared when the spec changes, the
stage's metrics)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.data.badmedia import make_clip
from tests.stage_scripts import load_stage
from vaflow import config
from vaflow.code import code_hash, import_closure
from vaflow.data import features as vx
from vaflow.data import shards
from vaflow.data.extract import ClipRejected, extract_split
from vaflow.data.journal import SpecFolder
from vaflow.models.artifacts import ModelFileError
from vaflow.models.encoders import CAVP
from vaflow.train.cavp import cavp_config

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "stages" / "extract_visual.py"
DURATION, SR = 1.0, 8000
PER_SHARD = 2


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    """Three good 1.5 s clips, one truncated half-way through its bytes, one 0.4 s clip."""
    root = tmp_path_factory.mktemp("media")
    for i in range(3):
        make_clip(root / f"good{i}.mp4", duration=1.5, size=(32, 32), fps=10, sample_rate=SR)
    data = make_clip(root / "full.mp4", duration=1.5, size=(32, 32), fps=10, sample_rate=SR).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # header intact: probes fine, decodes half
    make_clip(root / "short.mp4", duration=0.4, size=(32, 32), fps=10, sample_rate=SR)
    return root


def _manifest(root: Path, media_dir: Path, n_train: int = 12, bad: bool = True) -> Path:
    """manifest.csv in `root`: train clips reusing the good files (so a split is many clips cheaply), the bad
    ones in the middle of the train split, and 3 test clips; sorted by split then id, as prepare writes it."""
    rows = []
    for i in range(n_train):
        name = f"good{i % 3}.mp4"
        if bad and i == 3:
            name = "truncated.mp4"
        if bad and i == 6:
            name = "short.mp4"
        rows.append(("train", f"clip_{i:03d}", name))
    rows += [("test", f"clip_t{i}", f"good{i}.mp4") for i in range(3)]
    frame = pd.DataFrame(
        [
            {
                "id": cid,
                "split": split,
                "label": "tone",
                "path": str(media_dir / name),
                "start": 0.0,
                "duration": DURATION,
                "media_duration": 1.5,
                "fps": 10.0,
                "width": 32,
                "height": 32,
                "sample_rate": SR,
                "channels": 1,
                "status": "ok",
                "source": "folder",
            }
            for split, cid, name in rows
        ]
    ).sort_values(["split", "id"])
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "manifest.csv", index=False)
    return root


def _params(path: Path, per_shard: int = PER_SHARD) -> Path:
    data = {
        "clip": {"duration": DURATION, "sample_rate": SR},
        "audio_vae": {"mode": "train", "checkpoint": ""},  # an 8 kHz world: no pretrained 16 kHz codec
        "extract_visual": {"per_shard": per_shard, "batch_size": 2},
        "encode_audio": {"per_shard": per_shard},  # the two shard sets are paired by position: same per_shard
    }
    path.write_text(config.dump(config.validate(data)))
    return path


def _pixels(out: Path, side: int = 4):
    return vx.export_encoder(out, "pixels", {"fps": 4.0, "input_size": (16, 16), "size": (side, side)})


def _args(tmp: Path, prepared: Path, encoder: Path, out: Path) -> list[str]:
    return ["--params", str(tmp / "params.yaml"), "--prepared", str(prepared), "--encoder", str(encoder), "--out", str(out), "--metrics", str(tmp / "metrics")]  # fmt: skip


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The encoder directory
# ---------------------------------------------------------------------------------------------------------------


def test_encoder_dir_round_trip_and_replaced_weights_are_refused(tmp_path):
    src = tmp_path / "src.safetensors"
    torch.manual_seed(0)
    CAVP(cavp_config(4.0, SR, 16)).save(src)
    enc = vx.export_encoder(tmp_path / "enc", "cavp", {}, src)
    spec = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert spec["kind"] == "cavp" and spec["weights"] == "cavp.safetensors"
    assert spec["identity"]["weights_hash"] == enc.weights_hash and spec["identity"]["dim"] == 16
    assert _digest(tmp_path / "enc" / "cavp.safetensors") == _digest(src)

    loaded = vx.load_encoder(tmp_path / "enc")
    frames = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded.encode_batch(frames), enc.encode_batch(frames))

    # Another model's weights under the recorded name: the identity no longer matches the record.
    torch.manual_seed(1)
    CAVP(cavp_config(4.0, SR, 16)).save(tmp_path / "enc" / "cavp.safetensors")
    with pytest.raises(ModelFileError, match="weights_hash"):
        vx.load_encoder(tmp_path / "enc")
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        vx.load_encoder(tmp_path)


def test_kind_switch_removes_the_previous_weights(tmp_path):
    CAVP(cavp_config(4.0, SR, 16)).save(tmp_path / "w.safetensors")
    vx.export_encoder(tmp_path / "enc", "cavp", {}, tmp_path / "w.safetensors")
    _pixels(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["encoder.json"]


# ---------------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------------


def test_resumes_after_sigkill_without_rewriting_finished_shards(tmp_path, media_dir, mlflow_store):
    prepared = _manifest(tmp_path / "prepared", media_dir, n_train=40, bad=False)
    _params(tmp_path / "params.yaml")
    _pixels(tmp_path / "enc")
    out = tmp_path / "features"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **mlflow_store}
    proc = subprocess.Popen(
        [sys.executable, str(STAGE), *_args(tmp_path, prepared, tmp_path / "enc", out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = out / "train" / "visual-000000.tar"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()
    finished = {p: (_digest(p), p.stat().st_mtime_ns) for p in vx.feature_shards(out / "train")}
    assert 1 <= len(finished) < 20, "the kill came too late to interrupt the split"

    load_stage("extract_visual").main(_args(tmp_path, prepared, tmp_path / "enc", out))
    for path, (digest, mtime) in finished.items():
        assert (_digest(path), path.stat().st_mtime_ns) == (digest, mtime)  # skipped, not rewritten
    got = [s["id"] for s in shards.read_shards(vx.feature_shards(out / "train"))]
    assert got == [f"clip_{i:03d}" for i in range(40)]
    assert pd.read_csv(out / "train" / "rejected.csv").empty


def test_clip_order_pairs_with_audio_shards_and_bad_media_is_rejected(
    tmp_path, media_dir, capsys, mlflow_store
):
    prepared = _manifest(tmp_path / "prepared", media_dir)
    _params(tmp_path / "params.yaml")
    enc = _pixels(tmp_path / "enc")
    out = tmp_path / "features"
    load_stage("extract_visual").main(_args(tmp_path, prepared, tmp_path / "enc", out))
    printed = capsys.readouterr().out
    assert "train: 10 clips in 6 shards, 2 rejected" in printed

    rejected = dict(pd.read_csv(out / "train" / "rejected.csv").itertuples(index=False))
    assert sorted(rejected) == ["clip_003", "clip_006"]
    assert rejected["clip_003"].startswith("truncated: decoded 2 of 4 frames")
    assert rejected["clip_006"].startswith("too short: 2 of 4 frames at 4 fps; the file lasts 0.40s")

    sample = next(shards.read_shards(vx.feature_shards(out / "test")))
    assert sample["feat"].dtype == np.float16 and sample["feat"].shape == (4, 3 * 4 * 4)
    assert sample["meta"]["encoder"] == vx.compact_identity(enc.identity())
    spec = json.loads((out / "spec.json").read_text())
    assert spec["encoder"] == json.loads(json.dumps(enc.identity())) and spec["per_shard"] == PER_SHARD
    assert spec["code"] == code_hash(import_closure(STAGE))
    metrics = json.loads((tmp_path / "metrics" / "extract_visual.json").read_text())
    assert metrics == {"clips": 15, "encoded": 13, "rejected": 2, "shards": 8, "encoded_train": 10,
                       "rejected_train": 2, "encoded_test": 3, "rejected_test": 0}  # fmt: skip

    # An audio-like shard set from the same ordered ids and per_shard, rejecting a different clip.
    ids = pd.read_csv(prepared / "manifest.csv").query("split == 'train'")["id"].tolist()

    def load(clip_id):
        if clip_id == "clip_008":
            raise ClipRejected("silent")
        return clip_id

    def encode(inputs):
        return [{"mean": np.full((5, 2), int(i[-3:]), np.float16)} for i in inputs]

    latents = SpecFolder(tmp_path / "latents")
    latents.sync({"splits": {"train": {}}})
    extract_split(ids, latents, "train", "audio", load, encode, 3, PER_SHARD, progress=False)
    pairs = list(
        shards.read_zipped(
            shards.shard_paths(tmp_path / "latents" / "train", "audio"), vx.feature_shards(out / "train")
        )
    )
    assert [a["id"] for a, _ in pairs] == [i for i in ids if i not in ("clip_003", "clip_006", "clip_008")]
    assert all(a["id"] == v["id"] and a["mean"][0, 0] == int(v["id"][-3:]) for a, v in pairs)


def test_spec_change_clears_stale_shards(tmp_path, media_dir, capsys, mlflow_store):
    prepared = _manifest(tmp_path / "prepared", media_dir, bad=False)
    _params(tmp_path / "params.yaml")
    _pixels(tmp_path / "enc", side=4)
    out = tmp_path / "features"
    args = _args(tmp_path, prepared, tmp_path / "enc", out)
    load_stage("extract_visual").main(args)
    (out / "train" / "visual-000099.tar").write_bytes(b"")  # a stray shard of some earlier, longer clip list
    before = {p.name: _digest(p) for p in vx.feature_shards(out / "test")}

    _pixels(tmp_path / "enc", side=2)  # another encoder: every feature is stale
    capsys.readouterr()
    load_stage("extract_visual").main(args)
    # train: its 6 shards, the stray and rejected.csv
    assert "train: the feature spec changed, 8 stale file(s) deleted" in capsys.readouterr().out
    assert len(vx.feature_shards(out / "train")) == 6
    assert next(shards.read_shards(vx.feature_shards(out / "test")))["feat"].shape == (4, 3 * 2 * 2)
    assert {p.name: _digest(p) for p in vx.feature_shards(out / "test")} != before

    # Only the test split's clip list changes: the train shards stay.
    train = {p.name: p.stat().st_mtime_ns for p in vx.feature_shards(out / "train")}
    manifest = pd.read_csv(prepared / "manifest.csv")
    manifest[manifest["id"] != "clip_t2"].to_csv(prepared / "manifest.csv", index=False)
    load_stage("extract_visual").main(args)
    assert {p.name: p.stat().st_mtime_ns for p in vx.feature_shards(out / "train")} == train
    assert [s["id"] for s in shards.read_shards(vx.feature_shards(out / "test"))] == ["clip_t0", "clip_t1"]


def test_two_ranks_share_the_splits_and_rank_0_sums_them_up(tmp_path, media_dir, mlflow_store):
    """The stage as torchrun runs it: two processes in one gloo group, each writing its own shards."""
    prepared = _manifest(tmp_path / "prepared", media_dir)
    _params(tmp_path / "params.yaml")
    _pixels(tmp_path / "enc")
    out = tmp_path / "features"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **mlflow_store}
    base |= {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(STAGE), *_args(tmp_path, prepared, tmp_path / "enc", out)],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    logs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(logs)
    # train: 12 clips in 6 shards of 2; rank 0 writes shards 0, 2, 4 and rank 1 shards 1, 3, 5.
    assert "train: rank 0/2 wrote 3 shard(s)" in logs[0] and "train: rank 1/2 wrote 3 shard(s)" in logs[1]
    assert "train: 10 clips in 6 shards, 2 rejected" in logs[0] and "rejected" not in logs[1]
    got = [s["id"] for s in shards.read_shards(vx.feature_shards(out / "train"), keys=[])]
    assert got == [f"clip_{i:03d}" for i in range(12) if i not in (3, 6)]
    rejected = pd.read_csv(out / "train" / "rejected.csv")
    assert list(rejected["id"]) == [
        "clip_003",
        "clip_006",
    ]  # clip_003 in rank 1's shard 1, clip_006 in rank 0's
    metrics = json.loads((tmp_path / "metrics" / "extract_visual.json").read_text())
    assert (metrics["encoded"], metrics["rejected"], metrics["shards"]) == (13, 2, 8)
    assert not list(out.rglob(".journal.jsonl"))


def test_missing_encoder_dir_is_a_user_error(tmp_path, media_dir, capsys, mlflow_store):
    prepared = _manifest(tmp_path / "prepared", media_dir, bad=False)
    _params(tmp_path / "params.yaml")
    with pytest.raises(SystemExit) as exit_info:
        load_stage("extract_visual").main(_args(tmp_path, prepared, tmp_path / "nowhere", tmp_path / "features"))
    assert exit_info.value.code == 2
    assert "nowhere/encoder.json: no such file" in capsys.readouterr().err
