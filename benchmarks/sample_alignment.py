"""Do the sampled test clips follow their own videos? Mel L1 of each generated wav against its own clip's real
audio and against another test clip's real audio (the next one in manifest order), plus loudness.

    python benchmarks/sample_alignment.py [--prepared data/prepared] [--samples data/samples]

A quick check on the output of `dvc repro` (stage `sample`) until the `evaluate` stage's metrics exist: a generator
that ignored the video would be as close to another clip's audio as to its own.
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np
import torch

from vaflow.data import media
from vaflow.data.prepare import load_manifest
from vaflow.models.cavp import log_mel


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        return audio, w.getframerate()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--samples", default="data/samples")
    args = parser.parse_args()
    rows = load_manifest(Path(args.prepared) / "manifest.csv", "test")
    generated, real = [], []
    for row in rows.itertuples():
        audio, rate = _read_wav(Path(args.samples) / f"{row.id}.wav")
        generated.append(audio)
        real.append(media.read_audio(row.path, rate, start=row.start, duration=row.duration))
    n = min(len(a) for a in generated + real)
    hop, n_fft = rate // 100, 2 ** int(np.ceil(np.log2(rate * 0.032)))
    g = log_mel(torch.tensor(np.stack([a[:n] for a in generated])), rate, 64, hop, n_fft)
    r = log_mel(torch.tensor(np.stack([a[:n] for a in real])), rate, 64, hop, n_fft)
    own = (g - r).abs().mean((1, 2))
    other = (g - r.roll(1, 0)).abs().mean((1, 2))
    rms = lambda xs: float(np.mean([np.sqrt(np.mean(x[:n] ** 2)) for x in xs]))  # noqa: E731
    print(f"{len(g)} test clips: mel L1 vs own real audio {own.mean():.3f}, vs another clip's {other.mean():.3f}; "
          f"own closer for {(own < other).float().mean():.2f} of clips; RMS generated {rms(generated):.4f}, "
          f"real {rms(real):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
