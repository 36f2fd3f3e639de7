"""What a stage shows as a bad input (one `error:` line, exit 2) rather than as a bug (a traceback).

Kept apart from `vaflow.cli` and free of heavy imports, so that a stage script importing it does not import (and,
through `vaflow.code`, depend on) the rest of the command line.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

__all__ = ["USER_ERRORS", "exit_on_user_error", "is_user_error"]

# Errors that name a bad input (params, files, media, checkpoints, a server) rather than a bug: a stage shows them
# as one clear message without a traceback. Listed by name so that checking needs no heavy import.
USER_ERRORS = frozenset(
    {
        "vaflow.config.section:ConfigError",
        "vaflow.data.sources:SourceError",
        "vaflow.data.media.process:MediaError",
        "vaflow.data.shards:ShardError",
        "vaflow.models.wavevae:CheckpointError",
        "vaflow.models.visual:WeightsError",
        "vaflow.models.artifacts:ModelMismatchError",
        "vaflow.train.checkpoint:CheckpointError",
        "vaflow.train.checkpoint:ConfigMismatchError",
        "vaflow.train.interface:NonFiniteError",
        "vaflow.train.interface:EmptyStreamError",
        "vaflow.tracking:TrackingError",
        "vaflow.eval.oracle:TruthError",
        "builtins:FileNotFoundError",
    }
)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` (or one of its base classes) is one of USER_ERRORS."""
    return any(f"{cls.__module__}:{cls.__qualname__}" in USER_ERRORS for cls in type(err).__mro__)


def exit_on_user_error(main: Callable[..., object]) -> Callable[..., object]:
    """Wrap a stage's `main`: a bad input prints `error: <message>` and exits 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as err:
            if not is_user_error(err):
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
