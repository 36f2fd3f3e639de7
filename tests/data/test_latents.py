"""encode_audio: the clip policy, shards that round-trip to the VAE's own latents, rejections of bad audio, resume
after SIGKILL, a spec change that clears stale shards, ranks, and the stage's metrics. Also the helpers the
audio_vae stage tests share."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.data.badmedia import make_clip
from tests.stage_scripts import load_stage
from vaflow import config
from vaflow.code import code_hash, import_closure
from vaflow.config import ClipConfig
from vaflow.data import latents as encode
from vaflow.data import media, shards
from vaflow.data.extract import ClipRejected, extract_split, finish_split
from vaflow.data.journal import SpecFolder
from vaflow.data.prepare import MANIFEST_COLUMNS
from vaflow.models.wavevae import SIZES, build

ROOT = Path(__file__).resolve().parents[2]
RATE = 8000
CLIP = ClipConfig(duration=1.0, sample_rate=RATE)


# --------------------------------------------------------------------------------------------
# Helpers (also used by test_training.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads can be 20× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_manifest(prepared: Path, clips: list[tuple[str, str, Path]], duration: float = 1.0) -> Path:
    """`prepared/manifest.csv` of (id, split, media path) rows, all windows starting at 0."""
    prepared.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": i, "split": s, "label": "tone", "path": str(p), "start": 0.0, "duration": duration}
        | {"media_duration": duration + 0.2, "fps": 10.0, "width": 16, "height": 16}
        | {"sample_rate": RATE, "channels": 1, "status": "ok", "source": "folder"}
        for i, s, p in clips
    ]
    path = prepared / "manifest.csv"
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(path, index=False)
    return path


def make_media(root: Path, n: int = 2, sample_rate: int = RATE) -> list[Path]:
    """`n` real 1.2 s clips (tone + test pattern); manifests reuse them under several ids."""
    root.mkdir(parents=True, exist_ok=True)
    return [
        make_clip(root / f"clip{k}.mp4", duration=1.2, size=(16, 16), fps=10, sample_rate=sample_rate)
        for k in range(n)
    ]


def write_params(path: Path, overrides: dict) -> Path:
    """A full params file: the defaults, with the codec trained in the pipeline (the default imports the 16 kHz
    pretrained one, these worlds run at any rate), and `overrides` merged in."""
    base = config.deep_merge(
        config.Params().model_dump(mode="json"), {"audio_vae": {"mode": "train", "checkpoint": ""}}
    )
    data = config.deep_merge(base, overrides)
    path.write_text(config.dump(config.validate(data)))
    return path


def export_tiny(model_dir: Path, seed: int = 0, sample_rate: int = RATE) -> Path:
    """A random tiny WaveVAE exported as the audio_vae stage does."""
    torch.manual_seed(seed)
    vae = build(dataclasses.replace(SIZES["tiny"], sample_rate=sample_rate))
    encode.export_model(vae, model_dir, {"size": "tiny", "mode": "train"})
    return model_dir


def _shard_ids(split_dir: Path) -> list[str]:
    return [s["id"] for s in shards.read_shards(shards.shard_paths(split_dir, "audio"), keys=[])]


# --------------------------------------------------------------------------------------------
# The clip policy
# --------------------------------------------------------------------------------------------


def test_fit_length_trims_pads_within_tolerance_and_rejects_short_clips():
    audio = np.arange(10, dtype=np.float32)
    assert np.array_equal(encode.fit_length(audio, 8, tolerance=2), audio[:8])
    padded = encode.fit_length(audio[:7], 8, tolerance=2)
    assert padded.shape == (8,) and padded[-1] == 0 and np.array_equal(padded[:7], audio[:7])
    with pytest.raises(ClipRejected, match="too short"):
        encode.fit_length(audio[:5], 8, tolerance=2)


def test_clip_audio_policy():
    n = CLIP.padded_samples(8)
    tone = 0.5 * np.sin(np.arange(RATE) * 0.3).astype(np.float32)
    out = encode.clip_audio(tone, RATE, n)
    assert out.shape == (n,) and out.dtype == np.float32
    # A clip short by less than the tolerance (what prepare accepts) is padded, not rejected.
    short = tone[: n - round(0.8 * encode.PAD_TOLERANCE_S * RATE)]
    assert encode.clip_audio(short, RATE, n).shape == (n,)
    with pytest.raises(ClipRejected, match="too short"):
        encode.clip_audio(tone[: n // 2], RATE, n)
    loud = encode.clip_audio(3 * tone, RATE, n)
    assert np.abs(loud).max() == 1.0  # clamped, kept
    with pytest.raises(ClipRejected, match="silent audio"):
        encode.clip_audio(np.zeros(RATE, np.float32), RATE, n)
    with pytest.raises(ClipRejected, match="silent audio"):
        encode.clip_audio(np.full(RATE, 1e-6, np.float32), RATE, n)
    for bad in (np.nan, np.inf):
        broken = tone.copy()
        broken[100] = bad
        with pytest.raises(ClipRejected, match="non-finite audio"):
            encode.clip_audio(broken, RATE, n)


# --------------------------------------------------------------------------------------------
# The stage: shards, round trip, bad audio, resume, spec
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Two real clips and a corrupt file: the media every encode test draws from."""
    root = tmp_path_factory.mktemp("encode_world")
    make_media(root / "media")
    (root / "media" / "corrupt.mp4").write_bytes(b"not a video at all\n" * 50)
    return root


