"""The base of every params section, and the error a params file that does not validate raises.

Torch-free and import-free (pydantic only), so that `vaflow.config`, `vaflow.train.config` and anything checking a
params file import it without an import cycle and without loading a model library.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigError", "Section"]


class ConfigError(ValueError):
    """A params file that does not validate; the message names every bad key."""


class Section(BaseModel):
    """Base of every params section: unknown keys and wrong types are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
