"""`vaflow generate` against deliberately bad arguments and files, on tiny random-weight models: the exit status and
what it printed, for each case, and whether any input file or earlier output changed.

    python benchmarks/bad_input_probe.py

Every case should change no input file and no earlier output, and exit 2 with one `error:` line: an output that is
the input (also through a link) or an existing file, an output folder, one under a file or not an mp4, an unknown or
absent device, a missing models folder, truncated, zeroed or key-less model files, non-finite or absurd guidance, no
steps. The exception is point 6, inputs whose video stream an mp4 cannot hold (ProRes, GIF): exit 0 with one `note:`
line, the result's video re-encoded as H.264.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.data.badmedia import make_clip  # noqa: E402
from tests.test_sampling import build_artefacts  # noqa: E402


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}  # fmt: skip


def cases(tmp: Path, models: Path) -> list[tuple[str, list[str], Path]]:
    """(name, arguments after `vaflow generate`, the models folder it uses)."""
    (tmp / "in").mkdir()
    video = make_clip(tmp / "in" / "v.mp4", duration=0.3, size=(16, 16), fps=10)
    (tmp / "in" / "link.mp4").symlink_to(video)
    (tmp / "in" / "earlier.mp4").write_bytes(b"earlier work")
    (tmp / "in" / "a_file").write_text("x")
    prores = make_clip(tmp / "in" / "p.mov", duration=0.3, size=(16, 16), fps=10, vcodec="prores_ks",
                       pix_fmt="yuv422p10le", acodec="pcm_s16le")  # fmt: skip
    gif = make_clip(tmp / "in" / "g.gif", duration=0.3, size=(16, 16), fps=10, vcodec="gif", pix_fmt="rgb8",
                    audio=False)  # fmt: skip
    broken = {}
    for name, damage in {
        "truncated_weights": lambda d: (d / "vaflow" / "vaflow.safetensors").write_bytes(
            (d / "vaflow" / "vaflow.safetensors").read_bytes()[:1000]
        ),
        "zeroed_weights": lambda d: _zero(d / "vaflow" / "vaflow.safetensors"),
        "truncated_card": lambda d: (d / "vaflow" / "vaflow.json").write_text('{"latent'),
        "keyless_card": lambda d: (d / "vaflow" / "vaflow.json").write_text("{}"),
    }.items():
        copy = tmp / f"models-{name}"
        shutil.copytree(models, copy)
        damage(copy)
        broken[name] = copy
    v, m = str(video), models
    out = str(tmp / "out" / "o.mp4")
    return [
        ("1 output is the input", [v, "-o", v, "--overwrite"], m),
        ("1 output is a link to the input", [v, "-o", str(tmp / "in" / "link.mp4"), "--overwrite"], m),
        ("1 output exists", [v, "-o", str(tmp / "in" / "earlier.mp4")], m),
        ("4 output is a folder", [v, "-o", str(tmp / "in")], m),
        ("4 output under a file", [v, "-o", str(tmp / "in" / "a_file" / "o.mp4")], m),
        ("4 --device foo", [v, "-o", out, "--device", "foo"], m),
        ("4 --device cuda", [v, "-o", out, "--device", "cuda:7"], m),
        *[(f"4 {name}", [v, "-o", out], folder) for name, folder in broken.items()],
        ("4 -o out.wav", [v, "-o", str(tmp / "out" / "o.wav")], m),
        ("4 --models nowhere", [v, "-o", out, "--models", str(tmp / "nowhere")], m),
        ("5 --cfg inf", [v, "-o", out, "--cfg", "inf"], m),
        ("5 --steps 0", [v, "-o", out, "--steps", "0"], m),
        ("5 --cfg 1e6", [v, "-o", out, "--cfg", "1e6"], m),
        ("6 ProRes .mov", [str(prores), "-o", out], m),
        ("6 animated GIF", [str(gif), "-o", out], m),
    ]


def _zero(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2000:] = bytes(2000)
    path.write_bytes(bytes(data))


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        models = build_artefacts(tmp / "build")
        (tmp / "out").mkdir()
        rows = cases(tmp, models)
        print(f"{'case':34s} {'rc':>3s} {'lines':>5s} {'kept':>4s}  first line")
        for case, argv, folder in rows:
            before = {**digest(tmp / "in"), **{f"models/{k}": h for k, h in digest(folder).items()}}
            extra = [] if "--models" in argv else ["--models", str(folder)]
            extra += [] if "--steps" in argv else ["--steps", "2"]
            proc = subprocess.run([sys.executable, "-m", "vaflow.cli", "generate", *argv, *extra],
                                  capture_output=True, text=True, cwd=ROOT)  # fmt: skip
            after = {**digest(tmp / "in"), **{f"models/{k}": h for k, h in digest(folder).items()}}
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            kept = "yes" if before == after else "NO"
            shown = (lines or proc.stdout.strip().splitlines()[-1:] or [""])[0][:110]
            print(f"{case:34s} {proc.returncode:>3d} {len(lines):>5d} {kept:>4s}  {shown}")
            for stale in (tmp / "out").iterdir():
                stale.unlink()


if __name__ == "__main__":
    main()
