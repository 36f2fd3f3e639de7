"""End to end: the real `dvc repro` of the whole DAG on the micro preset in a temporary repository; parameter
changes rerun only the stages they feed."""

import json
import shutil
from types import SimpleNamespace

import mlflow
import torch
import yaml

from vaflow.data import shards

from .browser import open_page
from .pipeline import _run, _set_param, _stages_run


def test_repro_runs_the_dag(repo, first_repro):
    work, env = repo
    assert _stages_run(first_repro) == set(yaml.safe_load((work / "dvc.yaml").read_text())["stages"])
    counts = json.loads((work / "metrics" / "prepare.json").read_text())
    micro = yaml.safe_load((work / "configs" / "micro.yaml").read_text())["synth"]["clips_per_split"]
    assert counts == {f"clips_{s}": n for s, n in micro.items()} | {"rejected": 0}
    assert (work / "data" / "prepared" / "manifest.csv").is_file()
    assert (work / "dvc.lock").is_file()
    for split, n in micro.items():
        audio = sorted((work / "data" / "latents" / split).glob("audio-*.tar"))
        visual = sorted((work / "data" / "features" / split).glob("visual-*.tar"))
        pairs = list(shards.read_zipped(audio, visual))
        assert len(pairs) == n, split
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stages = {r.data.tags["stage"] for r in runs}
    assert {
        "prepare",
        "audio_vae",
        "visual_encoder",
        "train_align",
        "train_flow",
        "joint_tune",
        "sample",
        "evaluators",
        "evaluate",
    } <= stages
    assert json.loads((work / "metrics" / "sample.json").read_text())["samples"] == micro["test"]
    for stage in ("train_align", "train_flow", "joint_tune"):
        final = json.loads((work / "metrics" / f"{stage}.json").read_text())
        assert all(v is not None for v in final.values()) and "val_loss" in final, (stage, final)
    card = json.loads((work / "data" / "models" / "vaflow" / "vaflow.json").read_text())
    assert [t["stage"] for t in card["trained"]] == ["train_flow", "joint_tune"]
    assert card["features"]["kind"] == "cavp" and card["latent"]["length"] == 31  # 1 s at 8 kHz, hop 256
    assert len({r.data.tags["vaflow.group"] for r in runs}) == 1, "one repro, one run group"
    evaluate = next(r for r in runs if r.data.tags["stage"] == "evaluate")
    logged = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"table.md", "gallery"} <= logged, logged
    assert evaluate.data.tags["provenance.clips"] == str(micro["test"])


def test_repro_evaluates_into_metrics_a_table_and_a_gallery(repo, first_repro):
    work, env = repo
    micro = yaml.safe_load((work / "configs" / "micro.yaml").read_text())
    final = json.loads((work / "metrics" / "eval.json").read_text())
    n = micro["synth"]["clips_per_split"]["test"]
    for row in ("ground_truth", "wavevae_ceiling", "prior_decoded", "vaflow"):
        assert final[f"{row}.clips"] == n, row
        assert final[f"{row}.scored"] + final[f"{row}.nonfinite"] + final[f"{row}.silent"] == n, row
    assert (
        final["provenance"]["clips"] == n
        and final["provenance"]["sampler"]["steps"] == micro["sample"]["steps"]
    )
    assert set(final["provenance"]["evaluators"]) == {"audio_classifier", "av_embedder", "sync_classifier"}
    table = (work / "reports" / "table.md").read_text()
    for text in (
        "| **VAFlow (ours)** |",
        "Ground truth → WaveVAE (ceiling)",
        "proxy classifier",
        "## Provenance",
    ):
        assert text in table, text
    page = open_page(work / "reports" / "index.html")
    assert page.errors == [] and len(page.media) == 2 * micro["evaluate"]["gallery"]
    assert all(m["error"] is None and m["duration"] > 0.9 for m in page.media), page.media


def test_second_repro_is_a_noop(repo, first_repro):
    work, env = repo
    out = _run(["dvc", "repro"], work, env)
    assert "Running stage" not in out, out


def test_the_evaluate_stages_rows_get_the_reference_evaluators_metrics(
    repo, first_repro, monkeypatch, tmp_path
):
    """The evaluators stage's ground truth of a reference evaluator (a stand-in with PaSST's outputs) turns every row
    of the evaluate stage's work into `reference.*` metrics and a second table, on the micro pipeline's outputs."""
    from tests.eval.test_toolkits import _tiny_from_file, _TinyClassifier
    from vaflow import config
    from vaflow.eval import table, toolkits

    work, _ = repo
    monkeypatch.chdir(work)  # the manifest's media paths are relative to the repository
    fake = SimpleNamespace(SAMPLE_RATE=8000, PROTOCOL={"sample_rate": 8000}, from_file=_tiny_from_file)
    monkeypatch.setattr(toolkits, "_module", lambda name: fake)
    torch.save(_TinyClassifier().state_dict(), tmp_path / "tiny.pt")
    evaluators = tmp_path / "evaluators"
    shutil.copytree(work / "data" / "models" / "evaluators", evaluators)
    params = config.load(work / "params.yaml")
    reference = config.ReferenceEvaluatorsConfig(passt=str(tmp_path / "tiny.pt"))
    toolkits.test_split_truth(reference, params.clip, work / "data" / "prepared", evaluators, "cpu")
    folders = {"prepared": "prepared", "samples": "samples", "features": "features", "latents": "latents",
               "model": "models/vaflow", "vae": "models/audio_vae"}  # fmt: skip
    paths = {k: work / "data" / v for k, v in folders.items()} | {
        "evaluators": evaluators,
        "reports": tmp_path / "r",
    }
    done = table.evaluate_split(params.evaluate, params.clip, paths)
    rows = {r.name: r.metrics for r in done.rows}
    assert (
        rows["ground_truth"]["reference.fd_passt"] is None and rows["ground_truth"]["reference.is_passt"] >= 1
    )
    assert rows["vaflow"]["reference.fd_passt"] > 0 and rows["vaflow"]["reference.kl_passt"] >= 0
    assert done.provenance["reference"]["evaluators"]["passt"]["protocol"] == {"sample_rate": 8000}
    text = (tmp_path / "r" / "table.md").read_text()
    assert (
        "## The paper's evaluators" in text
        and "| Method | FD ↓<br>PaSST | KL ↓<br>PaSST | IS ↑<br>PaSST |" in text
    )


def test_visual_params_rerun_only_the_visual_side(clone):
    work, env = clone
    _set_param(work, "visual_encoder", "trainer.steps", 6)
    # New features retrain everything that reads them, and nothing on the audio side.
    assert _stages_run(_run(["dvc", "repro"], work, env)) == {
        "visual_encoder",
        "extract_visual",
        "train_align",
        "train_flow",
        "joint_tune",
        "sample",
        "evaluate",
    }


def test_audio_params_rerun_only_the_audio_side(clone):
    work, env = clone
    _set_param(work, "audio_vae", "trainer.steps", 12)
    # New latents retrain the flow stages; the alignment VAE reads features only.
    assert _stages_run(_run(["dvc", "repro"], work, env)) == {
        "audio_vae",
        "encode_audio",
        "train_flow",
        "joint_tune",
        "sample",
        "evaluate",
    }


def test_flow_params_rerun_only_the_flow_stages(clone):
    work, env = clone
    _set_param(work, "train_flow", "trainer.steps", 8)
    assert _stages_run(_run(["dvc", "repro"], work, env)) == {
        "train_flow",
        "joint_tune",
        "sample",
        "evaluate",
    }
