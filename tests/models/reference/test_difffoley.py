"""Diff-Foley's alignment classifier (Acc): the official keys, the fixture's reference outputs under synthetic weights
(spec -> posterior -> latent -> P(in sync)), the schedule buffers, the mel front end against hand checks, the
sampling API, Acc's threshold, and loading the official Lightning layout (foreign pickled objects, wrong files)."""

from __future__ import annotations

import json
import math
import sys
import types
from collections import OrderedDict

import pytest
import torch
from omegaconf import OmegaConf

from tests.models.reference.fixtures import keys, reference, synth_state_dict
from vaflow.models.artifacts import MissingModelFileError, ModelFileError
from vaflow.models.reference import load_strict
from vaflow.models.reference.difffoley import (
    CLIP_SECONDS,
    EVALUATOR,
    NAME,
    PROTOCOL,
    SAMPLE_RATE,
    SMALL,
    AccFeatures,
    DiffFoleyClassifier,
    accuracy,
    build,
    from_file,
    read_checkpoint,
    spec,
)

TOL = 1e-4  # relative: max |a - b| / max |b|, the fixtures README's tolerance


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


def cheap_checkpoint(spec_: dict, value=lambda i: 0.0) -> dict[str, torch.Tensor]:
    """A state dict with `spec_`'s keys and shapes whose tensors are one stored number each, broadcast (stride 0),
    so a full-size checkpoint saves and loads in kilobytes; tensor i holds `value(i)`."""
    return {
        k: torch.full((1,) * len(s["shape"]), value(i), dtype=getattr(torch, s["dtype"])).expand(s["shape"])
        for i, (k, s) in enumerate(spec_.items())
    }


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference(NAME)


@pytest.fixture(scope="module")
def model(ref) -> DiffFoleyClassifier:
    """The full-size classifier (95 M) with the fixtures' synthetic weights; the buffers the fixture kept at their
    constructor values (scale_factor, the schedule) keep ours, which `test_constructor_buffers` checks."""
    net = build()
    tensors = synth_state_dict(NAME)
    own = net.state_dict()
    for k in ref["kept_buffers"]:
        tensors[k] = own[k].clone()
    return load_strict(net, "<synthetic eval_classifier>", EVALUATOR, tensors=tensors)


@pytest.fixture(scope="module")
def outputs(model, ref) -> dict[str, torch.Tensor]:
    """Every reference output, from one pass of the (slow) encoder over the fixture's two specs."""
    with torch.no_grad():
        posterior = model.first_stage_model.encode(ref["spec"])
        z_mode = model.scale_factor * posterior.mean
        z_sample = model.scale_factor * posterior.sample(ref["noise"])
        return {
            "posterior_mean": posterior.mean,
            "posterior_std": posterior.std,
            "z_mode": z_mode,
            "z_sample": z_sample,
            "context": model.cond_model(ref["video_feat"]),
            "prob_mode": model(z_mode, ref["video_feat"]),
            "prob_sample": model(z_sample, ref["video_feat"]),
        }


@pytest.fixture(scope="module")
def small() -> DiffFoleyClassifier:
    """The same modules at a few MB, seeded weights: for the API, shapes and loading."""
    torch.manual_seed(0)
    return DiffFoleyClassifier(SMALL).eval()


# ---- the architecture and its buffers ----------------------------------------------------------------------------


def test_keys_are_the_official_checkpoint_keys(model):
    official = keys(NAME)
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {
        k: s["shape"] for k, s in official["state_dict"].items()
    }
    assert "lvlb_weights" not in state and model.lvlb_weights.shape == (1000,)  # non-persistent, as upstream
    counts = {}
    for k, v in state.items():
        prefix = k.split(".")[0]
        counts[prefix] = counts.get(prefix, 0) + v.numel()
    assert counts == official["param_counts_by_prefix"]


