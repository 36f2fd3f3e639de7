"""Feature shards: round trip, resume, rank split, rejections, zipped reading, URL patterns."""

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest

from vaflow.data.shards import (
    ShardError,
    expand,
    read_shards,
    read_zipped,
    sanitize_key,
    shard_paths,
    shard_plan,
    write_shards,
)

IDS = [f"clip{i}" for i in range(9)] + ["a.b/c"]


def make_sample(clip_id):
    """A deterministic sample per id: float16 latents, float32 std, metadata."""
    seed = sum(map(ord, clip_id))
    rng = np.random.default_rng(seed)
    return {
        "mean": rng.standard_normal((4, 5)).astype(np.float16),
        "std": rng.random(3).astype(np.float32),
        "meta": {"label": seed % 7},
    }


def names(paths):
    return [p.name for p in paths]


def test_shard_plan_fixed_groups():
    assert shard_plan(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert shard_plan([], 3) == []
    with pytest.raises(ValueError):
        shard_plan(["a"], 0)


def test_sanitize_key():
    assert sanitize_key("a.b/c d") == "a_b_c_d"
    assert sanitize_key("Yt-x_1") == "Yt-x_1"
    with pytest.raises(ValueError):
        sanitize_key("")


def test_round_trip(tmp_path):
    report = write_shards(tmp_path, "x", IDS, make_sample, per_shard=3, progress=False)
    expected = [f"x-{i:06d}.tar" for i in range(4)]
    assert names(report.written) == expected
    assert names(shard_paths(tmp_path, "x")) == expected
    assert sorted(os.listdir(tmp_path)) == expected  # nothing but the tars
    assert report.n_samples == 10 and report.skipped == [] and report.rejected == []

    samples = list(read_shards(shard_paths(tmp_path, "x")))
    assert [s["id"] for s in samples] == IDS
    for s in samples:
        want = make_sample(s["id"])
        assert s["__key__"] == sanitize_key(s["id"]) and "." not in s["__key__"]
        assert s["mean"].dtype == np.float16 and np.array_equal(s["mean"], want["mean"])
        assert s["std"].dtype == np.float32 and np.array_equal(s["std"], want["std"])
        assert s["meta"] == {"id": s["id"], **want["meta"]}
    assert samples[-1]["__key__"] == "a_b_c" and samples[-1]["meta"]["id"] == "a.b/c"

    # keys limits the decoded fields; the directory and a brace pattern resolve to the same shards
    only = list(read_shards(str(tmp_path), keys=["std"]))
    assert set(only[0]) == {"__key__", "id", "std"}
    assert expand(str(tmp_path / "x-{000000..000003}.tar")) == [str(p) for p in shard_paths(tmp_path, "x")]


def test_write_rejects_colliding_keys_and_bad_fields(tmp_path):
    with pytest.raises(ValueError, match="share the shard key"):
        write_shards(tmp_path, "x", ["a.b", "a_b"], make_sample, progress=False)
    with pytest.raises(ValueError, match="Mean"):
        write_shards(tmp_path, "y", ["a"], lambda i: {"Mean": np.zeros(2)}, progress=False)
    with pytest.raises(TypeError, match="object"):
        write_shards(tmp_path, "z", ["a"], lambda i: {"obj": np.array([{}], dtype=object)}, progress=False)
    assert shard_paths(tmp_path, "y") == [] and shard_paths(tmp_path, "z") == []
    assert not list(tmp_path.glob("*.tmp"))


class Crash(BaseException):
    """Stands in for KeyboardInterrupt / a killed job."""


def test_resume_after_crash(tmp_path):
    def crashing(clip_id):
        if clip_id == IDS[7]:
            raise Crash
        return make_sample(clip_id)

    with pytest.raises(Crash):
        write_shards(tmp_path, "x", IDS, crashing, per_shard=3, progress=False)
    done = shard_paths(tmp_path, "x")
    assert names(done) == ["x-000000.tar", "x-000001.tar"]
    for p in done:
        os.utime(p, (1_000_000, 1_000_000))
    (tmp_path / "x-000002.tar.tmp").write_bytes(b"half a shard")  # as if the process was killed

    called = []

    def recording(clip_id):
        called.append(clip_id)
        return make_sample(clip_id)

    report = write_shards(tmp_path, "x", IDS, recording, per_shard=3, progress=False)
    assert called == IDS[6:]
    assert names(report.skipped) == ["x-000000.tar", "x-000001.tar"]
    assert names(report.written) == ["x-000002.tar", "x-000003.tar"]
    assert all(p.stat().st_mtime == 1_000_000 for p in done)
    assert not list(tmp_path.glob("*.tmp"))

    clean = tmp_path / "clean"
    write_shards(clean, "x", IDS, make_sample, per_shard=3, progress=False)
    for a, b in zip(shard_paths(tmp_path, "x"), shard_paths(clean, "x"), strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_rank_world_split(tmp_path):
    one = write_shards(tmp_path / "one", "x", IDS, make_sample, per_shard=3, progress=False)
    r0 = write_shards(tmp_path / "two", "x", IDS, make_sample, per_shard=3, rank=0, world=2, progress=False)
    r1 = write_shards(tmp_path / "two", "x", IDS, make_sample, per_shard=3, rank=1, world=2, progress=False)
    assert names(r0.written) == ["x-000000.tar", "x-000002.tar"]
    assert names(r1.written) == ["x-000001.tar", "x-000003.tar"]
    assert sorted(names(r0.written + r1.written)) == names(one.written)
    for a, b in zip(shard_paths(tmp_path / "one", "x"), shard_paths(tmp_path / "two", "x"), strict=True):
        assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError):
        write_shards(tmp_path, "x", IDS, make_sample, rank=2, world=2, progress=False)


def rejecting(bad):
    def sample(clip_id):
        if clip_id in bad:
            raise ValueError(f"unreadable {clip_id}")
        return make_sample(clip_id)

    return sample


def test_on_error_rejection(tmp_path):
    def accept(clip_id, exc):
        return isinstance(exc, ValueError)

    report = write_shards(
        tmp_path, "x", IDS, rejecting({"clip4"}), per_shard=3, progress=False, on_error=accept
    )
    assert report.rejected == [("clip4", "ValueError: unreadable clip4")]
    assert report.n_samples == 9 and len(report.written) == 4
    assert [s["id"] for s in read_shards(shard_paths(tmp_path, "x")[1])] == ["clip3", "clip5"]

    for on_error in (None, lambda i, e: False):
        with pytest.raises(ValueError, match="unreadable clip4"):
            write_shards(
                tmp_path / "y", "y", IDS, rejecting({"clip4"}), per_shard=3, on_error=on_error, progress=False
            )
        assert names(shard_paths(tmp_path / "y", "y")) == ["x-000000.tar".replace("x", "y")]


def audio_sample(clip_id):
    return {"latent": np.full((2, 3), sum(map(ord, clip_id)), dtype=np.float16)}


def write_pair(tmp_path, ids_a, ids_b, bad_a=(), bad_b=(), per_a=3, per_b=3):
    def skip(clip_id, exc):
        return True

    a = tmp_path / "a"
    b = tmp_path / "b"
    write_shards(a, "aud", ids_a, rejecting(set(bad_a)), per_shard=per_a, on_error=skip, progress=False)
    write_shards(b, "vis", ids_b, rejecting(set(bad_b)), per_shard=per_b, on_error=skip, progress=False)
    return shard_paths(a, "aud"), shard_paths(b, "vis")


def test_read_zipped_matching_and_rejections(tmp_path):
    a, b = write_pair(tmp_path / "same", IDS, IDS)
    pairs = list(read_zipped(a, b))
    assert [(x["id"], y["id"]) for x, y in pairs] == [(i, i) for i in IDS]

    # A rejected clip4, B rejected clip7 and the first of the last shard: both are skipped on both sides
    a, b = write_pair(tmp_path / "rej", IDS, IDS, bad_a={"clip4"}, bad_b={"clip7", "clip9"})
    pairs = list(read_zipped(a, b, keys_a=["mean"], keys_b=["std"]))
    assert [x["id"] for x, _ in pairs] == [i for i in IDS if i not in {"clip4", "clip7", "clip9"}]
    assert all(x["id"] == y["id"] and "mean" in x and "std" in y for x, y in pairs)


def test_read_zipped_inconsistent_orders_raise(tmp_path):
    swapped = [IDS[1], IDS[0], *IDS[2:]]
    a, b = write_pair(tmp_path / "order", IDS, swapped)
    with pytest.raises(ShardError, match="clip0.*clip1|clip1.*clip0"):
        list(read_zipped(a, b))

    a, b = write_pair(tmp_path / "bounds", IDS[:9], IDS[:9], per_a=3, per_b=4)  # 3 shards each
    with pytest.raises(ShardError, match="clip3.*shard boundaries"):
        list(read_zipped(a, b))

    a, b = write_pair(tmp_path / "count", IDS, IDS[:6])
    with pytest.raises(ShardError, match="count"):
        list(read_zipped(a, b))


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path, "x", IDS, make_sample, per_shard=3, progress=False)
    return tmp_path


