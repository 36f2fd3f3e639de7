"""The flow's paired training data: checked pairing, shape errors, seeded rank-split batches."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from vaflow.data import pairs, shards
from vaflow.data.shards import ShardError, write_shards

IDS = [f"c{i:02d}" for i in range(20)]
T_V, D_V, T_A, D_A = 3, 4, 6, 2


def feat(clip_id: str) -> dict:
    k = int(clip_id[1:])
    return {"feat": np.full((T_V, D_V), k, np.float16)}


def latent(clip_id: str) -> dict:
    k = int(clip_id[1:])
    return {"mean": np.full((T_A, D_A), k, np.float16), "std": np.full((T_A, D_A), 0.5, np.float16)}


def write_rejected(split_dir, ids):
    split_dir.mkdir(parents=True, exist_ok=True)
    with (split_dir / "rejected.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "reason"])
        w.writerows([(i, "test") for i in ids])


def make(tmp_path, reject_f=(), reject_a=(), list_rejections=True, per_shard=8, feat_fn=feat):
    def maker(fn, rejected):
        def make_sample(clip_id):
            if clip_id in rejected:
                raise ValueError("rejected")
            return fn(clip_id)

        return make_sample

    skip = lambda i, e: True  # noqa: E731
    f_dir, a_dir = tmp_path / "features", tmp_path / "latents"
    write_shards(
        f_dir / "train",
        "visual",
        IDS,
        maker(feat_fn, set(reject_f)),
        per_shard,
        progress=False,
        on_error=skip,
    )
    write_shards(
        a_dir / "train", "audio", IDS, maker(latent, set(reject_a)), per_shard, progress=False, on_error=skip
    )
    if list_rejections:
        write_rejected(f_dir / "train", reject_f)
        write_rejected(a_dir / "train", reject_a)
    return f_dir, a_dir


def test_open_split_pairs_clips_and_skips_each_sides_rejections(tmp_path):
    f_dir, a_dir = make(tmp_path, reject_f=["c03"], reject_a=["c10", "c11"])
    split = pairs.open_split(f_dir, "train", a_dir)
    assert split.n_clips == 17 and split.counts == [7, 6, 4]
    assert split.shapes == {"feat": (T_V, D_V), "mean": (T_A, D_A), "std": (T_A, D_A)}
    ids = [s["id"] for s in split.samples()]
    assert "c03" not in ids and "c10" not in ids and len(ids) == 17
    assert all(s["feat"][0, 0] == s["mean"][0, 0] for s in split.samples())  # paired, not shifted


def test_clips_on_one_side_only_without_a_rejection_are_an_error(tmp_path):
    f_dir, a_dir = make(tmp_path, reject_a=["c05"], list_rejections=False)
    with pytest.raises(ShardError, match="c05.*different clips"):
        pairs.open_split(f_dir, "train", a_dir)


def test_shape_mismatch_names_the_clip_and_both_shapes(tmp_path):
    f_dir, a_dir = make(tmp_path)
    with pytest.raises(ShardError, match=r"clip 'c00'.*\(6, 2\).*\(7, 2\)"):
        pairs.open_split(f_dir, "train", a_dir, expect={"mean": (7, D_A)})

    def odd(clip_id):
        return {"feat": np.zeros((T_V + (clip_id == "c09"), D_V), np.float16)}

    f_dir, a_dir = make(tmp_path / "odd", feat_fn=odd)
    split = pairs.open_split(f_dir, "train", a_dir)
    with pytest.raises(ShardError, match=r"clip 'c09'.*\(4, 4\).*\(3, 4\)"):
        list(split.samples())


def test_missing_split_and_count_mismatch(tmp_path):
    f_dir, a_dir = make(tmp_path)
    with pytest.raises(ShardError, match="no visual"):
        pairs.open_split(f_dir, "val", a_dir)
    assert pairs.optional_split(f_dir, "val", a_dir) is None
    (a_dir / "train" / "audio-000002.tar").unlink()
    with pytest.raises(ShardError, match="3 feature shard.*2 latent"):
        pairs.open_split(f_dir, "train", a_dir)
    with pytest.raises(FileNotFoundError, match="extract_visual"):
        pairs.read_spec(f_dir, pairs.FEATURES)


def _epoch(stream, epoch):
    stream.set_epoch(epoch)
    return [b["id"] for b in stream]


def test_stream_is_seeded_splits_ranks_and_yields_equal_batch_counts(tmp_path):
    f_dir, a_dir = make(tmp_path, reject_a=["c19"])
    split = pairs.open_split(f_dir, "train", a_dir)  # 19 clips
    one = pairs.ClipStream(split, 4, seed=3, shuffle_buffer=5)
    assert len(one) == 4
    a, b = _epoch(one, 0), _epoch(pairs.ClipStream(split, 4, seed=3, shuffle_buffer=5), 0)
    assert a == b and len(a) == 4 and all(len(ids) == 4 for ids in a)
    assert _epoch(one, 1) != a  # a new order every epoch
    assert _epoch(pairs.ClipStream(split, 4, seed=4, shuffle_buffer=5), 0) != a
    ranks = [pairs.ClipStream(split, 3, rank=r, world=2, seed=3) for r in range(2)]
    seen = [sum(_epoch(s, 0), []) for s in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 3  # 19 // (3 · 2)
    assert not set(seen[0]) & set(seen[1])  # the ranks read disjoint clips
    batch = next(iter(ranks[0]))
    assert batch["feat"].dtype == torch.float32 and batch["mean"].shape == (3, T_A, D_A)
    with pytest.raises(ShardError, match="fewer than one global batch"):
        pairs.ClipStream(split, 10, world=2)


def test_features_only_stream(tmp_path):
    f_dir, _ = make(tmp_path, reject_f=["c00"])
    split = pairs.open_split(f_dir, "train")
    assert split.n_clips == 19 and split.latents is None
    batch = next(iter(pairs.ClipStream(split, 5)))
    assert set(batch) == {"id", "feat"}


def _reads(monkeypatch) -> list[str]:
    """The shard URLs streamed from now on (shards._iter_raw's calls), in order."""
    urls: list[str] = []
    inner = shards._iter_raw

    def recording(url, *args, **kwargs):
        urls.append(url)
        return inner(url, *args, **kwargs)

    monkeypatch.setattr(shards, "_iter_raw", recording)
    return urls


def test_ranks_read_disjoint_shards_that_cover_the_split(tmp_path, monkeypatch):
    f_dir, a_dir = make(tmp_path, per_shard=5)  # 4 shard pairs of 5 clips
    split = pairs.open_split(f_dir, "train", a_dir)
    urls = _reads(monkeypatch)
    shares = []
    for epoch in range(3):
        read, ids = [], []
        for rank in range(2):
            stream = pairs.ClipStream(split, 5, rank, 2, seed=1, shuffle_buffer=3)
            urls.clear()
            batches = _epoch(stream, epoch)
            read.append({u.rpartition("-")[2] for u in urls})  # shard pair i: both sides' -00000i.tar
            assert len(batches) == len(stream) == 2  # equal counts on both ranks
            assert batches == _epoch(pairs.ClipStream(split, 5, rank, 2, seed=1, shuffle_buffer=3), epoch)
            ids.append(sum(batches, []))
        assert not read[0] & read[1] and len(read[0]) == len(read[1]) == 2  # each rank reads half the shards
        assert sorted(ids[0] + ids[1]) == IDS  # together, every clip of the split once
        shares.append(read[0])
    assert len({frozenset(s) for s in shares}) > 1  # the share changes with the epoch


def test_uneven_shards_split_at_clip_level_with_equal_batch_counts(tmp_path):
    f_dir, a_dir = make(tmp_path, reject_a=["c09", "c10"])  # shard pairs of 8, 6 and 4 clips
    split = pairs.open_split(f_dir, "train", a_dir)
    streams = [pairs.ClipStream(split, 2, rank, 3, seed=0, shuffle_buffer=4) for rank in range(3)]
    seen = [sum(_epoch(s, 2), []) for s in streams]
    assert [len(s) for s in streams] == [3, 3, 3] and all(len(ids) == 6 for ids in seen)  # 18 // (2 · 3)
    assert len(set(sum(seen, []))) == 18  # disjoint, and every clip read


def test_a_split_read_for_some_ids_counts_and_yields_those_only(tmp_path):
    f_dir, a_dir = make(tmp_path, reject_a=["c03"])
    wanted = {"c00", "c03", "c09", "c17"}  # c03: rejected on one side, so not a usable clip
    part = pairs.open_split(f_dir, "train", a_dir, ids=wanted | {"not-a-clip"})
    assert part.counts == [1, 1, 1] and part.n_clips == 3
    assert {s["id"] for s in part.samples()} == {"c00", "c09", "c17"}
    batches = list(pairs.ClipStream(part, batch_size=1, seed=2))
    assert sorted(b["id"][0] for b in batches) == ["c00", "c09", "c17"]
    assert pairs.open_split(f_dir, "train", ids=wanted).n_clips == 4  # features only: c03 has features
    with pytest.raises(ShardError, match="no usable clip of the 2 clips asked for"):
        pairs.open_split(f_dir, "train", a_dir, ids={"not-a-clip", "c03"})
