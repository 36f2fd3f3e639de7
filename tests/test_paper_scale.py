"""The `paper` preset end to end on CPU, on a tiny local VGGSound + AudioSet-V2A layout: prepare (both sources) ->
encode_audio (the Stable Audio Open-size WaveVAE from a random-weights checkpoint in SAO's layout) -> extract_visual
(CLIP from a random-weights local file, 10 fps) -> train_align (both sources) -> train_flow (VGGSound only, the
142M `dit_s` estimator), with a handful of steps each. Marked slow (minutes: the SAO-size VAE encodes each 10 s clip
in 15-45 s on two cores); run it with `pytest -m slow`.

The step counts, batch sizes, launchers (one process) and precision (fp32: bf16 autocast on CPU only costs time) are
the only training settings overridden; the CLIP is a small ViT registered with open_clip (ViT-L-14's random weights
would take 1.2 GB and minutes to encode), imported through the same path as any open_clip weight file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from tests.stage_scripts import load_stage
from vaflow import config
from vaflow.data import media, pairs
from vaflow.models.wavevae import SAO_PREFIX, build, export_model
from vaflow.train import wavevae as wavevae_training

pytestmark = pytest.mark.slow

RATE, SECONDS, FPS, SIDE = 44100, 10, 10, 32
# The official CSV (ytid, start, label, split; no header) and AudioSet-V2A's id list (`<ytid>_<start>`).
VGGSOUND = [("aaaaaaaaaaa", 30, "dog barking", "train"), ("bbbbbbbbbbb", 0, "dog barking", "train"),
            ("ccccccccccc", 110, "engine idling", "train"), ("ddddddddddd", 5, "engine idling", "test")]  # fmt: skip
AUDIOSET_V2A = ["eeeeeeeeeee_000040", "fffffffffff_000000"]
CLIP_NAME = "vaflow-test-paper-vit"
FEW = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1,
       "launcher": "python", "precision": "auto"}  # fmt: skip


def _render(path: Path, seed: int) -> None:
    """A 10 s clip: moving noise frames and a tone in noise at 44.1 kHz."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (SECONDS * FPS, SIDE, SIDE, 3), dtype=np.uint8)
    t = np.arange(SECONDS * RATE) / RATE
    audio = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.05 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(path, frames, FPS, audio.astype(np.float32), RATE)


def _layout(root: Path) -> dict:
    """Render both datasets' files where the paper preset expects them; returns the params overrides."""
    import open_clip

    vgg, v2a = root / "vggsound", root / "audioset_v2a"
    for k, (ytid, start, _, _) in enumerate(VGGSOUND):
        _render(vgg / "video" / f"{ytid}_{start:06d}.mp4", k)
    (vgg / "vggsound.csv").write_text(
        "".join(f"{y},{s},{label},{split}\n" for y, s, label, split in VGGSOUND)
    )
    for k, name in enumerate(AUDIOSET_V2A):
        _render(v2a / "video" / f"{name}.mp4", 10 + k)
    (v2a / "ids.txt").write_text("\n".join(AUDIOSET_V2A) + "\n")

    torch.manual_seed(0)
    sao = {SAO_PREFIX + k: v for k, v in build("sao").state_dict().items()}
    sao["model.model.transformer.layers.0.self_attn.to_qkv.weight"] = torch.zeros(
        6, 2
    )  # the DiT beside the VAE
    save_file(sao, str(root / "model.safetensors"))

    vit = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 1, "layers": 1}}  # fmt: skip
    (root / f"{CLIP_NAME}.json").write_text(json.dumps(vit))
    open_clip.add_model_config(root / f"{CLIP_NAME}.json")
    torch.save(open_clip.create_model(CLIP_NAME, pretrained_text=False).state_dict(), root / "clip.bin")
    return {
        "prepare": {
            "vggsound": {"csv": str(vgg / "vggsound.csv"), "video_dir": str(vgg / "video")},
            "audioset_v2a": {"ids": str(v2a / "ids.txt"), "video_dir": str(v2a / "video")},
            "workers": 2,
        },
        "audio_vae": {"checkpoint": str(root / "model.safetensors")},
        "visual_encoder": {"clip": {"model_name": CLIP_NAME, "weights": str(root / "clip.bin")}},
        "encode_audio": {"batch_size": 1, "launcher": "python"},
        "extract_visual": {"batch_size": 2, "launcher": "python"},
        "train_align": {"val": {"every": 1}, "trainer": FEW},
        "train_flow": {"val": {"every": 1}, "trainer": FEW},
    }


def test_the_paper_preset_runs_from_both_datasets_to_the_flow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    overrides = _layout(tmp_path)
    data = config.deep_merge(config.preset("paper").model_dump(mode="json"), overrides)
    params = config.validate(data)
    assert params.flow.size == "dit_s" and params.prepare.sources == ["vggsound", "audioset_v2a"]
    Path("params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    load_stage("prepare").main(["--out", "prepared", "--checkpoints", "ck", "--metrics", "m"])
    manifest = (tmp_path / "prepared" / "manifest.csv").read_text()
    assert manifest.count(",vggsound,") == 4 and manifest.count(",audioset_v2a,") == 2
    # The codec import as the audio_vae stage does it (its test-split reconstruction pass is left out: minutes).
    vae = wavevae_training.load_checked(params.audio_vae.checkpoint, params)
    export_model(vae, "vae", {"size": "sao", "mode": "import", "checkpoint": params.audio_vae.checkpoint})
    load_stage("encode_audio").main(
        ["--prepared", "prepared", "--vae", "vae", "--out", "latents", "--metrics", "m"]
    )
    load_stage("visual_encoder").main(["--prepared", "prepared", "--out", "enc", "--checkpoints", "ck",
                                       "--metrics", "m"])  # fmt: skip
    load_stage("extract_visual").main(["--prepared", "prepared", "--encoder", "enc", "--out", "features",
                                       "--metrics", "m"])  # fmt: skip
    train = pairs.open_split("features", "train", "latents")
    sample = next(train.samples())
    assert sample["mean"].shape == (215, 64) and sample["feat"].shape == (SECONDS * FPS, 32)  # 10 fps CLIP
    capsys.readouterr()

    load_stage("train_align").main(["--prepared", "prepared", "--features", "features", "--out", "align",
                                    "--checkpoints", "ck", "--metrics", "m"])  # fmt: skip
    load_stage("train_flow").main(["--prepared", "prepared", "--features", "features", "--latents", "latents",
                                   "--align", "align", "--out", "flow", "--checkpoints", "ck", "--metrics", "m"])  # fmt: skip
    out = capsys.readouterr().out
    assert "train: 5 clips" in out  # train_align: VGGSound's 3 train clips + AudioSet-V2A's 2
    assert "train: 3 paired clips" in out and "DiT dit_s" in out  # train_flow: VGGSound's only
    assert json.loads((tmp_path / "m" / "train_flow.json").read_text())["params_dit"] > 1.4e8  # the 142M DiT
