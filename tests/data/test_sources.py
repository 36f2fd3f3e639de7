"""Sources: id sanitising, folder, VGGSound (with a fake yt-dlp, and a fake downloader for parallel downloads),
AudioSet-V2A, several sources listed together."""

import os
import stat
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest

from tests.data.badmedia import make_clip
from vaflow.config import AudioSetV2ASource, ClipConfig, FolderSource, PrepareConfig, VGGSoundSource
from vaflow.data import prepare, sources

CLIP = ClipConfig(duration=2.0, sample_rate=16000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc_123", "abc_123"),
        ("../../etc/passwd", "etc_passwd"),
        ("a.b.c", "a_b_c"),
        ("dir/clip é ü", "dir_clip_e_u"),
        ("-x7Q_000030", "x7Q_000030"),
    ],
)
def test_sanitize_id(raw, expected):
    clean = sources.sanitize_id(raw)
    assert clean == expected
    assert "." not in clean and "/" not in clean


def test_sanitize_id_rejects_empty_and_bounds_length():
    with pytest.raises(sources.SourceError):
        sources.sanitize_id("../..")
    long_a, long_b = sources.sanitize_id("a" * 300 + "1"), sources.sanitize_id("a" * 300 + "2")
    assert len(long_a) <= sources.MAX_ID_LENGTH and long_a != long_b


