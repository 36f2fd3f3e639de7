"""The flow's training data: a split's visual-feature shards and audio-latent shards, read together (DESIGN §5).

`extract_visual` writes `<features>/<split>/visual-%06d.tar` (`feat` (T_v, D_v)) and `encode_audio` writes
`<latents>/<split>/audio-%06d.tar` (`mean`, `std` (T_a, D_a)), both from the manifest's clip order with the same
`per_shard`, so shard i of one set pairs with shard i of the other (`shards.read_zipped`). A clip is on one side
only when that side's extraction rejected it; `open_split` checks exactly that against the other side's
`rejected.csv`, so two sets of different clip lists are an error instead of a silent intersection.

A root (`features`, `latents`) is a local folder or the URL of a copy of one (`http(s)://host/features`, read
through webdataset's gopen like the shards, so `pipe:` works too). A local split's shards are the finished ones
in its folder; a server lists no folder, so a remote split's are those its root's `spec.json` plans:
`<root>/<split>/<name>-{000000..N-1}.tar` with N = ceil(splits.<split>.clips / per_shard), exactly the files the
extraction stage leaves once finished (`extract.finish_split`). Opening a remote split streams each shard once to
count and check its clips (tar headers only, but the bytes travel).

`ClipStream` turns a split into training batches with memory bounded by its shuffle buffer, whatever the size of
the dataset. Each epoch puts the shard pairs in a seeded order (seed, epoch), which lays the split's clips end to
end; rank r of `world` reads the r-th of `world` equal contiguous runs of that sequence, so it opens only the shards
its run covers (1/world of them, and a shard at the border of two runs is read in part by both), shuffles through
a seeded buffer (seed, epoch, rank) and yields exactly `len(stream)` batches, the same count on every rank (DDP
needs it). Its order is a pure function of (seed, epoch, rank, world), so two runs give identical batches and a
resumed run replays to the exact position. With world 1 the run is the whole sequence: every shard in the epoch's
order. A larger world keeps the epoch's shard order but changes which clips meet in a batch (each rank shuffles
its own run) and which clips an epoch leaves out (fewer than one global batch, at the runs' ends).
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
import os
import posixpath
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaflow.data import shards
from vaflow.data.shards import ShardError

__all__ = ["FEATURES", "LATENTS", "ClipStream", "SplitShards", "open_split", "optional_split", "read_spec"]

FEATURES = "visual"  # shard set name written by extract_visual
LATENTS = "audio"  # shard set name written by encode_audio
SPEC_FILE = "spec.json"
REJECTED_FILE = "rejected.csv"
_WRITER = {FEATURES: "extract_visual", LATENTS: "encode_audio"}


def _join(root: str | Path, *parts: str) -> str:
    """`root/part/...` for a local folder or a URL (whose slashes a Path would fold)."""
    root = os.fspath(root)
    if shards.is_remote(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts))


def read_spec(root: str | Path, name: str) -> dict[str, Any]:
    """The `spec.json` of a feature (`name="visual"`) or latent (`"audio"`) folder or URL; a missing one names its
    stage, one that cannot be fetched its URL."""
    path = _join(root, SPEC_FILE)
    if not shards.is_remote(path):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path} not found: run the {_WRITER[name]} stage first (dvc repro {_WRITER[name]})"
            )
        return json.loads(Path(path).read_text())
    try:
        return json.loads(shards.read_bytes(path))
    except ShardError as err:
        raise ShardError(f"{err}: {root} must be a copy of {_WRITER[name]}'s output folder") from None
    except ValueError as err:
        raise ShardError(
            f"{path}: not a spec.json ({err}): is {root} a copy of {_WRITER[name]}'s folder?"
        ) from None


def _split_shards(root: str | Path, split: str, name: str) -> list[str]:
    """The shards of `<root>/<split>`: a folder's finished ones, or those a URL's spec.json plans (module doc)."""
    if not shards.is_remote(os.fspath(root)):
        return [str(p) for p in shards.shard_paths(Path(root) / split, name)]
    spec = read_spec(root, name)
    try:
        per_shard, planned = int(spec["per_shard"]), spec["splits"]
    except (KeyError, TypeError, ValueError):
        raise ShardError(
            f"{_join(root, SPEC_FILE)} gives no per_shard and splits: the shards of a remote split cannot be "
            f"listed without them (rerun {_WRITER[name]} with the current code, then copy the folder again)"
        ) from None
    n = math.ceil(int(planned.get(split, {}).get("clips", 0)) / per_shard)
    return shards.expand(_join(root, split, f"{name}-{{000000..{n - 1:06d}}}.tar")) if n else []


def _rejected_later(split_dir: str) -> Callable[[], set[str]]:
    """The ids of `<split_dir>/rejected.csv`, read on the first call only: a remote one is fetched only when a clip
    on one side only needs it."""
    return functools.cache(lambda: _rejected_ids(split_dir))


def _rejected_ids(split_dir: str) -> set[str]:
    path = _join(split_dir, REJECTED_FILE)
    if shards.is_remote(path):
        text = shards.read_bytes(path).decode()
    elif Path(path).is_file():
        text = Path(path).read_text()
    else:
        return set()
    return {row["id"] for row in csv.DictReader(io.StringIO(text, newline=""))}


@dataclass(frozen=True)
class SplitShards:
    """One split's shards: features, and latents when the split is read paired; per-shard-pair clip counts."""

    split: str
    features: list[str]  # shard paths or URLs
    latents: list[str] | None
    counts: list[int]  # usable clips in each shard (pair)
    shapes: dict[str, tuple[int, ...]]  # field -> per-clip shape, from the first clip
    keep: frozenset[str] | None = None  # the shard keys (`shards.sanitize_key(id)`) read; None: every clip

    @property
    def n_clips(self) -> int:
        return sum(self.counts)

    def samples(self, order: Sequence[int] | None = None) -> Iterator[dict[str, Any]]:
        """Clips as {"id", "feat" [, "mean", "std"]} (numpy), shard pairs in `order` (default: stored order)."""
        for i in order if order is not None else range(len(self.features)):
            if self.latents is None:
                for s in shards.read_shards([self.features[i]], keys=("feat",)):
                    if self._kept(s["id"]):
                        yield self._checked({"id": s["id"], "feat": s["feat"]}, self.features[i])
            else:
                pairs = shards.read_zipped([self.features[i]], [self.latents[i]], ("feat",), ("mean", "std"))
                for f, a in pairs:
                    if self._kept(f["id"]):
                        yield self._checked({"id": f["id"], "feat": f["feat"], "mean": a["mean"], "std": a["std"]},
                                            self.features[i])  # fmt: skip

    def _kept(self, clip_id: str) -> bool:
        return self.keep is None or shards.sanitize_key(clip_id) in self.keep

    def _checked(self, sample: dict[str, Any], where: str) -> dict[str, Any]:
        for key, shape in self.shapes.items():
            got = tuple(sample[key].shape)
            if got != shape:
                raise ShardError(
                    f"clip {sample['id']!r} ({where}): {key} is shaped {got}, expected {shape} like the split's "
                    "other clips: the shards were written by another encoder/VAE or clip length; rerun extraction"
                )
        return sample


