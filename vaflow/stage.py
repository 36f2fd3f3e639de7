"""What every `stages/*.py` script shares: its command line (`--params` and the stage's folders), the params
load, the MLflow run and DVC metrics files of its tracked sections, and bad inputs shown as one `error:` line.

A stage script describes itself and hands its work over:

    STAGE = Stage("train_align", __doc__, {"--features": "extract_visual's folder", ...}, ("train_align",))

    def train(params, args, tracker): ...

    def main(argv=None):
        run(STAGE, train, argv)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaflow import atomic, code, config
from vaflow.errors import exit_on_user_error
from vaflow.tracking import Tracker

__all__ = ["Stage", "run"]


@dataclass(frozen=True)
class Stage:
    """A stage's name, help text, required path flags (`--flag` -> help) and the params sections it logs."""

    name: str
    doc: str | None
    flags: Mapping[str, str]
    tracked: tuple[str, ...]
    metrics_name: str | None = None  # stem of the metrics files when it is not the stage name
    fresh: tuple[str, ...] = ()  # path flags of the folders the stage writes whole (see `run`)

    def parser(self) -> argparse.ArgumentParser:
        """`--params` (default params.yaml) and every path flag, each required (dvc.yaml names them all)."""
        parser = argparse.ArgumentParser(description=self.doc)
        parser.add_argument("--params", default="params.yaml")
        for flag, help_text in self.flags.items():
            parser.add_argument(flag, required=True, help=help_text)
        return parser

    def tracker(self, params: config.Params, metrics_dir: str) -> Tracker:
        """The stage's run: its tracked sections as MLflow params, its metrics files in `metrics_dir`."""
        sections = {name: getattr(params, name) for name in self.tracked}
        return Tracker(self.name, params=sections, metrics_dir=metrics_dir, metrics_name=self.metrics_name)


def run(
    stage: Stage,
    work: Callable[..., Any],
    argv: list[str] | None = None,
    *,
    before: Callable[[config.Params, argparse.Namespace], Any] | None = None,
    after: Callable[[config.Params, argparse.Namespace, Any], None] | None = None,
) -> None:
    """Parse the flags, load the params and call `work(params, args, tracker)` inside the stage's run.

    `before(params, args)` runs first, outside any run (checks that must fail before one starts); its result
    is passed to `work` as a fourth argument. `after(params, args, result)` gets what `work` returned, once
    the run has ended. A user error anywhere prints `error: <message>` and exits 2 (`vaflow.errors`).

    Nothing the stage wrote before is touched until the params, `before` and the tracking server have passed
    (DVC leaves every output in place: all are `persist` in dvc.yaml). The `fresh` folders are then written from
    empty, and their previous content comes back if the stage fails or is killed; the metrics file is written
    only when the run succeeds.
    """
    exit_on_user_error(_run)(stage, work, argv, before, after)


def _run(
    stage: Stage,
    work: Callable[..., Any],
    argv: list[str] | None,
    before: Callable[[config.Params, argparse.Namespace], Any] | None,
    after: Callable[[config.Params, argparse.Namespace, Any], None] | None,
) -> None:
    if work.__module__ == "__main__":  # run as a script (`python stages/x.py`): it must run its own vaflow
        code.check_checkout(sys.modules["__main__"].__file__)
    args = stage.parser().parse_args(argv)
    fresh = [Path(getattr(args, flag.lstrip("-").replace("-", "_"))) for flag in stage.fresh]
    for folder in fresh:
        atomic.recover(folder)  # a killed run's folder is partial: the one before it comes back
    params = config.load(args.params)
    ready = () if before is None else (before(params, args),)
    tracker = stage.tracker(params, args.metrics)  # an unusable tracking server fails here
    with atomic.replacing_folders(fresh):
        with tracker:
            result = work(params, args, tracker, *ready)
        if after is not None:
            after(params, args, result)