def test_constructor_buffers(model):
    """register_schedule's "linear" schedule and scale_factor (the model keeps its own), against their closed forms
    in float64: sqrt(beta) evenly spaced from sqrt(0.00085) to sqrt(0.012), alpha-bar the running product."""
    net = model
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    running, cum = 1.0, []
    for b in betas.tolist():
        running *= 1.0 - b
        cum.append(running)
    cum = torch.tensor(cum, dtype=torch.float64)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), cum[:-1]])
    variance = betas * (1 - prev) / (1 - cum)
    expected = {
        "betas": betas,
        "alphas_cumprod": cum,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": cum.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - cum).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - cum).log(),
        "sqrt_recip_alphas_cumprod": cum.rsqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / cum - 1).sqrt(),
        "posterior_variance": variance,
        "posterior_log_variance_clipped": variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - cum),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - cum),
    }
    assert net.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert net.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    for name, value in expected.items():
        buffer = getattr(net, name)
        assert buffer.dtype == torch.float32 and buffer.shape == (1000,), name
        assert torch.allclose(buffer.double(), value, rtol=1e-6, atol=0), name
    assert net.scale_factor.shape == () and net.scale_factor.item() == pytest.approx(0.18215, abs=1e-8)
    assert net.posterior_variance[0] == 0
    assert torch.isfinite(net.lvlb_weights).all() and net.lvlb_weights[0] == net.lvlb_weights[1]
    t = 500  # eps parameterisation: beta^2 / (2 sigma^2 alpha (1 - alpha-bar))
    lvlb = betas[t] ** 2 / (2 * variance[t] * (1 - betas[t]) * (1 - cum[t]))
    assert net.lvlb_weights[t].item() == pytest.approx(lvlb.item(), rel=1e-4)


def test_protocol_is_json_and_matches_the_constants():
    protocol = json.loads(json.dumps(PROTOCOL))
    assert protocol["sample_rate"] == SAMPLE_RATE == 16000
    assert protocol["clip_seconds"] == CLIP_SECONDS == 8.192
    assert protocol["spec"]["frames"] == 512 and protocol["video"]["frames"] == 32
    assert "0ba1e8a" in protocol["reference_code"]


# ---- the reference outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["posterior_mean", "posterior_std", "z_mode", "z_sample", "context", "prob_mode", "prob_sample"]
)
def test_matches_reference(outputs, ref, name):
    assert rel_err(outputs[name], ref[name]) < TOL, name


def test_features_api_matches_reference(model, ref):
    """The public path on the first clip: spec + CAVP features + the fixture's noise -> its sampled probability."""
    out = model.features(ref["spec"][:1], ref["video_feat"][:1], noise=ref["noise"][:1])
    assert isinstance(out, AccFeatures) and out.prob.shape == (1,)
    assert rel_err(out.z, ref["z_sample"][:1]) < TOL
    assert abs(out.prob.item() - ref["prob_sample"][0, 0].item()) < TOL
    # the fixture's first clip is the stochastic example: sample and mode fall on either side of 0.5
    assert ref["prob_sample"][0, 0] < 0.5 < ref["prob_mode"][0, 0]


# ---- the sampling API and Acc (small model) ----------------------------------------------------------------------


def _inputs(b: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, 128, 512, generator=g), torch.randn(b, 40, SMALL.video_dim, generator=g)


def test_generator_draws_the_reference_noise(small):
    """align_acc.py: torch.manual_seed(0), then posterior.sample() draws torch.randn(mean.shape) on the CPU."""
    x, video = _inputs()
    torch.manual_seed(0)
    noise = torch.randn(1, 4, 16, 64)
    by_generator = small.features(x, video, generator=torch.Generator().manual_seed(0))
    by_noise = small.features(x, video, noise=noise)
    mode = small.features(x, video)
    assert torch.equal(by_generator.z, by_noise.z) and torch.equal(by_generator.prob, by_noise.prob)
    assert not torch.equal(by_generator.z, mode.z)
    posterior = small.first_stage_model.encode(x)
    assert torch.allclose(mode.z, small.scale_factor * posterior.mean)
    assert torch.allclose(by_noise.z, small.scale_factor * (posterior.mean + posterior.std * noise))
    assert mode.prob.shape == (1,) and ((mode.prob > 0) & (mode.prob < 1)).all()
    assert torch.equal(small.probability(x, video), mode.prob)


