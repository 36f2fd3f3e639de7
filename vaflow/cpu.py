"""The CPU kernels vaflow computes with, pinned to one instruction-set level so that a CPU run gives the same bytes
on every x86-64 CPU that has it (README: "Figures across CPU models").

numpy, its OpenBLAS, torch's own kernels, oneDNN (convolutions) and MKL (matmul, FFT) each pick their kernels by the
CPU they run on at load time, and kernels of different vector widths round differently. `pin()` sets each library's
variable to the AVX2 level before any of them loads (`vaflow/__init__.py` calls it first thing); a variable already
set is left as it is, and `VAFLOW_CPU_PIN=0` leaves them all to the libraries (their fastest kernels, figures that
depend on the CPU model).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["OPT_OUT", "PINS", "pin", "pinned", "state"]

OPT_OUT = "VAFLOW_CPU_PIN"
PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: convolutions
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: matmul, FFT
    "NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR",  # numpy's loops above AVX2 (a CPU lacking them: no-op)
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's OpenBLAS: the AVX2 kernels
}


def pinned(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether this process pins its kernels (`VAFLOW_CPU_PIN` is not `0`)."""
    return environ.get(OPT_OUT, "1").strip() != "0"


def pin(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set every variable of PINS that is not set yet (none when opted out); returns the libraries already loaded,
    which a pin set now cannot reach (`state` reports what they run)."""
    if not pinned(environ):
        return []
    for key, value in PINS.items():
        environ.setdefault(key, value)
    return [name for name in ("numpy", "torch") if name in sys.modules]


def state() -> dict[str, str]:
    """What this process computes with, for a run's tags: `cpu.pin` (on / off) and, once torch is loaded, the kernel
    level it dispatches to (`cpu.capability`, e.g. AVX2; AVX512 or DEFAULT on a CPU the pin cannot hold)."""
    out = {"cpu.pin": "on" if pinned() else "off"}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cpu.capability"] = str(torch.backends.cpu.get_cpu_capability())
    return out
