"""Which CPU kernels this machine computes with: a digest of one result from each library that vaflow pins
(vaflow/cpu.py), so that two machines can be compared in seconds before a whole default run.

    python benchmarks/cpu_kernels.py                   # pinned (every vaflow process)
    VAFLOW_CPU_PIN=0 python benchmarks/cpu_kernels.py  # the libraries' own choice

Two machines whose lines agree compute these kernels to the same bytes; a line that differs names the library
whose kernels differ. Each result is seeded; the digest is sha256[:12] of its bytes.
"""

# ruff: noqa: I001  (vaflow is imported before numpy and torch on purpose)
from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import vaflow  # noqa: F401  (before numpy and torch: the pins apply as they load)
import numpy as np
import torch
from vaflow import cpu


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def results() -> dict[str, str]:
    """Digest of one seeded result per library: oneDNN conv1d, MKL matmul and FFT, ATen's vectorised
    elementwise + reduction, numpy's ufuncs and OpenBLAS's matmul."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 2000, generator=g)
    w = torch.randn(64, 64, 7, generator=g)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)
    r = np.random.default_rng(0)
    m = r.standard_normal((256, 256))
    return {
        "conv1d (oneDNN)": _digest(torch.nn.functional.conv1d(x, w, padding=3).numpy()),
        "matmul (MKL)": _digest((a @ b).numpy()),
        "rfft (MKL)": _digest(torch.fft.rfft(x, dim=-1).abs().numpy()),
        "exp/sin/sum (ATen)": _digest(torch.exp(torch.sin(x) * 3).sum(-1).numpy()),
        "sin/exp (numpy)": _digest(np.exp(np.sin(np.linspace(0, 1000, 100_001)))),
        "matmul (OpenBLAS)": _digest(m @ m),
    }


def main() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else platform.processor()  # fmt: skip
    state = cpu.state()
    print(
        f"{model}; pin {state['cpu.pin']}, torch at {state.get('cpu.capability')}, {torch.get_num_threads()} threads"
    )
    for name, digest in results().items():
        print(f"  {name:20s} {digest}")


if __name__ == "__main__":
    main()