def _clips(world: Path, n_train: int, n_test: int, special: tuple[str, ...] = ()) -> list:
    good = sorted((world / "media").glob("clip*.mp4"))
    clips = [(f"tr{k:02d}", "train", good[k % len(good)]) for k in range(n_train)]
    clips += [(f"te{k:02d}", "test", good[k % len(good)]) for k in range(n_test)]
    # Special clips point at names the patched loader recognises (or, for corrupt.mp4, a real broken file).
    clips += [(f"bad_{s}", "train", world / "media" / f"{s}.mp4") for s in special]
    return clips


def _encode_params(tmp: Path, per_shard: int, batch_size: int) -> Path:
    # Both extraction stages must cut shards alike (they are paired by position): the config checks it.
    shard = {"per_shard": per_shard}
    return write_params(tmp / "params.yaml", {"clip": CLIP.model_dump(), "encode_audio": {**shard, "batch_size": batch_size}, "extract_visual": shard})  # fmt: skip


def _run_encode(tmp: Path, per_shard: int = 2, batch_size: int = 3, seed: int = 0) -> tuple[Path, Path]:
    params = _encode_params(tmp, per_shard, batch_size)
    vae_dir = tmp / "vae"
    if not (vae_dir / encode.FOLDER.weights).exists():
        export_tiny(vae_dir, seed)
    out = tmp / "latents"
    argv = [
        "--params",
        str(params),
        "--prepared",
        str(tmp / "prepared"),
        "--vae",
        str(vae_dir),
        "--out",
        str(out),
    ]
    load_stage("encode_audio").main([*argv, "--metrics", str(tmp / "metrics")])
    return out, vae_dir


def test_shards_round_trip_to_the_vae_latents(world, tmp_path, mlflow_store):
    write_manifest(tmp_path / "prepared", _clips(world, 5, 2))
    out, vae_dir = _run_encode(tmp_path)
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [f"audio-{i:06d}.tar" for i in range(3)]
    assert [p.name for p in (out / "test").glob("*.tar")] == ["audio-000000.tar"]
    assert _shard_ids(out / "train") == [f"tr{k:02d}" for k in range(5)]
    spec = json.loads((out / "spec.json").read_text())
    vae, vae_hash = encode.load_model(vae_dir)
    t_a = CLIP.latent_length(vae.hop)
    assert spec["weights_hash"] == vae_hash and spec["latent_length"] == t_a == 1000
    assert spec["code"] == code_hash(import_closure(ROOT / "stages" / "encode_audio.py"))
    assert sorted(spec["splits"]) == ["test", "train"] and spec["splits"]["train"]["clips"] == 5
    metrics = json.loads((tmp_path / "metrics" / "encode_audio.json").read_text())
    assert metrics == {"clips": 7, "encoded": 7, "rejected": 0, "shards": 4, "encoded_train": 5,
                       "rejected_train": 0, "encoded_test": 2, "rejected_test": 0}  # fmt: skip
    # What readers see of a finished folder: shards, rejected.csv, spec.json (no journal left behind).
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".lock", "spec.json", "test/audio-000000.tar", "test/rejected.csv",
        "train/audio-000000.tar", "train/audio-000001.tar", "train/audio-000002.tar", "train/rejected.csv",
    ]  # fmt: skip

    sample = next(shards.read_shards(shards.shard_paths(out / "train", "audio")))
    assert sample["id"] == "tr00" and sample["meta"]["label"] == "tone"
    assert sample["mean"].dtype == np.float16 and sample["mean"].shape == (t_a, vae.latent_dim)  # time-major
    assert sample["std"].shape == (t_a, vae.latent_dim) and (sample["std"] > 0).all()

    clip_path = sorted((world / "media").glob("clip*.mp4"))[0]
    audio = torch.from_numpy(encode.load_clip(str(clip_path), 0.0, CLIP, CLIP.padded_samples(vae.hop)))[None]
    with torch.no_grad():
        mean = vae.encode_mono(audio).mean  # (1, D, T)
        direct = vae.decode_mono(mean)  # (1, N)
        from_shard = vae.decode_mono(torch.from_numpy(sample["mean"]).float().T[None])  # (1, N)
    # The shard holds the posterior mean to float16 rounding (batched encoding differs in the last float32 bits) …
    stored = torch.from_numpy(sample["mean"]).float().T[None]  # (1, D, T)
    assert torch.allclose(stored, mean, rtol=2**-10, atol=1e-4)
    # … and decoding it gives decode(encode(clip).mean) to float16 tolerance.
    assert torch.allclose(from_shard, direct, atol=2e-3 * float(direct.abs().max()) + 1e-5)


