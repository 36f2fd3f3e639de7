"""The shared trainer across two "nodes" on this machine: two torchrun launches (`--nnodes=2`, one process each)
that meet by rendezvous, each node with its own output folder, as on machines that share no disk. They train what
one process trains at the same global batch, and only global rank 0 writes — both processes have LOCAL_RANK 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.launch import free_port, launch_env
from tests.train.run_toy import train_toy
from vaflow.train.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "run_toy.py"
# As in test_trainer.py: DDP sums gradients in another order than one process (observed: ≤ 2e-7 relative).
DDP_RTOL = 1e-5


def _node_command(node: int, rendezvous: str, port: int, out: Path) -> list[str]:
    """torchrun (from this interpreter) for node `node` of 2, one process on it, training 12 toy steps into `out`."""
    flags = ["--nnodes=2", f"--node-rank={node}", "--nproc-per-node=1"]
    if rendezvous == "c10d":
        # Elastic rendezvous: ranks go by sorted node address (here both 127.0.0.1: by process id), and --node-rank
        # is ignored, so either node may hold rank 0. --local-addr: the address the other node reaches this one at.
        flags += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=vaflow-test-{port}",
            "--rdzv-conf=join_timeout=60",
            "--local-addr=127.0.0.1",
        ]
    else:  # static: node 0 hosts the store and holds ranks 0 … nproc-1
        flags += ["--master-addr=127.0.0.1", f"--master-port={port}"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *flags,
        str(SCRIPT),
        "--out",
        str(out),
        "--steps",
        "12",
    ]


@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_two_nodes_match_one_process(tmp_path, one_thread, rendezvous):
    """Two one-process nodes (per-rank batch 4) follow the 1-process loss trajectory (batch 8); exactly one node —
    the one holding global rank 0 — writes the history, the final weights and the checkpoint."""
    port = free_port()
    outs = [tmp_path / f"node{node}" for node in (0, 1)]
    procs = [
        subprocess.Popen(
            _node_command(node, rendezvous, port, outs[node]),
            env=launch_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        single = train_toy(tmp_path / "one", steps=12)  # meanwhile, in this process
        logs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log

    writers = [out for out in outs if (out / "history.json").exists()]
    assert len(writers) == 1, f"history written by {writers}: only global rank 0 may write"
    (writer,) = writers
    (reader,) = [out for out in outs if out != writer]
    assert not (reader / "final.pt").exists() and not list(reader.rglob("*.pt")), (
        "the rank-1 node wrote weights"
    )
    if rendezvous == "static":
        assert writer == outs[0], "with the static rendezvous node 0 holds rank 0"

    history = json.loads((writer / "history.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, 13))
    for a, b in zip(history, single.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=DDP_RTOL), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=DDP_RTOL)
    final = torch.load(writer / "final.pt", weights_only=True)
    for name, want in single.model.state_dict().items():
        torch.testing.assert_close(final["model"][name], want, rtol=1e-5, atol=1e-6, msg=name)
    assert read_checkpoint(writer / "ckpt" / "last.pt")["world_size"] == 2
