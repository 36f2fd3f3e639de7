"""Batched extraction into shards: batching, rejections, resume."""

import numpy as np

from vaflow.data import extract, shards
from vaflow.data.media import MediaError


def _encoder(calls):
    def encode(inputs):
        calls.append(len(inputs))
        return [{"feat": np.full((2, 3), x, dtype=np.float16)} for x in inputs]

    return encode


def _load(clip_id):
    if clip_id == "c4":
        raise MediaError(clip_id, "decode failed")
    return float(clip_id[1:])


def test_batches_follow_shards_and_bad_clips_are_rejected(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    calls = []
    report = extract.extract_split(
        ids, tmp_path, "f", _load, _encoder(calls), batch_size=3, per_shard=4, progress=False
    )
    assert calls == [3, 1, 2, 1, 2]  # shard 0: c0-2, c3; shard 1: c4 (bad) c5-6, c7; shard 2: c8-9
    assert [r[0] for r in report.rejected] == ["c4"] and "decode failed" in report.rejected[0][1]
    got = {s["id"]: s["feat"] for s in shards.read_shards(shards.shard_paths(tmp_path, "f"))}
    assert sorted(got) == sorted(set(ids) - {"c4"})
    assert got["c7"].dtype == np.float16 and float(got["c7"][0, 0]) == 7.0


def test_rerun_skips_finished_shards(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    extract.extract_split(ids, tmp_path, "f", _load, _encoder([]), batch_size=2, per_shard=3, progress=False)
    calls = []
    report = extract.extract_split(ids, tmp_path, "f", _load, _encoder(calls), 2, 3, progress=False)
    assert calls == [] and len(report.skipped) == 2
