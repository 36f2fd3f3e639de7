"""The reference evaluators' use: ground truth computed once, rows scored the toolkits' way, any folder of wavs
scored with the same protocol; PaSST and Melception under the fixtures' synthetic weights, from official-layout files."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.models.reference.fixtures import synth_state_dict
from vaflow import config
from vaflow.eval import toolkits
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference import MissingPackageError

RATE, SECONDS = 16_000, 1.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """PaSST (a plain state dict) and Melception (SpecVQGAN's training dict, weights under "model") files."""
    folder = tmp_path_factory.mktemp("weights")
    passt, melception = folder / "passt-s-f128-p16-s10-ap.476-swa.pt", folder / "melception.pt"
    torch.save(synth_state_dict("passt"), passt)
    torch.save({"model": synth_state_dict("melception"), "epoch": 21, "loss": torch.tensor(0.5)}, melception)
    return {"passt": passt, "melception": melception}


def settings(**files) -> config.ReferenceEvaluatorsConfig:
    return config.ReferenceEvaluatorsConfig(**{k: str(v) for k, v in files.items()}, batch_size=4)


def clips(n: int = 2, seed: int = 0) -> np.ndarray:
    """n one-second clips: tones of different pitch in a little noise, (n, samples) float32."""
    t = np.arange(int(RATE * SECONDS)) / RATE
    rng = np.random.default_rng(seed)
    tones = [0.3 * np.sin(2 * np.pi * (220 * (k + 1)) * t) for k in range(n)]
    return (np.stack(tones) + 0.01 * rng.standard_normal((n, len(t)))).astype(np.float32)


@pytest.fixture(scope="module")
def scored(weights, tmp_path_factory):
    suite = toolkits.load_suite(settings(**weights))
    ids = [f"clip{k}" for k in range(2)]
    out = tmp_path_factory.mktemp("evaluators")
    truth = toolkits.ground_truth(suite, [{"id": i} for i in ids], clips(), RATE, SECONDS, out)
    return suite, truth, ids, out


def test_passt_and_melception_score_the_same_audio_fd_0_kl_0_and_other_audio_more(scored):
    suite, truth, ids, _ = scored
    m = toolkits.score(suite, truth, ids, clips(), RATE)
    assert list(m) == ["fd_passt", "kl_passt", "is_passt", "fd_melception", "kl_melception", "is_melception"]
    assert suite.metric_names() == ["fd_passt", "fd_melception", "kl_passt", "kl_melception", "is_passt",
                                    "is_melception"]  # fmt: skip
    assert abs(m["fd_passt"]) < 1e-3 and abs(m["fd_melception"]) < 1e-4
    assert m["kl_passt"] == pytest.approx(0, abs=1e-9) and m["kl_melception"] == pytest.approx(0, abs=1e-9)
    assert m["is_passt"] >= 1 and m["is_melception"] >= 1
    noise = np.random.default_rng(1).standard_normal(clips().shape).astype(np.float32) * 0.3
    other = toolkits.score(suite, truth, ids, noise, RATE)
    assert other["fd_passt"] > 1e-2 and other["fd_melception"] > 1e-3
    assert other["kl_passt"] > 1e-3 and other["kl_melception"] > 1e-3


class _TinyClassifier(torch.nn.Module):
    """A stand-in audio classifier with PaSST's outputs: a 4-d embedding of band energies, 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def features(self, wav: torch.Tensor) -> SimpleNamespace:
        spectrum = torch.fft.rfft(wav).abs()  # (B, F)
        embedding = torch.stack([band.mean(1) for band in spectrum.chunk(4, dim=1)], 1).log1p()  # (B, 4)
        return SimpleNamespace(embedding=embedding, logits=self.head(embedding))


def _tiny_from_file(path) -> _TinyClassifier:
    from vaflow.models.reference import load_strict

    return load_strict(_TinyClassifier(), path, "tiny")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The suite's wiring with a cheap stand-in for PaSST's module (its rate, protocol, loader and outputs)."""
    fake = SimpleNamespace(SAMPLE_RATE=8000, PROTOCOL={"sample_rate": 8000}, from_file=_tiny_from_file)
    monkeypatch.setattr(toolkits, "_module", lambda name: fake)
    torch.manual_seed(0)
    torch.save(_TinyClassifier().state_dict(), tmp_path / "tiny.pt")
    suite = toolkits.load_suite(settings(passt=tmp_path / "tiny.pt"))
    ids = [f"clip{k}" for k in range(5)]
    out = tmp_path / "evaluators"
    truth = toolkits.ground_truth(suite, [{"id": i} for i in ids], clips(5), RATE, SECONDS, out)
    return suite, truth, ids, out


def test_the_ground_truth_is_read_back_with_its_protocol(tiny):
    suite, truth, ids, out = tiny
    back = toolkits.load_truth(out)
    assert back.ids == ids and set(back.outputs["passt"]) == {"embedding", "logits"}
    for key, value in truth.outputs["passt"].items():
        np.testing.assert_array_equal(back.outputs["passt"][key], value)
    card = json.loads((out / toolkits.CARD).read_text())
    assert card == back.card
    assert card["audio_seconds"] == SECONDS and card["sample_rate"] == RATE and card["clips"] == 5
    assert card["resampler"] == toolkits.RESAMPLER and card["samples_per_video"] == 1
    assert card["evaluators"]["passt"]["protocol"] == {"sample_rate": 8000}
    assert toolkits.load_truth(out.parent) is None


def test_rows_pair_by_id_and_the_real_audio_hides_fd_and_kl(tiny):
    suite, truth, ids, _ = tiny
    same = toolkits.score(suite, truth, ids, clips(5), RATE)
    assert same["kl_passt"] == pytest.approx(0, abs=1e-9) and abs(same["fd_passt"]) < 1e-6
    other = clips(5, seed=1)[::-1] * np.linspace(0.1, 2, 5)[:, None].astype(
        np.float32
    )  # other clips' tones, louder
    m = toolkits.score(suite, truth, ids, other, RATE)
    assert m["kl_passt"] > 1e-4 and m["fd_passt"] > 1e-2
    perm = [3, 0, 4, 1, 2]  # the same audio in another order, its ids with it
    again = toolkits.score(suite, truth, [ids[k] for k in perm], other[perm], RATE)
    assert again["kl_passt"] == pytest.approx(m["kl_passt"], rel=1e-6)
    row = toolkits.score_row(suite, truth, ids, clips(5), RATE, is_reference=True)
    assert row["fd_passt"] is None and row["kl_passt"] is None and row["is_passt"] >= 1
    assert toolkits.score_row(suite, truth, ids[:1], clips(1), RATE) == dict.fromkeys(suite.metric_names())


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def test_a_folder_of_wavs_is_scored_with_the_same_protocol(tiny, tmp_path):
    suite, truth, ids, out = tiny
    audio = clips(5)
    folder = tmp_path / "generated"
    folder.mkdir()
    for clip_id, a in zip(ids, audio, strict=True):
        _write_wav(folder / f"{clip_id}.wav", a, RATE)
    got = toolkits.score_folder(folder, out)
    assert (got["clips"], got["of"], got["resampled"], got["fitted"]) == (5, 5, 0, 0)
    assert got["metrics"]["kl_passt"] < 1e-6  # the real audio, through 16-bit files
    _write_wav(folder / "clip0.wav", audio[0][::2].copy(), RATE // 2)  # another rate: resampled
    _write_wav(folder / "clip1.wav", audio[1][: RATE // 2], RATE)  # shorter: padded
    got = toolkits.score_folder(folder, out)
    assert (got["resampled"], got["fitted"]) == (1, 1)
    assert (
        got["protocol"]["evaluators"]["passt"]["weights_hash"]
        == truth.card["evaluators"]["passt"]["weights_hash"]
    )
    assert got["metrics"]["kl_passt"] > 1e-6  # clip1 lost half of its tone
    _write_wav(folder / "stranger.wav", audio[0], RATE)
    with pytest.raises(config.ConfigError, match="stranger.wav"):
        toolkits.score_folder(folder, out)
    with pytest.raises(config.ConfigError, match="no reference.json"):
        toolkits.score_folder(folder, folder)


def test_a_weight_file_changed_since_its_ground_truth_is_refused(tiny, tmp_path):
    _, truth, _, _ = tiny
    changed = tmp_path / "tiny.pt"
    state = torch.load(changed, weights_only=True)
    state["head.bias"] += 1  # other weights, the same keys
    torch.save(state, changed)
    with pytest.raises(config.ConfigError, match="changed since its ground truth"):
        toolkits.suite_from_card(truth.card)


def test_missing_and_foreign_weight_files_name_the_evaluator(weights, tmp_path):
    with pytest.raises(MissingModelFileError, match="PaSST"):
        toolkits.load_suite(settings(passt=tmp_path / "absent.pt"))
    with pytest.raises(ModelFileError, match="Melception.*(missing|unexpected)"):
        toolkits.load_suite(settings(melception=weights["passt"]))


def test_the_sync_classifier_needs_its_cavp_features():
    with pytest.raises(ValueError, match="cavp_features"):
        config.ReferenceEvaluatorsConfig(sync_classifier="eval_classifier.ckpt")
    given = config.ReferenceEvaluatorsConfig(passt="p.pt", panns="c.pth")
    assert toolkits.given(given) == {"passt": "p.pt", "panns": "c.pth"}


def _scaled_down(module, config) -> SimpleNamespace:
    """`module` with its `from_file` building the small configuration the fixtures hold (same code, fewer weights)."""
    names = {k: getattr(module, k) for k in dir(module) if not k.startswith("__")}
    return SimpleNamespace(**{**names, "from_file": lambda path: module.from_file(path, config)})


def test_ib_va_and_acc_are_scored_from_the_cached_video_side(monkeypatch, tmp_path):
    from tests.models.reference.fixtures import FIXTURES
    from vaflow.models.reference import difffoley, imagebind

    torch.manual_seed(0)
    small = difffoley.build(difffoley.SMALL)
    for p in small.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"state_dict": small.state_dict(), "epoch": 3}, tmp_path / "eval_classifier.ckpt")
    fakes = {
        "imagebind": _scaled_down(imagebind, imagebind.TINY),
        "sync_classifier": _scaled_down(difffoley, difffoley.SMALL),
    }
    monkeypatch.setattr(toolkits, "_module", lambda name: fakes[name])
    ids = ["a", "b", "c"]
    cavp = tmp_path / "cavp"
    cavp.mkdir()
    for k, clip_id in enumerate(ids):
        np.savez(
            cavp / f"{clip_id}.npz",
            feat=np.random.default_rng(k).standard_normal((40, difffoley.SMALL.video_dim)).astype(np.float32),
        )
    reference = config.ReferenceEvaluatorsConfig(
        imagebind=str(FIXTURES / "imagebind_tiny_state_dict.pt"),
        sync_classifier=str(tmp_path / "eval_classifier.ckpt"),
        cavp_features=str(cavp),
        seed=7,
    )
    suite = toolkits.load_suite(reference)
    assert (
        suite.metric_names() == ["ib_va", "acc"]
        and suite.card["evaluators"]["imagebind"]["ib_va_scale"] == 100
    )
    audio = np.random.default_rng(0).standard_normal((3, 3 * RATE)).astype(np.float32) * 0.1
    mine = toolkits.audio_outputs(suite, "imagebind", audio, RATE)["audio_emb"]
    truth = toolkits.Truth(ids, {"imagebind": {"video_emb": mine[[1, 2, 0]], "audio_emb": mine}})
    m = toolkits.score(suite, truth, ids, audio, RATE)
    cos = [float(np.dot(mine[k], mine[j]) / np.linalg.norm(mine[k]) / np.linalg.norm(mine[j])) for k, j in
           ((0, 1), (1, 2), (2, 0))]  # fmt: skip
    assert m["ib_va"] == pytest.approx(100 * np.mean(cos), rel=1e-5)
    spec = toolkits.audio_outputs(suite, "sync_classifier", audio, RATE)["spec"]
    p = suite.models["sync_classifier"].probability(
        torch.from_numpy(spec),
        torch.from_numpy(toolkits._cavp(suite, ids)),
        generator=torch.Generator().manual_seed(7),
    )
    assert m["acc"] == pytest.approx(100 * float((p > 0.5).float().mean()))
    (cavp / "b.npz").unlink()
    with pytest.raises(config.ConfigError, match="b.npz: no CAVP features"):
        toolkits.score(suite, truth, ids, audio, RATE)


def test_missing_weight_files_are_named_before_any_work(tmp_path):
    with pytest.raises(
        MissingModelFileError, match="evaluators.reference.panns: .*Cnn14_16k.pth: no such file"
    ):
        toolkits.check_files(settings(panns=tmp_path / "Cnn14_16k.pth"))
    with pytest.raises(MissingModelFileError, match="cavp_features: .*absent: no such folder"):
        toolkits.check_files(config.ReferenceEvaluatorsConfig(cavp_features=str(tmp_path / "absent")))
    toolkits.check_files(config.ReferenceEvaluatorsConfig())  # none given: nothing to check


def test_a_missing_package_is_named_before_any_work(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "hear21passt" else real(name, *a)
    )
    with pytest.raises(MissingPackageError, match="PaSST evaluator needs the package hear21passt==0.0.26"):
        toolkits.check_files(settings(passt=tmp_path / "passt.pt"))  # the package first, then the file


def test_the_evaluators_stage_writes_the_test_splits_ground_truth_once(monkeypatch, tmp_path, world):
    from tests.eval.world import FAST, WORLD
    from tests.stage_scripts import load_stage
    from vaflow.tracking import Tracker

    fake = SimpleNamespace(SAMPLE_RATE=8000, PROTOCOL={"sample_rate": 8000}, from_file=_tiny_from_file)
    monkeypatch.setattr(toolkits, "_module", lambda name: fake)
    torch.save(_TinyClassifier().state_dict(), tmp_path / "tiny.pt")
    settings = FAST.model_copy(
        update={
            "trainer": FAST.trainer.model_copy(update={"steps": 2}),
            "reference": config.ReferenceEvaluatorsConfig(passt=str(tmp_path / "tiny.pt")),
        }
    )
    stage, clip = load_stage("evaluators"), config.validate(WORLD).clip
    with Tracker("evaluators", metrics_dir=tmp_path / "metrics", mlflow=False, root=tmp_path) as tracker:
        stage.run(settings, clip, world, tmp_path / "out", tmp_path / "checkpoints", tracker)
    truth = toolkits.load_truth(tmp_path / "out")
    test_ids = [r["id"] for r in toolkits.load_manifest(world / "manifest.csv", "test").to_dict("records")]
    assert truth.ids == test_ids and truth.outputs["passt"]["embedding"].shape == (len(test_ids), 4)
    assert truth.card["audio_seconds"] == clip.duration and truth.card["sample_rate"] == clip.sample_rate
    missing = settings.model_copy(
        update={"reference": config.ReferenceEvaluatorsConfig(passt=str(tmp_path / "x.pt"))}
    )
    with pytest.raises(MissingModelFileError, match="evaluators.reference.passt"):  # before any training
        stage.run(missing, clip, world, tmp_path / "out2", tmp_path / "never", None)
    assert not (tmp_path / "never").exists()