def test_bad_audio_is_rejected_with_reasons_and_never_reaches_a_shard(
    world, tmp_path, monkeypatch, mlflow_store
):
    special = ("silent", "loud", "nan", "corrupt", "short", "nanlatent")
    write_manifest(tmp_path / "prepared", _clips(world, 3, 1, special))
    real_read = media.read_audio
    good = str(sorted((world / "media").glob("clip*.mp4"))[0])

    def fake_read(path, sample_rate, start=0.0, duration=None, timeout=120.0):
        name = Path(path).stem
        if name == "corrupt" or name.startswith("clip"):
            return real_read(path, sample_rate, start, duration, timeout)
        audio = real_read(good, sample_rate, start, duration, timeout)
        if name == "silent":
            return np.zeros_like(audio)
        if name == "loud":
            return 4 * audio
        if name == "nan":
            audio[1234] = np.nan
        if name == "short":
            return audio[: len(audio) // 3]
        if name == "nanlatent":
            return np.full_like(audio, 0.25)  # a valid clip whose latents the patched VAE makes NaN
        return audio

    real_latents = encode.posterior_latents

    def nan_latents(vae, audio):
        mean, std = real_latents(vae, audio)
        mean[audio[:, 0] == 0.25] = float("nan")
        return mean, std

    monkeypatch.setattr(media, "read_audio", fake_read)
    monkeypatch.setattr(encode, "posterior_latents", nan_latents)
    out, _ = _run_encode(tmp_path)

    rejected = pd.read_csv(out / "train" / "rejected.csv")
    reasons = dict(zip(rejected["id"], rejected["reason"], strict=True))
    assert set(reasons) == {"bad_silent", "bad_nan", "bad_corrupt", "bad_short", "bad_nanlatent"}
    assert reasons["bad_silent"].startswith("silent audio")
    assert reasons["bad_nan"] == "non-finite audio"
    assert reasons["bad_corrupt"].startswith("decode failed")
    assert reasons["bad_short"].startswith("too short")
    assert reasons["bad_nanlatent"] == "non-finite latents"
    kept = _shard_ids(out / "train")
    assert kept == ["tr00", "tr01", "tr02", "bad_loud"]  # clipping is clamped, not rejected
    for sample in shards.read_shards(shards.shard_paths(out / "train", "audio")):
        assert np.isfinite(sample["mean"]).all() and np.isfinite(sample["std"]).all()
    assert pd.read_csv(out / "test" / "rejected.csv").empty
    metrics = json.loads((tmp_path / "metrics" / "encode_audio.json").read_text())
    assert (metrics["clips"], metrics["encoded"], metrics["rejected"], metrics["rejected_train"]) == (
        10,
        5,
        5,
        5,
    )


def test_spec_change_clears_stale_shards(world, tmp_path, mlflow_store):
    write_manifest(tmp_path / "prepared", _clips(world, 3, 1))
    out, vae_dir = _run_encode(tmp_path)
    first = (out / "train" / "audio-000000.tar").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    # Same spec: nothing is rewritten.
    _run_encode(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == stamps
    # Another VAE: every old shard is deleted and the set rebuilt from the new weights.
    stale = out / "train" / "audio-000001.tar"
    stale.write_bytes(b"")  # a shard that would be skipped if it survived the spec change
    export_tiny(vae_dir, seed=1)
    _run_encode(tmp_path)
    assert stale.stat().st_size > 0
    assert (out / "train" / "audio-000000.tar").read_bytes() != first
    assert json.loads((out / "spec.json").read_text())["weights_hash"] == encode.load_model(vae_dir)[1]
    # per_shard is part of the spec too.
    _run_encode(tmp_path, per_shard=3)
    assert [p.name for p in sorted((out / "train").glob("*.tar"))] == ["audio-000000.tar"]
    # New media under the same ids and paths (a regenerated world): that split's shards alone are redone.
    regen = make_clip(tmp_path / "regen.mp4", duration=1.2, size=(16, 16), fps=10, sample_rate=RATE)
    write_manifest(tmp_path / "prepared", [*_clips(world, 3, 0), ("te00", "test", regen)])
    _run_encode(tmp_path, per_shard=3)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    make_clip(regen, duration=1.3, size=(16, 16), fps=10, sample_rate=RATE)
    _run_encode(tmp_path, per_shard=3)
    train, test = out / "train" / "audio-000000.tar", out / "test" / "audio-000000.tar"
    assert train.stat().st_mtime_ns == stamps[train] and test.stat().st_mtime_ns != stamps[test]


_SLOW_STAGE = """
import runpy, sys, time
import vaflow.data.media as media
real = media.read_audio
def slow(*args, **kwargs):
    time.sleep(0.15)
    return real(*args, **kwargs)
media.read_audio = slow
sys.argv = ["encode_audio.py", *sys.argv[1:]]
runpy.run_path("stages/encode_audio.py", run_name="__main__")
"""


def test_encode_resumes_after_sigkill(world, tmp_path, mlflow_store):
    write_manifest(tmp_path / "prepared", _clips(world, 12, 2))
    params = _encode_params(tmp_path, per_shard=2, batch_size=2)
    vae_dir = export_tiny(tmp_path / "vae")
    out = tmp_path / "latents"
    argv = ["--params", str(params), "--prepared", str(tmp_path / "prepared"), "--vae", str(vae_dir)]
    argv += ["--out", str(out), "--metrics", str(tmp_path / "metrics")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **mlflow_store)
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STAGE, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    first = out / "train" / "audio-000000.tar"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert first.exists(), err.decode()[-2000:]
    done = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}
    assert 0 < len(done) < 6, "the run was not killed mid-way"

    _run_encode(tmp_path, per_shard=2, batch_size=2)
    for name, mtime in done.items():
        assert (out / "train" / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    assert _shard_ids(out / "train") == [f"tr{k:02d}" for k in range(12)]
    assert _shard_ids(out / "test") == ["te00", "te01"]
    assert not list(out.rglob("*.tmp"))


def test_missing_vae_is_a_clear_error(world, tmp_path, capsys, mlflow_store):
    write_manifest(tmp_path / "prepared", _clips(world, 1, 0))
    params = write_params(tmp_path / "params.yaml", {"clip": CLIP.model_dump()})
    stage = load_stage("encode_audio")
    argv = [
        "--params",
        str(params),
        "--prepared",
        str(tmp_path / "prepared"),
        "--vae",
        str(tmp_path / "none"),
    ]
    with pytest.raises(SystemExit) as exc:
        stage.main([*argv, "--out", str(tmp_path / "latents"), "--metrics", str(tmp_path / "metrics")])
    assert exc.value.code == 2
    assert str(tmp_path / "none" / encode.FOLDER.weights) in capsys.readouterr().err


def test_ranks_write_their_own_shards_and_share_one_rejected_list(world, tmp_path, monkeypatch):
    """What torchrun's ranks do: rank r writes shards i ≡ r (mod world); rejected.csv gathers every rank's."""
    good, bad = _clips(world, 6, 0), _clips(world, 0, 0, special=("corrupt", "silent"))
    # per_shard=2: shard 0 (rank 0) holds the corrupt clip, shard 1 (rank 1) the silent one.
    clips = [good[0], bad[0], good[1], bad[1], *good[2:]]
    rows = pd.DataFrame(
        [{"id": i, "split": s, "path": str(p), "start": 0.0, "label": "x"} for i, s, p in clips]
    )
    real_read = media.read_audio

    def read(path, *args, **kwargs):
        if Path(path).stem == "silent":
            return np.zeros(RATE, np.float32)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(media, "read_audio", read)
    torch.manual_seed(0)
    vae = build(dataclasses.replace(SIZES["tiny"], sample_rate=RATE)).eval()
    spec = {"v": 1, "splits": {"train": {"clips": len(clips)}}}
    ids = rows["id"].tolist()
    reports = []
    for rank in (
        0,
        1,
    ):  # two processes: each syncs the spec (the second deletes nothing) and writes its share
        folder = SpecFolder(tmp_path / "latents")
        folder.sync(spec)
        load, enc = encode.AudioLoader(rows, CLIP, vae.hop), encode.LatentEncoder(vae, CLIP)
        reports.append(extract_split(ids, folder, "train", "audio", load, enc, 2, 2, rank, 2, progress=False))
    assert [len(r.written) for r in reports] == [2, 2]  # shards 0, 2 and 1, 3
    assert [i for i, _ in reports[0].rejected] == ["bad_corrupt"]
    assert [i for i, _ in reports[1].rejected] == ["bad_silent"]
    summary = finish_split(SpecFolder(tmp_path / "latents"), "train", "audio", ids, per_shard=2)
    rejected = pd.read_csv(tmp_path / "latents" / "train" / "rejected.csv")
    assert list(rejected["id"]) == ["bad_corrupt", "bad_silent"] == [i for i, _ in summary.rejected]
    assert rejected["reason"][0].startswith("decode failed") and rejected["reason"][1].startswith(
        "silent audio"
    )
    assert _shard_ids(tmp_path / "latents" / "train") == [c[0] for c in good]
