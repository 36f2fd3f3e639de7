"""The gallery: media written per clip, a page that a real (headless) browser opens without an error and whose every
audio and video element loads with a positive duration."""

from __future__ import annotations

import numpy as np
import pytest

from vaflow.eval import gallery, oracle, report, scoring

from ..browser import open_page
from .world import rows


@pytest.fixture(scope="module")
def page(tmp_path_factory, world, data, loaded):
    """A gallery of two test clips, their generated audio stood in for by the neighbouring clip's real audio."""
    reference = scoring.make_reference(loaded, data[3], oracle.truth_dir(world))
    ids, audio = reference.clips.ids, np.roll(reference.clips.audio.numpy(), 1, axis=0)
    row = scoring.score_row("vaflow", ids, audio, 8000, reference, loaded, is_splits=4)
    windows = {r["id"]: (r["path"], r["start"], r["duration"]) for r in rows(world, "test")}
    out = tmp_path_factory.mktemp("reports")
    clips = gallery.gallery_media(out, ids[:2], row, reference, ids, audio, windows)
    lines = ["a provenance line with <markup> to escape"]
    return gallery.write_gallery(out, [row], report.table_rows([row]), clips, lines), ids[:2]


def test_media_are_written_for_every_clip(page):
    path, ids = page
    names = sorted(p.name for p in (path.parent / gallery.MEDIA).iterdir())
    want = [f"{i}{suffix}" for i in ids for suffix in ("-generated.png", "-truth.png", "-truth.wav", ".mp4")]
    assert names == sorted(want)
    text = path.read_text()
    assert "&lt;markup&gt;" in text and "<markup>" not in text  # provenance is escaped
    assert all(f'id="{i}"' in text for i in ids) and "proxy classifier" in text


def test_a_real_browser_loads_the_page_and_every_audio_and_video(page, tmp_path):
    path, ids = page
    seen = open_page(path, screenshot=tmp_path / "gallery.png")
    assert seen.errors == []
    assert sorted(m["tag"] for m in seen.media) == ["audio", "audio", "video", "video"]
    for m in seen.media:
        assert m["error"] is None and m["duration"] > 0.9, m  # 1 s clips
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


def test_the_browser_check_fails_on_a_broken_page(page, tmp_path):
    """The check above can fail: a page whose audio file is missing shows up as an error and a media error."""
    path, ids = page
    broken = path.parent / "broken.html"
    broken.write_text(path.read_text().replace(f"{ids[0]}-truth.wav", "missing.wav"))
    seen = open_page(broken)
    assert any("missing.wav" in e for e in seen.errors)
    assert [m["error"] for m in seen.media if m["src"].endswith("missing.wav")] == [
        4
    ]  # MEDIA_ERR_SRC_NOT_SUPPORTED
