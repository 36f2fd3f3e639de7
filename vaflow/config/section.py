"""The base of every params section, its error, one conversion of configs to JSON values, and the dict form of
the networks' dataclass configs (`DictConfig`).

Torch-free (pydantic only). Checkpoint folders, extraction specs, encoder identities and MLflow params compare or
hash a config against a recorded copy that went through JSON (tuples became lists, sections dicts), so a fresh one
goes through `jsonable` before it is compared; `flatten` gives the `a.b.c` keys MLflow params and diffs use.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from vaflow.errors import UserError

__all__ = ["ConfigError", "DictConfig", "Section", "flatten", "jsonable"]


class ConfigError(ValueError, UserError):
    """A params file that does not validate; the message names every bad key."""


class Section(BaseModel):
    """Base of every params section: unknown keys and wrong types are errors, values are immutable.

    A number is never read from a string or a boolean (`steps: "25"`, `steps: true`), nor a boolean from
    anything but a boolean (`compile: "no"`): YAML gives them their own types, so such a value is a mistake.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _own_type(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        if kinds == {bool} and not isinstance(value, bool):
            raise ValueError("expected true or false")
        if kinds and bool not in kinds and isinstance(value, bool | str):
            raise ValueError("expected a number, not text or true/false")
        return value


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field holds (`int | None` → {int}), or none when it holds text or anything else too."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else ()
    )
    kinds = {a for a in args or (annotation,) if a is not type(None)}
    return kinds if kinds and kinds <= {int, float, bool} else set()


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


class DictConfig:
    """Base of a dataclass config: `to_dict` gives its fields as a plain dict, `from_dict` builds it back."""

    # Whether `to_dict` writes tuple fields as lists (the JSON shape, compared as read back from a file) or keeps
    # them as tuples; each config keeps the form its saved cards and identities were made with.
    tuples_as_lists: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (`dataclasses.asdict`), tuples as lists where `tuples_as_lists`."""
        d = dataclasses.asdict(self)
        if not self.tuples_as_lists:
            return d
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Inverse of `to_dict` (and of its JSON copy: lists become tuples); an unknown key is an error naming it."""
        known = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {known}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
