"""Feature shards: webdataset tars of `.npy`/`.json` samples, written resumably and read in clip order.

Layout (DESIGN §5): `out_dir/name-%06d.tar`; one sample per clip with `__key__ = sanitize_key(id)`, one
`<field>.npy` per array (float16 where the caller cast it), `<field>.json` per dict, and always `meta.json`
holding at least `{"id": original id}`. Shard i holds the clips `ids[i*per_shard:(i+1)*per_shard]` minus the
rejected ones, so two modalities written from the same ordered id list share the clip order shard by shard
and can be read together (`read_zipped`). Payloads are never pickled and readers refuse pickle extensions.

Scale-out (DESIGN §8): `write_shards(rank=r, world=w)` writes shard i only when `i % w == r`; each finished
shard appears atomically (temp file + `os.replace`), so a rerun skips finished shards and redoes the rest. Readers
take local paths or webdataset URLs (`http(s)://`, `pipe:`, ...: `is_remote`), opened by `webdataset.gopen`; a
URL that cannot be read raises ShardError naming it.

The flow's training stream over these shards (seeded, resumable, for DDP) is `vaflow.data.pairs.ClipStream`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from vaflow.errors import UserError

__all__ = ["ShardError", "ShardReport", "expand", "is_remote", "member_keys", "read_bytes", "read_shards",
           "read_zipped", "sanitize_key", "shard_paths", "shard_plan", "write_shards"]  # fmt: skip


class ShardError(RuntimeError, UserError):
    """A shard set that cannot be read as asked: missing, empty, misaligned or holding refused payloads."""


@dataclass
class ShardReport:
    """What one `write_shards` call did."""

    written: list[Path] = field(default_factory=list)  # shards finished by this call
    skipped: list[Path] = field(default_factory=list)  # shards already finished before this call
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (clip id, reason) skipped via on_error
    n_samples: int = 0  # samples written by this call


# ---------------------------------------------------------------------------------------------------------
# Names and encoding
# ---------------------------------------------------------------------------------------------------------

# webdataset splits a member name at the first dot after the last slash (key . extension), so keys carry
# neither dots nor slashes; it also lowercases extensions, so field names are lowercase to round-trip.
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_FIELD_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_SHARD_NAME = "{name}-{index:06d}.tar"
_TMP_SUFFIX = ".tmp"
# Extensions a reader decodes; anything else (notably pkl/pickle/pyd/pth, which would unpickle) is refused.
_PICKLE_EXTS = frozenset({"pkl", "pickle", "pyd", "pth", "pt"})
_READ_EXTS = frozenset({"npy", "json", "txt", "bin"})
# Fixed tar header fields so that the same samples always give the same bytes (DVC hashes, rank splits).
_TAR_MTIME = 0
_TAR_USER = "vaflow"


def sanitize_key(clip_id: str) -> str:
    """Return the webdataset key for a clip id: every char outside `[A-Za-z0-9_-]` becomes `_`."""
    if not isinstance(clip_id, str) or not clip_id:
        raise ValueError(f"clip id must be a non-empty string, got {clip_id!r}")
    return _KEY_UNSAFE.sub("_", clip_id)


def _check_field_name(name: str) -> None:
    if not isinstance(name, str) or not _FIELD_NAME.match(name) or name == "id":
        raise ValueError(
            f"sample field {name!r} must match {_FIELD_NAME.pattern} and not be 'id' "
            "(webdataset lowercases extensions and splits names at dots)"
        )


def _encode_value(name: str, value: Any) -> tuple[str, bytes]:
    """Encode one sample field to (member suffix, bytes); arrays to .npy, dicts to .json."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"field {name!r}: object arrays would need pickling; use a numeric dtype")
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
        return f"{name}.npy", buf.getvalue()
    if isinstance(value, Mapping):
        return f"{name}.json", json.dumps(value, sort_keys=True).encode("utf-8")
    if isinstance(value, str):
        return f"{name}.txt", value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{name}.bin", bytes(value)
    raise TypeError(
        f"field {name!r}: unsupported type {type(value).__name__} (numpy array, dict, str or bytes; "
        "convert tensors with .numpy())"
    )


