"""Params validation, derived lengths and presets."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaflow import cli, config, errors
from vaflow.config import params
from vaflow.config.sizes import PAPER_PARAMETERS

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_validate_and_params_yaml_is_the_default():
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert config.validate(on_disk) == config.Params()
    assert on_disk == config.Params().model_dump(mode="json"), (
        "params.yaml drifted: run `vaflow preset default`"
    )


def test_unknown_key_names_key_and_nearest_valid_key():
    with pytest.raises(config.ConfigError) as err:
        config.validate({"synth": {"fsp": 10}})
    msg = str(err.value)
    assert "synth.fsp" in msg and "did you mean 'fps'" in msg


def test_a_training_stage_reads_only_prepared_sources():
    with pytest.raises(config.ConfigError) as err:
        config.validate({"prepare": {"sources": ["synth"]}, "train_flow": {"sources": ["synthh"]}})
    msg = str(err.value)
    assert "train_flow.sources: 'synthh' is not a prepared source" in msg and "did you mean 'synth'" in msg
    assert config.validate({"train_align": {"sources": ["synth"]}}).train_align.sources == ["synth"]


def test_unknown_section_and_nested_typo():
    with pytest.raises(config.ConfigError, match=r"prepar: unknown key \(did you mean 'prepare'\?\)"):
        config.validate({"prepar": {}})
    with pytest.raises(
        config.ConfigError, match=r"prepare\.vggsound\.csvv: unknown key \(did you mean 'csv'\?\)"
    ):
        config.validate({"prepare": {"vggsound": {"csvv": "x"}}})


def test_wrong_type_and_range_name_the_key_and_value():
    with pytest.raises(config.ConfigError, match=r"clip\.duration: .*got 'long'"):
        config.validate({"clip": {"duration": "long"}})
    with pytest.raises(config.ConfigError, match=r"synth\.size: .*greater than or equal to 16"):
        config.validate({"synth": {"size": 4}})
    with pytest.raises(config.ConfigError, match="unknown split"):
        config.validate({"synth": {"clips_per_split": {"training": 3}}})


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (
            {"sources": ["vggsound", "audiosetv2a"]},
            r"bad.yaml: prepare\.sources: unknown source 'audiosetv2a' \(did you mean 'audioset_v2a'\?\); known: "
            r"\['synth', 'folder', 'vggsound', 'audioset_v2a'\] \(got \['vggsound', 'audiosetv2a'\]\)",
        ),
        (
            {"sources": ["vggsound", "audioset_v2a", "vggsound"]},
            r"bad.yaml: prepare\.sources: source\(s\) \['vggsound'\] listed more than once",
        ),
        ({"sources": []}, r"bad.yaml: prepare\.sources: needs at least one source"),
        (
            {"sources": "vggsound"},
            r"bad.yaml: prepare: sources: a list of source names \(sources: \[vggsound\]\)",
        ),
        (
            {"source": "vggsound"},
            r"bad.yaml: prepare: source: renamed to 'sources', a list \(sources: \[vggsound\]\)",
        ),
    ],
)
def test_bad_source_lists_name_the_file_key_and_value(tmp_path, prepare, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"prepare": prepare}))
    with pytest.raises(config.ConfigError, match=message):
        config.load(bad)


def test_synth_shorter_than_clip_is_rejected():
    with pytest.raises(config.ConfigError, match="synth.duration"):
        config.validate({"clip": {"duration": 3.0}})


def test_audio_and_visual_shards_must_hold_the_same_clips():
    with pytest.raises(
        config.ConfigError, match=r"encode_audio.per_shard \(8\) and extract_visual.per_shard \(256\)"
    ):
        config.validate({"encode_audio": {"per_shard": 8}})
    config.validate({"encode_audio": {"per_shard": 8}, "extract_visual": {"per_shard": 8}})


def test_derived_lengths():
    clip = config.ClipConfig(duration=10.0, sample_rate=44100)
    assert clip.n_samples == 441000
    assert clip.latent_length(2048) == 215  # the paper's 215 x 64 SAO latents for 10 s
    assert clip.padded_samples(2048) == 215 * 2048
    assert clip.n_frames(10) == 100 and clip.n_frames(4) == 40


def test_presets_validate_and_differ():
    micro, vgg = config.preset("micro"), config.preset("vggsound")
    assert micro.clip.duration < config.Params().clip.duration
    assert vgg.clip.sample_rate == 44100 and vgg.prepare.sources == ["vggsound"]
    # The embedded default feeds its CAVP stand-in every 20 fps frame; the paper preset keeps CLIP's own 10 fps.
    assert config.Params().visual_encoder.frame_rate == 20.0 and vgg.visual_encoder.frame_rate == 10.0
    with pytest.raises(config.ConfigError, match="did you mean 'micro'"):
        config.preset("mikro")


def test_the_paper_preset_is_the_vggsound_data_with_the_papers_training(monkeypatch, tmp_path):
    paper, vgg = config.preset("paper"), config.preset("vggsound")
    for section in ("clip", "audio_vae", "visual_encoder", "evaluators"):  # the data preset, untouched
        assert getattr(paper, section) == getattr(vgg, section), section
    # §4.1: VGGSound plus AudioSet-V2A (the alignment VAE's training set), VGGSound's own settings untouched.
    assert (
        paper.prepare.sources == ["vggsound", "audioset_v2a"]
        and paper.prepare.source == "vggsound+audioset_v2a"
    )
    assert paper.prepare.model_copy(
        update={"sources": ["vggsound"], "audioset_v2a": vgg.prepare.audioset_v2a}
    ) == (vgg.prepare)
    assert paper.flow.size == "dit_s" and PAPER_PARAMETERS["dit_s"] == 142e6  # VAFlow-CLIP-142M
    flow, tune = paper.train_flow.trainer, paper.joint_tune.trainer
    assert (flow.steps, tune.steps) == (170_000, 130_000)  # 300K in all, 170K + 130K with joint tuning
    for stage in ("train_align", "train_flow", "joint_tune"):
        trainer = getattr(paper, stage).trainer
        assert trainer.precision == "bf16" and trainer.launcher.startswith("torchrun --nproc-per-node=8")
        assert (trainer.batch_size, trainer.lr, trainer.ema_decay) == (512, 1e-4, 0.9999)
    # `extends`: a preset names the one it starts from; an unknown or circular one is refused, naming the files.
    monkeypatch.setattr(params, "PRESET_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("extends: b\nsample: {steps: 7}\n")
    (tmp_path / "b.yaml").write_text("extends: default\nsample: {steps: 3, cfg: 2.0}\n")
    got = config.preset("a")
    assert (got.sample.steps, got.sample.cfg) == (7, 2.0)
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(
        config.ConfigError, match=r"a.yaml: presets extend each other in a circle: a -> b -> a"
    ):
        config.preset("a")
    (tmp_path / "b.yaml").write_text("extends: vgsound\n")
    with pytest.raises(config.ConfigError, match=r"unknown preset 'vgsound' \(extended by b\)"):
        config.preset("a")


def test_load_errors(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clip: [1, 2\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)
    bad.write_text("- 1\n")
    with pytest.raises(config.ConfigError, match="expected a mapping"):
        config.load(bad)


def test_cli_preset_writes_a_valid_file_and_check_reports_errors(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    cli.main(["preset", "micro", "--params", str(target)])
    assert config.load(target) == config.preset("micro")
    target.write_text("clip:\n  duraton: 1\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", str(target)])
    assert exit_info.value.code == 2
    assert "clip.duraton: unknown key (did you mean 'duration'?)" in capsys.readouterr().err


def test_user_errors_are_recognised_by_their_base():
    from vaflow.data.media import FFmpegNotFoundError, MediaError

    assert errors.is_user_error(FFmpegNotFoundError("x", "y"))  # a subclass counts
    assert errors.is_user_error(MediaError("x", "y")) and errors.is_user_error(FileNotFoundError("x"))
    assert not errors.is_user_error(KeyError("x"))
    # the extra base keeps the built-in one: `except ValueError` still catches a bad params file
    assert isinstance(config.ConfigError("x"), ValueError) and errors.is_user_error(config.ConfigError("x"))


def test_params_validate_without_torch():
    """`vaflow check` and every config import stay light: no model library is loaded to validate params."""
    code = "import sys, vaflow.config as c; c.Params(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_preset_without_a_name_keeps_local_edits(tmp_path, capsys):
    """`vaflow preset` alone used to write the default over params.yaml: a name is required now."""
    target = tmp_path / "params.yaml"
    cli.main(["preset", "micro", "--params", str(target)])
    edited = target.read_text() + "# a local note\n"
    target.write_text(edited)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["preset", "--params", str(target)])
    assert exit_info.value.code == 2 and target.read_text() == edited
    err = capsys.readouterr().err
    assert "name a preset" in err and "micro" in err  # the available names are listed


@pytest.mark.parametrize("gamma", [".inf", ".nan", "1.0e6", "-1"])
def test_guidance_is_finite_and_in_its_range(tmp_path, gamma):
    """`sample.cfg: .inf` used to pass `vaflow check`, then sampled 64 silent wavs with rc 0."""
    bad = tmp_path / "params.yaml"
    bad.write_text(f"sample:\n  cfg: {gamma}\n")
    with pytest.raises(config.ConfigError, match=r"sample\.cfg"):
        config.load(bad)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("sample.steps", True, "expected a number"),  # was read as 1
        ("sample.steps", "25", "expected a number"),  # passed `vaflow check`
        ("sample.cfg", "1.5", "expected a number"),
        ("flow.compile", "no", "expected true or false"),
        ("flow.compile", 1, "expected true or false"),
    ],
)
def test_numbers_and_booleans_are_never_read_from_other_types(key, value, expected):
    section, name = key.split(".")
    with pytest.raises(config.ConfigError, match=rf"^params: {key}: {expected}.* \(got {value!r}\)$"):
        config.validate({section: {name: value}})
    assert config.validate({"sample": {"steps": 25, "cfg": 2}}).sample.cfg == 2.0  # an int is a float's value


def test_the_diffusion_objective_needs_the_gaussian_prior():
    with pytest.raises(config.ConfigError, match="flow: objective: diffusion starts from Gaussian noise"):
        config.validate({"flow": {"objective": "diffusion"}})
    assert (
        config.validate({"flow": {"objective": "diffusion", "prior": "gaussian"}}).flow.objective
        == "diffusion"
    )


@pytest.mark.parametrize("section", ["train_flow", "joint_tune"])
def test_init_is_empty_by_default_and_names_a_model_folder(section):
    assert getattr(config.Params(), section).init == ""  # train from scratch / from stage 2's model
    assert getattr(config.validate({section: {"init": "runs/a/vaflow"}}), section).init == "runs/a/vaflow"
    with pytest.raises(
        config.ConfigError, match=rf"{section}: init: 'runs/a/vaflow/vaflow.json' is a file; give"
    ):
        config.validate({section: {"init": "runs/a/vaflow/vaflow.json"}})
    with pytest.raises(config.ConfigError, match=rf"{section}: init: leading or trailing blanks"):
        config.validate({section: {"init": "runs/a/vaflow "}})
    with pytest.raises(config.ConfigError, match=rf"{section}\.init: Input should be a valid string"):
        config.validate({section: {"init": 1}})
