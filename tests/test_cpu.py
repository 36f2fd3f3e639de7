"""The pinned CPU kernels (vaflow.cpu): set before numpy and torch load, a user's own setting kept, an opt-out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vaflow import cpu

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import json, vaflow, numpy, torch; from vaflow import cpu; "
    "from numpy._core._multiarray_umath import __cpu_features__ as simd; "
    "print(json.dumps({**cpu.state(), 'numpy_v4': bool(simd.get('X86_V4')), "
    "'env': {k: __import__('os').environ.get(k) for k in cpu.PINS}}))"
)


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in cpu.PINS and k != cpu.OPT_OUT}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


def _has_avx2() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx2 " in flags.replace("\n", " ")


def test_pin_sets_what_is_unset_and_keeps_what_a_user_set():
    environ = {"MKL_CBWR": "COMPATIBLE"}
    assert cpu.pin(environ) == [name for name in ("numpy", "torch") if name in sys.modules]
    assert environ == {**cpu.PINS, "MKL_CBWR": "COMPATIBLE"}
    off = {cpu.OPT_OUT: "0"}
    assert cpu.pin(off) == [] and off == {cpu.OPT_OUT: "0"}


def test_importing_vaflow_first_pins_torch_and_numpy_to_avx2():
    pinned = _probe()
    assert pinned["cpu.pin"] == "on" and pinned["env"] == cpu.PINS
    if _has_avx2():  # every machine this project runs on; a CPU without AVX2 runs its default kernels
        assert pinned["cpu.capability"] == "AVX2"
    assert pinned["numpy_v4"] is False  # numpy's AVX-512 loops are off, whatever the CPU has


def test_the_opt_out_leaves_the_kernels_to_the_libraries():
    free = _probe(**{cpu.OPT_OUT: "0"})
    assert free["cpu.pin"] == "off" and all(v is None for v in free["env"].values())
    avx512 = " avx512f " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    assert free["cpu.capability"] == ("AVX512" if avx512 else "AVX2" if _has_avx2() else "DEFAULT")
    assert free["numpy_v4"] is avx512
