"""The base of every params section, its error, and one conversion of configs to JSON values.

Torch-free (pydantic only). Checkpoint folders, extraction specs, encoder identities and MLflow params compare or
hash a config against a recorded copy that went through JSON (tuples became lists, sections dicts), so a fresh one
goes through `jsonable` before it is compared; `flatten` gives the `a.b.c` keys MLflow params and diffs use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigError", "Section", "flatten", "jsonable"]


class ConfigError(ValueError):
    """A params file that does not validate; the message names every bad key."""


class Section(BaseModel):
    """Base of every params section: unknown keys and wrong types are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def jsonable(obj: Any) -> Any:
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
