"""Batched extraction of per-clip features into shards: the common core of `encode_audio` and `extract_visual`.

Both modalities are written from the same ordered id list (the manifest's order within a split) with the same
`per_shard`, so shard i of the audio latents and shard i of the visual features hold the same clips, minus the
clips either side rejected (`shards.read_zipped` skips those).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaflow.data import shards
from vaflow.data.media import MediaError


class ClipRejected(ValueError):
    """A clip that cannot be used (decode failure, silence policy, non-finite values); the reason is the message."""


@dataclass
class BatchedEncoder:
    """Serves `make_sample(id)` to `shards.write_shards` while loading and encoding `batch_size` clips at a time.

    `load(id) -> input` decodes one clip (raising MediaError or ClipRejected for a bad clip); `encode(inputs) ->
    samples` runs the model on a list of inputs and returns one sample mapping per input. The writer asks for ids in
    shard order, so on a cache miss the next `batch_size` ids of the same shard are loaded and encoded together; a
    clip that fails to load is re-raised when the writer reaches it, and the rest of its batch is still encoded.
    """

    plan: Sequence[Sequence[str]]
    load: Callable[[str], Any]
    encode: Callable[[list[Any]], list[Mapping[str, Any]]]
    batch_size: int

    def __post_init__(self) -> None:
        self._next: dict[str, list[str]] = {}
        for shard_ids in self.plan:
            for i, clip_id in enumerate(shard_ids):
                self._next[clip_id] = list(shard_ids[i : i + self.batch_size])
        self._cache: dict[str, Mapping[str, Any] | Exception] = {}

    def __call__(self, clip_id: str) -> Mapping[str, Any]:
        if clip_id not in self._cache:
            self._cache.clear()  # the writer never comes back to an earlier batch
            batch = self._next[clip_id]
            inputs, good = [], []
            for bid in batch:
                try:
                    inputs.append(self.load(bid))
                    good.append(bid)
                except (MediaError, ClipRejected) as err:
                    self._cache[bid] = err
            if inputs:
                self._cache.update(zip(good, self.encode(inputs), strict=True))
        result = self._cache.pop(clip_id)
        if isinstance(result, Exception):
            raise result
        return result


def _reject_bad_clip(clip_id: str, err: Exception) -> bool:
    return isinstance(err, MediaError | ClipRejected)


def extract_split(
    ids: Sequence[str],
    out_dir: Path,
    name: str,
    load: Callable[[str], Any],
    encode: Callable[[list[Any]], list[Mapping[str, Any]]],
    batch_size: int,
    per_shard: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> shards.ShardReport:
    """Encode the clips `ids` (in this order) into `out_dir/name-%06d.tar`; rank `rank` of `world` writes its share.

    Finished shards are skipped, so a killed run resumes where it stopped. Clips whose `load` raises MediaError or
    ClipRejected are left out and listed in the report's `rejected` with their reason.
    """
    plan = shards.shard_plan(ids, per_shard)
    serve = BatchedEncoder(plan, load, encode, batch_size)
    return shards.write_shards(
        out_dir,
        name,
        ids,
        serve,
        per_shard=per_shard,
        rank=rank,
        world=world,
        progress=progress,
        on_error=_reject_bad_clip,
    )