def test_folder_source_labels_from_dirs_and_deterministic_split(tmp_path):
    for name in ("dogs/a.mp4", "dogs/b.mkv", "cats/c.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = list(sources.folder_items(FolderSource(root=str(tmp_path), test_fraction=0.5)))
    assert [(i.id, i.label) for i in items] == [("cats_c", "cats"), ("dogs_a", "dogs"), ("dogs_b", "dogs")]
    again = list(sources.folder_items(FolderSource(root=str(tmp_path), test_fraction=0.5)))
    assert [i.split for i in items] == [i.split for i in again]
    assert {i.split for i in items} <= {"train", "test"}


def test_folder_source_labels_csv_flags_missing_files(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "one.mp4").write_bytes(b"x")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label,split\none.mp4,dog,train\ngone.mp4,cat,test\nodd.mp4,cow,holdout\n")
    (tmp_path / "v" / "odd.mp4").write_bytes(b"x")
    items = list(sources.folder_items(FolderSource(root=str(tmp_path / "v"), labels_csv=str(labels))))
    problems = {i.id: i.problem for i in items}
    assert problems["one"] is None and problems["gone"] == "missing file"
    assert "unknown split 'holdout'" in problems["odd"]
    labels.write_text("path,label\n")
    with pytest.raises(sources.SourceError, match="missing column"):
        list(sources.folder_items(FolderSource(root=str(tmp_path / "v"), labels_csv=str(labels))))


def test_folder_source_errors_name_the_key(tmp_path):
    with pytest.raises(sources.SourceError, match="prepare.folder.root is empty"):
        list(sources.folder_items(FolderSource()))
    with pytest.raises(sources.SourceError, match="not a directory"):
        list(sources.folder_items(FolderSource(root=str(tmp_path / "nope"))))


def _fake_ytdlp(bin_dir, log):
    """A `yt-dlp` stand-in: writes a short clip to `-o` for any id except `dead`, and logs its arguments."""
    script = bin_dir / "yt-dlp"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import sys
            sys.path.insert(0, {str(os.getcwd())!r})
            from pathlib import Path
            from tests.data.badmedia import make_clip
            args = sys.argv[1:]
            with open({str(log)!r}, "a") as f:
                f.write(" ".join(args) + "\\n")
            if args[-1].endswith("dead"):
                print("ERROR: [youtube] dead: Video unavailable", file=sys.stderr)
                sys.exit(1)
            make_clip(Path(args[args.index("-o") + 1]), duration=2.5)
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_vggsound_source_local_files_and_fake_ytdlp(tmp_path, monkeypatch):
    videos = tmp_path / "video"
    videos.mkdir()
    make_clip(videos / "aaa_000030.mp4", duration=2.5)
    make_clip(videos / "full.mp4", duration=2.5)
    csv = tmp_path / "vggsound.csv"
    csv.write_text("aaa,30,dog barking,train\nfull,1,cat meowing,test\nnew,12,rain,test\ndead,5,wind,train\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ytdlp.log"
    _fake_ytdlp(bin_dir, log)

    offline = {i.id: i for i in sources.vggsound_items(VGGSoundSource(csv=str(csv), video_dir=str(videos)))}
    assert offline["aaa_000030"].problem is None and offline["aaa_000030"].start == 0.0
    assert offline["full_000001"].start == 1.0  # a full video: the window starts inside it
    assert offline["new_000012"].problem == "missing file"
    assert not log.exists(), "nothing may be downloaded unless asked"

    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = VGGSoundSource(csv=str(csv), video_dir=str(videos), download=True, download_rate=0)
    fetched = {i.id: i for i in sources.vggsound_items(cfg)}
    assert fetched["new_000012"].problem is None
    assert (videos / "new_000012.mp4").is_file()
    assert "--download-sections *12-22" in log.read_text()
    assert fetched["dead_000005"].problem == (
        "download failed: yt-dlp failed (exit 1): ERROR: [youtube] dead: Video unavailable"
    )  # gone for good: not retried
    assert not list(videos.glob(".*part*")), "a failed download leaves no partial file"


def test_vggsound_downloads_run_in_parallel_with_retries_and_a_rate_limit(tmp_path):
    """A fake downloader: `ok*` windows download, `flaky` fails twice first, `gone` is unavailable for good and
    `down` fails every time (HTTP 503); the failures land in the rejected list with their reasons."""
    videos = tmp_path / "video"
    videos.mkdir()
    names = ["ok1", "ok2", "ok3", "ok4", "flaky", "gone", "down"]
    csv = tmp_path / "vggsound.csv"
    csv.write_text("".join(f"{name},{n},dog,train\n" for n, name in enumerate(names)))
    lock, running, peak, starts, tries = threading.Lock(), [0], [0], [], Counter()

    def fetch(ytid, start, duration, out):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            starts.append(time.monotonic())
            tries[ytid] += 1
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        if ytid == "gone":
            return "yt-dlp failed (exit 1): ERROR: [youtube] gone: Video unavailable"
        if ytid == "down" or (ytid == "flaky" and tries[ytid] <= 2):
            return "yt-dlp failed (exit 1): ERROR: HTTP Error 503: Service Unavailable"
        make_clip(out, duration=2.5)
        return None

    rate = 40.0  # starts 25 ms apart: slower than 3 workers would start 30 ms calls unhindered
    cfg = VGGSoundSource(
        csv=str(csv),
        video_dir=str(videos),
        download=True,
        download_workers=3,
        download_retries=2,
        download_backoff=0.01,
        download_rate=rate,
    )
    items = list(sources.vggsound_items(cfg, progress=False, fetch=fetch))
    assert tries == {"ok1": 1, "ok2": 1, "ok3": 1, "ok4": 1, "flaky": 3, "gone": 1, "down": 3}
    assert 1 < peak[0] <= 3
    span = max(starts) - min(starts)
    assert span >= (sum(tries.values()) - 1) / rate * 0.9, f"{len(starts)} starts in {span:.3f}s"
    report = prepare.prepare(items, CLIP, PrepareConfig(verify="probe"), tmp_path / "out", progress=False)
    assert sorted(report.manifest["id"]) == sorted(f"{n}_{i:06d}" for i, n in enumerate(names[:5]))
    assert dict(zip(report.rejected["id"], report.rejected["reason"], strict=True)) == {
        "gone_000005": "download failed: yt-dlp failed (exit 1): ERROR: [youtube] gone: Video unavailable",
        "down_000006": "download failed: yt-dlp failed (exit 1): ERROR: HTTP Error 503: Service Unavailable"
        " (after 3 tries)",
    }


def test_vggsound_download_without_ytdlp_is_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "yt-dlp not found" in sources.download_window("x", 0, 10, tmp_path / "x.mp4")


def test_vggsound_limit_and_bad_csv(tmp_path):
    csv = tmp_path / "v.csv"
    csv.write_text("a,1,l,train\nb,2,l,train\nc,3,l,test\n")
    items = list(sources.vggsound_items(VGGSoundSource(csv=str(csv), video_dir=str(tmp_path), limit=1)))
    assert [i.id for i in items] == ["a_000001", "c_000003"]
    csv.write_text("a,1\n")
    with pytest.raises(sources.SourceError, match=r"v.csv:1: expected ytid,start,label,split"):
        list(sources.vggsound_items(VGGSoundSource(csv=str(csv), video_dir=str(tmp_path))))
    with pytest.raises(sources.SourceError, match="prepare.vggsound.csv not found"):
        list(sources.vggsound_items(VGGSoundSource(csv=str(tmp_path / "no.csv"), video_dir=str(tmp_path))))


def test_audioset_v2a_source(tmp_path):
    (tmp_path / "abc_10.mp4").write_bytes(b"x")
    ids = tmp_path / "ids.txt"
    ids.write_text("# AudioSet-V2A\nabc_10\nzzz\n")
    items = list(sources.audioset_v2a_items(AudioSetV2ASource(ids=str(ids), video_dir=str(tmp_path))))
    assert [(i.id, i.split, i.problem) for i in items] == [
        ("abc_10", "train", None),
        ("zzz", "train", "missing file"),
    ]
