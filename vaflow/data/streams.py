"""Training batches streamed from feature shards: seeded by (seed, rank, worker, epoch), resumable to the exact batch.

The pinned webdataset (1.0.2) gives neither property, so the sampling is done here on top of its file format
(tars read by `vaflow.data.shards`):
- `WebDataset(resampled=True, seed=s)` builds its `ResampledShards` without `s`, and that class seeds itself from the
  pid, the time and `os.urandom` unless `deterministic=True`: two runs draw different shards;
- `.shuffle(n, seed=s)` seeds one `random.Random(s)` per pass, the same on every rank, worker and epoch;
- a pipeline has no position to save, so a resumed run either replays (decoding everything again) or drifts.

`ShardStream`, the same protocol as `pairs.ClipStream`:
- `set_epoch(e)` chooses the pass; a pass is a pure function of (seed, rank, worker role, e). The trainer calls it
  before every pass except the one it resumes.
- resampled (DDP training, the webdataset recipe): each (rank, role) draws shards with replacement from its own
  generator; `epoch_samples` makes a pass `epoch_samples // batch_size` batches in all (else a pass never ends).
  Not resampled: every shard once per pass, in an order seeded by (seed, epoch) that all ranks share, dealt out to
  the `world × workers` (rank, role) slots.
- samples pass through a shuffle buffer seeded by (seed, rank, role, epoch), then into batches.
- `state_dict()` = the pass and how many batches each role has delivered; after `load_state_dict` the next `__iter__`
  continues right after them: each role draws its pass again and reads past its delivered batches without decoding
  them (tar reading only, at most one pass; so give a resampled training stream `epoch_samples`: an endless pass
  would make a resume read everything drawn since the start).

DataLoader workers belong to the stream (`num_workers`), not to a DataLoader wrapped around it: the main process must
count what each worker delivered, and a copy of the stream inside a worker cannot tell it. Worker j of a pass plays
role (next + j) % n, where `next` is the role whose batch the DataLoader's round robin would have delivered next, so
a resumed pass continues the uninterrupted order. The number of workers is part of the data order (roles are seeded).
"""

from __future__ import annotations

import itertools
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vaflow.data.shards import ShardError, _check_field_name, _decode_sample, _is_remote, _iter_raw, expand

__all__ = ["ShardStream", "training_stream"]

log = logging.getLogger("vaflow.data")


def _rank_world() -> tuple[int, int]:
    """(rank, world size): the process group's when one exists, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)


def _rng(*entropy: int) -> np.random.Generator:
    """A generator seeded by a tuple of integers (negative ones wrap), independent of pid, time and global RNGs."""
    return np.random.default_rng(np.random.SeedSequence([int(x) % 2**64 for x in entropy]))


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: fill `size` items, then emit a uniformly drawn one per item read, then drain; size <= 1 keeps order."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []

    def pop() -> Any:
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        return buffer.pop()

    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield pop()
    while buffer:
        yield pop()


def _collate(samples: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Batch decoded samples: arrays stack to tensors (B, ...), float16 -> float32; the rest to lists."""
    batch: dict[str, Any] = {"id": [s["id"] for s in samples]}
    for key in keys:
        values = [s[key] for s in samples]
        if isinstance(values[0], np.ndarray):
            shapes = {v.shape for v in values}
            if len(shapes) != 1:
                raise ShardError(f"field {key!r}: shapes differ within a batch {sorted(shapes)}")
            stacked = np.stack(values)
            if stacked.dtype == np.float16:
                stacked = stacked.astype(np.float32)  # fp16 is a storage format; training math runs in fp32
            batch[key] = torch.from_numpy(stacked)
        else:
            batch[key] = values
    return batch


def _has_a_sample(urls: Sequence[str]) -> bool:
    """True when some local shard holds a member, or when any shard is remote (cannot check cheaply)."""
    for url in urls:
        if _is_remote(url):
            return True
        with tarfile.open(url, "r:") as tar:
            if tar.next() is not None:
                return True
    return False