def test_reads_the_first_32_video_frames(small):
    x, video = _inputs()
    base = small.features(x, video).prob
    assert torch.equal(base, small.features(x, video[:, :32]).prob)
    changed = video.clone()
    changed[:, 31] += 1
    assert not torch.equal(base, small.features(x, changed).prob)


def test_waveform_input_goes_through_spec(small):
    g = torch.Generator().manual_seed(2)
    wav = 0.1 * torch.randn(2, 128000, generator=g)
    _, video = _inputs(2)
    assert torch.equal(small.features(wav, video).prob, small.features(spec(wav), video).prob)


@pytest.mark.parametrize(
    "prob, acc",
    [([0.2, 0.5, 0.5000001, 1.0], 0.5), ([0.51], 1.0), ([0.5], 0.0), ([0.0, 0.49], 0.0)],
)
def test_accuracy_counts_what_rounds_to_one(prob, acc):
    p = torch.tensor(prob)
    assert accuracy(p) == acc == (torch.round(p) == 1).float().mean().item()


def test_decoder_shapes(small):
    with torch.no_grad():
        assert small.first_stage_model.decode(torch.randn(1, 4, 16, 64)).shape == (1, 3, 128, 512)


@pytest.mark.parametrize(
    "audio, video, kw",
    [
        ((2, 128, 512), (2, 32, 16), {}),  # a spec without its 3 channels
        ((2, 3, 128, 500), (2, 32, 16), {}),  # not 512 frames
        ((128000,), (1, 32, 16), {}),  # a waveform without its batch axis
        ((2, 3, 128, 512), (2, 31, 16), {}),  # fewer than 32 video frames
        ((2, 3, 128, 512), (1, 32, 16), {}),  # batch sizes differ
        ((2, 3, 128, 512), (2, 32, 16), {"noise": torch.zeros(2, 4, 16, 63)}),
        ((2, 3, 128, 512), (2, 32, 16), {"noise": torch.zeros(2, 4, 16, 64), "generator": torch.Generator()}),
    ],
)
def test_bad_input_is_a_value_error(small, audio, video, kw):
    with pytest.raises(ValueError, match="Diff-Foley"):
        small.features(torch.rand(audio), torch.rand(video), **kw)


def test_spec_rejects_bad_waveforms():
    for bad in (torch.zeros(3, 2, 100), torch.zeros(1, 0), torch.zeros(1, 100, dtype=torch.long)):
        with pytest.raises(ValueError, match="Diff-Foley"):
            spec(bad)


# ---- the mel front end (no waveform reference in the fixture: hand checks) --------------------------------------


def _slaney_mel(f: float) -> float:
    """librosa's slaney mel scale (htk=False), written from its definition."""
    return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / (math.log(6.4) / 27)


def test_spec_shape_range_and_silence():
    wav = torch.zeros(2, int(CLIP_SECONDS * SAMPLE_RATE))
    wav[1] = 0.3 * torch.randn(wav.shape[1], generator=torch.Generator().manual_seed(0))
    x = spec(wav)
    assert x.shape == (2, 3, 128, 512) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert torch.all(
        x[0] == 0
    )  # silence: max(1e-5) -> -100 dB -> (-100 - 20 + 100) / 100 < 0 -> clipped to 0
    assert x[1].min() >= 0 and x[1].max() <= 1 and x[1].mean() > 0.3


def test_spec_tone_lands_in_its_mel_band():
    """A 4 kHz tone peaks in the band whose slaney centre is nearest 4 kHz (128 bands over 125-7600 Hz); an HTK
    scale would put it 4 bands lower."""
    t = torch.arange(131072) / SAMPLE_RATE
    x = spec(0.5 * torch.sin(2 * math.pi * 4000 * t)[None])[0, 0]  # (128, 512)
    lo, hi = _slaney_mel(125), _slaney_mel(7600)
    centres = [lo + (i + 1) * (hi - lo) / 129 for i in range(128)]
    expected = min(range(128), key=lambda i: abs(centres[i] - _slaney_mel(4000)))
    assert torch.all(x[:, 2:-2].argmax(dim=0) == expected)


def test_spec_log_scale_and_frame_hop():
    """Doubling the amplitude adds 20 log10(2) / 100 wherever unclipped; frame j is centred on sample 256 j."""
    g = torch.Generator().manual_seed(3)
    wav = 0.05 * torch.randn(1, 131072, generator=g)
    a, b = spec(wav)[0, 0], spec(2 * wav)[0, 0]
    inside = (a > 0.01) & (b < 0.99)
    assert inside.float().mean() > 0.9
    assert torch.allclose((b - a)[inside], torch.full_like(a[inside], 20 * math.log10(2) / 100), atol=1e-5)
    click = torch.zeros(1, 131072)
    click[0, 256 * 300] = 1.0
    energy = spec(click)[0, 0].sum(dim=0)  # (512,)
    assert energy[299] < energy[300] > energy[301]  # the window's peak is on the click
    assert energy[298] == energy[302] == 0  # their windows end before it / start on it (Hann's zero)


def test_spec_is_the_first_512_frames_of_the_whole_waveform():
    """The eval dataset cuts the spec of the whole clip: frames 0..511 read the first 131328 samples (the clip and
    the next 16 ms); a shorter clip is silence past its end."""
    g = torch.Generator().manual_seed(4)
    wav = 0.1 * torch.randn(1, 160000, generator=g)  # 10 s
    full = spec(wav)
    assert torch.equal(full, spec(wav[:, :131328]))
    assert not torch.equal(full, spec(wav[:, :131072]))  # the last frame reads past 131072
    short = wav[:, :128000]  # 8 s
    padded = torch.cat([short, torch.zeros(1, 32000)], dim=1)
    assert torch.equal(spec(short), spec(padded))
    assert torch.all(spec(short)[..., 503:] == 0)  # frames 503.. read only the zero padding


# ---- loading -------------------------------------------------------------------------------------------------------


def _fake_class(module: str, qualname: str, base: type = object) -> type:
    cls = type(qualname, (base,), {})
    cls.__module__, cls.__qualname__ = module, qualname
    return cls


