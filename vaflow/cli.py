"""The `vaflow` command: switch presets, check params files."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from vaflow import config

# Errors that name a bad input (params, files, media, checkpoints, a server) rather than a bug: a stage shows them
# as one clear message without a traceback. Listed by name so that checking needs no heavy import.
USER_ERRORS = frozenset(
    {
        "vaflow.config:ConfigError",
        "vaflow.data.sources:SourceError",
        "vaflow.data.media:MediaError",
        "vaflow.data.shards:ShardError",
        "vaflow.audio.wavevae:CheckpointError",
        "vaflow.visual.base:WeightsError",
        "vaflow.models.artifacts:ModelMismatchError",
        "vaflow.train.checkpoint:CheckpointError",
        "vaflow.train.checkpoint:ConfigMismatchError",
        "vaflow.train.trainer:NonFiniteError",
        "vaflow.train.trainer:EmptyStreamError",
        "vaflow.tracking:TrackingError",
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


def _cmd_preset(args: argparse.Namespace) -> None:
    if args.list:
        print("\n".join(config.presets()))
        return
    params = config.preset(args.name)
    path = Path(args.params)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(config.dump(params))
    tmp.replace(path)
    print(f"{path}: preset '{args.name}' written; run `dvc repro` (or `dvc status`) to see what it changes")


def _cmd_check(args: argparse.Namespace) -> None:
    config.load(args.params)
    print(f"{args.params}: ok")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preset", help="write a preset (configs/NAME.yaml over the defaults) to params.yaml")
    p.add_argument("name", nargs="?", default="default", help="preset name (default, micro, vggsound, ...)")
    p.add_argument("--params", default="params.yaml", help="params file to write")
    p.add_argument("--list", action="store_true", help="list the available presets")
    p.set_defaults(func=_cmd_preset)
    c = sub.add_parser("check", help="validate a params file")
    c.add_argument("params", nargs="?", default="params.yaml")
    c.set_defaults(func=_cmd_check)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