class ShardStream:
    """Dict batches {"id": list[str], key: Tensor (B, ...) | list} of one rank, pass by pass; see the module docstring."""

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        keys: Sequence[str],
        batch_size: int,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        resampled: bool = True,
        epoch_samples: int | None = None,
        rank: int | None = None,
        world: int | None = None,
        num_workers: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.keys = tuple(keys)
        for key in self.keys:
            _check_field_name(key)
        self.urls = expand(urls)
        if not self.urls:
            raise ShardError(f"shard spec {urls!r} resolves to no shard")
        if not _has_a_sample(self.urls):
            raise ShardError(f"shard spec {urls!r}: its {len(self.urls)} shard(s) hold no sample")
        self.n_batches = (
            None  # batches per pass on this rank, all workers together (None: as many as the data give)
        )
        if epoch_samples is not None:
            self.n_batches = epoch_samples // batch_size
            if self.n_batches < 1:
                raise ValueError(f"epoch_samples={epoch_samples} is less than one batch of {batch_size}")
        env_rank, env_world = _rank_world()
        self.rank = env_rank if rank is None else rank
        self.world = env_world if world is None else world
        if not 0 <= self.rank < self.world:
            raise ValueError(f"need 0 <= rank < world, got rank={self.rank} world={self.world}")
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, seed
        self.resampled, self.num_workers = resampled, num_workers
        self.pattern = (
            urls if isinstance(urls, str) else os.fspath(urls) if isinstance(urls, os.PathLike) else None
        )
        self._fields = frozenset(self.keys) | {"meta"}
        self.epoch = 0
        self._done = [0] * self._roles  # batches each role delivered in the current pass
        self._next = 0  # the role whose batch comes next (DataLoader round robin)
        self._resume: tuple[list[int], int] | None = None  # position for the next __iter__ (load_state_dict)
        self._skip_pass = False  # load_state_dict of another worker count: the rest of that pass is dropped

    @property
    def _roles(self) -> int:
        return max(1, self.num_workers)

    # ----------------------------------------------------------------------------------------------------------
    # Position
    # ----------------------------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make the next `__iter__` play pass `epoch` from its start."""
        self.epoch = int(epoch)
        self._done, self._next = [0] * self._roles, 0
        self._resume, self._skip_pass = None, False

    def state_dict(self) -> dict[str, Any]:
        """The pass and the batches each worker role delivered in it (plain ints: loadable with weights_only)."""
        return {"epoch": self.epoch, "done": list(self._done), "next": self._next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next `__iter__` continue the saved pass right after its delivered batches."""
        self.epoch = int(state["epoch"])
        done, nxt = [int(n) for n in state["done"]], int(state["next"])
        self._done, self._next = [0] * self._roles, 0
        if len(done) != self._roles:
            # Roles are seeded per worker: another count draws other batches, so no position carries over.
            log.warning(
                "data stream state saved with %d worker role(s), this stream has %d: the rest of pass %d is skipped",
                len(done),
                self._roles,
                self.epoch,
            )
            self._resume, self._skip_pass = None, True
            return
        self._resume, self._skip_pass = (done, nxt), False

    # ----------------------------------------------------------------------------------------------------------
    # One worker role's pass
    # ----------------------------------------------------------------------------------------------------------

    def _role_share(self, role: int) -> int | None:
        """Batches role `role` yields per pass: an even share of n_batches (lower roles take the remainder)."""
        if self.n_batches is None:
            return None
        return self.n_batches // self._roles + (1 if role < self.n_batches % self._roles else 0)

    def _raw_samples(self, role: int, epoch: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples of the shards this (rank, role) reads in pass `epoch`, in reading order."""
        if self.resampled:
            draws = _rng(self.seed, self.rank, role, epoch, 0)
            while True:  # with replacement; a pass ends by its share (or never)
                yield from _iter_raw(self.urls[int(draws.integers(len(self.urls)))], self._fields)
        order = _rng(self.seed, epoch).permutation(len(self.urls))  # the same on every rank: a partition
        slots = self.world * self._roles
        for i in order[self.rank * self._roles + role :: slots]:
            yield from _iter_raw(self.urls[int(i)], self._fields)

    def _role_batches(self, role: int, epoch: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        """Role `role`'s batches of pass `epoch`; the first `skip` are drawn (same RNG use) but not decoded."""
        samples = _shuffled(
            self._raw_samples(role, epoch), self.shuffle_buffer, _rng(self.seed, self.rank, role, epoch, 1)
        )
        share = self._role_share(role)
        if share is not None and skip >= share:
            return  # restored at the end of its share: nothing to read past
        wanted = frozenset(self.keys)
        for k in itertools.count() if share is None else range(share):
            raw = list(itertools.islice(samples, self.batch_size))
            if not raw:
                return
            if k >= skip:
                yield _collate([_decode_sample(r, wanted) for r in raw], self.keys)
            if len(raw) < self.batch_size:
                return  # the last, partial batch of a pass over every shard

    # ----------------------------------------------------------------------------------------------------------
    # The pass
    # ----------------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Pass `epoch` (from the start, or from the loaded position), on `num_workers` DataLoader workers."""
        if self._skip_pass:
            self._skip_pass = False
            return
        done, nxt = self._resume if self._resume is not None else ([0] * self._roles, 0)
        self._resume = None
        self._done, self._next = list(done), nxt
        epoch = self.epoch
        if self.num_workers == 0:
            for batch in self._role_batches(0, epoch, done[0]):
                self._done[0] += 1
                yield batch
            return
        loader = torch.utils.data.DataLoader(
            _Roles(self, epoch, tuple(done), nxt),
            batch_size=None,
            num_workers=self.num_workers,
            # Its own generator: a DataLoader draws its base seed from the global torch RNG otherwise, which would
            # shift the trainer's noise draws by whether and when a pass started.
            generator=torch.Generator().manual_seed(self.seed),
        )
        for role, batch in loader:
            self._done[role] += 1
            self._next = (role + 1) % self.num_workers
            yield batch


class _Roles(torch.utils.data.IterableDataset):
    """What DataLoader worker j runs: role (first + j) % n of the pass, after the batches that role delivered."""

    def __init__(self, stream: ShardStream, epoch: int, done: tuple[int, ...], first: int):
        super().__init__()
        self.stream, self.epoch, self.done, self.first = stream, epoch, done, first

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        role = (self.first + (0 if info is None else info.id)) % len(self.done)
        for batch in self.stream._role_batches(role, self.epoch, self.done[role]):
            yield role, batch


def training_stream(
    urls: str | os.PathLike | Sequence[str | os.PathLike],
    keys: Sequence[str],
    batch_size: int,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    resampled: bool = True,
    epoch_samples: int | None = None,
    *,
    rank: int | None = None,
    world: int | None = None,
    num_workers: int = 0,
) -> ShardStream:
    """A seeded, shuffled, batched stream of this rank's dict batches {"id": list[str], key: Tensor (B, ...)}.

    urls: shard spec (see `shards.expand`). keys: fields to load; `.npy` fields stack to tensors (float16 becomes
    float32), `.json` fields become lists. resampled=True (training under DDP): every rank and worker draws shards
    with replacement on its own, and `epoch_samples` (per rank) ends a pass after epoch_samples // batch_size
    batches over all workers (None: endless, and a resume reads past everything drawn so far). resampled=False: every shard once per pass, split over ranks and
    workers, the last batch of a worker possibly partial. rank/world: default from the process group or torchrun's
    RANK/WORLD_SIZE. num_workers: DataLoader worker processes the stream runs itself (do not wrap it in a DataLoader).
    Use `set_epoch(e)` before pass e, `state_dict`/`load_state_dict` to resume (the trainer does both).
    Raises ShardError when `urls` resolves to no shard or its local shards hold no sample.
    """
    return ShardStream(
        urls,
        keys,
        batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        resampled=resampled,
        epoch_samples=epoch_samples,
        rank=rank,
        world=world,
        num_workers=num_workers,
    )
