"""The one weights-hash helper: a short, stable id of a weight file for model cards, specs and run tags."""

from __future__ import annotations

import hashlib
import os


def weights_hash(path: str | os.PathLike | None) -> str:
    """First 16 hex digits of the file's sha256, or "none" for a model without a weight file."""
    if path is None:
        return "none"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


__all__ = ["weights_hash"]
