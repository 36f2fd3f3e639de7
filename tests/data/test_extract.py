"""Batched extraction into shards: batching, rejections journalled and summed up in rejected.csv, resume, ranks,
and the media digest of an extraction spec."""

import csv
import threading
import time

import numpy as np
import pandas as pd
import pytest

from vaflow.data import extract, shards
from vaflow.data.journal import JOURNAL_FILE, SpecFolder
from vaflow.data.media import FFmpegNotFoundError, MediaError

SPEC = {"v": 1, "splits": {"train": {"clips": 10}}}


def _encoder(calls):
    def encode(inputs):
        calls.append(len(inputs))
        return [
            extract.ClipRejected("non-finite output") if x == 9 else {"feat": np.full((2, 3), x, np.float16)}
            for x in inputs
        ]

    return encode


def _load(clip_id):
    if clip_id == "c4":
        raise MediaError(clip_id, "moov atom not found")
    if clip_id == "c6":
        raise extract.ClipRejected("silent audio (RMS 1e-06)")
    return float(clip_id[1:])


def _folder(tmp_path, spec=SPEC) -> SpecFolder:
    folder = SpecFolder(tmp_path / "out")
    folder.sync(spec)
    return folder


def _rejected_csv(path):
    with open(path, newline="") as f:
        return [(r["id"], r["reason"]) for r in csv.DictReader(f)]


