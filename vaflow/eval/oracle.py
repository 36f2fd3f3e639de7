"""Oracle metrics of the synthetic world (DESIGN §6): scores against the ground truth the world was rendered from.

Only evaluation reads the ground-truth sidecars (`<prepared>/synth/truth/<id>.json`, written by
`vaflow.data.synth`); no model ever sees them. They give what no proxy evaluator can: the true class of every
clip, the true onset time of every sound event, and the true per-frame curve of each continuous class's sound
parameter (pitch, loudness, click density).

- `truth_dir` / `read_truth`: the sidecars of a prepared folder, as `Truth` records;
- `event_onsets`: the onset times of a clip's event-class sounds (continuous classes have none);
- `clip_onset_score` / `pooled_onset_f1`: event-onset F1 of audio against those times, per clip and pooled;
- `class_accuracy`: the fraction of clips whose predicted label is the true one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vaflow.data.synth import CLASSES
from vaflow.errors import UserError
from vaflow.eval.metrics import OnsetScore, detect_onsets, onset_f1

__all__ = [
    "EVENT_CLASSES",
    "TRUTH_FOLDER",
    "Curve",
    "Truth",
    "TruthError",
    "class_accuracy",
    "clip_onset_score",
    "event_onsets",
    "pooled_onset_f1",
    "read_truth",
    "truth_dir",
]

# Where `prepare` (source synth) keeps the world's ground truth, relative to its output folder.
TRUTH_FOLDER = Path("synth") / "truth"
EVENT_CLASSES = frozenset(name for name, c in CLASSES.items() if c.kind == "event")


class TruthError(ValueError, UserError):
    """A ground-truth sidecar that is missing or malformed; names the file."""


@dataclass(frozen=True)
class Curve:
    """A continuous class's sound parameter, one value per video frame at `fps`."""

    fps: float
    param: str  # "pitch_hz", "loudness" or "density"
    values: np.ndarray  # (T,) float64

    def times(self) -> np.ndarray:
        """(T,) the instant of each value in seconds: the start of its frame."""
        return np.arange(len(self.values)) / self.fps


@dataclass(frozen=True)
class Truth:
    """One clip's ground truth: its main class, every audible class, event onsets and parameter curves."""

    id: str
    label: str
    classes: tuple[str, ...]
    events: tuple[tuple[str, float], ...]  # (class, onset s), sorted by time
    curves: dict[str, Curve] = field(default_factory=dict)
    duration: float = 0.0


def truth_dir(prepared: str | Path) -> Path | None:
    """The ground-truth folder of a prepared folder, or None when its clips are not the synthetic world's."""
    folder = Path(prepared) / TRUTH_FOLDER
    return folder if folder.is_dir() else None


def read_truth(folder: str | Path, clip_id: str) -> Truth:
    """The ground truth of `clip_id` from `folder` (see `truth_dir`); TruthError naming the file if unusable."""
    path = Path(folder) / f"{clip_id}.json"
    if not path.is_file():
        raise TruthError(f"no ground truth for clip {clip_id!r}: {path} is missing (rerun prepare)")
    try:
        raw = json.loads(path.read_text())
        events = [(str(e["class"]), float(e["time"])) for e in raw["events"]]
        curves = {
            str(name): Curve(float(c["fps"]), str(c["param"]), np.asarray(c["values"], dtype=np.float64))
            for name, c in raw["curves"].items()
        }
        truth = Truth(
            id=str(raw["id"]),
            label=str(raw["label"]),
            classes=tuple(str(c) for c in raw["classes"]),
            events=tuple(sorted(events, key=lambda e: (e[1], e[0]))),
            curves=curves,
            duration=float(raw["duration"]),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise TruthError(f"{path}: not a ground-truth sidecar ({type(err).__name__}: {err})") from None
    if truth.id != clip_id:
        raise TruthError(f"{path}: holds the ground truth of {truth.id!r}, not of {clip_id!r}")
    return truth


def event_onsets(truth: Truth) -> list[float]:
    """Sorted onset times (s) of the clip's event-class sounds; empty when it has no event class."""
    return sorted(t for name, t in truth.events if name in EVENT_CLASSES)


def clip_onset_score(
    audio: np.ndarray, sample_rate: int, truth: Truth, tolerance: float
) -> OnsetScore | None:
    """Event-onset F1 of audio (N,) against the clip's true event onsets within ±tolerance s.

    None for a clip without any event-class sound: its onsets are not defined, so it is not scored (a clip that
    has an event class but whose events all fall outside the clip is scored, and then any detection is a false
    positive). Onsets are found by `vaflow.eval.metrics.detect_onsets`.
    """
    if not EVENT_CLASSES.intersection(truth.classes):
        return None
    return onset_f1(detect_onsets(audio, sample_rate), event_onsets(truth), tolerance)


def pooled_onset_f1(scores: Iterable[OnsetScore | None]) -> OnsetScore | None:
    """Precision, recall and F1 over all matches of the scored clips pooled (None entries are skipped), so a
    clip with many events weighs more than one with a single event; None when no clip was scored."""
    scored = [s for s in scores if s is not None]
    if not scored:
        return None
    tp, fp, fn = (sum(getattr(s, k) for s in scored) for k in ("tp", "fp", "fn"))
    if tp + fp + fn == 0:
        return OnsetScore(precision=1.0, recall=1.0, f1=1.0, tp=0, fp=0, fn=0)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return OnsetScore(precision=precision, recall=recall, f1=f1, tp=tp, fp=fp, fn=fn)


def class_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Fraction of clips whose predicted label equals the true one; ValueError on empty or unequal lists."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted labels for {len(truth)} true ones")
    if not truth:
        raise ValueError("no clips to score")
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