def test_pickle_payloads_refused(tmp_path):
    path = tmp_path / "evil-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("k0.meta.json", json.dumps({"id": "k0"}).encode()),
            ("k0.mean.pyd", pickle.dumps(np.zeros(3))),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match="pickle"):
        list(read_shards([path]))


def test_url_patterns_pass_through(shards):
    pattern = f"pipe:cat {shards}/x-{{000000..000003}}.tar"
    urls = expand(pattern)
    assert urls == [f"pipe:cat {shards}/x-{i:06d}.tar" for i in range(4)]
    assert [s["id"] for s in read_shards(pattern)] == IDS


@pytest.mark.parametrize("damage", ["truncated mid-member", "garbage header", "garbage payload"])
def test_a_damaged_shard_is_a_shard_error_naming_it(tmp_path, damage):
    write_shards(tmp_path / "a", "x", IDS, make_sample, per_shard=5, progress=False)
    write_shards(tmp_path / "b", "x", IDS, make_sample, per_shard=5, progress=False)
    shard = tmp_path / "a" / "x-000001.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[1]
    if damage == "truncated mid-member":
        shard.write_bytes(data[: second.offset_data + second.size // 2])
    elif damage == "garbage header":
        shard.write_bytes(data[: second.offset] + b"\x17" * 512 + data[second.offset + 512 :])
    else:
        start = second.offset_data
        shard.write_bytes(data[:start] + b"\x17" * 64 + data[start + 64 :])
    # a header the tar reader cannot place may read as a member of another name: a shard error naming it too
    pattern = {
        "truncated mid-member": rf"^{shard}: damaged shard \(.+\); delete it and run `dvc repro`",
        "garbage header": rf"{shard}",
        "garbage payload": rf"of {shard}: damaged payload .+; delete the shard and run `dvc repro`",
    }[damage]
    with pytest.raises(ShardError, match=pattern):
        list(read_shards(tmp_path / "a"))
    with pytest.raises(ShardError, match=pattern):
        list(read_zipped(tmp_path / "a", tmp_path / "b"))