def _encode_sample(clip_id: str, sample: Mapping[str, Any]) -> dict[str, Any]:
    """Turn `make_sample`'s dict into TarWriter input: `__key__` plus suffix -> bytes."""
    if not isinstance(sample, Mapping):
        raise TypeError(f"make_sample({clip_id!r}) returned {type(sample).__name__}, expected a dict")
    meta = dict(sample.get("meta", {}))
    if meta.get("id", clip_id) != clip_id:
        raise ValueError(f"make_sample({clip_id!r}) returned meta id {meta['id']!r}")
    meta["id"] = clip_id
    out: dict[str, Any] = {"__key__": sanitize_key(clip_id)}
    for name, value in sample.items():
        if name == "meta":
            continue
        _check_field_name(name)
        suffix, data = _encode_value(name, value)
        out[suffix] = data
    out["meta.json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return out


def _decode_value(suffix: str, data: bytes, where: str) -> tuple[str, Any]:
    """Decode one member payload by extension; refuses anything that could unpickle."""
    name, _, ext = suffix.rpartition(".")
    if ext in _PICKLE_EXTS:
        raise ShardError(f"{where}: refusing pickle payload {suffix!r} (shards hold .npy/.json only)")
    if ext not in _READ_EXTS or not name:
        raise ShardError(f"{where}: unsupported payload {suffix!r} (expected <field>.npy/.json/.txt/.bin)")
    try:
        if ext == "npy":
            return name, np.load(io.BytesIO(data), allow_pickle=False)
        if ext == "json":
            return name, json.loads(data)
        if ext == "txt":
            return name, data.decode("utf-8")
    except ValueError as err:  # incl. JSON and UTF-8 errors, and pickled arrays
        raise ShardError(
            f"{where}: damaged payload {suffix!r} ({err}); delete the shard and run `dvc repro`: the stage that "
            "wrote it rewrites missing shards only"
        ) from None
    return name, data


def _decode_sample(raw: Mapping[str, Any], keys: frozenset[str] | None = None) -> dict[str, Any]:
    """Decode a raw webdataset sample into {"__key__", "id", <field>: value}; `keys` limits the fields."""
    key = raw["__key__"]
    where = f"sample {key!r} of {raw.get('__url__', '?')}"
    out: dict[str, Any] = {"__key__": key}
    for suffix, data in raw.items():
        if suffix.startswith("__"):
            continue
        field_name = suffix.split(".", 1)[0]
        if keys is not None and field_name not in keys and field_name != "meta":
            continue
        name, value = _decode_value(suffix, data, where)
        out[name] = value
    meta = out.get("meta")
    if not isinstance(meta, dict) or "id" not in meta:
        raise ShardError(f"{where}: no meta.json with an 'id'")
    out["id"] = meta["id"]
    if keys is not None:
        missing = sorted(k for k in keys if k not in out)
        if missing:
            raise ShardError(f"{where}: missing fields {missing} (has {sorted(out)})")
        if "meta" not in keys:
            del out["meta"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def shard_plan(ids: Sequence[str], per_shard: int) -> list[list[str]]:
    """Split the clip order into fixed groups: shard i holds ids[i*per_shard:(i+1)*per_shard]."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    ids = list(ids)
    return [ids[i : i + per_shard] for i in range(0, len(ids), per_shard)]


def _shard_path(out_dir: Path, name: str, index: int) -> Path:
    return out_dir / _SHARD_NAME.format(name=name, index=index)


def _check_unique_keys(ids: Sequence[str]) -> None:
    # Two ids with the same key would merge into one webdataset sample; catch it before writing anything.
    seen: dict[str, str] = {}
    for clip_id in ids:
        key = sanitize_key(clip_id)
        if key in seen:
            raise ValueError(f"clip ids {seen[key]!r} and {clip_id!r} share the shard key {key!r}")
        seen[key] = clip_id


def _write_one_shard(
    path: Path,
    ids: Sequence[str],
    make_sample: Callable[[str], Mapping[str, Any]],
    on_error: Callable[[str, Exception], bool] | None,
    report: ShardReport,
    bar: tqdm,
) -> None:
    """Write one shard to `<path>.tmp`, then rename it into place (never a partial final file)."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    tmp.unlink(missing_ok=True)  # leftover of an interrupted run
    n = 0
    try:
        with open(tmp, "wb") as stream:
            with wds.TarWriter(
                stream,
                user=_TAR_USER,
                group=_TAR_USER,
                encoder=False,
                mtime=_TAR_MTIME,
                format="PAX_FORMAT",  # long clip ids exceed ustar's 100-char names
            ) as writer:
                for clip_id in ids:
                    try:
                        sample = make_sample(clip_id)
                    except Exception as exc:
                        if on_error is None or not on_error(clip_id, exc):
                            raise
                        report.rejected.append((clip_id, f"{type(exc).__name__}: {exc}"))
                    else:
                        writer.write(_encode_sample(clip_id, sample))
                        n += 1
                    bar.update(1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.written.append(path)
    report.n_samples += n


def write_shards(
    out_dir: str | os.PathLike,
    name: str,
    ids: Sequence[str],
    make_sample: Callable[[str], Mapping[str, Any]],
    per_shard: int = 1000,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    on_error: Callable[[str, Exception], bool] | None = None,
) -> ShardReport:
    """Write the clips `ids` as shards `out_dir/name-%06d.tar`, skipping shards already finished.

    make_sample(id) -> {field: np.ndarray | dict | str | bytes}; arrays become `<field>.npy` (dtype kept, so
    cast to float16 before returning where that is enough), dicts `<field>.json`, str `.txt`, bytes `.bin`.
    A `"meta"` dict is merged into the written `meta.json`, which always carries `{"id": id}`.
    This call handles shard i when `i % world == rank`. When make_sample raises an Exception for which
    `on_error(id, exc)` returns True, the clip is left out and listed in `report.rejected` (so shards may
    hold fewer clips than planned); any other exception propagates and the unfinished shard is discarded.
    """
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank} world={world}")
    if not name or "/" in name:
        raise ValueError(f"bad shard set name {name!r}")
    out = Path(out_dir)
    ids = list(ids)
    _check_unique_keys(ids)
    plan = shard_plan(ids, per_shard)
    report = ShardReport()
    todo: list[tuple[Path, list[str]]] = []
    for index, shard_ids in enumerate(plan):
        if index % world != rank:
            continue
        path = _shard_path(out, name, index)
        if path.exists():
            report.skipped.append(path)
        else:
            todo.append((path, shard_ids))
    if not todo:
        return report
    out.mkdir(parents=True, exist_ok=True)
    total = sum(len(shard_ids) for _, shard_ids in todo)
    with tqdm(total=total, desc=f"{name} r{rank}/{world}", unit="clip", disable=not progress) as bar:
        for path, shard_ids in todo:
            _write_one_shard(path, shard_ids, make_sample, on_error, report, bar)
    return report


# ---------------------------------------------------------------------------------------------------------
# Finding shards
# ---------------------------------------------------------------------------------------------------------


def shard_paths(out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Finished shards `out_dir/name-NNNNNN.tar`, sorted by shard index."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d{{6,}})\.tar$")
    found = []
    for path in Path(out_dir).glob(f"{glob.escape(name)}-*.tar"):
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def is_remote(url: str | os.PathLike) -> bool:
    """Whether `url` is read through a webdataset gopen handler (`http(s)://`, `pipe:`, `gs://`, ...), not a
    local path; `file:` counts as local."""
    url = os.fspath(url)
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", url) is not None and not url.startswith("file:")


def _expand_braces(spec: str) -> list[str]:
    try:
        urls = wds.shardlists.expand_urls(spec)
    except ValueError as err:  # unbalanced braces
        raise ShardError(f"shard spec {spec!r}: bad brace pattern ({err})") from None
    if any(ch in url for url in urls for ch in "{}"):
        raise ShardError(f"shard spec {spec!r}: braces left unexpanded (a range is {{000000..000009}})")
    return urls


def expand(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolve a shard spec to a list of URLs/paths, in order.

    Accepts a local directory (its `*.tar`, sorted), a local glob (`out/x-*.tar`), a webdataset brace
    pattern (`out/x-{000000..000009}.tar`, also `::`-joined lists) or a sequence of any of these. Remote
    URLs (`is_remote`) are brace-expanded and passed through unchecked. Missing local files and a bad brace
    pattern raise ShardError naming it; an empty result is returned as an empty list (callers decide whether
    that is an error).
    """
    if isinstance(pattern, Sequence) and not isinstance(pattern, str):
        return [url for item in pattern for url in expand(item)]
    spec = os.fspath(pattern)
    if is_remote(spec):
        return _expand_braces(spec)
    local = re.sub(r"^file:(//)?", "", spec)
    if os.path.isdir(local):
        return [str(p) for p in sorted(Path(local).glob("*.tar"))]
    if any(ch in local for ch in "*?["):
        return sorted(glob.glob(local))
    urls = _expand_braces(local)
    missing = [u for u in urls if not is_remote(u) and not os.path.isfile(u)]
    if missing:
        raise ShardError(f"shard spec {spec!r}: {len(missing)} missing file(s), e.g. {missing[:3]}")
    return urls


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def _naming_damage(url: str) -> Iterator[None]:
    """A truncated or corrupted tar read as a ShardError that names the shard and how to rewrite it; for a URL,
    any failure to read it (unreachable server, missing file: gopen's reader exits non-zero) names the URL."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as err:
        if is_remote(url):
            raise ShardError(f"{url}: cannot be read ({_read_failure(err)})") from None
        if isinstance(err, OSError | ValueError):
            raise
        raise ShardError(
            f"{url}: damaged shard ({err}); delete it and run `dvc repro`: the stage that wrote it rewrites "
            "missing shards only"
        ) from None


# gopen reads http(s) through curl; its exit status is all that is known of why (curl's man page, EXIT CODES).
_CURL_EXITS = {6: "unknown host", 7: "no server there", 22: "HTTP error: no such file?", 28: "timeout"}


def _read_failure(err: Exception) -> str:
    """gopen's error (`([cmd, ...],): exit N (read)`) as `curl exit 22: HTTP error: no such file?`."""
    match = re.search(r"\['([^']+)'.*: exit (-?\d+)", str(err))
    if match is None:
        return str(err)
    known = _CURL_EXITS.get(int(match[2])) if match[1] == "curl" else None
    return f"{match[1]} exit {match[2]}" + (f": {known}" if known else "")


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole content of a small file (a spec, a list) at a local path or URL, read like the shards."""
    url = os.fspath(url)
    with _naming_damage(url), wds.gopen(url, "rb") as stream:
        return stream.read()


def _iter_raw(url: str, fields: frozenset[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream one tar as raw samples {"__key__", "__url__", suffix: bytes}, in member order.

    fields: read only the members of these fields (the others' payloads are skipped unread); None reads all.
    """
    current: dict[str, Any] | None = None
    with _naming_damage(url), wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg():
                continue
            key, sep, suffix = info.name.rpartition("/")[2].partition(".")
            if not sep or not key:
                raise ShardError(f"{url}: member {info.name!r} is not <key>.<field>.<ext>")
            if fields is not None and suffix.partition(".")[0].lower() not in fields:
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            suffix = suffix.lower()
            if suffix in current:
                raise ShardError(f"{url}: duplicate member {info.name!r}")
            current[suffix] = tar.extractfile(info).read()
            tar.members = []  # streaming: do not keep every header of the archive
    if current is not None:
        yield current


def read_shards(
    paths: str | os.PathLike | Sequence[str | os.PathLike], keys: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream samples in shard order, then tar order: {"__key__", "id", <field>: array/dict/str/bytes}.

    paths: shard paths/URLs or a spec for `expand`. keys: fields to decode (default all; `meta` is always
    read for the id and returned only when asked or when keys is None). Arrays keep their stored dtype.
    Only one sample is held at a time.
    """
    wanted = None if keys is None else frozenset(keys)
    for url in expand(paths):
        for raw in _iter_raw(url):
            yield _decode_sample(raw, wanted)


def member_keys(url: str) -> list[str]:
    """Sample keys of one shard in order, from tar headers only (local files seek past the payloads)."""
    keys: list[str] = []
    if is_remote(url):
        source = (raw["__key__"] for raw in _iter_raw(url))
    else:
        with _naming_damage(url), tarfile.open(url, "r:") as tar:
            source = [m.name.rpartition("/")[2].partition(".")[0] for m in tar.getmembers() if m.isreg()]
    for key in source:
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


def read_zipped(
    paths_a: str | os.PathLike | Sequence[str | os.PathLike],
    paths_b: str | os.PathLike | Sequence[str | os.PathLike],
    keys_a: Sequence[str] | None = None,
    keys_b: Sequence[str] | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Stream (sample_a, sample_b) pairs of the clips present in both shard sets, in clip order.

    Policy: both sets were written by `write_shards` from the same ordered id list and `per_shard`, so shard
    i of A and shard i of B plan the same clips and each side only lacks the clips it rejected. Shards are
    paired by position (the counts must match); within a pair, the clips present on one side only are
    skipped. ShardError is raised when the sets cannot come from the same plan: different shard counts, the
    common clips in a different order, a clip skipped as one side's rejection that the other side holds in
    a later shard (shard boundaries differ), or a key whose ids differ. Memory: the keys of one shard pair
    plus the keys skipped so far (rejections only).
    """
    urls_a, urls_b = expand(paths_a), expand(paths_b)
    if len(urls_a) != len(urls_b):
        raise ShardError(f"zipped shard sets differ in count: {len(urls_a)} (A) vs {len(urls_b)} (B)")
    wanted_a = None if keys_a is None else frozenset(keys_a)
    wanted_b = None if keys_b is None else frozenset(keys_b)
    only_a: dict[str, str] = {}  # key -> shard of A, for clips B lacked so far
    only_b: dict[str, str] = {}
    for url_a, url_b in zip(urls_a, urls_b, strict=True):
        order_a, order_b = member_keys(url_a), member_keys(url_b)
        set_a, set_b = set(order_a), set(order_b)
        for key in order_b:
            if key in only_a:
                raise ShardError(
                    f"clip {key!r} is in A shard {only_a[key]} but in B only at later shard {url_b}: "
                    "the two sets do not share shard boundaries (same ids and per_shard?)"
                )
        for key in order_a:
            if key in only_b:
                raise ShardError(
                    f"clip {key!r} is in B shard {only_b[key]} but in A only at later shard {url_a}: "
                    "the two sets do not share shard boundaries (same ids and per_shard?)"
                )
        common_a = [k for k in order_a if k in set_b]
        common_b = [k for k in order_b if k in set_a]
        if common_a != common_b:
            i = next(i for i, (x, y) in enumerate(zip(common_a, common_b, strict=True)) if x != y)
            raise ShardError(
                f"clip order differs: position {i} of the common clips is {common_a[i]!r} in {url_a} "
                f"but {common_b[i]!r} in {url_b}"
            )
        only_a.update((k, url_a) for k in order_a if k not in set_b)
        only_b.update((k, url_b) for k in order_b if k not in set_a)
        common = set(common_a)
        raw_b = (raw for raw in _iter_raw(url_b) if raw["__key__"] in common)
        for raw_a in _iter_raw(url_a):
            if raw_a["__key__"] not in common:
                continue
            match_b = next(raw_b, None)
            if match_b is None:
                raise ShardError(
                    f"{url_b} ended before clip {raw_a['__key__']!r}: it changed while being read"
                )
            sample_a, sample_b = _decode_sample(raw_a, wanted_a), _decode_sample(match_b, wanted_b)
            if sample_a["__key__"] != sample_b["__key__"] or sample_a["id"] != sample_b["id"]:
                raise ShardError(
                    f"clip {sample_a['id']!r} ({url_a}) paired with {sample_b['id']!r} ({url_b}): "
                    "same key, different ids, or a shard changed while being read"
                )
            yield sample_a, sample_b
