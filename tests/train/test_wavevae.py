"""audio_vae: the crop stream, the loss module, a trained VAE beating the trivial baselines, and the stage end to end
in train and import mode."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tests.data.test_latents import RATE, load_stage, make_media, one_thread, write_manifest, write_params
from vaflow.config import AudioVAEConfig
from vaflow.data import latents as encode
from vaflow.eval import reconstruction
from vaflow.eval.losses import MelL1Loss
from vaflow.models.pretrained import REBUILD
from vaflow.models.wavevae import SAO_PREFIX, SIZES, WaveVAEConfig, build, load_wavevae
from vaflow.train import wavevae as training

__all__ = ["one_thread"]  # the autouse fixture: one torch thread for these tests too


def _tones(n: int, n_samples: int, seed: int) -> torch.Tensor:
    """`n` sine tones (N, n_samples) at random pitches between 100 and 800 Hz, amplitude 0.5."""
    g = torch.Generator().manual_seed(seed)
    f = 100 + 700 * torch.rand(n, 1, generator=g)
    return 0.5 * torch.sin(2 * math.pi * f * torch.arange(n_samples) / RATE)


# --------------------------------------------------------------------------------------------
# Library
# --------------------------------------------------------------------------------------------


def test_segment_is_whole_latent_frames_within_the_clip():
    assert training.segment_samples(0.5, 16000, 256, 32000) == 7936  # 31.25 frames, rounded to 31
    assert training.segment_samples(0.25, 8000, 256, 7936) == 2048
    assert training.segment_samples(0.001, 8000, 256, 7936) == 256  # at least one frame
    assert training.segment_samples(9.0, 8000, 256, 7936) == 7936  # at most the clip


def test_crop_stream_splits_ranks_and_resumes_exactly():
    audio = torch.arange(10 * 64, dtype=torch.float32).view(10, 64)
    one = training.CropStream(audio, batch_size=4, segment=16, seed=3)
    batches = [b for _ in range(2) for b in one]  # two epochs of 10 // 4 = 2 batches
    assert len(batches) == 4 and batches[0].shape == (4, 16)
    assert not torch.equal(batches[0], batches[2])  # a new permutation and new crops each epoch
    for b in batches:  # each crop is a contiguous run of one clip
        assert torch.all(b[:, 1:] - b[:, :-1] == 1) and torch.all(b[:, -1] // 64 == b[:, 0] // 64)
    # Two ranks with half the batch each see exactly the crops one process sees.
    ranks = [training.CropStream(audio, 2, 16, rank=r, world=2, seed=3) for r in range(2)]
    merged = [torch.cat(pair) for pair in zip(*(list(s) for s in ranks), strict=True)]
    assert all(torch.equal(a, b) for a, b in zip(merged, batches[:2], strict=True))
    # Resume mid-epoch from state_dict: the rest of the stream is the same.
    s = training.CropStream(audio, 4, 16, seed=3)
    it = iter(s)
    next(it)
    resumed = training.CropStream(audio, 4, 16, seed=3)
    resumed.load_state_dict(s.state_dict())
    rest = [b for b in resumed] + [b for b in resumed]
    assert all(torch.equal(a, b) for a, b in zip(rest, batches[1:], strict=True))
    # A bank smaller than a batch is repeated to fill it.
    assert next(iter(training.CropStream(audio[:3], 8, 16))).shape == (8, 16)


def test_loss_module_parts_and_the_mono_mapping_of_a_stereo_vae():
    cfg = AudioVAEConfig(
        size="tiny", stft_weight=1.0, mel_weight=1.0, wave_weight=0.5, kl_weight=0.1, loudness_weight=0.25
    )
    torch.manual_seed(0)
    stereo = build(WaveVAEConfig(audio_channels=2, channels=4, c_mults=(1,), strides=(2,), latent_dim=2, sample_rate=RATE))  # fmt: skip
    model = training.WaveVAELoss(stereo, cfg, segment=1024)
    audio = _tones(2, 1024, 0)
    loss, extras = training.loss_fn(model, audio)
    assert set(extras) == {"stft", "mel", "wave", "kl", "loudness"}
    expected = (
        extras["stft"] + extras["mel"] + 0.5 * extras["wave"] + 0.1 * extras["kl"] + 0.25 * extras["loudness"]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert stereo.encoder.layers[0].weight_v.grad is not None
    assert model.stft.fft_sizes == (256, 512, 1024)  # sizes longer than the crop are dropped


def test_narrow_posterior_starts_every_std_near_the_target():
    torch.manual_seed(0)
    vae = training.narrow_posterior(build(dataclasses.replace(SIZES["tiny"], sample_rate=RATE)), std=0.05)
    with torch.no_grad():
        std = vae.encode_mono(_tones(4, 1024, 0)).std
    assert 0.03 < float(std.min()) and float(std.max()) < 0.08


def _train_tiny(vae, cfg: AudioVAEConfig, train: torch.Tensor, steps: int, lr: float = 1e-2):
    """`steps` AdamW steps (clipped at 1) of the loss module on crops of 1024 samples, batches of 8 -> the VAE in
    eval mode."""
    model = training.WaveVAELoss(vae, cfg, segment=1024)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    stream = training.CropStream(train, batch_size=8, segment=1024, seed=0)
    step = 0
    while step < steps:
        for batch in stream:
            loss, _ = training.loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            step += 1
            if step == steps:
                break
    return model.vae.eval()


def _bursts(n: int, n_samples: int, seed: int) -> torch.Tensor:
    """`n` clips (N, n_samples): one or two tone bursts (100-700 Hz, 0.1-0.2 s, amplitude 0.3-0.5) at random times
    over a white noise floor of std 1e-3, as the synthetic world's event clips are."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_samples) / RATE
    clips = 1e-3 * torch.randn(n, n_samples, generator=g)
    for i in range(n):
        for _ in range(1 + int(torch.randint(0, 2, (), generator=g))):
            f = 100 + 600 * float(torch.rand((), generator=g))
            start = float(torch.rand((), generator=g)) * (t[-1] - 0.2)
            length = 0.1 + 0.1 * float(torch.rand((), generator=g))
            gate = ((t >= start) & (t < start + length)).float()
            clips[i] += (
                (0.3 + 0.2 * float(torch.rand((), generator=g))) * gate * torch.sin(2 * math.pi * f * t)
            )
    return clips


