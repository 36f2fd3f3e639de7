"""Trainer overhead: steps/s of a small MLP through `Trainer` vs. a bare PyTorch loop on the same batches.

    python benchmarks/bench_trainer.py [--steps 300] [--widths 64 512] [--batch 64]

Compared, per model width (all on CPU, one thread per process, batches pre-built in memory):
- 1 process:  Trainer (AdamW, warm-up, clip, EMA, NaN guard, progress, final checkpoint)
              vs. bare loop (forward, backward, AdamW step)
              vs. bare loop + clip + EMA (the same maths as the Trainer, without its bookkeeping);
- 2 processes (torchrun, gloo, same global batch): Trainer vs. a bare DDP loop, both under torchrun.
Steps/s exclude the first `--warmup` steps (allocation, first-call costs); each figure is the best of `--rounds`. The Trainer's figures come from its own
logging windows (`log_every = warmup`), i.e. they include its per-step loss all-reduce, NaN checks and log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaflow.config.trainer import TrainerConfig
from vaflow.train.distributed import init_distributed  # noqa: E402
from vaflow.train.numerics import EMA, seed_everything  # noqa: E402
from vaflow.train.trainer import Trainer  # noqa: E402

N_IN = 32


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(N_IN, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, 1),
    )


def make_batches(n: int, batch: int, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1 + rank)
    return [(torch.randn(batch, N_IN, generator=g), torch.randn(batch, 1, generator=g)) for _ in range(n)]


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def cfg_for(args: argparse.Namespace) -> TrainerConfig:
    return TrainerConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-3,
        warmup_steps=10,
        log_every=args.warmup,
        checkpoint_every=10 * args.steps,  # only the final checkpoint, as at the end of a stage
    )


def bench_trainer(args: argparse.Namespace, width: int) -> float:
    """Steps/s of Trainer.fit, from its logging windows after the first."""
    seed_everything(0)
    info = init_distributed("cpu")
    cfg = cfg_for(args)
    batches = make_batches(args.steps, cfg.per_rank_batch(info.world_size), info.rank)
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(make_model(width), loss_fn, batches, cfg, tmp).fit()
    windows = [h for h in result.history if h["step"] > args.warmup]
    return sum(h["samples_per_s"] for h in windows) / len(windows) / args.batch


def bench_bare(args: argparse.Namespace, width: int, clip_ema: bool = False) -> float:
    """Steps/s of a plain loop (DDP-wrapped when launched by torchrun)."""
    from torch.nn.parallel import DistributedDataParallel

    info = init_distributed("cpu")
    model = make_model(width)
    ddp = DistributedDataParallel(model) if info.distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = EMA(model, 0.999) if clip_ema else None
    batches = make_batches(args.steps, args.batch // info.world_size, info.rank)
    t0 = 0.0
    for i, batch in enumerate(batches):
        if i == args.warmup:
            t0 = time.perf_counter()
        loss = loss_fn(ddp, batch)
        loss.backward()
        if ema is not None:
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
    return (args.steps - args.warmup) / (time.perf_counter() - t0)


def worker(args: argparse.Namespace) -> None:
    """Under torchrun: both measurements in the same 2 processes; rank 0 prints one JSON line."""
    import logging

    logging.getLogger("vaflow.train").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    out = {}
    for width in args.widths:
        runs = [(bench_trainer(args, width), bench_bare(args, width)) for _ in range(args.rounds)]
        out[width] = {"trainer": max(r[0] for r in runs), "bare_ddp": max(r[1] for r in runs)}
    if int(os.environ.get("RANK", 0)) == 0:
        print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 512])
    p.add_argument("--rounds", type=int, default=3, help="repeats per measurement; the best is reported")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import logging

    logging.getLogger("vaflow.train").setLevel(logging.WARNING)  # no progress lines in the figures' output
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
    ]
    cmd += ["--master-port", str(port), __file__, "--worker", "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--batch", str(args.batch), "--rounds", str(args.rounds)]
    cmd += ["--widths", *map(str, args.widths)]

    print(
        f"CPU, 1 thread/process, global batch {args.batch}, {args.steps} steps ({args.warmup} warm-up excluded)"
    )
    print(
        f"{'width':>6} {'params':>8} | {'1 proc: bare':>12} {'bare+clip+ema':>13} {'Trainer':>8} {'ratio':>6}",
        end="",
    )
    print(f" | {'2 procs: bare DDP':>17} {'Trainer':>8} {'ratio':>6}")
    single = {}
    for width in args.widths:  # best of `--rounds`, interleaved: robust to a busy machine
        runs = [
            (bench_bare(args, width), bench_bare(args, width, clip_ema=True), bench_trainer(args, width))
            for _ in range(args.rounds)
        ]
        single[width] = tuple(max(r[i] for r in runs) for i in range(3))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    multi = json.loads(lines[-1][len("RESULT ") :])
    for width in args.widths:
        n_params = sum(p.numel() for p in make_model(width).parameters())
        bare, bare_plus, trainer = single[width]
        m = multi[str(width)]
        print(
            f"{width:>6} {n_params:>8} | {bare:>10.0f}/s {bare_plus:>11.0f}/s {trainer:>6.0f}/s {trainer / bare:>6.2f}"
            f" | {m['bare_ddp']:>15.0f}/s {m['trainer']:>6.0f}/s {m['trainer'] / m['bare_ddp']:>6.2f}"
        )
    print("ratio = Trainer steps/s ÷ bare-loop steps/s (1.00 = no overhead)")


if __name__ == "__main__":
    main()
