"""The paper-style table: the rows in order, proxies named in the headers, empty cells shown as such, provenance."""

from __future__ import annotations

import math

from vaflow.eval.report import markdown_table, provenance_lines, table_rows
from vaflow.eval.scoring import RowScore

PROVENANCE = {
    "split": "test",
    "clips": 64,
    "seed": 3,
    "sampler": {"solver": "midpoint", "steps": 12, "cfg": 1.5, "cond": "video"},
    "cfg_applied": 1.5,
    "visual_features": "cavp 4 fps",
    "models": {"vaflow": "abc123", "wavevae": "def456"},
    "evaluators": {"audio_classifier": {"stands_in_for": "proxy for PaSST", "weights_hash": "0badc0de"}},
    "fd_floor": 12.5,
    "fd_floor_n": 32,
    "oracle": True,
    "onset_tolerance": 0.05,
    "is_splits": 10,
    "silent_db": -70.0,
}


def _row(name, **metrics):
    base = {"clips": 64, "scored": 64, "nonfinite": 0, "silent": 0}
    return RowScore(name, {**base, **metrics}, {})


def test_table_has_the_paper_columns_and_our_rows():
    rows = [
        _row(
            "ground_truth",
            fd=None,
            kl=None,
            **{"is": 3.4},
            acc=79.7,
            ib_va=77.1,
            class_acc=87.5,
            onset_f1=97.4,
        ),
        _row(
            "vaflow", fd=146.5, kl=2.7, **{"is": 1.9}, acc=31.2, ib_va=26.5, class_acc=35.9, onset_f1=math.nan
        ),
    ]
    rows[1].metrics.update(nonfinite=2, scored=62)
    text = markdown_table(rows, PROVENANCE)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    for title in (
        "FD ↓<br>proxy classifier",
        "Acc. (%) ↑<br>proxy sync classifier",
        "IB-VA ↑<br>proxy AV embedder",
    ):
        assert title in header
    table = [line for line in lines if line.startswith("| ") and not line.startswith(("| Method", "| ---"))]
    assert table[0].startswith("| Ground truth (real test audio) | — | — | — | 3.40 |")
    assert table[1].startswith(
        "| **VAFlow (ours)** | cavp 4 fps | 146.50 | 2.700 | 1.90 | 31.2 | 26.5 | 35.9 | — |"
    )
    assert table[1].endswith("| 62/64 | 2 nonfinite |")  # NaN is shown as "—", never as a number
    assert table_rows(rows)[0]["excluded"] == "none"


def test_provenance_names_evaluators_sampler_models_and_counts():
    text = " ".join(provenance_lines(PROVENANCE))
    for fact in ("64", "`midpoint`, 12 steps, CFG γ 1.5", "seed 3", "`0badc0de`", "proxy for PaSST", "abc123",
                 "12.50", "±50 ms", "-70 dBFS"):  # fmt: skip
        assert fact in text, fact
    no_truth = " ".join(provenance_lines({**PROVENANCE, "oracle": False}))
    assert "No ground truth" in no_truth


def test_the_reference_evaluators_get_their_own_table_with_the_protocol():
    rows = [
        _row(
            "ground_truth",
            **{"reference.fd_passt": None, "reference.is_passt": 8.25, "reference.desync": 0.4},
        ),
        _row("vaflow", **{"reference.fd_passt": 101.5, "reference.is_passt": 6.5, "reference.desync": 0.62}),
    ]
    card = {
        "audio_seconds": 8.0,
        "resampler": "torchaudio sinc",
        "evaluators": {
            "passt": {
                "weights_hash": "aa11",
                "file": "passt.pt",
                "protocol": {"sample_rate": 32000, "clip_seconds": 10.0},
            },
            "synchformer": {"weights_hash": "bb22", "file": "sync.pth", "protocol": {"fps": 25}},
        },
    }
    assert "The paper's evaluators" not in markdown_table(rows, PROVENANCE)  # none given: the table as it was
    text = markdown_table(rows, {**PROVENANCE, "reference": card})
    lines = text.split("## The paper's evaluators", 1)[1].splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert (
        header == "| Method | FD ↓<br>PaSST | IS ↑<br>PaSST | DeSync (s) ↓<br>Synchformer |"
    )  # the paper's order
    assert "| Ground truth (real test audio) | — | 8.25 | 0.400 |" in lines
    assert "| VAFlow (ours) | 101.50 | 6.50 | 0.620 |" in lines
    assert any("8 s per clip" in line and "torchaudio sinc" in line for line in lines)
    assert any(
        line.startswith("- `passt` (weights `aa11`, passt.pt): sample_rate 32000, clip_seconds 10.0")
        for line in lines
    )