def test_trained_vae_output_depends_on_its_input_and_silence_decodes_to_silence():
    """The default recipe (its loss weights), briefly trained on tone bursts over a noise floor, reconstructs what
    it is given rather than one learnt sound: reconstructions of two different clips differ far more than two
    decodes of the same clip (two draws z ~ posterior), about as much as the clips do, and an all-zero clip decodes
    to near-silence (an input-independent hum would show in all three)."""
    vae_config = dataclasses.replace(SIZES["tiny"], sample_rate=RATE)
    cfg = AudioVAEConfig(size="tiny")  # the default recipe's loss weights
    train, test = _bursts(32, 4000, 0), _bursts(2, 4000, 1)
    torch.manual_seed(0)
    vae = _train_tiny(training.narrow_posterior(build(vae_config)), cfg, train, steps=120)
    mel = MelL1Loss(RATE)
    with torch.no_grad():
        posterior = vae.encode_mono(test)
        y = vae.decode_mono(posterior.mean)  # (2, N)
        draws = [vae.decode_mono(posterior.sample(torch.Generator().manual_seed(k)))[0] for k in (1, 2)]
        silence = vae.decode_mono(vae.encode_mono(torch.zeros(1, 4000)).mean)
    between_clips = float(mel(y[:1], y[1:]))
    same_clip = float(mel(draws[0][None], draws[1][None]))
    assert between_clips > 5 * same_clip, (between_clips, same_clip)
    assert between_clips > 0.5 * float(mel(test[:1], test[1:])), between_clips
    # The sound decoded from silence: its DC offset aside (spectral losses barely see DC; this brief run keeps
    # ~0.015 of it, the default run learns it away: test_silence_dbfs), measured -44 dB re the training audio.
    hum = float((silence - silence.mean()).pow(2).mean().sqrt())
    assert hum < 0.02 * float(train.pow(2).mean().sqrt()), hum


