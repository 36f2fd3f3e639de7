"""Stage `prepare`: list the source's clips, check each one, write the manifest and the rejected list."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaflow import config
from vaflow.data import prepare, sources
from vaflow.errors import exit_on_user_error
from vaflow.tracking import Tracker


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output folder: manifest.csv, rejected.csv, synth media")
    parser.add_argument("--metrics", required=True, help="metrics folder (prepare.json: the clip counts)")
    args = parser.parse_args(argv)

    params = config.load(args.params)
    out = Path(args.out)
    sections = {name: getattr(params, name) for name in ("clip", "synth", "prepare")}
    with Tracker("prepare", params=sections, metrics_dir=args.metrics) as tracker:
        items = sources.list_items(params, out)
        report = prepare.prepare(items, params.clip, params.prepare, out)
        print(report.summary())
        counts = {f"clips_{s}": int((report.manifest["split"] == s).sum()) for s in config.SPLITS}
        tracker.log_final(counts | {"rejected": len(report.rejected)})
        tracker.log_artifact(report.rejected_path)
    if report.manifest.empty:
        raise config.ConfigError(
            f"no usable clip in the source '{params.prepare.source}'; see {report.rejected_path}"
        )


if __name__ == "__main__":
    main()