def test_batches_follow_shards_and_bad_clips_are_rejected_with_reasons(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    calls = []
    folder = _folder(tmp_path)
    report = extract.extract_split(
        ids, folder, "train", "f", _load, _encoder(calls), batch_size=3, per_shard=4, progress=False
    )
    # shard 0: c0-2, c3; shard 1: c4 (bad) c5 c6 (bad), c7; shard 2: c8-9 (c9 rejected by encode)
    assert calls == [3, 1, 1, 1, 2]
    expected = [
        ("c4", "decode failed: moov atom not found"),
        ("c6", "silent audio (RMS 1e-06)"),
        ("c9", "non-finite output"),
    ]
    assert report.rejected == expected
    got = {s["id"]: s["feat"] for s in shards.read_shards(shards.shard_paths(folder.root / "train", "f"))}
    assert sorted(got) == sorted(set(ids) - {"c4", "c6", "c9"})
    assert got["c7"].dtype == np.float16 and float(got["c7"][0, 0]) == 7.0
    assert folder.journal("train").read().rejected == dict(expected)  # journalled as they happened

    summary = extract.finish_split(folder, "train", "f", ids, per_shard=4)
    assert (summary.clips, summary.encoded, summary.shards, summary.rejected) == (10, 7, 3, expected)
    assert _rejected_csv(folder.root / "train" / extract.REJECTED_FILE) == expected
    assert not (folder.root / "train" / JOURNAL_FILE).exists()  # folded into rejected.csv
    assert summary.line() == "train: 7 clips in 3 shards, 3 rejected (decode failed: 1, non-finite output: 1, silent audio: 1)"  # fmt: skip
    assert extract.summary_metrics([summary]) == {
        "clips": 10,
        "encoded": 7,
        "rejected": 3,
        "shards": 3,
        "encoded_train": 7,
        "rejected_train": 3,
    }


def test_decoding_ahead_in_threads_writes_the_same_shards_and_rejections(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    out = {}
    for workers in (0, 2):
        calls = []
        folder = _folder(tmp_path / str(workers))
        report = extract.extract_split(ids, folder, "train", "f", _load, _encoder(calls), batch_size=3, per_shard=4,
                                       progress=False, workers=workers)  # fmt: skip
        samples = shards.read_shards(shards.shard_paths(folder.root / "train", "f"))
        out[workers] = (calls, report.rejected, [(s["id"], s["feat"].tolist()) for s in samples])
    assert out[2] == out[0]


def test_threads_load_a_batch_at_once_and_the_shards_next_batch_while_the_model_encodes():
    lock, running, seen = threading.Lock(), [0], {"most": 0, "during_encode": set()}
    started: list[str] = []

    def load(clip_id):
        with lock:
            running[0] += 1
            seen["most"] = max(seen["most"], running[0])
            started.append(clip_id)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return clip_id

    def encode(inputs):
        time.sleep(0.2)  # the next batch's loads run meanwhile
        with lock:
            seen["during_encode"].update(started)
        return [{"x": i} for i in inputs]

    plan = [["a0", "a1", "a2", "a3"], ["b0", "b1"]]
    serve = extract.BatchedEncoder(plan, load, encode, batch_size=2, workers=2)
    try:
        assert serve("a0") == {"x": "a0"}
        assert seen["most"] == 2  # a batch's clips decode in parallel
        assert {"a2", "a3"} <= seen["during_encode"]  # the shard's next batch was loading during the encode
        assert "b0" not in started  # never past the shard: the writer may skip the next one
        assert [serve(c) for c in ["a1", "a2", "a3", "b0", "b1"]] == [{"x": c} for c in ["a1", "a2", "a3", "b0", "b1"]]
    finally:
        serve.close()


def test_rerun_skips_finished_shards_and_keeps_the_reasons(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    folder = _folder(tmp_path)
    extract.extract_split(ids, folder, "train", "f", _load, _encoder([]), 2, 4, progress=False)
    first = extract.finish_split(folder, "train", "f", ids, 4)
    calls = []
    report = extract.extract_split(ids, folder, "train", "f", _load, _encoder(calls), 2, 4, progress=False)
    assert calls == [] and len(report.skipped) == 3 and report.rejected == []
    # The journal was folded away; the reasons come from the rejected.csv of the first run.
    assert extract.finish_split(folder, "train", "f", ids, 4).rejected == first.rejected


def test_ranks_write_their_share_and_the_summary_needs_every_shard(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    folder = _folder(tmp_path)
    r0 = extract.extract_split(ids, folder, "train", "f", _load, _encoder([]), 4, 2, rank=0, world=2, progress=False)  # fmt: skip
    assert [p.name for p in r0.written] == ["f-000000.tar", "f-000002.tar", "f-000004.tar"]
    with pytest.raises(RuntimeError, match="2 of 5 shards are not finished .*f-000001.tar"):
        extract.finish_split(folder, "train", "f", ids, 2)
    # Rank 1 starts with the same spec: its sync deletes nothing of rank 0's.
    assert SpecFolder(folder.root).sync(SPEC) == {}
    r1 = extract.extract_split(ids, folder, "train", "f", _load, _encoder([]), 4, 2, rank=1, world=2, progress=False)  # fmt: skip
    assert [p.name for p in r1.written] == ["f-000001.tar", "f-000003.tar"]
    summary = extract.finish_split(folder, "train", "f", ids, 2)
    assert [i for i, _ in summary.rejected] == ["c4", "c6", "c9"]  # c4, c9 from rank 0, c6 from rank 1
    got = [s["id"] for s in shards.read_shards(shards.shard_paths(folder.root / "train", "f"), keys=[])]
    assert got == [i for i in ids if i not in ("c4", "c6", "c9")]


def test_summary_drops_unplanned_shards_and_temporary_files(tmp_path):
    ids = [f"c{i}" for i in range(4)]
    folder = _folder(tmp_path)
    extract.extract_split(ids, folder, "train", "f", _load, _encoder([]), 2, 2, progress=False)
    split_dir = folder.root / "train"
    (split_dir / "f-000007.tar").write_bytes(b"")  # no plan of these ids writes shard 7
    (split_dir / "f-000001.tar.tmp").write_bytes(b"half")  # a killed writer's leftovers
    (split_dir / ".rejected.csv.abc123.tmp").write_text("id")
    summary = extract.finish_split(folder, "train", "f", ids, 2)
    assert summary.shards == 2
    assert sorted(p.name for p in split_dir.iterdir()) == ["f-000000.tar", "f-000001.tar", "rejected.csv"]


def test_a_shard_missing_a_clip_without_a_journal_line_says_so(tmp_path):
    ids = ["c0", "c1"]
    folder = _folder(tmp_path)
    shards.write_shards(folder.root / "train", "f", ["c0"], lambda i: {"feat": np.zeros(1)}, progress=False)
    shards.write_shards(folder.root / "train", "f", ids, lambda i: {"feat": np.zeros(1)}, per_shard=2, progress=False)  # fmt: skip
    assert extract.finish_split(folder, "train", "f", ids, 2).rejected == [("c1", extract.UNRECORDED)]


def test_a_missing_ffmpeg_stops_the_run_instead_of_rejecting_clips(tmp_path):
    def no_ffmpeg(clip_id):
        raise FFmpegNotFoundError("ffmpeg", "ffmpeg not found")

    folder = _folder(tmp_path)
    with pytest.raises(FFmpegNotFoundError):
        extract.extract_split(
            ["c0", "c1"], folder, "train", "f", no_ffmpeg, _encoder([]), 2, 2, progress=False
        )
    assert not list((folder.root / "train").glob("*.tar")) and folder.journal("train").read().rejected == {}


def test_media_digest_follows_the_bytes_not_the_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x.mp4").write_bytes(b"video one")
    rows = pd.DataFrame(
        [{"id": "x", "split": "train", "path": str(a / "x.mp4"), "start": 0.0, "label": "dog"}]
    )
    digest = extract.media_digest(rows)
    a.rename(b)  # a moved tree keeps its shards
    moved = rows.assign(path=str(b / "x.mp4"))
    assert extract.media_digest(moved) == digest
    (b / "x.mp4").write_bytes(b"video two")  # regenerated media under the same id and path
    assert extract.media_digest(moved) != digest
    assert extract.media_digest(moved.assign(label="cat")) != extract.media_digest(moved)
    with pytest.raises(ValueError, match="'path' column"):
        extract.media_digest(rows.drop(columns="path"))


def _two_splits(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"a")
    manifest = pd.DataFrame(
        {
            "id": ["t1", "a1", "a2"],
            "split": ["test", "train", "train"],
            "path": [str(tmp_path / "a.mp4")] * 3,
            "start": [0.0, 0.0, 1.0],
            "duration": [2.0, 2.0, 2.0],
        }  # fmt: skip
    )
    return manifest, extract.manifest_splits(manifest)


def test_splits_keep_the_manifest_order(tmp_path):
    manifest, splits = _two_splits(tmp_path)
    assert list(splits) == ["test", "train"]  # prepare's order: by split name, then id
    assert [rows["id"].tolist() for rows in splits.values()] == [["t1"], ["a1", "a2"]]


def test_spec_contents_of_both_modalities(tmp_path):
    from types import SimpleNamespace

    from vaflow.config import ClipConfig
    from vaflow.data import features, latents

    _, splits = _two_splits(tmp_path)
    clip = ClipConfig()
    media = extract.split_specs(splits)
    vae = SimpleNamespace(hop=512, latent_dim=64)
    assert latents.latent_spec(vae, "abc", clip, 16, splits, "c0de") == {
        "weights_hash": "abc",
        "clip": clip.model_dump(mode="json"),
        "per_shard": 16,
        "latent_length": clip.latent_length(512),
        "latent_dim": 64,
        "hop": 512,
        "layout": {"mean": "(T_a, D_a) float16", "std": "(T_a, D_a) float16"},
        "policy": {"pad_tolerance_s": 0.05, "silence_rms": 1e-4},
        "code": "c0de",
        "splits": media,
    }
    encoder = SimpleNamespace(identity=lambda: {"kind": "pixels", "dim": 3, "fps": 4.0})
    assert features.feature_spec(encoder, clip, 8, 16, splits, "c0de") == {
        "encoder": {"kind": "pixels", "dim": 3, "fps": 4.0},
        "clip": clip.model_dump(mode="json"),
        "num_frames": 8,
        "per_shard": 16,
        "code": "c0de",
        "splits": media,
    }
    with pytest.raises(ValueError, match="given twice"):
        extract.extraction_spec({"per_shard": 1}, {}, clip, 16, splits, "c0de")


def test_windows_off_clip_duration_are_refused(tmp_path):
    from vaflow.config import ClipConfig, ConfigError

    manifest, _ = _two_splits(tmp_path)
    extract.check_windows(
        manifest.assign(duration=2.04), ClipConfig(duration=2.0)
    )  # within prepare's tolerance
    with pytest.raises(ConfigError, match="rerun the prepare stage"):
        extract.check_windows(manifest.assign(duration=2.1), ClipConfig(duration=2.0))