def open_split(
    features: str | Path,
    split: str,
    latents: str | Path | None = None,
    expect: Mapping[str, tuple] | None = None,
    ids: Collection[str] | None = None,
) -> SplitShards:
    """Find and check a split's shards: `<features>/<split>/visual-*.tar` (and `<latents>/<split>/audio-*.tar`);
    either root a local folder or a URL (module doc). With `ids`, only those clips are read (a source's clips:
    `prepare.source_ids`); the shards are still checked whole.

    Raises ShardError when the split has no shard or no clip, when the two sets differ in shard count, or when a
    clip is on one side only without being listed in the other side's rejected.csv (the sets were written from
    different clip lists); and when a clip's shapes differ from `expect` ({"feat": (T_v, D_v), "mean": ...}).
    A URL that cannot be read raises ShardError naming it.
    """
    f_dir = _join(features, split)
    f_urls = _split_shards(features, split, FEATURES)
    if not f_urls:
        raise ShardError(
            f"{f_dir}: no {FEATURES}-*.tar shards for split {split!r} (empty split, or run extract_visual)"
        )
    keep = None if ids is None else frozenset(shards.sanitize_key(i) for i in ids)
    if latents is None:
        counts = [len(_kept_keys(shards.member_keys(u), keep)) for u in f_urls]
        a_urls = None
    else:
        a_dir = _join(latents, split)
        a_urls = _split_shards(latents, split, LATENTS)
        if len(a_urls) != len(f_urls):
            raise ShardError(
                f"split {split!r}: {len(f_urls)} feature shard(s) in {f_dir} but {len(a_urls)} latent shard(s) in "
                f"{a_dir}: extract_visual and encode_audio must use the same per_shard and manifest"
            )
        counts = _paired_counts(f_urls, a_urls, _rejected_later(f_dir), _rejected_later(a_dir), keep)
    if sum(counts) == 0:
        which = "" if keep is None else f" of the {len(keep)} clips asked for (the stage's sources)"
        raise ShardError(f"split {split!r}: the shards in {f_dir} hold no usable clip{which}")
    first = SplitShards(split, f_urls, a_urls, counts, {}, keep)
    sample = next(first.samples())
    shapes = {k: tuple(v.shape) for k, v in sample.items() if k != "id"}
    for key, want in (expect or {}).items():
        if shapes.get(key) != tuple(want):
            raise ShardError(
                f"clip {sample['id']!r} of split {split!r}: {key} is shaped {shapes.get(key)}, but the config "
                f"expects {tuple(want)}: the shards come from another encoder, WaveVAE or clip length"
            )
    return SplitShards(split, f_urls, a_urls, counts, shapes, keep)


