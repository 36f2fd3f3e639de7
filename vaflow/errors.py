"""What a stage shows as a bad input (one `error:` line, exit 2) rather than as a bug (a traceback).

Kept free of project imports, so that every module can give its errors the `UserError` base (the config, which
must not import torch, included) and a stage script importing it depends on nothing else.
"""

from __future__ import annotations

import difflib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable

__all__ = ["ERROR_TAG", "UserError", "did_you_mean", "exit_on_user_error", "is_user_error"]

ERROR_TAG = (
    "vaflow.error"  # the MLflow tag of a failed or killed stage run: its exception, as `Type: message`
)


class UserError(Exception):
    """An error naming a bad input (params, files, media, checkpoints, a server) rather than a bug: a stage
    shows it as one clear message without a traceback. An extra base, beside the error's own built-in one."""


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is a UserError, or a missing file (`FileNotFoundError`, the one built-in bad input)."""
    return isinstance(err, UserError | FileNotFoundError)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the choice nearest to a misspelt `value`, or "" when none is near."""
    near = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _default_in_child() -> None:
    # A forked worker (a multiprocessing pool's) is stopped by SIGTERM outright, as it would be without the
    # handler: raised as SystemExit it could die holding a lock of the pool and hang its parent's shutdown.
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_in_child)


def exit_on_user_error(main: Callable[..., object]) -> Callable[..., object]:
    """Wrap a stage's `main`: a bad input prints `error: <message>` and exits 2 instead of a traceback; SIGTERM
    exits 143 through the code's clean-up (temporary files, folders set aside, the MLflow run), not around it."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
        try:
            return main(*args, **kwargs)
        except Exception as err:
            if not is_user_error(err):
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapped
