"""Fine-tuning an exported VAFlow model on one's own videos (`train_flow.init`, `joint_tune.init`).

The data are a `folder` source made of rendered clips (the micro synthetic world's mp4 files laid out as a user's
folder, `<label>/<name>.mp4` with a labels CSV), run through the real prepare, encode_audio (a tiny WaveVAE) and
extract_visual (pixel features) stages once per module; the exported model is train_flow's, trained briefly on the
same shards over a saved (untrained) alignment VAE. Each test then checks where a stage starts: its first logged
step's loss is the loss of the model it should start from on that same first batch, computed here from the model's
own forward.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.stage_scripts import load_stage
from tests.world import micro_world
from vaflow import config
from vaflow.data import latents, pairs, sources
from vaflow.models import artifacts
from vaflow.models.align_vae import AlignLossWeights, AlignVAE, AlignVAEConfig
from vaflow.models.vaflow import FlowSettings, VAFlow
from vaflow.models.wavevae import SIZES, build
from vaflow.train import vaflow as training
from vaflow.train.numerics import seed_everything

RATE = 8000
BATCH = 4
# Brief but not negligible training: lr 3e-3 and no averaging (ema_decay 0), so the exported estimator is far
# enough from a new one (whose output projection starts at zero) that the two starts give different losses.
PRETRAIN = {"steps": 6, "batch_size": BATCH, "lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.0,
            "checkpoint_every": 6, "log_every": 2}  # fmt: skip
# The runs under test: two steps, each one logged (its loss is the step's own, not a window's mean).
TUNE = {"steps": 2, "batch_size": BATCH, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1}
VAL = {"clips": 2, "times": 1, "every": 0}  # at the last step only


def _params(videos: Path, trainer: dict, **sections: dict) -> dict:
    """A micro world read back through the `folder` source: 0.2 s clips at 8 kHz, a tiny WaveVAE (hop 8: T_a
    200, D_a 4), 4×4 pixel features at 10 fps (T_v 2, D_v 48), a tiny DiT; `sections` merged last."""
    data = config.deep_merge(micro_world(train=8, val=4), {
        "clip": {"duration": 0.2, "sample_rate": RATE},
        "prepare": {"sources": ["folder"], "folder": {"root": str(videos), "labels_csv": str(videos / "labels.csv")}},
        "audio_vae": {"size": "tiny"},
        "encode_audio": {"per_shard": 8},
        "visual_encoder": {"kind": "pixels", "mode": "none", "fps": 10, "pixels": {"side": 4}},
        "extract_visual": {"per_shard": 8},
        "flow": {"size": "tiny"},
        "train_flow": {"val": VAL, "trainer": trainer},
        "joint_tune": {"val": VAL, "trainer": trainer},
    })  # fmt: skip
    return config.deep_merge(data, sections)


def _write_params(path: Path, data: dict) -> Path:
    path.write_text(config.dump(config.validate(data)))
    return path


def _stage(name: str, params: Path, **flags: str | Path) -> None:
    argv = ["--params", str(params)]
    for flag, value in flags.items():
        argv += [f"--{flag}", str(value)]
    load_stage(name).main(argv)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads can be many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Features and latents of a `folder` source of rendered clips, and train_flow's model on them (`pre/flow`)."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"file://{root}/mlruns")  # the file store: no sqlite migrations
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DVC_ROOT"):
            mp.delenv(key, raising=False)
        # A user's folder: <label>/<name>.mp4, and a labels CSV that gives the splits.
        videos = root / "videos"
        rendered = sources.synth_items(
            config.validate(micro_world(train=8, val=4)).synth, root / "render", False
        )
        rows = []
        for item in rendered:
            target = videos / item.label / f"{item.id}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, target)
            rows.append({"file": f"{item.label}/{item.id}.mp4", "label": item.label, "split": item.split})
        with (videos / "labels.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["file", "label", "split"])
            writer.writeheader()
            writer.writerows(rows)
        params = _write_params(root / "params.yaml", _params(videos, PRETRAIN))
        torch.manual_seed(0)
        vae = build(dataclasses.replace(SIZES["tiny"], sample_rate=RATE))
        latents.export_model(vae, root / "vae", {"size": "tiny", "mode": "train"})
        _stage("prepare", params, out="prepared", checkpoints="ck", metrics="metrics")
        _stage("encode_audio", params, prepared="prepared", vae="vae", out="latents", metrics="metrics")
        _stage(
            "visual_encoder", params, prepared="prepared", out="encoder", checkpoints="ck", metrics="metrics"
        )
        _stage(
            "extract_visual",
            params,
            prepared="prepared",
            encoder="encoder",
            out="features",
            metrics="metrics",
        )
        # train_flow's frozen prior: an alignment VAE as train_align exports one (its training is not under test)
        features = artifacts.feature_identity(json.loads((root / "features" / "spec.json").read_text()))
        torch.manual_seed(0)
        align = AlignVAE(AlignVAEConfig(48, 2, 4, 200, channels=8, blocks=1), AlignLossWeights())
        artifacts.save_align_vae(align, root / "pre" / "align", features, {"steps": 0})
        _stage("train_flow", params, prepared="prepared", features="features", latents="latents", align="pre/align",
               out="pre/flow", checkpoints="ck", metrics="metrics")  # fmt: skip
        yield root


@pytest.fixture
def run_in(world, tmp_path, monkeypatch) -> Path:
    """A test's own folder for its params, outputs, checkpoints and metrics."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(stage: str, world: Path, params: Path, source: str | Path) -> None:
    """Run train_flow (`source`: its --align) or joint_tune (`source`: its --flow) into ./out."""
    flag = {"train_flow": "align", "joint_tune": "flow"}[stage]
    _stage(stage, params, prepared=world / "prepared", features=world / "features", latents=world / "latents",
           out="out", checkpoints="ck", metrics="metrics", **{flag: source})  # fmt: skip


def _first_logged_loss(stage: str) -> float:
    rows = (Path("metrics") / f"{stage}_steps.tsv").read_text().splitlines()
    header, first = rows[0].split("\t"), rows[1].split("\t")
    assert first[header.index("step")] == "1"
    return float(first[header.index("loss")])


def _first_batch_loss(model: VAFlow, world: Path) -> float:
    """`model`'s objective on the first batch of the train stream, with the draws the trainer makes there: the
    stream's pass 0, and t, ε and the condition dropout from torch's generator seeded as `fit` seeds it."""
    train = pairs.open_split(world / "features", "train", world / "latents")
    stream = pairs.ClipStream(train, BATCH, 0, 1, seed=0)
    stream.set_epoch(0)
    batch = next(iter(stream))
    seed_everything(0)
    with torch.no_grad():
        loss, _ = model.train()(batch["mean"], batch["std"], batch["feat"])
    return float(loss)


def _exported(world: Path, settings: dict | None = None) -> VAFlow:
    """The exported model read back as it is on disk, trained under its stored settings with `settings` changed."""
    stored = json.loads((world / "pre" / "flow" / "vaflow.json").read_text())["settings"]
    chosen = FlowSettings(**{**stored, **(settings or {})})
    return artifacts.load_vaflow(world / "pre" / "flow", settings=chosen)[0]


def _new_estimator(world: Path) -> VAFlow:
    """What train_flow builds without init: a new estimator (seed 0) on train_align's frozen encoder."""
    flow_cfg = config.validate(_params(Path("videos"), TUNE)).flow
    align, _ = artifacts.load_align_vae(world / "pre" / "align")
    data = training.open_flow_data(world / "features", world / "latents", 0)
    mean, std = training.split_statistics(data.train)
    seed_everything(0)
    return training.build_vaflow(flow_cfg, align, data.feature_dim, data.latent_dim, mean, std)


# Stage 3 tunes the encoder too, with Eq. 9's KL at joint_tune.kl_weight's default.
_TUNING = {"kl_weight": 8e-4, "tune_encoder": True}


def test_train_flow_init_starts_from_the_exported_model_and_never_reads_train_align(run_in, world, capsys):
    # The exported model with latent statistics of its own (a model trained on other clips has other ones).
    model, card = artifacts.load_vaflow(world / "pre" / "flow")
    model.latent_mean += 0.5
    artifacts.save_vaflow(
        model, "base", card["latent"]["length"], card["features"], card["wavevae"], card["trained"]
    )
    params = _write_params(Path("params.yaml"), _params(world / "videos", TUNE, train_flow={"init": "base"}))
    _run("train_flow", world, params, source=run_in / "no_such_align")  # not read: it does not exist
    base = artifacts.load_vaflow("base")[0]
    expected = _first_batch_loss(base, world)
    assert _first_logged_loss("train_flow") == pytest.approx(expected, rel=1e-6)
    from_scratch = _first_batch_loss(_new_estimator(world), world)
    assert abs(expected - from_scratch) > 1e-3 * expected  # the two starts are told apart by that loss
    out = capsys.readouterr().out
    assert "train_flow.init: fine-tuning base" in out and "alignment-VAE encoder (frozen)" in out
    assert "no_such_align is not used" in out
    tuned, card = artifacts.load_vaflow("out")
    # The exported model's history, then this run; its own latent statistics, not recomputed on these clips.
    assert [t["stage"] for t in card["trained"]] == ["train_flow", "train_flow"]
    assert torch.equal(tuned.latent_mean, base.latent_mean)
    assert not torch.equal(tuned.latent_mean, _exported(world).latent_mean)
    for name, value in base.encoder.state_dict().items():  # the prior stays frozen in stage 2
        assert torch.equal(value, tuned.encoder.state_dict()[name]), name


def test_joint_tune_init_starts_from_the_exported_model_and_never_reads_train_flow(run_in, world, capsys):
    data = _params(world / "videos", TUNE, joint_tune={"init": str(world / "pre" / "flow")})
    params = _write_params(Path("params.yaml"), data)
    _run("joint_tune", world, params, source=run_in / "no_such_flow")
    expected = _first_batch_loss(_exported(world, _TUNING), world)
    assert _first_logged_loss("joint_tune") == pytest.approx(expected, rel=1e-6)
    out = capsys.readouterr().out
    assert "joint_tune.init: tuning" in out and "no_such_flow, which is not used" in out
    card = json.loads((run_in / "out" / "vaflow.json").read_text())
    assert [t["stage"] for t in card["trained"]] == ["train_flow", "joint_tune"]


@pytest.mark.parametrize("stage", ["train_flow", "joint_tune"])
@pytest.mark.parametrize("what", ["visual features", "WaveVAE"])
def test_a_card_of_other_data_is_refused_before_any_training(run_in, world, capsys, stage, what):
    model, card = artifacts.load_vaflow(world / "pre" / "flow")
    key = {"visual features": "features", "WaveVAE": "wavevae"}[what]
    other = {**card[key], "weights_hash": "0ther"}
    identities = {"features": card["features"], "wavevae": card["wavevae"], key: other}
    artifacts.save_vaflow(model, "other", card["latent"]["length"], identities["features"], identities["wavevae"],
                          card["trained"])  # fmt: skip
    params = _write_params(Path("params.yaml"), _params(world / "videos", TUNE, **{stage: {"init": "other"}}))
    with pytest.raises(SystemExit) as exit_info:
        _run(stage, world, params, world / "pre" / ("align" if stage == "train_flow" else "flow"))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    recorded, current = captured.err.split(f"trained on {what} ")[1].split(f"but the current {what} is ")
    for side, identity in ((recorded, other), (current, card[key])):  # both sides named, each whole
        assert all(f"{k!r}: {v!r}" in side for k, v in identity.items()), (side, identity)
    assert "train:" not in captured.out  # the stage's work never began: no run, no step, no output
    assert not Path("ck").exists() and not Path("out").exists() and not Path("metrics").exists()


def test_a_flow_section_that_does_not_describe_the_exported_model_is_refused(run_in, world, capsys):
    data = _params(
        world / "videos", TUNE, train_flow={"init": str(world / "pre" / "flow")}, flow={"size": "small"}
    )
    with pytest.raises(SystemExit):
        _run("train_flow", world, _write_params(Path("params.yaml"), data), world / "pre" / "align")
    err = capsys.readouterr().err
    assert "but the flow section builds" in err and "'width': 32" in err and "'width': 128" in err
    assert not Path("ck").exists()


def test_a_folder_without_a_model_as_init_is_named(run_in, world, capsys):
    Path("empty").mkdir()
    params = _write_params(Path("params.yaml"), _params(world / "videos", TUNE, joint_tune={"init": "empty"}))
    with pytest.raises(SystemExit):
        _run("joint_tune", world, params, world / "pre" / "flow")
    assert "joint_tune.init: empty holds no vaflow.json" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["train_flow", "joint_tune"])
def test_no_init_keeps_the_paper_stages(run_in, world, capsys, stage):
    # init "": train_flow builds a new estimator on train_align's encoder, joint_tune tunes train_flow's model.
    params = _write_params(Path("params.yaml"), _params(world / "videos", TUNE))
    source = world / "pre" / ("align" if stage == "train_flow" else "flow")
    _run(stage, world, params, source)
    start = _new_estimator(world) if stage == "train_flow" else _exported(world, _TUNING)
    assert _first_logged_loss(stage) == pytest.approx(_first_batch_loss(start, world), rel=1e-6)
    assert ".init" not in capsys.readouterr().out
    card = json.loads((run_in / "out" / "vaflow.json").read_text())
    assert [t["stage"] for t in card["trained"]] == {"train_flow": ["train_flow"],
                                                    "joint_tune": ["train_flow", "joint_tune"]}[stage]  # fmt: skip