def test_trained_vae_beats_silence_and_the_mean_spectrum():
    """160 steps of the tiny VAE on tones: decode(mean) is closer to unseen tones than either baseline.

    The run is chaotic at this learning rate: the same seed ends elsewhere with another CPU kernel or thread count.
    Measured over seeds 0-3, machines and 1-2 threads, the mel L1 ends at 0.51-0.95 of the mean-spectrum
    baseline's and 0.21-0.39 of silence's (pure tones are the hard case for log-mel L1: every bin but the tone's
    sits at the log floor); an untrained VAE sits above both baselines."""
    vae_config = dataclasses.replace(SIZES["tiny"], sample_rate=RATE)
    train, test = _tones(32, 4000, 0), _tones(8, 4000, 1)
    torch.manual_seed(0)
    # Mel L1 + waveform L1, as calibrated: a waveform L1 term speeds up the first hundred steps (spectral losses
    # alone plateau near the baseline).
    cfg = AudioVAEConfig(size="tiny", stft_weight=0.0, mel_weight=1.0, wave_weight=1.0, loudness_weight=0.0)
    vae = _train_tiny(build(vae_config), cfg, train, steps=160)
    figures = reconstruction.reconstruction_metrics(vae, test, reconstruction.mean_log_mel(train, RATE))
    assert figures["test_clips"] == 8
    assert figures["test_mel_l1"] < 0.97 * figures["baseline_mean_spectrum_mel_l1"], figures
    assert figures["test_mel_l1"] < 0.4 * figures["baseline_silence_mel_l1"], figures
    # MR-STFT distance with its -100 dB floor: trained 0.75-0.76 of silence's (seeds 0-2), untrained 1.21.
    assert figures["test_stft"] < 0.9 * figures["baseline_silence_stft"], figures


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _world(tmp, sample_rate: int = RATE, truth: bool = False) -> None:
    media = make_media(tmp / "media", sample_rate=sample_rate)
    clips = [(f"tr{k}", "train", media[k % 2]) for k in range(4)] + [
        (f"te{k}", "test", media[k]) for k in range(2)
    ]
    write_manifest(tmp / "prepared", clips)
    if truth:  # ground-truth sidecars as the synthetic world writes them: one event clip, one pitched clip
        folder = tmp / "prepared" / "synth" / "truth"
        folder.mkdir(parents=True)
        sidecars = {
            "te0": {"classes": ["hammer"], "events": [{"class": "hammer", "time": 0.3}], "curves": {}},
            "te1": {"classes": ["balloon"], "events": [], "curves": {"balloon": {
                "fps": 10, "param": "pitch_hz", "values": [300.0 + 20 * k for k in range(10)]}}},
        }  # fmt: skip
        for cid, sidecar in sidecars.items():
            sidecar |= {"id": cid, "label": sidecar["classes"][0], "duration": 1.0}
            (folder / f"{cid}.json").write_text(json.dumps(sidecar))


def _argv(tmp) -> list[str]:
    return [
        "--params", str(tmp / "params.yaml"), "--prepared", str(tmp / "prepared"), "--out", str(tmp / "vae"),
        "--checkpoints", str(tmp / "ckpt"), "--metrics", str(tmp / "metrics"),
    ]  # fmt: skip


FIGURES = {
    "test_stft", "test_mel_l1", "test_si_sdr", "test_clips", "baseline_silence_stft",
    "baseline_silence_mel_l1", "baseline_mean_spectrum_mel_l1", "test_loudness_db", "test_loudness_abs_db",
    "test_silence_dbfs", "test_mel_l1_tone", "test_loudness_db_tone",
}  # fmt: skip
ORACLE = {
    "oracle_pitch_corr", "oracle_pitch_cents", "oracle_pitch_corr_input", "oracle_onset_f1",
    "oracle_onset_precision", "oracle_onset_recall", "oracle_onset_f1_input",
}  # fmt: skip


