"""`reports/index.html`: a static gallery to see and hear what the generator made (DESIGN §6).

On top, the same table as `reports/table.md`; below, per test clip: its video with the generated audio, the
ground-truth audio, log-mel spectrograms of both on one colour scale (PNG), and the clip's own figures. The page is
plain HTML with relative links to `media/`, so the folder can be copied, zipped or served as it is.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaflow import atomic
from vaflow.eval.report import COLUMNS, ROW_TITLES
from vaflow.eval.scoring import Reference, RowScore

__all__ = ["GalleryClip", "gallery_media", "log_mel", "write_gallery", "write_mel_png"]

MEDIA = "media"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 1rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.clip { display: flex; gap: 1.5rem; align-items: flex-start; border-top: 1px solid #ddd; padding: 1rem 0; }
video { width: 256px; height: 256px; image-rendering: pixelated; background: #000; }
.mels img { display: block; width: 320px; height: 120px; image-rendering: pixelated; margin-bottom: 0.2rem; }
.caption { font-size: 0.85rem; color: #555; }
dl { display: grid; grid-template-columns: auto auto; gap: 0.1rem 0.8rem; margin: 0; font-size: 0.9rem; }
dt { color: #555; }
""".strip()


def log_mel(audio: np.ndarray, sample_rate: int, n_mels: int = 64) -> np.ndarray:
    """Log-mel spectrogram (n_mels, F) in dB of mono audio (N,): 32 ms windows, 8 ms hop, floor at −100 dB."""
    import torch

    from vaflow.models import mel

    n_fft = 1 << max(6, round(np.log2(0.032 * sample_rate)))
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))  # (N,)
    db = mel.log_mel(x, sample_rate, n_fft, n_fft // 4, n_mels, power=2.0, floor=1e-10, decibels=True)
    return db.numpy()  # (n_mels, F)


def write_mel_png(path: str | Path, mel_db: np.ndarray, vmin: float, vmax: float) -> None:
    """Write a log-mel (n_mels, F) as a PNG, low frequencies at the bottom, colours fixed to [vmin, vmax] dB."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with atomic.replacing(path) as tmp:
        plt.imsave(tmp, mel_db[::-1], cmap="magma", vmin=vmin, vmax=vmax, format="png")


@dataclass
class GalleryClip:
    """One clip of the gallery: file names relative to the gallery folder, its label and figures."""

    id: str
    video: str  # the original video window with the generated audio
    truth_audio: str  # the ground-truth audio
    mel_generated: str
    mel_truth: str
    label: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


# Per-clip figures shown beside each clip: (key in RowScore.clips, label).
_FIGURES = (
    ("label", "true class"),
    ("predicted", "proxy classifier says"),
    ("onset_f1", "onset F1 (%)"),
    ("p_sync", "P(aligned), sync proxy"),
    ("ib_va", "IB-VA, AV proxy"),
    ("rms_db", "RMS (dBFS)"),
)


def gallery_media(
    out_dir: str | Path,
    clip_ids: Sequence[str],
    row: RowScore,
    reference: Reference,
    generated_ids: Sequence[str],
    generated: np.ndarray,
    windows: Mapping[str, tuple[str, float, float]],
) -> list[GalleryClip]:
    """Write each clip's media under `<out_dir>/media/`: the original video window with the generated audio
    (mp4), the ground-truth audio (wav) and both log-mels (PNG, one colour scale per clip); figures from `row`.

    `generated` (N, samples) in `generated_ids` order at the reference's rate; `windows`: clip id → (video path,
    start, duration) from the manifest. Previous media of the folder are replaced.
    """
    from vaflow.generate.generator import write_wav
    from vaflow.generate.samples import mux_window

    media = Path(out_dir) / MEDIA
    if media.is_dir():
        for stale in media.iterdir():
            stale.unlink()
    media.mkdir(parents=True, exist_ok=True)
    rate = reference.sample_rate
    clips = []
    for clip_id in clip_ids:
        audio = np.nan_to_num(
            generated[list(generated_ids).index(clip_id)]
        )  # a diverged draw plays as silence
        truth = reference.clips.audio[reference.index(clip_id)].numpy()
        video, start, duration = windows[clip_id]
        mux_window(video, start, duration, audio, rate, media / f"{clip_id}.mp4")
        write_wav(media / f"{clip_id}-truth.wav", truth, rate)
        mels = log_mel(audio, rate), log_mel(truth, rate)
        top = max(float(m.max()) for m in mels)
        for name, mel in zip(("generated", "truth"), mels, strict=True):
            write_mel_png(media / f"{clip_id}-{name}.png", mel, top - 80.0, top)
        figures = row.clips.get(clip_id, {})
        clips.append(
            GalleryClip(
                id=clip_id,
                video=f"{MEDIA}/{clip_id}.mp4",
                truth_audio=f"{MEDIA}/{clip_id}-truth.wav",
                mel_generated=f"{MEDIA}/{clip_id}-generated.png",
                mel_truth=f"{MEDIA}/{clip_id}-truth.png",
                label=str(figures.get("label", "")),
                figures={title: figures.get(key) for key, title in _FIGURES if key in figures},
            )
        )
    return clips


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if np.isfinite(value) else "—"
    return "—" if value is None else str(value)


def _summary(rows: Sequence[RowScore], table: Sequence[Mapping[str, str]]) -> str:
    head = "".join(f"<th>{title}</th>" for _, title, _, _ in COLUMNS)  # titles are our own markup (<br>)
    body = []
    for row, cells in zip(rows, table, strict=True):
        tds = "".join(f"<td>{html.escape(cells[key])}</td>" for key, _, _, _ in COLUMNS)
        name = html.escape(ROW_TITLES.get(row.name, row.name))
        body.append(f"<tr><td>{name}</td>{tds}<td>{html.escape(cells['scored'])}</td></tr>")
    return f"<table><tr><th>Method</th>{head}<th>Scored</th></tr>{''.join(body)}</table>"


def _clip_html(clip: GalleryClip) -> str:
    e = html.escape
    figures = "".join(f"<dt>{e(k)}</dt><dd>{e(_fmt(v))}</dd>" for k, v in clip.figures.items())
    return f"""<section class="clip" id="{e(clip.id)}">
  <div><video controls preload="auto" src="{e(clip.video)}"></video>
    <div class="caption">{e(clip.id)} ({e(clip.label)}): video with the generated audio</div></div>
  <div class="mels">
    <img src="{e(clip.mel_generated)}" alt="log-mel of the generated audio of {e(clip.id)}">
    <div class="caption">generated (log-mel)</div>
    <img src="{e(clip.mel_truth)}" alt="log-mel of the ground-truth audio of {e(clip.id)}">
    <div class="caption">ground truth (log-mel)</div>
    <audio controls preload="auto" src="{e(clip.truth_audio)}"></audio>
    <div class="caption">ground-truth audio</div></div>
  <dl>{figures}</dl>
</section>"""


def write_gallery(
    out_dir: str | Path,
    rows: Sequence[RowScore],
    table: Sequence[Mapping[str, str]],
    clips: Sequence[GalleryClip],
    provenance_lines: Sequence[str],
) -> Path:
    """Write `<out_dir>/index.html` for the clips' media (already under `out_dir`); returns its path."""
    out = Path(out_dir) / "index.html"
    missing = [
        f
        for c in clips
        for f in (c.video, c.truth_audio, c.mel_generated, c.mel_truth)
        if not (Path(out_dir) / f).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{out_dir}: gallery media missing: {missing[:5]}")
    provenance = "".join(f"<li>{html.escape(line)}</li>" for line in provenance_lines)
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>VAFlow: generated test clips</title>
<link rel="icon" href="data:,">
<style>
{_CSS}
</style>
</head>
<body>
<h1>VAFlow: generated test clips</h1>
<p>Audio metrics use the pipeline's proxy evaluators, not the paper's (see provenance).</p>
{_summary(rows, table)}
<details><summary>Provenance</summary><ul>{provenance}</ul></details>
<h2>Clips</h2>
{"".join(_clip_html(c) for c in clips)}
</body>
</html>
"""
    atomic.write_text(out, page)
    return out
