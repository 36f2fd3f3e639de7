"""Weight-file hashes: the full sha256 (the pretrained codec's card) and the short, stable id that model cards,
specs and run tags record (`weights_hash`, the one name for it)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(path: str | os.PathLike | None) -> str:
    """First 16 hex digits of the file's sha256, or "none" for a model without a weight file."""
    if path is None:
        return "none"
    return file_sha256(path)[:16]


__all__ = ["file_sha256", "weights_hash"]