def _kept_keys(keys: Collection[str], keep: frozenset[str] | None) -> set[str]:
    return set(keys) if keep is None else set(keys) & keep


def optional_split(
    features: str | Path,
    split: str,
    latents: str | Path | None = None,
    expect: Mapping[str, tuple] | None = None,
    ids: Collection[str] | None = None,
) -> SplitShards | None:
    """`open_split`, or None when the split has no feature shards at all (e.g. a source without a val split)."""
    if not _split_shards(features, split, FEATURES):
        return None
    return open_split(features, split, latents, expect, ids)


def _paired_counts(
    f_urls: list[str],
    a_urls: list[str],
    f_rejected: Callable[[], set[str]],
    a_rejected: Callable[[], set[str]],
    keep: frozenset[str] | None = None,
) -> list[int]:
    counts = []
    for f_url, a_url in zip(f_urls, a_urls, strict=True):
        f_keys, a_keys = shards.member_keys(f_url), shards.member_keys(a_url)
        f_set, a_set = set(f_keys), set(a_keys)
        for key, side, other, rejected in (
            *((k, f_url, a_url, a_rejected) for k in f_keys if k not in a_set),
            *((k, a_url, f_url, f_rejected) for k in a_keys if k not in f_set),
        ):
            if key not in {shards.sanitize_key(i) for i in rejected()}:
                raise ShardError(
                    f"clip {key!r} is in {side} but not in {other}, and {_join(posixpath.dirname(other), REJECTED_FILE)} "
                    "does not list it: the feature and latent sets hold different clips (rerun both extraction stages)"
                )
        counts.append(len(_kept_keys(f_set & a_set, keep)))
    return counts


class ClipStream:
    """Seeded batches {"id": list, "feat" (B, T_v, D_v) [, "mean", "std" (B, T_a, D_a)]} float32 of one split."""

    def __init__(
        self,
        data: SplitShards,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 512,
    ):
        if batch_size < 1 or shuffle_buffer < 1:
            raise ValueError(
                f"batch_size and shuffle_buffer must be >= 1, got {batch_size}, {shuffle_buffer}"
            )
        n_batches = data.n_clips // (batch_size * world)
        if n_batches < 1:
            raise ShardError(
                f"split {data.split!r}: {data.n_clips} clips are fewer than one global batch of "
                f"{batch_size * world} ({world} rank(s) × {batch_size}): lower trainer.batch_size or add clips"
            )
        self.data, self.batch_size, self.rank, self.world = data, batch_size, rank, world
        self.seed, self.buffer, self.n_batches = seed, shuffle_buffer, n_batches
        self.epoch = 0
        self.pattern = posixpath.dirname(data.features[0])  # named by the trainer's empty-stream error

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def _rank_samples(self) -> Iterator[dict[str, Any]]:
        """This rank's contiguous run of the epoch's clip sequence, reading only the shards it covers."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data.features))
        n = self.data.n_clips
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        mine, skip, start = [], 0, 0
        for i in order.tolist():
            end = start + self.data.counts[i]
            if start < hi and end > lo:
                skip = skip if mine else lo - start
                mine.append(i)
            start = end
        return itertools.islice(self.data.samples(mine), skip, skip + hi - lo)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        buffer: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        emitted = 0

        def take() -> dict[str, Any]:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            return buffer.pop()

        source = self._rank_samples()
        while emitted < self.n_batches:
            for sample in source:
                buffer.append(sample)
                if len(buffer) >= self.buffer:
                    break
            if not buffer:
                return  # cannot happen: n_batches counts whole batches of this rank's clips
            batch.append(take())
            if len(batch) == self.batch_size:
                yield _collate(batch)
                batch, emitted = [], emitted + 1


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": [s["id"] for s in samples]}
    for key in samples[0]:
        if key != "id":
            out[key] = torch.from_numpy(np.stack([s[key] for s in samples]).astype(np.float32))
    return out
