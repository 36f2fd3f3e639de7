"""Training streams over shards: seeded by (seed, rank, worker, epoch), exact resume, one pass over every shard."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch

from vaflow.data.shards import ShardError, write_shards
from vaflow.data.streams import ShardStream, training_stream

IDS = [f"c{i:02d}" for i in range(30)]


def _sample(clip_id: str) -> dict:
    i = int(clip_id[1:])
    return {"x": np.array([i, -i], np.float16), "meta": {"label": i % 3}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """30 clips in 8 shards of 4 (the last holds 2); clip ci carries x = (i, -i)."""
    out = tmp_path_factory.mktemp("streams")
    write_shards(out, "x", IDS, _sample, per_shard=4, progress=False)
    return out


def _stream(root, **kw) -> ShardStream:
    """Rank 0 of 2 by default; a pass is 6 batches of 3."""
    args = {"shuffle_buffer": 5, "seed": 7, "epoch_samples": 18, "rank": 0, "world": 2}
    return training_stream(root, ["x"], 3, **{**args, **kw})


def _pass(stream: ShardStream, epoch: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
    """One pass as (ids, x) per batch; `epoch` given: begun with set_epoch, as the trainer does."""
    if epoch is not None:
        stream.set_epoch(epoch)
    return [(b["id"], b["x"]) for b in stream]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        ia == ib and torch.equal(xa, xb) for (ia, xa), (ib, xb) in zip(a, b, strict=True)
    )


def _ids(batches) -> list[list[str]]:
    return [ids for ids, _ in batches]


def _saved(state: dict) -> dict:
    """A state through a checkpoint: torch.save, then torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_a_pass_is_a_function_of_seed_rank_and_epoch(root, monkeypatch):
    a = _stream(root)
    first = _pass(a, 0)
    assert len(first) == 6 and all(len(ids) == 3 for ids in _ids(first))  # 18 samples in batches of 3
    assert all(torch.equal(x[:, 0], torch.tensor([float(i[1:]) for i in ids])) for ids, x in first)
    assert first[0][1].dtype == torch.float32  # float16 storage, float32 batches
    assert _same(_pass(_stream(root), 0), first)  # a fresh stream, same seed: the same draws
    assert _same(_pass(a, 0), first)  # the same pass again
    assert _ids(_pass(a, 1)) != _ids(first)  # another epoch, other draws
    assert _ids(_pass(_stream(root, seed=8), 0)) != _ids(first)
    assert _ids(_pass(_stream(root, rank=1), 0)) != _ids(first)  # ranks draw on their own
    unshuffled = {r: _ids(_pass(_stream(root, rank=r, shuffle_buffer=0), 0)) for r in (0, 1)}
    assert unshuffled[0] != unshuffled[1]  # ... shards too, not only the buffer order
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _same(_pass(_stream(root, rank=None, world=None), 0), _pass(_stream(root, rank=1), 0))
    two = _stream(root, num_workers=2)
    by_workers = _pass(two, 0)
    assert len(by_workers) == 6  # the pass is shared by the workers, not repeated by each
    assert _same(_pass(_stream(root, num_workers=2), 0), by_workers)  # worker roles are seeded too
    roles = _ids(_pass(_stream(root, num_workers=2, shuffle_buffer=0), 0))
    assert roles[0::2] != roles[1::2]  # the DataLoader alternates the workers, which draw different shards


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_stream_killed_and_resumed_yields_the_uninterrupted_batches(root, workers):
    """For each of two ranks: passes 0-2 uninterrupted, against pass 0, 3 of the 6 batches of pass 1, a kill (the
    stream object is dropped; only its state survives, through torch.save), and a fresh stream that continues from
    the state. With 2 workers the 3 batches came from roles 0, 1, 0, so the resumed pass must start with role 1."""
    per_rank = []
    for rank in (0, 1):
        reference = _stream(root, rank=rank, num_workers=workers)
        want = [b for epoch in range(3) for b in _pass(reference, epoch)]

        victim = _stream(root, rank=rank, num_workers=workers)
        got = _pass(victim, 0)
        victim.set_epoch(1)
        it = iter(victim)
        got += [(b["id"], b["x"]) for b in (next(it) for _ in range(3))]
        state = _saved(victim.state_dict())
        it.close()  # killed: its workers, buffers and position are gone
        del victim, it

        resumed = _stream(root, rank=rank, num_workers=workers)
        resumed.load_state_dict(state)
        got += _pass(resumed)  # no set_epoch: the restored pass continues
        got += _pass(resumed, 2)
        assert _same(got, want), (rank, _ids(got), _ids(want))
        per_rank.append(_ids(want))
    assert per_rank[0] != per_rank[1]


