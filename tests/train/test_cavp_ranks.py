"""CAVP under DDP: the semantic contrast's negatives are the global batch (embeddings gathered across ranks with
their gradients), so 2 processes train what 1 process trains at the same global batch; with local negatives they
would not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.launch import free_port, launch_env
from tests.train.run_cavp import TINY, synthetic_tensors, train_cavp
from vaflow.models.cavp import CAVP
from vaflow.train.cavp import CAVPObjective
from vaflow.train.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "run_cavp.py"
# The gathered rows are bitwise the 1-process rows; only the order of float sums differs (DDP's gradient all-reduce,
# convolutions over 4 clips instead of 8).
DDP_RTOL = 1e-5


# The stems' conv biases feed a GroupNorm with one channel per group (4 and 8 channels, min(8, C) groups), which
# subtracts them again: the loss does not depend on them, their gradient is float noise, and AdamW turns noise into
# lr-sized steps that differ between any two summation orders (observed: 4e-3 apart after 4 steps, every other
# weight within 6e-7). They are left out of the weight comparison; the embeddings show they change nothing.
_DEAD = {f"model.{tower}.stem.{i}.0.bias" for tower in ("video", "audio") for i in range(2)}


def _embeddings(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Clip embeddings (2, 16, D) of the 16 synthetic clips by the objective's weights `state`."""
    objective = CAVPObjective(CAVP(TINY))
    objective.load_state_dict(state)
    return torch.stack(objective.model.embed_clips(tensors["frames"], tensors["mel"]))


def _history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())["history"]


def test_one_process_objective_is_the_model_loss():
    """World size 1: the objective is `CAVP.loss` itself, bit for bit (no gather; the same windows drawn)."""
    tensors = synthetic_tensors()
    frames, mel = tensors["frames"][:8], tensors["mel"][:8]
    torch.manual_seed(0)
    model = CAVP(TINY)
    torch.manual_seed(1)
    want, want_parts = model.loss(frames, mel)
    torch.manual_seed(1)
    got, got_parts = CAVPObjective(model)(frames, mel)
    assert torch.equal(got, want)
    assert all(torch.equal(got_parts[k], want_parts[k]) for k in ("semantic", "temporal"))


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, one_thread):
    """torchrun with 2 gloo ranks (4 clips each) follows the 1-process run (8 clips) step for step, semantic and
    temporal losses and gradient norm included, and ends at the same weights. The same 2 ranks with local negatives
    (each rank contrasting its own 4 clips) do not: the gather is what makes them equal."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # torchrun, from this interpreter
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(SCRIPT),
        "--out",
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.Popen(
        cmd, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    single = train_cavp(tmp_path / "one")  # meanwhile, in this process
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out

    ddp = _history(tmp_path / "ddp" / "global")
    assert [h["step"] for h in ddp] == [1, 2, 3, 4]
    for a, b in zip(ddp, single.history, strict=True):
        for key in ("loss", "loss_semantic", "loss_temporal", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=DDP_RTOL), (key, a, b)
    final = torch.load(tmp_path / "ddp" / "global" / "final.pt", weights_only=True)["model"]
    want = single.model.state_dict()
    for name in want.keys() - _DEAD:
        torch.testing.assert_close(final[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # The dead biases aside, the two models compute the same embeddings.
    tensors = synthetic_tensors()
    with torch.no_grad():
        got = _embeddings(final, tensors)
        ref = _embeddings(want, tensors)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert read_checkpoint(tmp_path / "ddp" / "global" / "ckpt" / "last.pt")["world_size"] == 2

    # Local negatives: at step 1 (same weights, same windows) the temporal loss agrees — its negatives never cross
    # clips — but the semantic loss over 4 clips per rank is another number than over the 8 clips of the batch.
    local = _history(tmp_path / "ddp" / "local")
    first, ref = local[0], single.history[0]
    assert first["loss_temporal"] == pytest.approx(ref["loss_temporal"], rel=DDP_RTOL)
    assert abs(first["loss_semantic"] - ref["loss_semantic"]) > 1e-2 * ref["loss_semantic"], (first, ref)
    final_local = torch.load(tmp_path / "ddp" / "local" / "final.pt", weights_only=True)["model"]
    gap = max((final_local[k] - want[k]).abs().max().item() for k in want.keys() - _DEAD)
    assert gap > 1e-4, "local negatives should train other weights than the global batch"