def test_stage_train_mode_end_to_end(stage_env):
    tmp = stage_env
    _world(tmp, truth=True)
    trainer = {"steps": 4, "batch_size": 2, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 2}
    write_params(tmp / "params.yaml", {"clip": {"duration": 1.0, "sample_rate": RATE},
                                       "audio_vae": {"mode": "train", "size": "tiny", "segment": 0.2, "trainer": trainer}})  # fmt: skip
    stage = load_stage("audio_vae")
    stage.main(_argv(tmp))

    info = json.loads((tmp / "vae" / encode.FOLDER.card).read_text())
    assert info["size"] == "tiny" and info["mode"] == "train"
    assert info["sample_rate"] == RATE and info["hop"] == 8 and info["latent_dim"] == 4
    vae, weights_hash = encode.load_model(tmp / "vae")  # rebuilt from the file alone
    assert weights_hash == info["weights_hash"] and vae.config.sample_rate == RATE
    metrics = json.loads((tmp / "metrics" / "audio_vae.json").read_text())
    assert FIGURES <= set(metrics) and metrics["test_clips"] == 2
    assert metrics["baseline_silence_mel_l1"] > metrics["baseline_mean_spectrum_mel_l1"] > 0
    # The ground truth is there: oracle figures on its clips (one pitched, one with an event), and the figure.
    assert metrics["oracle_pitch_clips"] == 1 and metrics["oracle_onset_clips"] == 1
    assert ORACLE <= set(metrics) and -1 <= metrics["oracle_pitch_corr"] <= 1
    assert (tmp / "metrics" / "audio_vae_mels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = (tmp / "metrics" / "audio_vae_steps.tsv").read_text().splitlines()
    assert steps[0].startswith("step") and [line.split("\t")[0] for line in steps[1:]] == ["2", "4"]
    (run_dir,) = (tmp / "ckpt").iterdir()
    assert run_dir.name.startswith("audio_vae-") and (run_dir / "last.pt").is_file()

    # A rerun with more steps resumes the same run instead of starting afresh.
    trainer["steps"] = 6
    write_params(tmp / "params.yaml", {"clip": {"duration": 1.0, "sample_rate": RATE},
                                       "audio_vae": {"mode": "train", "size": "tiny", "segment": 0.2, "trainer": trainer}})  # fmt: skip
    stage.main(_argv(tmp))
    assert [p.name for p in (tmp / "ckpt").iterdir()] == [run_dir.name]
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 6


def test_stage_import_mode_with_a_sao_layout_checkpoint(stage_env):
    tmp = stage_env
    _world(tmp, sample_rate=16000)
    torch.manual_seed(0)
    source = build("tiny")
    state = {SAO_PREFIX + k: v for k, v in source.state_dict().items()}
    state["model.transformer.weight"] = torch.zeros(2, 2)  # the DiT beside the VAE in a full checkpoint
    torch.save({"state_dict": state}, tmp / "model.ckpt")
    write_params(tmp / "params.yaml", {"clip": {"duration": 0.5, "sample_rate": 16000},
                                       "audio_vae": {"mode": "import", "size": "tiny",
                                                     "checkpoint": str(tmp / "model.ckpt")}})  # fmt: skip
    load_stage("audio_vae").main(_argv(tmp))

    vae, _ = encode.load_model(tmp / "vae")
    for key, value in source.state_dict().items():
        assert torch.equal(vae.state_dict()[key], value), key
    info = json.loads((tmp / "vae" / encode.FOLDER.card).read_text())
    assert info["mode"] == "import" and info["checkpoint"] == str(tmp / "model.ckpt")
    metrics = json.loads((tmp / "metrics" / "audio_vae.json").read_text())
    assert FIGURES <= set(metrics) and not ORACLE & set(metrics)  # no ground truth, no oracle figures


@pytest.mark.parametrize("problem", ["missing", "wrong size"])
def test_stage_import_of_a_bad_checkpoint_exits_2_naming_the_file(stage_env, capsys, problem):
    tmp = stage_env
    _world(tmp, sample_rate=16000)
    ckpt = tmp / "model.ckpt"
    if problem == "wrong size":  # a small VAE's weights where a tiny one is expected
        torch.save(build("small").state_dict(), ckpt)
    write_params(tmp / "params.yaml", {"clip": {"duration": 0.5, "sample_rate": 16000},
                                       "audio_vae": {"mode": "import", "size": "tiny", "checkpoint": str(ckpt)}})  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        load_stage("audio_vae").main(_argv(tmp))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(ckpt) in err and "Traceback" not in err  # before any MLflow run
    assert not (tmp / "vae").exists()


def _pretrained_folder(folder, card_rate: int = 16000):
    """A pretrained folder as `vaflow pretrained wavevae` writes it, for a tiny VAE."""
    from vaflow.models import pretrained
    from vaflow.models.wavevae import save_wavevae

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    save_wavevae(build("tiny"), folder / pretrained.WEIGHTS)
    pretrained.write_card(
        folder, {"wavevae": {"size": "tiny", "sample_rate": card_rate, "hop": SIZES["tiny"].hop}}
    )
    return folder / pretrained.WEIGHTS


@pytest.mark.parametrize("problem", ["none", "tampered weights", "card rate", "default missing"])
def test_stage_import_checks_a_pretrained_card(stage_env, capsys, problem):
    tmp = stage_env
    _world(tmp, sample_rate=16000)
    weights = _pretrained_folder(tmp / "pre", card_rate=8000 if problem == "card rate" else 16000)
    if problem == "tampered weights":
        data = bytearray(weights.read_bytes())
        data[-64] ^= 0xFF
        weights.write_bytes(bytes(data))
    checkpoint = (
        "data/pretrained/wavevae/wavevae.safetensors" if problem == "default missing" else str(weights)
    )
    write_params(tmp / "params.yaml", {"clip": {"duration": 0.5, "sample_rate": 16000},
                                       "audio_vae": {"mode": "import", "size": "tiny", "checkpoint": checkpoint}})  # fmt: skip
    if problem == "none":
        load_stage("audio_vae").main(_argv(tmp))
        assert json.loads((tmp / "vae" / encode.FOLDER.card).read_text())["checkpoint"] == checkpoint
        return
    with pytest.raises(SystemExit) as exc:
        load_stage("audio_vae").main(_argv(tmp))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    expected = {
        "tampered weights": "does not match its card",
        "card rate": "sample_rate = 8000, the params ask for 16000",
        "default missing": f"wavevae.safetensors: no such file; rebuild the pretrained WaveVAE with: {REBUILD}",
    }[problem]
    assert expected in err
    assert not (tmp / "vae").exists() and not (tmp / "metrics").exists()  # before any output or MLflow run


def test_stage_train_mode_starts_from_init(stage_env, capsys):
    tmp = stage_env
    _world(tmp, sample_rate=16000)
    init = _pretrained_folder(tmp / "pre")
    trainer = {
        "steps": 2,
        "batch_size": 2,
        "lr": 1e-9,
        "warmup_steps": 0,
        "log_every": 1,
        "checkpoint_every": 1,
    }
    params = {"clip": {"duration": 0.5, "sample_rate": 16000},
              "audio_vae": {"mode": "train", "size": "tiny", "init": str(init), "trainer": trainer}}  # fmt: skip
    write_params(tmp / "params.yaml", params)
    load_stage("audio_vae").main(_argv(tmp))
    trained, _ = encode.load_model(tmp / "vae")
    start = load_wavevae(init)
    for key, value in start.state_dict().items():  # two steps at lr 1e-9: still the initial weights
        assert torch.allclose(trained.state_dict()[key], value, atol=1e-5), key

    # Initial weights at another rate than the clip's: one clear error before anything is written.
    params["clip"]["sample_rate"] = 8000
    write_params(tmp / "params.yaml", params)
    with pytest.raises(SystemExit) as exc:
        load_stage("audio_vae").main([*_argv(tmp)[:5], str(tmp / "vae2"), *_argv(tmp)[6:]])
    assert exc.value.code == 2
    assert "sample_rate = 16000, the params ask for 8000" in capsys.readouterr().err
    assert not (tmp / "vae2").exists()
