"""WaveVAE recipes compared: the `audio_vae` stage run with overridden params, its wall time and key figures.

    python benchmarks/wavevae_recipe.py audio_vae.stft_weight=0 audio_vae.trainer.batch_size=2 --name mel-only

Runs `stages/audio_vae.py` exactly as `dvc repro` does, on the prepared data of a default run (`data/prepared`),
with `params.yaml` plus `dotted.key=value` overrides (values parsed as YAML, as `dvc exp run -S` does), into a
temporary folder (its own checkpoints and MLflow store: nothing of the pipeline's is touched). Prints one JSON
line: the overrides, training + evaluation wall time, and the reconstruction figures that judge a recipe (test
mel L1, loudness error, oracle pitch correlation and onset F1, the level decoded from silence); `--out FILE`
appends it there too. Seeds are the params' (`audio_vae.trainer.seed=1` for another draw: runs vary by seed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "test_mel_l1",
    "test_loudness_db",
    "oracle_pitch_corr",
    "oracle_onset_f1",
    "test_silence_dbfs",
    "baseline_mean_spectrum_mel_l1",
)


def override(params: dict, assignment: str) -> None:
    """Set `a.b.c=value` in the nested dict (the value parsed as YAML); an unknown key is an error."""
    key, sep, value = assignment.partition("=")
    if not sep:
        raise SystemExit(f"override {assignment!r}: expected dotted.key=value")
    *path, last = key.split(".")
    node = params
    for part in path:
        if not isinstance(node.get(part), dict):
            raise SystemExit(f"override {assignment!r}: params have no section {part!r}")
        node = node[part]
    if last not in node:
        raise SystemExit(f"override {assignment!r}: params have no key {key!r}")
    node[last] = yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dotted.key=value on top of params.yaml")
    parser.add_argument("--name", default="", help="a label for the JSON line")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument(
        "--prepared", default=str(ROOT / "data/prepared"), help="a default run's prepared data"
    )
    parser.add_argument("--out", default="", help="a JSONL file to append the result to")
    args = parser.parse_args()
    if not (Path(args.prepared) / "manifest.csv").is_file():
        raise SystemExit(f"{args.prepared}/manifest.csv not found: run `dvc repro prepare` first")
    params = yaml.safe_load(Path(args.params).read_text())
    for assignment in args.overrides:
        override(params, assignment)
    with tempfile.TemporaryDirectory(prefix="wavevae-recipe-") as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
        cmd = [sys.executable, str(ROOT / "stages/audio_vae.py"), "--params", str(work / "params.yaml")]
        cmd += ["--prepared", args.prepared, "--out", str(work / "vae"), "--checkpoints", str(work / "ck")]
        cmd += ["--metrics", str(work / "metrics")]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        seconds = time.perf_counter() - start
        figures = json.loads((work / "metrics/audio_vae.json").read_text())
    result = {"name": args.name, "overrides": args.overrides, "stage_s": round(seconds, 1)}
    result |= {k: round(figures[k], 4) for k in KEYS if k in figures}
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
