"""The `sample` stage and its library (vaflow.generate.core/samples) on tiny exported artefacts built here, not by
the pipeline: wav geometry, index and metrics, previews, resuming, a changed spec, batch-independent draws."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.stage_scripts import load_stage
from vaflow import config
from vaflow.code import code_hash, import_closure
from vaflow.data import latents as encode
from vaflow.data import media, pairs
from vaflow.data.features import compact_identity, export_encoder
from vaflow.data.journal import JOURNAL_FILE, LOCK_FILE, SpecFolder
from vaflow.data.prepare import MANIFEST_COLUMNS
from vaflow.data.shards import write_shards
from vaflow.generate import Sampler, load_models, sample_spec, sample_split, samples
from vaflow.generate.generator import clip_seed, prior_noise, read_wav, sample_latents
from vaflow.models import artifacts
from vaflow.models.align_vae import AlignEncoder, AlignVAEConfig
from vaflow.models.dit import VelocityDiT, dit_config
from vaflow.models.vaflow import FlowSettings, VAFlow
from vaflow.models.wavevae import SIZES, build

ROOT = Path(__file__).resolve().parents[1]
SR, HOP, D_A = 8000, 8, 4  # the tiny WaveVAE at 8 kHz (AAC's lowest usual rate)
T_A = 200  # latent frames per window: 200·8 / 8000 = 0.2 s
FPS, INPUT, SIDE = 10.0, (16, 16), (2, 2)  # pixels encoder: 2·10 frames per window, D_v = 3·2·2
T_V, D_V = 2, 12
IDS = [f"clip{i}" for i in range(5)]
EULER = Sampler("euler", 4, 1.0, "video")


def build_artefacts(root: Path, prior: str = "video") -> Path:
    """`root/models/{audio_vae,visual_encoder,vaflow}` as the pipeline exports them, with random tiny weights (a
    non-zero velocity field, so the solve, the condition and CFG all change the result)."""
    models = root / "models"
    torch.manual_seed(0)
    vae = build(dataclasses.replace(SIZES["tiny"], sample_rate=SR))
    info = encode.export_model(vae, models / "audio_vae", {"size": "tiny", "mode": "train"})
    encoder = export_encoder(
        models / "visual_encoder", "pixels", {"fps": FPS, "input_size": INPUT, "size": SIDE}
    )
    align = AlignEncoder(AlignVAEConfig(D_V, T_V, D_A, T_A, channels=8, blocks=1))
    dit = VelocityDiT(dit_config("tiny", D_A, D_V))
    torch.nn.init.normal_(dit.proj_out.weight, std=0.2)
    model = VAFlow(
        align if prior == "video" else None, dit, torch.zeros(D_A), torch.ones(D_A), FlowSettings(prior)
    )
    wavevae = {"weights_hash": info["weights_hash"], "hop": HOP, "latent_dim": D_A, "latent_length": T_A}
    features = compact_identity(encoder.identity())
    artifacts.save_vaflow(model, models / "vaflow", T_A, features, wavevae, [{"stage": "test", "steps": 0}])
    return models


def write_features(root: Path, ids: list[str] = IDS) -> Path:
    """`root/features/test/visual-*.tar` (random x_v per clip, two shards) and the spec.json extract_visual writes."""
    identity = export_encoder(
        root / "enc", "pixels", {"fps": FPS, "input_size": INPUT, "size": SIDE}
    ).identity()
    feats = {
        i: np.random.default_rng(k).uniform(-1, 1, (T_V, D_V)).astype(np.float16) for k, i in enumerate(ids)
    }
    write_shards(root / "features" / "test", "visual", ids, lambda i: {"feat": feats[i]}, per_shard=3,
                 progress=False)  # fmt: skip
    (root / "features" / "spec.json").write_text(json.dumps({"encoder": identity}))
    return root / "features"


def write_prepared(root: Path, ids: list[str] = IDS) -> Path:
    """`root/prepared/manifest.csv` whose test clips are windows (start 0.1 s, 0.2 s) of one real 0.5 s video."""
    prepared = root / "prepared"
    prepared.mkdir(parents=True)
    frames = np.random.default_rng(0).integers(0, 255, (5, 18, 22, 3), dtype=np.uint8)
    media.write_video(prepared / "video.mp4", frames, 10, np.zeros(4000, np.float32), SR)
    rows = [
        {"id": i, "split": "test", "label": "x", "path": "video.mp4", "start": 0.1, "duration": 0.2}
        | {"media_duration": 0.5, "fps": 10.0, "width": 22, "height": 18, "sample_rate": SR, "channels": 1}
        | {"status": "ok", "source": "folder"}
        for i in ids
    ]
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(prepared / "manifest.csv", index=False)
    return prepared


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tiny models gain nothing from two, and on a busy CPU two threads spin (×20 slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample_world")
    build_artefacts(root)
    write_features(root)
    write_prepared(root)
    return root


def _models(world: Path):
    spec = pairs.read_spec(world / "features", "visual")
    return load_models(
        world / "models" / "vaflow", world / "models" / "audio_vae", artifacts.feature_identity(spec)
    )


def _spec(world: Path, sampler: Sampler = EULER, draws: int = 1, code: str = "code-1") -> dict:
    return sample_spec(_models(world), pairs.read_spec(world / "features", "visual"), sampler, 0, draws, code)


def _run(world: Path, out: Path, sampler: Sampler = EULER, batch: int = 2, draws: int = 1, mux: int = 0):
    models = _models(world)
    folder = SpecFolder(out)
    folder.sync(_spec(world, sampler, draws))
    windows = {i: (str(world / "prepared" / "video.mp4"), 0.1, 0.2) for i in IDS}
    split = pairs.open_split(world / "features", "test")
    return sample_split(models, split, folder, sampler, 0, draws, batch, mux, windows, progress=False)


def _wavs(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read_wav(p)[0] for p in sorted(out.glob("*.wav"))}


# ----------------------------------------------------------------------------------------------------------------
# The library
# ----------------------------------------------------------------------------------------------------------------


def test_split_gives_one_wav_per_clip_with_index_and_previews(world, tmp_path):
    report = _run(world, tmp_path / "s", mux=2)
    out = tmp_path / "s"
    assert sorted(_wavs(out)) == [f"{i}.wav" for i in IDS]
    for i in IDS:
        with wave.open(str(out / f"{i}.wav")) as f:
            assert (f.getframerate(), f.getnchannels(), f.getsampwidth(), f.getnframes()) == (
                SR,
                1,
                2,
                T_A * HOP,
            )
    index = pd.read_csv(out / "index.csv")
    assert list(index.columns) == [
        "id",
        "k",
        "wav",
        "nfe",
        "finite",
    ]  # no wall-clock time: see the rerun test
    assert list(index["id"]) == IDS and set(index["nfe"]) == {4} and index["finite"].all()
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip0.mp4", "clip1.mp4"]
    info = media.probe(out / "clip0.mp4")
    assert info.has_audio and (info.width, info.height) == (22, 18) and abs(info.duration - 0.2) < 0.06
    m, run = report.metrics(), report.run_figures()
    assert (m["clips"], m["samples"], run["generated"], run["skipped"], m["muxed"]) == (5, 5, 5, 0, 2)
    assert m["nfe_per_clip"] == 4 and run["seconds_per_clip"] > 0 and m["nonfinite"] == 0
    assert not set(m) & set(run)  # what varies between runs stays out of the metrics file


def test_rerun_skips_finished_wavs_and_redoes_missing_ones(world, tmp_path):
    out = tmp_path / "s"
    _run(world, out, mux=1)
    before = _wavs(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.*")}
    index = (out / "index.csv").read_bytes()
    again = _run(world, out, mux=1)
    assert (again.generated, again.skipped) == (0, 5)
    # the folder and its figures are the same as after the first run: evaluate (which reads the folder) is
    # not stale, and the kept preview still counts
    assert (out / "index.csv").read_bytes() == index and again.metrics()["muxed"] == 1 and again.muxed == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.*") if p.name != "index.csv"} == {
        k: v for k, v in stamps.items() if k != "index.csv"
    }
    (out / "clip3.wav").unlink()  # a run killed before clip3 was written
    (out / "clip0.mp4").unlink()
    third = _run(world, out, mux=1)
    assert (third.generated, third.skipped, third.muxed) == (1, 4, 1)
    for name, audio in _wavs(out).items():  # clip3 alone in its batch now: equal up to float rounding
        np.testing.assert_allclose(audio, before[name], atol=2 / 32767)
    lowered = _run(world, out, mux=0)
    assert lowered.generated == 0 and not list(out.glob("*.mp4"))  # previews past `mux` go


def test_a_killed_run_resumes_from_its_journal(world, tmp_path, monkeypatch):
    out = tmp_path / "s"
    real, written = samples.write_wav, []

    def dies_on_third(path, *args):
        if len(written) == 2:
            raise KeyboardInterrupt  # the stage is stopped while it writes the third wav
        written.append(Path(path).name)
        return real(path, *args)

    monkeypatch.setattr(samples, "write_wav", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(world, out, batch=2)
    assert not (out / "index.csv").exists() and (out / JOURNAL_FILE).is_file()
    stamps = {name: (out / name).stat().st_mtime_ns for name in written}
    monkeypatch.setattr(samples, "write_wav", real)
    report = _run(world, out, batch=2)
    assert (report.generated, report.skipped) == (3, 2)
    assert {name: (out / name).stat().st_mtime_ns for name in written} == stamps  # kept, not redone
    assert list(pd.read_csv(out / "index.csv")["id"]) == IDS
    assert not (out / JOURNAL_FILE).exists()  # folded into index.csv
    _run(world, tmp_path / "uninterrupted", batch=2)  # the same index: evaluate, which reads it, stays fresh
    assert (out / "index.csv").read_bytes() == (tmp_path / "uninterrupted" / "index.csv").read_bytes()


def test_changed_settings_or_code_clear_the_folder(world, tmp_path):
    out = tmp_path / "s"
    _run(world, out)
    (out / "stale.txt").write_text("x")
    assert not SpecFolder(out).sync(_spec(world))  # same spec: kept
    assert (out / "stale.txt").exists()
    assert SpecFolder(out).sync(_spec(world, code="code-2"))  # the sample stage's code changed
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "spec.json"]
    _run(world, out)
    assert SpecFolder(out).sync(_spec(world, dataclasses.replace(EULER, cfg=2.0)))
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "spec.json"]
    report = _run(world, out, draws=2)  # K = 2: <id>-<k>.wav
    assert report.generated == 10 and sorted(_wavs(out))[:2] == ["clip0-0.wav", "clip0-1.wav"]
    wavs = _wavs(out)
    assert not np.allclose(wavs["clip0-0.wav"], wavs["clip0-1.wav"])  # two draws of one clip differ


@pytest.mark.parametrize("sampler", [EULER, Sampler("midpoint", 3, 0.0, "video")])
def test_each_draw_is_the_same_whatever_the_batching(world, tmp_path, sampler):
    _run(world, tmp_path / "b1", sampler, batch=1)
    _run(world, tmp_path / "b3", sampler, batch=3)
    a, b = _wavs(tmp_path / "b1"), _wavs(tmp_path / "b3")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2 / 32767)  # equal up to float rounding of 16-bit PCM


def test_adaptive_solver_solves_each_clip_alone(world):
    # dopri5 chooses one step size per solve from an error norm over the whole batch: solved row by row, a clip's
    # audio and step count do not depend on its batch neighbours.
    models = _models(world)
    x_v = torch.rand(2, T_V, D_V) * 2 - 1
    eps = prior_noise([clip_seed(0, "a"), clip_seed(0, "b")], (T_A, D_A))
    dopri5 = Sampler("dopri5", 1, 0.5, "video")
    both, nfe = sample_latents(models.flow, x_v, eps, dopri5)
    alone = [sample_latents(models.flow, x_v[i : i + 1], eps[i : i + 1], dopri5) for i in range(2)]
    torch.testing.assert_close(both, torch.cat([a[0] for a in alone]), atol=1e-5, rtol=1e-5)
    assert nfe == [a[1][0] for a in alone] and all(n > 2 for n in nfe)


def test_draws_are_seeded_per_clip_and_zero_condition_makes_cfg_moot(world):
    # The same in another process with another hash salt (Python's hash() would differ), and apart per k and seed.
    code = "from vaflow.generate.generator import clip_seed; print(clip_seed(0, 'a'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(other.stdout) == clip_seed(0, "a", 0) != clip_seed(0, "a", 1) != clip_seed(1, "a", 0)
    assert len({clip_seed(s, c, k) for s in range(3) for c in "abc" for k in range(3)}) == 27
    eps = prior_noise([clip_seed(0, "a"), clip_seed(0, "b")], (T_A, D_A))
    assert torch.equal(eps[1], prior_noise([clip_seed(0, "b")], (T_A, D_A))[0])
    models = _models(world)
    x_v = torch.randn(2, T_V, D_V)
    zero = Sampler("euler", 3, 2.0, "zero")
    assert zero.applied_cfg(models.flow) == 0.0 and EULER.applied_cfg(models.flow) == 1.0
    guided, _ = sample_latents(models.flow, x_v, eps, zero)
    plain, _ = sample_latents(models.flow, x_v, eps, dataclasses.replace(zero, cfg=0.0))
    visible, _ = sample_latents(models.flow, x_v, eps, dataclasses.replace(zero, cond="video"))
    assert torch.equal(guided, plain) and not torch.allclose(guided, visible)


def test_a_model_of_other_features_or_another_wavevae_is_refused(world, tmp_path):
    spec = pairs.read_spec(world / "features", "visual")
    other = {**artifacts.feature_identity(spec), "fps": 4.0}
    with pytest.raises(artifacts.ModelMismatchError, match="visual features"):
        load_models(world / "models" / "vaflow", world / "models" / "audio_vae", other)
    torch.manual_seed(1)
    encode.export_model(build(dataclasses.replace(SIZES["tiny"], sample_rate=SR)), tmp_path / "vae", {})
    with pytest.raises(artifacts.ModelMismatchError, match="WaveVAE"):
        load_models(world / "models" / "vaflow", tmp_path / "vae", artifacts.feature_identity(spec))
    with pytest.raises(FileNotFoundError, match="audio_vae"):
        load_models(world / "models" / "vaflow", tmp_path / "nothing", artifacts.feature_identity(spec))


# ----------------------------------------------------------------------------------------------------------------
# The stage script
# ----------------------------------------------------------------------------------------------------------------


def test_stage_writes_samples_metrics_and_resumes(world, tmp_path, monkeypatch, capsys, mlflow_store):
    monkeypatch.chdir(tmp_path)
    params = {"clip": {"duration": 0.2, "sample_rate": SR}, "audio_vae": {"mode": "train", "checkpoint": ""},
              "sample": {"steps": 3, "batch_size": 2, "mux": 1}}  # fmt: skip

    def run(overrides: dict | None = None) -> dict:
        data = config.deep_merge(params, overrides or {})
        (tmp_path / "params.yaml").write_text(config.dump(config.validate(data)))
        load_stage("sample").main(["--features", str(world / "features"), "--model", str(world / "models" / "vaflow"),
                     "--vae", str(world / "models" / "audio_vae"), "--prepared", str(world / "prepared"),
                     "--out", "samples", "--metrics", "metrics"])  # fmt: skip
        printed = capsys.readouterr().out
        generated = int(re.search(r"\((\d+) generated", printed)[1])  # a run figure: printed, in MLflow
        final = json.loads((tmp_path / "metrics" / "sample.json").read_text())
        return {**final, "generated": generated, "printed": printed}

    first = run()
    assert (first["clips"], first["samples"], first["generated"], first["muxed"]) == (5, 5, 5, 1)
    assert (first["nfe_per_clip"], first["steps"], first["cfg"], first["cfg_applied"]) == (3, 3, 1.0, 1.0)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == sorted(
        [f"{i}.wav" for i in IDS] + ["clip0.mp4", "index.csv", "spec.json", LOCK_FILE]
    )
    spec = json.loads((tmp_path / "samples" / "spec.json").read_text())
    assert spec["sampler"] == {"solver": "euler", "steps": 3, "cfg": 1.0, "cond": "video"}
    assert spec["code"] == code_hash(import_closure(ROOT / "stages" / "sample.py"))
    assert (run()["generated"], run({"sample": {"batch_size": 3}})["generated"]) == (
        0,
        0,
    )  # batching: same spec
    zero = run({"sample": {"cond": "zero"}})
    assert (zero["generated"], zero["cfg_applied"]) == (5, 0.0)
    assert "has no effect" in zero["printed"]
    with pytest.raises(SystemExit) as exit_:
        run({"clip": {"duration": 0.5}})  # the model was trained on 0.2 s clips
    assert exit_.value.code == 2 and "T_a = 200" in capsys.readouterr().err
