"""`vaflow pretrained wavevae`: publish the `wavevae` preset's trained WaveVAE as the embedded default's pretrained
codec, `data/pretrained/wavevae/{wavevae.safetensors, card.json}` (docs/wavevae.md).

Run in the checkout that trained it, after `dvc repro audio_vae` on the `wavevae-base` or `wavevae` preset
(`pretrained.REBUILD` chains the two). Everything on the card is
read from that run, never typed in: the params (`params.yaml`), the exported weights and their geometry
(`vae.json`), the test figures (`metrics/audio_vae.json`), the training wall time (the step log's throughput), the
hash of the training manifest, the commit and the stage's code identity, and the machine. The run must be the one the
checkout describes: `mode: train`, weights equal to `vae.json`'s hash, and the checkpoint folder of the current
params and code present (the code did not change after training).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from vaflow import atomic, config
from vaflow.code import code_hash, import_closure
from vaflow.config.section import jsonable
from vaflow.hashing import file_sha256, weights_hash
from vaflow.models import wavevae
from vaflow.models.pretrained import CARD, REBUILD, WEIGHTS, PretrainedError, read_card, write_card
from vaflow.train.checkpoint import run_dir
from vaflow.train.wavevae import run_identity

STAGE_SCRIPT = "stages/audio_vae.py"
# Keys of metrics/audio_vae.json that go on the card: the test split's and the synthetic world's oracle figures.
FIGURE_PREFIXES = ("test_", "oracle_")


def _git(args: list[str], root: Path) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise PretrainedError(f"{root}: `git {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name (lscpu's), from /proc/cpuinfo; the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU model, cores, memory, torch threads, device and torch version."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__.split("+")[0],
    }


def training_seconds(steps_tsv: Path, batch_size: int) -> float:
    """Training wall time from the step log: each row's `samples_per_s` over the steps since the previous row."""
    log = pd.read_csv(steps_tsv, sep="\t")
    if log.empty or not {"step", "samples_per_s"} <= set(log.columns):
        raise PretrainedError(f"{steps_tsv}: no step log with `step` and `samples_per_s` columns")
    steps = log["step"].diff().fillna(log["step"].iloc[0])
    return float((steps * batch_size / log["samples_per_s"]).sum())


def pipeline_paths(root: Path) -> dict[str, str]:
    """`vars.paths` of dvc.yaml: where the stages write."""
    for entry in yaml.safe_load((root / "dvc.yaml").read_text()).get("vars", []):
        if isinstance(entry, dict) and "paths" in entry:
            return entry["paths"]
    raise PretrainedError(f"{root / 'dvc.yaml'}: no `vars: paths` entry")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise PretrainedError(f"{path}: no such file; train the codec first ({REBUILD})")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(_need(path).read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not JSON ({e})") from None


def build_card(root: Path) -> tuple[dict[str, Any], Path]:
    """The card of the run in checkout `root` and the path of its exported weights; PretrainedError when the run
    is not a finished `train`-mode run of the checkout's params and code."""
    params = config.load(root / "params.yaml")
    cfg = params.audio_vae
    if cfg.mode != "train":
        raise PretrainedError(
            f"{root / 'params.yaml'}: audio_vae.mode is {cfg.mode!r}; a pretrained codec is published from a "
            f"trained run: {REBUILD}"
        )
    paths = pipeline_paths(root)
    model, metrics = root / paths["audio_vae"], root / paths["metrics"]
    weights = _need(model / wavevae.FOLDER.weights)
    vae_card = _read_json(model / wavevae.FOLDER.card)
    figures = _read_json(metrics / "audio_vae.json")
    manifest = _need(root / paths["prepared"] / "manifest.csv")
    if vae_card.get("mode") != "train" or vae_card.get("size") != cfg.size:
        raise PretrainedError(f"{model / wavevae.FOLDER.card}: exported by a {vae_card.get('mode')!r} run of size "
                              f"{vae_card.get('size')!r}, params.yaml trains {cfg.size!r}; rerun dvc repro audio_vae")  # fmt: skip
    if weights_hash(weights) != vae_card.get("weights_hash"):
        raise PretrainedError(f"{weights}: not the weights vae.json describes; rerun dvc repro audio_vae")
    files = import_closure(root / STAGE_SCRIPT, root)
    code = code_hash(files, root)
    sections = {"audio_vae": cfg, "clip": params.clip}
    if not run_dir(root / paths["checkpoints"], "audio_vae", run_identity(cfg, params.clip, code)).is_dir():
        raise PretrainedError(
            f"{root / paths['checkpoints']}: no training run of the current params and code (code {code}); the "
            "code or params changed after training: rerun dvc repro audio_vae"
        )
    dirty = _git(["status", "--porcelain", "--", *(str(f.relative_to(root)) for f in files)], root)
    card = {
        "command": REBUILD,
        "commit": _git(["rev-parse", "HEAD"], root),
        "code": {
            "stage": STAGE_SCRIPT,
            "hash": code,
            "files": len(files),
            "uncommitted_changes": bool(dirty),
        },
        "recipe": jsonable(sections),
        "steps": cfg.trainer.steps,
        "seed": cfg.trainer.seed,
        "training_world": {"prepare_source": params.prepare.source, "synth": jsonable(params.synth)},
        "training_manifest_sha256": file_sha256(manifest),
        "machine": machine(),
        "wall_time_s": {
            "training": round(
                training_seconds(_need(metrics / "audio_vae_steps.tsv"), cfg.trainer.batch_size)
            )
        },  # fmt: skip
        "wavevae": {k: vae_card[k] for k in ("size", "sample_rate", "hop", "latent_dim", "audio_channels")},
        "test_figures": {k: v for k, v in sorted(figures.items()) if k.startswith(FIGURE_PREFIXES)},
    }
    if cfg.init:  # the second phase of a recipe: the card of the weights it started from goes on this one's
        init = root / cfg.init
        if init.name != WEIGHTS or not (init.parent / CARD).is_file():
            raise PretrainedError(
                f"{init}: audio_vae.init has no card beside it; publish the first phase first"
            )
        card["init"] = read_card(
            init.parent, size=cfg.size, sample_rate=params.clip.sample_rate, hop=vae_card["hop"]
        )
    return card, weights


def publish(root: str | os.PathLike = ".", out: str | os.PathLike | None = None) -> Path:
    """Copy the run's weights to `out` (default: the embedded default's folder) and write their card; returns the
    card's path. Nothing is written when the run does not qualify."""
    root = Path(root).resolve()
    card, weights = build_card(root)
    default = Path(config.AudioVAEConfig.model_fields["checkpoint"].default).parent
    folder = Path(out) if out is not None else root / default
    folder.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(folder / WEIGHTS) as tmp:
        shutil.copyfile(weights, tmp)
    return write_card(folder, card)


__all__ = ["CARD", "build_card", "machine", "publish", "training_seconds"]