def test_resume_at_the_end_of_a_pass_yields_nothing_then_the_next_pass(root):
    stream = _stream(root)
    _pass(stream, 0)
    resumed = _stream(root)
    resumed.load_state_dict(_saved(stream.state_dict()))
    assert _pass(resumed) == []
    assert _same(_pass(resumed, 1), _pass(_stream(root), 1))


def test_another_worker_count_drops_the_rest_of_the_pass(root, caplog):
    stream = _stream(root)
    stream.set_epoch(0)
    next(iter(stream))
    other = _stream(root, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="vaflow.data"):
        other.load_state_dict(stream.state_dict())
    assert "1 worker role(s), this stream has 2" in caplog.text
    assert _pass(other) == []
    assert len(_pass(other, 1)) == 6


def test_a_pass_leaves_the_global_rngs_alone(root):
    """The DataLoader would draw its base seed from the global torch RNG, which the trainer's noise draws come from."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _pass(_stream(root, num_workers=2), 0)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("workers", [0, 2])
def test_one_pass_reads_every_shard_once_over_ranks_and_workers(root, workers):
    passes = {}
    for epoch in (0, 1):
        per_rank = [_pass(_stream(root, resampled=False, epoch_samples=None, rank=r, num_workers=workers), epoch)
                    for r in (0, 1)]  # fmt: skip
        ids = [i for batches in per_rank for b in _ids(batches) for i in b]
        assert sorted(ids) == IDS  # every clip once, none twice, over both ranks
        passes[epoch] = ids
    assert passes[0] != passes[1]  # shard order and buffer reshuffled per pass


def test_one_pass_resumes_mid_pass(root):
    def fresh():
        return _stream(root, resampled=False, epoch_samples=None)

    want = _pass(fresh(), 0)
    stream = fresh()
    stream.set_epoch(0)
    it = iter(stream)
    got = [(b["id"], b["x"]) for b in (next(it) for _ in range(2))]
    resumed = fresh()
    resumed.load_state_dict(_saved(stream.state_dict()))
    assert _same(got + _pass(resumed), want)


def test_fields_and_partial_last_batch(root):
    stream = training_stream(str(root / "x-{000000..000007}.tar"), ["x", "meta"], 4, resampled=False)
    batches = list(stream)
    assert [len(b["id"]) for b in batches] == [4] * 7 + [2]
    assert sorted(i for b in batches for i in b["id"]) == IDS
    assert [m["id"] for m in batches[0]["meta"]] == batches[0]["id"]
    assert batches[0]["x"].shape == (4, 2)


def test_empty_specs_and_bad_arguments(tmp_path, root):
    with pytest.raises(ShardError, match="none-"):
        training_stream(str(tmp_path / "none-{000000..000003}.tar"), ["x"], 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="empty.*no shard"):
        training_stream(str(tmp_path / "empty"), ["x"], 2)
    with pytest.raises(ShardError, match="no shard"):
        training_stream(str(tmp_path / "nothing-*.tar"), ["x"], 2)
    write_shards(tmp_path / "all_bad", "x", IDS, _fail, on_error=lambda i, e: True, progress=False)
    with pytest.raises(ShardError, match="no sample"):
        training_stream(tmp_path / "all_bad", ["x"], 2)
    with pytest.raises(ValueError, match="less than one batch"):
        training_stream(root, ["x"], 4, epoch_samples=3)
    with pytest.raises(ValueError, match="rank=2 world=2"):
        training_stream(root, ["x"], 4, rank=2, world=2)


def _fail(clip_id: str) -> dict:
    raise ValueError(f"bad clip {clip_id}")
