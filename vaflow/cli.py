"""The `vaflow` command: switch presets, check params files."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from vaflow import config

# Errors that are the user's input, not a bug: shown as one clear message, without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (config.ConfigError, FileNotFoundError)


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error type that names a bad input (params, files, media, checkpoints)."""
    from vaflow.data.media import MediaError
    from vaflow.data.sources import SourceError

    return (*USER_ERRORS, MediaError, SourceError)


def exit_on_user_error(main: Callable[..., object]) -> Callable[..., object]:
    """Wrap a stage's `main`: a bad input prints `error: <message>` and exits 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except user_errors() as err:
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
