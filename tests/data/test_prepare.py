"""The prepare stage on a folder of broken and odd media: each file is used correctly or rejected with its reason;
resuming from the journal; several sources in one manifest."""

import os

import pandas as pd
import pytest

from tests.data.badmedia import make_bad_media, make_clip
from vaflow import config
from vaflow.config import ClipConfig, FolderSource, PrepareConfig
from vaflow.data import media, prepare, sources
from vaflow.data.journal import JOURNAL_FILE, SpecFolder

CLIP = ClipConfig(duration=2.0, sample_rate=16000)
CHECK = prepare.check_item  # the real check, which some tests wrap
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


# ----------------------------------------------------------------------------------------------------------------
# Resuming from the journal
# ----------------------------------------------------------------------------------------------------------------


def _counting(monkeypatch, fail_after=None):
    """Count the real checks (by path); with `fail_after`, the check after that many raises, as a crash would."""
    calls = []

    def check(item, clip, cfg):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("killed")
        calls.append(item.path)
        return CHECK(item, clip, cfg)

    monkeypatch.setattr(prepare, "check_item", check)
    return calls


def _tables(report):
    return report.manifest_path.read_bytes(), report.rejected_path.read_bytes()


def test_an_interrupted_prepare_resumes_where_it_stopped(bad_folder, tmp_path, monkeypatch):
    root, expected = bad_folder
    cfg = PrepareConfig(verify="decode", workers=2)

    def run(name):
        items = sources.folder_items(FolderSource(root=str(root)))
        return prepare.prepare(
            items, CLIP, cfg, tmp_path / name, False, journal_dir=tmp_path / f"{name}-journal"
        )

    whole = run("whole")
    first = _counting(monkeypatch, fail_after=4)
    with pytest.raises(RuntimeError, match="killed"):
        run("resumed")
    journal = SpecFolder(tmp_path / "resumed-journal").journal()
    entries = journal.read()
    keys = {
        prepare.check_key(i, CLIP, cfg): i.path for i in sources.folder_items(FolderSource(root=str(root)))
    }
    kept = {keys[k] for k in (*entries.done, *entries.rejected)}
    assert 0 < len(kept) <= 4 and kept <= set(first)  # each verdict journalled as it came

    again = _counting(monkeypatch)
    report = run("resumed")
    assert not kept & set(again), "a clip with a verdict in the journal was checked again"
    assert len(again) == len(expected) - len(kept) == report.checked and report.resumed == len(kept)
    assert _tables(report) == _tables(whole)
    assert "taken from the journal" in report.summary()


def test_a_changed_file_or_setting_is_checked_again_and_the_journal_keeps_only_current_verdicts(
    tmp_path, monkeypatch
):
    (tmp_path / "v").mkdir()
    for name in ("a", "b", "c"):
        make_clip(tmp_path / "v" / f"{name}.mp4")
    folder = FolderSource(root=str(tmp_path / "v"))

    def run(verify):
        cfg = PrepareConfig(verify=verify, workers=1)
        items = sources.folder_items(folder)
        return prepare.prepare(items, CLIP, cfg, tmp_path / "out", False, journal_dir=tmp_path / "journal")

    calls = _counting(monkeypatch)
    run("probe")
    assert len(calls) == 3
    run("probe")
    assert len(calls) == 3  # nothing changed: nothing checked
    stat = (tmp_path / "v" / "b.mp4").stat()
    os.utime(tmp_path / "v" / "b.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run("probe")
    assert calls[3:] == [str(tmp_path / "v" / "b.mp4")]  # only the touched file
    report = run("decode")
    assert len(calls) == 7 and report.resumed == 0  # another verify mode: a new verdict for every file
    lines = (tmp_path / "journal" / JOURNAL_FILE).read_text().splitlines()
    assert len(lines) == 3, "verdicts of earlier files and settings are dropped once a run ends"


# ----------------------------------------------------------------------------------------------------------------
# Several sources
# ----------------------------------------------------------------------------------------------------------------


def test_several_sources_make_one_manifest_tagged_by_source(tmp_path):
    vgg, v2a = tmp_path / "vggsound", tmp_path / "audioset"
    vgg.mkdir(), v2a.mkdir()
    for path in (vgg / "aaa_000010.mp4", vgg / "bbb_000000.mp4", v2a / "aaa_000010.mp4", v2a / "ccc_30.mp4"):
        make_clip(path)
    (tmp_path / "vggsound.csv").write_text("aaa,10,dog,train\nbbb,0,cat,test\n")
    (tmp_path / "ids.txt").write_text("aaa_000010\nccc_30\n")
    params = config.validate(
        {
            "prepare": {
                "sources": ["vggsound", "audioset_v2a"],
                "vggsound": {"csv": str(tmp_path / "vggsound.csv"), "video_dir": str(vgg)},
                "audioset_v2a": {"ids": str(tmp_path / "ids.txt"), "video_dir": str(v2a)},
                "verify": "probe",
            }
        }
    )
    items = sources.list_items(params, tmp_path / "out", progress=False)
    report = prepare.prepare(items, params.clip, params.prepare, tmp_path / "out", False)
    manifest = prepare.load_manifest(report.manifest_path)
    assert list(zip(manifest["id"], manifest["source"], manifest["split"], strict=True)) == [
        ("bbb_000000", "vggsound", "test"),
        ("aaa_000010", "vggsound", "train"),
        ("ccc_30", "audioset_v2a", "train"),
    ]
    # The clip listed by both keeps its first listing (VGGSound's); the later one is rejected naming both.
    (row,) = report.rejected.itertuples()
    assert (row.id, row.source, row.path) == ("aaa_000010", "audioset_v2a", str(v2a / "aaa_000010.mp4"))
    assert row.reason == f"duplicate id: also listed by source 'vggsound' ({vgg / 'aaa_000010.mp4'})"
    # What the stages filter on: the alignment VAE every train row, the flow stages VGGSound's train rows only.
    train = manifest[manifest["split"] == "train"]
    assert list(train[train["source"] == "vggsound"]["id"]) == ["aaa_000010"]
    out = report.manifest_path.parent
    assert prepare.source_ids(out, ["vggsound"]) == {"aaa_000010", "bbb_000000"}
    assert prepare.source_ids(out, ["vggsound", "audioset_v2a"]) == set(manifest["id"])
    assert prepare.source_ids(out, []) is None  # every clip
    assert "vggsound train: 1" in report.summary() and "audioset_v2a train: 1" in report.summary()
