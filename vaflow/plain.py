"""Configs and specs as plain JSON values, and nested ones as dotted keys: one conversion for every comparison.

Checkpoint folders, extraction specs, encoder identities and MLflow params all compare or hash a config against a
recorded copy. A recorded copy went through JSON (tuples became lists, sections became dicts), so a fresh one must
too before it is compared; `plain` does that once for all of them, and `flatten` gives the `a.b.c` keys that MLflow
params and config diffs are written in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["flatten", "plain"]


def plain(obj: Any) -> Any:
    """`obj` as JSON types: params sections (pydantic models) dumped, tuples as lists, keys as strings."""
    return json.loads(
        json.dumps(obj, default=lambda m: m.model_dump(mode="json") if isinstance(m, BaseModel) else m)
    )


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (and sections) as {"a.b.c": leaf}; an empty mapping below the top is a leaf of its own."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, Mapping) and (obj or not prefix):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}
