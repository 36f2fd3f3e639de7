"""The `evaluate` stage's written results: `metrics/eval.json` and a table laid out like the paper's Table 1.

Every output carries its provenance (which evaluators, with their weight hashes; how many clips; the sampler's
solver, steps, γ and seed; the models' hashes), and every proxy metric says it is one in its header: the numbers
are comparable across runs of this pipeline, not with the paper's PaSST/Melception/ImageBind figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vaflow.eval.scoring import RowScore, finite_or_none

__all__ = ["COLUMNS", "REFERENCE_COLUMNS", "ROW_TITLES", "markdown_table", "provenance_lines", "table_rows"]

# Row key -> what the table calls it (the order of the table).
ROW_TITLES = {
    "ground_truth": "Ground truth (real test audio)",
    "wavevae_ceiling": "Ground truth → WaveVAE (ceiling)",
    "prior_decoded": "Prior draw x₀ decoded (no flow)",
    "vaflow": "VAFlow (ours)",
}

# (metric key, header, better, format): the paper's Table 1 columns, then the synthetic world's oracle ones.
COLUMNS = (
    ("fd", "FD ↓<br>proxy classifier", "lower", "{:.2f}"),
    ("kl", "KL ↓<br>proxy classifier", "lower", "{:.3f}"),
    ("is", "IS ↑<br>proxy classifier", "higher", "{:.2f}"),
    ("acc", "Acc. (%) ↑<br>proxy sync classifier", "higher", "{:.1f}"),
    ("ib_va", "IB-VA ↑<br>proxy AV embedder", "higher", "{:.1f}"),
    ("class_acc", "Class acc. (%) ↑<br>oracle, proxy classifier", "higher", "{:.1f}"),
    ("onset_f1", "Onset F1 (%) ↑<br>oracle", "higher", "{:.1f}"),
)


# The reference evaluators' columns (vaflow.eval.toolkits.METRICS, stored as `reference.<key>`): header, format.
REFERENCE_COLUMNS = {
    "fd_passt": ("FD ↓<br>PaSST", "{:.2f}"),
    "fd_melception": ("FD ↓<br>Melception", "{:.2f}"),
    "kl_passt": ("KL ↓<br>PaSST", "{:.3f}"),
    "kl_melception": ("KL ↓<br>Melception", "{:.3f}"),
    "is_passt": ("IS ↑<br>PaSST", "{:.2f}"),
    "is_melception": ("IS ↑<br>Melception", "{:.2f}"),
    "ib_va": ("IB-VA ↑<br>ImageBind ×100", "{:.1f}"),
    "acc": ("Acc. (%) ↑<br>Diff-Foley", "{:.1f}"),
    "desync": ("DeSync (s) ↓<br>Synchformer", "{:.3f}"),
    "fd_panns": ("FD ↓<br>PANNs", "{:.2f}"),
    "kl_panns": ("KL ↓<br>PANNs", "{:.3f}"),
    "is_panns": ("IS ↑<br>PANNs", "{:.2f}"),
}


def _reference_section(rows: Sequence[RowScore], card: Mapping[str, Any]) -> list[str]:
    """The table of the reference evaluators' metrics, with the protocol each one was run under."""
    keys = [k for k in REFERENCE_COLUMNS if any(f"reference.{k}" in r.metrics for r in rows)]
    lines = [
        "",
        "## The paper's evaluators",
        "",
        "The same clips scored with the reference evaluators' official weights, their toolkits' way",
        "(comparable with published numbers that used the same protocol).",
        "",
        "| " + " | ".join(["Method", *(REFERENCE_COLUMNS[k][0] for k in keys)]) + " |",
        "| " + " | ".join(["---"] + ["---:"] * len(keys)) + " |",
    ]
    for row in rows:
        cells = [_cell(row.metrics.get(f"reference.{k}"), REFERENCE_COLUMNS[k][1]) for k in keys]
        lines.append("| " + " | ".join([ROW_TITLES.get(row.name, row.name), *cells]) + " |")
    lines += ["", f"Audio scored: {card['audio_seconds']:g} s per clip, one sample per video, resampled by "
              f"{card['resampler']}; each evaluator pads or cuts it to its own window."]  # fmt: skip
    for name, e in card["evaluators"].items():
        p = e["protocol"]
        shown = ", ".join(f"{k} {v}" for k, v in p.items() if isinstance(v, int | float | str))
        lines.append(f"- `{name}` (weights `{e['weights_hash']}`, {e['file']}): {shown}.")
    return lines


