"""The `vaflow` command: switch presets, check params files, publish the pretrained codec, add generated audio to a
video, score a folder of generated audio with the reference evaluators, run and report the paper's tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vaflow import atomic, config
from vaflow.errors import UserError, exit_on_user_error


class ArgumentError(UserError, ValueError):
    """A command-line argument that cannot work (an output path, a device), found before any work starts."""


def _output_path(video: Path, out: str | None, overwrite: bool) -> Path:
    """The file `vaflow generate` writes: never the input (also through a link), never an existing file unless
    `overwrite`, never a folder, and only under a folder."""
    path = Path(out) if out else video.with_name(f"{video.stem}_vaflow.mp4")
    if path.is_dir():
        raise ArgumentError(f"-o {path}: is a directory; name the file to write")
    if path.suffix.lower() != ".mp4":
        raise ArgumentError(
            f"-o {path}: the result is an mp4 (the input's video stream and the new audio); name a .mp4"
        )
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentError(f"-o {path}: {parent} is a file, not a folder")
            break
    if path.exists() and path.samefile(video):
        raise ArgumentError(f"-o {path}: is the input video; write the result to another file")
    if path.exists() and not overwrite:
        raise ArgumentError(f"-o {path}: exists; pass --overwrite to replace it")
    return path


def _device(name: str | None):
    """The torch device `--device` names, checked before any work (default: cuda when available, else cpu)."""
    import torch

    from vaflow.generate import default_device

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ArgumentError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ArgumentError(f"--device {name}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise ArgumentError(f"--device {name}: vaflow runs on cpu or cuda")
    return device


def _cmd_preset(args: argparse.Namespace) -> None:
    if args.list:
        print("\n".join(config.presets()))
        return
    if args.name is None:  # never a silent overwrite of params.yaml with the default
        raise ArgumentError(f"name a preset to write to {args.params}: {', '.join(config.presets())}")
    params = config.preset(args.name)
    path = Path(args.params)
    atomic.write_text(path, config.dump(params))
    print(f"{path}: preset '{args.name}' written; run `dvc repro` (or `dvc status`) to see what it changes")


def _cmd_check(args: argparse.Namespace) -> None:
    config.load(args.params)
    print(f"{args.params}: ok")


def _cmd_generate(args: argparse.Namespace) -> None:
    from vaflow.data import media

    chosen = {"solver": args.solver, "steps": args.steps, "cfg": args.cfg, "seed": args.seed}
    try:
        cfg = config.validate({"sample": chosen}, "vaflow generate").sample  # the stage's own checks
    except config.ConfigError as err:  # named as the flags the user typed, not as params keys
        raise ArgumentError(str(err).replace("vaflow generate: sample.", "--")) from None
    video, models_dir = Path(args.video), Path(args.models)
    if not models_dir.is_dir():
        raise ArgumentError(
            f"--models {args.models}: no such folder ({models_dir.absolute()}); it is data/models of a vaflow "
            "checkout after `dvc repro`: run from the checkout or pass --models <checkout>/data/models"
        )
    info = media.check_video(video)  # the arguments and the input are checked before torch loads
    out = _output_path(video, args.out, args.overwrite)
    if not media.mp4_holds(info.video_codec):
        print(f"note: {video}: an mp4 cannot hold its {info.video_codec.split()[0]} video stream as it is; the "
              "result's video is re-encoded as H.264", file=sys.stderr)  # fmt: skip
    device = _device(args.device)
    from vaflow.data.features import compact_identity, load_encoder
    from vaflow.generate import Sampler, generate_video, load_models

    encoder = load_encoder(models_dir / "visual_encoder", device)
    identity = compact_identity(encoder.identity())
    models = load_models(models_dir / "vaflow", models_dir / "audio_vae", identity, device)
    sampler = Sampler(cfg.solver, cfg.steps, cfg.cfg, "video")
    try:
        result = generate_video(video, out, models, encoder, sampler, cfg.seed)
    except FloatingPointError as err:  # a diverged model: not the input's fault, but no traceback either
        raise SystemExit(f"error: {err}") from None
    print(f"{result.out}: {result.duration:.2f} s of audio in {result.windows} window(s) of "
          f"{models.window_seconds:g} s ({cfg.solver}, {cfg.steps} steps, γ {cfg.cfg}, {result.nfe} NFE)")  # fmt: skip


def _cmd_pretrained(args: argparse.Namespace) -> None:
    from vaflow.train.publish import publish

    card = publish(".", args.out)
    print(f"{card}: card written beside {card.parent / 'wavevae.safetensors'}; commit both (docs/wavevae.md)")


def _cmd_tables(args: argparse.Namespace) -> None:
    from vaflow.eval import grids

    if args.action == "list":
        for name in grids.grid_names():
            print(f"{name}: {grids.load_grid(name).title}")
        return
    if args.name is None:
        raise ArgumentError(f"vaflow tables {args.action}: name a table ({', '.join(grids.grid_names())})")
    grid = grids.load_grid(args.name)
    if args.action == "run":
        from vaflow import tracking

        root = tracking.repo_root()  # queued experiments run in temporary copies: they log to this store
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.default_tracking_uri(root)}
        outcome = grids.run_grid(grid, args.seeds, jobs=args.jobs, env=env)
        failed = [name for name, what in outcome.items() if what.startswith("failed")]
        print(f"{grid.name}: {len(outcome) - len(failed)} of {len(outcome)} experiments done"
              + (f"; failed: {', '.join(failed)}" if failed else "") + f"; `vaflow tables report {grid.name}`")  # fmt: skip
        return
    from vaflow import tracking
    from vaflow.eval import grid_report

    root = tracking.repo_root()
    uri = tracking.default_tracking_uri(root)
    experiment = (
        args.experiment or os.environ.get("VAFLOW_EXPERIMENT") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    )
    experiment = experiment or tracking.DEFAULT_EXPERIMENT
    runs = grid_report.collect(grid, uri, experiment)
    text = grid_report.report(grid, runs, args.alpha)
    out = Path(args.out or root / "reports" / f"{grid.name}.md")
    atomic.write_text(out, text)
    files = [grid_report.plot(grid, runs, out.with_suffix(".png"))] if grid.sweep else []
    parent = grid_report.publish(grid, text, uri, experiment, runs, files)
    print(
        f"{', '.join(map(str, [out, *files]))}: {grid.title}; MLflow {uri}, experiment {experiment!r}, table run "
        f"{parent} (its rows' runs nested)"
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from vaflow.eval import toolkits

    result = toolkits.score_folder(Path(args.folder), Path(args.evaluators), _device(args.device))
    text = json.dumps(result, indent=2)
    if args.json:
        atomic.write_text(Path(args.json), text + "\n")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items())
    print(f"{args.folder}: {result['clips']} of {result['of']} test clips ({result['resampled']} resampled, "
          f"{result['fitted']} cut or padded): {shown}" + (f"; {args.json}" if args.json else ""))  # fmt: skip


def _version() -> str:
    """The installed vaflow's version and where it is imported from."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("vaflow")
    except PackageNotFoundError:
        number = "(not installed)"
    return f"{number} ({Path(__file__).resolve().parent})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vaflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preset", help="write a preset (configs/NAME.yaml over the defaults) to params.yaml")
    p.add_argument("name", nargs="?", help="preset name (default, micro, vggsound, ...; --list shows them)")
    p.add_argument("--params", default="params.yaml", help="params file to write")
    p.add_argument("--list", action="store_true", help="list the available presets")
    p.set_defaults(func=_cmd_preset)
    c = sub.add_parser("check", help="validate a params file")
    c.add_argument("params", nargs="?", default="params.yaml")
    c.set_defaults(func=_cmd_check)
    w = sub.add_parser(
        "pretrained", help="publish the wavevae preset's trained codec as the pretrained default"
    )
    w.add_argument("codec", choices=["wavevae"], help="the codec to publish (the embedded default's WaveVAE)")
    w.add_argument(
        "--out", help="folder to write (default: data/pretrained/wavevae, the default's checkpoint)"
    )
    w.set_defaults(func=_cmd_pretrained)
    d = config.SampleConfig()  # the sample stage's defaults
    g = sub.add_parser(
        "generate",
        help="give a video a new audio track generated by the trained VAFlow",
        description="Give a video a new audio track generated by the trained VAFlow. The embedded default's models "
        "know only the synthetic 64x64 world: on real footage their tracks barely depend on the video. For real "
        "videos, train the paper-scale preset (vaflow preset vggsound; README, Presets) and pass its models.",
    )
    g.add_argument("video", help="any video file (size, frame rate, codec and length are free)")
    g.add_argument("-o", "--out", help="mp4 to write (default: <video stem>_vaflow.mp4 beside the video); never the "
                   "input, and an existing file only with --overwrite")  # fmt: skip
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    g.add_argument("--models", default="data/models",
                   help="folder of the exported models: visual_encoder/, vaflow/, audio_vae/ (default: %(default)s)")  # fmt: skip
    g.add_argument(
        "--solver", default=d.solver, help="ODE solver: euler, midpoint, rk4 or dopri5 (default: %(default)s)"
    )
    g.add_argument(
        "--steps", type=int, default=d.steps, help="steps of the fixed-step solvers (default: %(default)s)"
    )
    g.add_argument("--cfg", type=float, default=d.cfg,
                   help="classifier-free guidance γ (Eq. 10; 0 = off, at most 20) (default: %(default)s)")  # fmt: skip
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the prior draws (default: %(default)s)")
    g.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    g.set_defaults(func=_cmd_generate)
    e = sub.add_parser("evaluate", help="score a folder of generated wavs with the reference evaluators",
                       description="Score any folder of generated wavs named <clip id>.wav (this pipeline's or another "
                       "system's) against the test split with the reference evaluators of evaluators.reference, whose "
                       "ground truth the evaluators stage computed: the same protocol as the evaluate stage.")  # fmt: skip
    e.add_argument("folder", help="folder of <clip id>.wav files")
    e.add_argument("--evaluators", default="data/models/evaluators",
                   help="the evaluators stage's folder (reference.json + ground truth) (default: %(default)s)")  # fmt: skip
    e.add_argument("--json", help="also write the metrics and their protocol to this JSON file")
    e.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    e.set_defaults(func=_cmd_evaluate)
    t = sub.add_parser("tables", help="run the paper's tables as DVC experiment grids, and report them",
                       description="The paper's tables (configs/tables/NAME.yaml) as grids of DVC experiments: `run` "
                       "runs each row at seeds 1..N (`dvc exp run`, named NAME-ROW-sSEED; held ones are kept; the workspace is put "
                       "back to the commit), "
                       "`report` writes reports/NAME.md (and, for a figure, reports/NAME.png) from the finished runs tracked in MLflow.")  # fmt: skip
    t.add_argument("action", choices=["list", "run", "report"])
    t.add_argument("name", nargs="?", help="the table (configs/tables/NAME.yaml)")
    t.add_argument("--seeds", type=int, default=3, help="run: seeds 1..N of every row (default: %(default)s)")
    t.add_argument("--jobs", type=int, default=1,
                   help="run: experiments at a time; above 1 they are queued and each runs in a temporary copy, "
                   "so a sweep's points train from scratch (default: %(default)s)")  # fmt: skip
    t.add_argument("--experiment", help="report: the MLflow experiment (default: the stages' own)")
    t.add_argument(
        "--alpha", type=float, default=0.05, help="report: the paired test's level (default: %(default)s)"
    )
    t.add_argument("--out", help="report: the markdown to write (default: reports/NAME.md)")
    t.set_defaults(func=_cmd_tables)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