class _Gadget:
    """A pickled object whose unpickling would run code (exec writing a file), as a hostile checkpoint might hold."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


def _save_lightning(path, state_dict, monkeypatch, gadget_path) -> None:
    """torch.save a Lightning-like checkpoint: training state around "state_dict", with objects of Lightning classes
    from modules that exist only while saving (hyper_parameters as an AttributeDict, a callback keyed by its class
    as Lightning <= 1.4 did), a real omegaconf config (as latent-diffusion's hyper-parameters) and a code-running
    gadget."""
    with monkeypatch.context() as m:
        made = {}
        for name in (
            "pytorch_lightning",
            "pytorch_lightning.utilities",
            "pytorch_lightning.utilities.parsing",
            "pytorch_lightning.callbacks",
            "pytorch_lightning.callbacks.model_checkpoint",
        ):
            made[name] = types.ModuleType(name)
            m.setitem(sys.modules, name, made[name])
        attribute_dict = _fake_class("pytorch_lightning.utilities.parsing", "AttributeDict", dict)
        checkpoint_cb = _fake_class("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
        made["pytorch_lightning.utilities.parsing"].AttributeDict = attribute_dict
        made["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = checkpoint_cb
        config = OmegaConf.create(
            {"target": "Alignment_Classifier_metric", "params": {"ch_mult": [1, 2, 4, 4]}}
        )
        torch.save(
            {
                "epoch": 12,
                "global_step": 34000,
                "pytorch-lightning_version": "1.6.5",
                "state_dict": OrderedDict(state_dict),
                "callbacks": {checkpoint_cb: {"best_model_score": torch.tensor(0.2), "dirpath": "logs/ckpt"}},
                "optimizer_states": [
                    {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 5e-5, "params": [0]}]}
                ],
                "lr_schedulers": [],
                "hparams_name": "kwargs",
                "hyper_parameters": attribute_dict(monitor="val/bce_loss", model=config),
                "gadget": _Gadget(gadget_path),
            },
            path,
        )
    assert "pytorch_lightning" not in sys.modules


def test_from_file_loads_the_official_lightning_layout(tmp_path, monkeypatch):
    spec_ = keys(NAME)["state_dict"]
    tensors = cheap_checkpoint(spec_, value=lambda i: (i + 1) / 1000)
    path = tmp_path / "eval_classifier.ckpt"
    _save_lightning(path, tensors, monkeypatch, tmp_path / "ran.txt")
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)  # plain weights-only reading refuses the Lightning objects
    net = from_file(path)
    assert isinstance(net, DiffFoleyClassifier) and not any(m.training for m in net.modules())
    loaded = net.state_dict()
    for i, k in enumerate(spec_):
        assert torch.all(loaded[k] == (i + 1) / 1000), k  # every key, the file's buffers included
    assert not (tmp_path / "ran.txt").exists()  # the gadget's code never ran
    assert "pytorch_lightning" not in sys.modules  # nor was anything imported


def test_from_file_round_trip_small(tmp_path, monkeypatch, small):
    """Real values through the Lightning layout: the loaded classifier is the saved one."""
    path = tmp_path / "small.ckpt"
    _save_lightning(path, small.state_dict(), monkeypatch, tmp_path / "ran.txt")
    assert set(read_checkpoint(path)) == set(small.state_dict())  # the training state is dropped
    loaded = from_file(path, SMALL)
    x, video = _inputs()
    assert torch.equal(loaded.features(x, video).prob, small.features(x, video).prob)


def _wrong_files() -> dict[str, tuple[dict, str]]:
    spec_ = keys(NAME)["state_dict"]
    good = cheap_checkpoint(spec_)
    missing = {k: v for k, v in good.items() if k != "model.middle_block.1.proj_in.weight"}
    wrong_shape = {**good, "cond_model.pos_emb.weight": torch.zeros(32, 512)}
    extra = {**good, "model_ema.decay": torch.tensor(0.999)}
    other = cheap_checkpoint(keys("melception")["state_dict"])
    return {
        "missing key": (missing, "model.middle_block.1.proj_in.weight"),
        "wrong shape": (wrong_shape, "cond_model.pos_emb.weight"),
        "unexpected key": (extra, "model_ema.decay"),
        "another model": (other, "scale_factor"),
    }


@pytest.mark.parametrize("case", ["missing key", "wrong shape", "unexpected key", "another model"])
def test_wrong_file_is_a_model_file_error(tmp_path, monkeypatch, case):
    tensors, key = _wrong_files()[case]
    path = tmp_path / "eval_classifier.ckpt"
    _save_lightning(path, tensors, monkeypatch, tmp_path / "ran.txt")
    with pytest.raises(ModelFileError, match="Diff-Foley") as err:
        from_file(path)
    assert key in str(err.value)


def test_unreadable_file_is_a_model_file_error(tmp_path):
    path = tmp_path / "eval_classifier.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="eval_classifier"):
        from_file(path)
    torch.save({"state_dict": {"w": [1, 2]}}, path)  # a state dict of something other than tensors
    with pytest.raises(ModelFileError, match="state dict"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(MissingModelFileError, match="eval_classifier"):
        from_file(tmp_path / "eval_classifier.ckpt")