def _cell(value: float | None, fmt: str) -> str:
    value = finite_or_none(value)
    return "—" if value is None else fmt.format(value)


def table_rows(rows: Sequence[RowScore]) -> list[dict[str, str]]:
    """Each row's formatted cells by column key, plus `method`, `features` and `excluded` (the clips left out)."""
    out = []
    for row in rows:
        cells = {key: _cell(row.metrics.get(key), fmt) for key, _, _, fmt in COLUMNS}
        m = row.metrics
        cells["method"] = ROW_TITLES.get(row.name, row.name)
        cells["scored"] = f"{m.get('scored', 0)}/{m.get('clips', 0)}"
        left_out = [f"{m[k]} {k}" for k in ("nonfinite", "silent") if m.get(k)]
        cells["excluded"] = ", ".join(left_out) or "none"
        out.append(cells)
    return out


def provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    """The provenance as sentences (Markdown code spans for ids), for the table and the gallery."""
    p = provenance
    lines = [f"Test clips: {p['clips']} (split `{p['split']}`); metrics use draw 0 of each clip."]
    s = p.get("sampler")
    if s:
        lines.append(
            f"VAFlow sampling: solver `{s['solver']}`, {s['steps']} steps, CFG γ {s['cfg']} "
            f"(applied {p.get('cfg_applied')}), condition `{s['cond']}`, seed {p.get('seed')}."
        )
    models = p.get("models", {})
    if models:
        lines.append("Models: " + ", ".join(f"{k} `{v}`" for k, v in models.items()) + ".")
    for name, e in p.get("evaluators", {}).items():
        lines.append(f"`{name}` (weights `{e['weights_hash']}`): {e['stands_in_for']}.")
    floor = p.get("fd_floor")
    if floor is not None:
        lines.append(
            f"FD floor: FD between two halves of the real test clips is {floor:.2f} "
            f"({p.get('fd_floor_n')} vs {p.get('fd_floor_n')} clips); FD of a row is computed against all "
            f"{p['clips']} real clips."
        )
    lines.append(
        f"Oracle metrics read the synthetic world's ground truth: class accuracy = the proxy classifier's top "
        f"class vs the true class; onset F1 = spectral-flux onsets vs true event times within "
        f"±{1000 * p['onset_tolerance']:.0f} ms, event classes only, pooled over clips."
        if p.get("oracle")
        else "No ground truth (not the synthetic world): the oracle columns are empty."
    )
    lines.append(
        f"Clips with non-finite samples or RMS below {p['silent_db']:g} dBFS are counted in the last column "
        "and left out of every metric of their row."
    )
    return lines


def markdown_table(rows: Sequence[RowScore], provenance: Mapping[str, Any]) -> str:
    """`reports/table.md`: the paper's Table 1 layout with the proxies named, the references, and provenance."""
    header = ["Method", "Vis. feat.", *(title for _, title, _, _ in COLUMNS), "Scored", "Left out"]
    lines = [
        "# VAFlow on the test split (paper Table 1 layout)",
        "",
        "All audio metrics use this pipeline's **proxy** evaluators (stage `evaluators`), not PaSST, Melception,",
        "ImageBind or Diff-Foley's classifier: compare these numbers across runs of this pipeline, not with the",
        "paper's.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |",
    ]
    features = provenance.get("visual_features", "")
    for row, cells in zip(rows, table_rows(rows), strict=True):
        feat = features if row.name in ("vaflow", "prior_decoded") else "—"
        values = [cells[key] for key, _, _, _ in COLUMNS]
        method = f"**{cells['method']}**" if row.name == "vaflow" else cells["method"]
        lines.append("| " + " | ".join([method, feat, *values, cells["scored"], cells["excluded"]]) + " |")
    lines += ["", "## Provenance", "", *(f"- {line}" for line in provenance_lines(provenance))]
    if provenance.get("reference"):
        lines += _reference_section(rows, provenance["reference"])
    notes = [f"- {ROW_TITLES.get(r.name, r.name)}: {n}" for r in rows for n in r.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"
