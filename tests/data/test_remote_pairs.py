"""A split read from a server (`pairs.open_split` on URLs): the same clips, counts and batches as from its folder,
the shard list taken from the spec, and errors that name the URL or pattern at fault."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from tests.data.test_pairs import make
from tests.served import serve
from vaflow.data import pairs, shards
from vaflow.data.shards import ShardError


def _write_specs(f_dir, a_dir, per_shard=8, clips=20):
    """spec.json as the extraction stages write it, reduced to what listing a remote split reads."""
    for root in (f_dir, a_dir):
        (root / "spec.json").write_text(
            json.dumps({"per_shard": per_shard, "splits": {"train": {"clips": clips}}})
        )


@pytest.fixture
def served(tmp_path):
    """The test_pairs split (c03 rejected by the features, c10 and c11 by the latents) and its server's URL."""
    f_dir, a_dir = make(tmp_path, reject_f=["c03"], reject_a=["c10", "c11"])
    _write_specs(f_dir, a_dir)
    with serve(tmp_path) as url:
        yield f_dir, a_dir, url


def _batches(stream, epochs=2):
    out = []
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        out += [(b["id"], b["feat"], b["mean"]) for b in stream]
    return out


def test_a_served_split_reads_like_its_folder(served):
    f_dir, a_dir, url = served
    local = pairs.open_split(f_dir, "train", a_dir)
    remote = pairs.open_split(
        f"{url}/features", "train", f"{url}/latents/"
    )  # a trailing slash is the same root
    assert remote.features[0] == f"{url}/features/train/visual-000000.tar" and len(remote.latents) == 3
    assert (remote.counts, remote.shapes) == (local.counts, local.shapes)
    assert pairs.read_spec(f"{url}/features", pairs.FEATURES) == pairs.read_spec(f_dir, pairs.FEATURES)
    for world in (1, 2):
        for rank in range(world):
            want = _batches(pairs.ClipStream(local, 3, rank, world, seed=5, shuffle_buffer=4))
            got = _batches(pairs.ClipStream(remote, 3, rank, world, seed=5, shuffle_buffer=4))
            assert [g[0] for g in got] == [w[0] for w in want]
            assert all(
                torch.equal(g[1], w[1]) and torch.equal(g[2], w[2]) for g, w in zip(got, want, strict=True)
            )
    assert (
        pairs.optional_split(f"{url}/features", "val", f"{url}/latents") is None
    )  # not in the spec's splits


def test_pipe_urls_read_too(served):
    f_dir, a_dir, _ = served
    split = pairs.open_split(f"pipe:cat {f_dir}", "train", f"pipe:cat {a_dir}")
    assert split.counts == pairs.open_split(f_dir, "train", a_dir).counts


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_and_missing_remote_spec_name_the_url(served):
    _, _, url = served
    dead = f"http://127.0.0.1:{_closed_port()}/features"
    with pytest.raises(ShardError, match=f"{dead}/spec.json: cannot be read"):
        pairs.open_split(dead, "train")
    with pytest.raises(ShardError, match=f"{url}/nowhere/spec.json: cannot be read.*extract_visual"):
        pairs.read_spec(f"{url}/nowhere", pairs.FEATURES)
    with pytest.raises(ShardError, match=f"{url}/features/train/visual-000009.tar: cannot be read"):
        list(shards.read_shards(f"{url}/features/train/visual-000009.tar"))


def test_a_spec_without_the_shard_plan_names_it(served):
    f_dir, _, url = served
    (f_dir / "spec.json").write_text(json.dumps({"encoder": {}}))
    with pytest.raises(ShardError, match=f"{url}/features/spec.json gives no per_shard"):
        pairs.open_split(f"{url}/features", "train")


def test_a_spec_planning_more_shards_than_served_names_the_missing_shard(served):
    f_dir, a_dir, url = served
    _write_specs(f_dir, a_dir, clips=25)  # 4 shards planned, 3 written
    with pytest.raises(ShardError, match=f"{url}/features/train/visual-000003.tar: cannot be read"):
        pairs.open_split(f"{url}/features", "train", f"{url}/latents")


@pytest.mark.parametrize(
    "pattern", ["{url}/x-{{000000..000003.tar", "{url}/x-{{0..a}}.tar", "x-{{000..1.tar"]
)
def test_a_bad_brace_pattern_is_named(served, pattern):
    spec = pattern.format(url=served[2])
    with pytest.raises(ShardError, match="shard spec '.*x-.*'"):
        shards.expand(spec)
