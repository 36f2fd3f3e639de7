"""The prepare stage on a folder of broken and odd media: each file is used correctly or rejected with its reason."""

import pandas as pd
import pytest

from tests.data.badmedia import make_bad_media, make_clip
from vaflow.config import ClipConfig, FolderSource, PrepareConfig
from vaflow.data import media, prepare, sources

CLIP = ClipConfig(duration=2.0, sample_rate=16000)
# The rejection reason (its prefix) expected for each kind of bad file.
REASONS = {
    "unreadable": ("unreadable",),
    "truncated": ("decode failed: truncated",),
    "corrupt": ("decode failed: corrupt",),
    "short audio": ("too short: audio decodes to 1.0",),
    "no audio": ("no audio stream",),
    "no video": ("no video stream",),
    "too short": ("too short",),
}


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_media(root)


@pytest.fixture(scope="module")
def report(bad_folder, tmp_path_factory):
    root, _ = bad_folder
    items = sources.folder_items(FolderSource(root=str(root)))
    out = tmp_path_factory.mktemp("prepared")
    return prepare.prepare(items, CLIP, PrepareConfig(verify="decode", workers=2), out, progress=False)


def _id(name):
    return sources.sanitize_id(name.rsplit(".", 1)[0])


def test_every_bad_case_is_used_or_rejected_with_its_reason(bad_folder, report):
    _, expected = bad_folder
    used = set(report.manifest["id"])
    reasons = dict(zip(report.rejected["id"], report.rejected["reason"], strict=True))
    for name, keyword in expected.items():
        clip_id = _id(name)
        if keyword is None:
            assert clip_id in used, f"{name} should be usable, rejected: {reasons.get(clip_id)}"
        else:
            assert clip_id in reasons, f"{name} should be rejected ({keyword})"
            assert reasons[clip_id].startswith(REASONS[keyword]), f"{name}: {reasons[clip_id]}"
    assert len(used) + len(reasons) == len(expected)
    assert "usable clips" in report.summary() and "rejected" in report.summary()


def test_usable_odd_media_decode_to_the_pipeline_format(report):
    frames_fps, size = 10, (32, 32)
    for row in prepare.load_manifest(report.manifest_path).itertuples():
        frames = media.read_frames(row.path, frames_fps, size, start=row.start, duration=row.duration)
        audio = media.read_audio(row.path, CLIP.sample_rate, start=row.start, duration=row.duration)
        assert frames.shape == (CLIP.n_frames(frames_fps), *size, 3), row.id
        assert audio.ndim == 1 and abs(len(audio) - CLIP.n_samples) <= CLIP.sample_rate // 100, row.id


def test_outputs_are_complete_tables(report):
    manifest = pd.read_csv(report.manifest_path)
    assert list(manifest.columns) == prepare.MANIFEST_COLUMNS
    assert (manifest["status"] == "ok").all() and manifest["sample_rate"].gt(0).all()
    assert list(pd.read_csv(report.rejected_path).columns) == prepare.REJECTED_COLUMNS
    assert not list(report.manifest_path.parent.glob(".*.tmp"))


def test_duplicates_and_missing_listed_files(tmp_path):
    (tmp_path / "v").mkdir()
    make_clip(tmp_path / "v" / "a.mp4")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.mp4,x\na.mp4,x\nmissing.mp4,y\n")
    items = sources.folder_items(FolderSource(root=str(tmp_path / "v"), labels_csv=str(labels)))
    rep = prepare.prepare(items, CLIP, PrepareConfig(verify="probe"), tmp_path / "out", progress=False)
    assert list(rep.manifest["id"]) == ["a"]
    assert sorted(rep.rejected["reason"]) == ["duplicate id", "missing file"]


def test_interrupted_prepare_leaves_previous_outputs_intact(tmp_path, monkeypatch):
    (tmp_path / "v").mkdir()
    make_clip(tmp_path / "v" / "a.mp4")
    make_clip(tmp_path / "v" / "b.mp4")
    out = tmp_path / "out"
    cfg = PrepareConfig(verify="probe", workers=1)
    first = prepare.prepare(
        sources.folder_items(FolderSource(root=str(tmp_path / "v"))), CLIP, cfg, out, False
    )
    before = first.manifest_path.read_bytes()
    calls = []

    def crash(item, clip, cfg):
        calls.append(item.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"id": item.id, "path": item.path, "reason": "x"}

    monkeypatch.setattr(prepare, "check_item", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(sources.folder_items(FolderSource(root=str(tmp_path / "v"))), CLIP, cfg, out, False)
    assert first.manifest_path.read_bytes() == before
    assert not list(out.glob(".*.tmp"))
