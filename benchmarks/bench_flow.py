"""VAFlow speed: training samples/s and achieved FLOP/s against the machine's measured matmul FLOP/s, and sampling
seconds per function evaluation (NFE), per DiT size.

    python benchmarks/bench_flow.py [--sizes small dit_s] [--device cpu|cuda] [--batch 8] [--repeats 3] [--threads N]
                                    [--nfe-batches 1 32] [--peak-tflops 989]  # GPU: the card's dense bf16 peak

Shapes: `small` at the embedded default's (T_a, D_a) = (125, 16), (T_v, D_v) = (8, 64); the paper sizes at the
paper's 10 s clips: SAO latents (215, 64) and CLIP ViT-L/14 features at 10 fps (100, 768). A training step is
VAFlow's whole objective (video prior from the alignment-VAE encoder, Eq. 8) forward + backward + AdamW; its FLOPs
are counted by torch's FlopCounterMode on one step. On CUDA the step runs under bf16 autocast with SDPA's flash
kernels, as the trainer does. Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vaflow.models.align_vae import AlignVAE, AlignVAEConfig
from vaflow.models.dit import VelocityDiT, dit_config
from vaflow.models.vaflow import FlowSettings, VAFlow

# (T_a, D_a, T_v, D_v) per size family.
SHAPES = {"cpu": (125, 16, 8, 64), "paper": (215, 64, 100, 768)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: torch.device) -> float:
    """Best wall-clock seconds of fn() over `repeats` calls after one warm-up (others only ever add time)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """Measured FLOP/s of an n×n matmul: the practical peak the model's FLOP/s is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _time(lambda: a @ b, repeats, device)


def build(size: str, device: torch.device) -> tuple[VAFlow, tuple[int, int, int, int]]:
    t_a, d_a, t_v, d_v = SHAPES["cpu" if size in ("tiny", "small") else "paper"]
    torch.manual_seed(0)
    align = AlignVAE(AlignVAEConfig(d_v, t_v, d_a, t_a))
    model = VAFlow(align.encoder, VelocityDiT(dit_config(size, d_a, d_v)), torch.zeros(d_a), torch.ones(d_a),
                   FlowSettings())  # fmt: skip
    return model.to(device), (t_a, d_a, t_v, d_v)


def bench(
    size: str, device: torch.device, batch: int, repeats: int, peak: float | None, nfe_batches: list[int]
) -> dict:
    model, (t_a, d_a, t_v, d_v) = build(size, device)
    mean = torch.randn(batch, t_a, d_a, device=device)
    std = torch.full_like(mean, 0.1)
    x_v = torch.randn(batch, t_v, d_v, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(mean, std, x_v)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    t_step = _time(step, repeats, device)
    matmul = matmul_flops(device, torch.bfloat16 if bf16 else torch.float32)
    achieved = flops / t_step
    out = {
        "size": size,
        "dit_M": sum(p.numel() for p in model.dit.parameters()) / 1e6,
        "batch": batch,
        "samples_s": batch / t_step,
        "GFLOP_step": flops / 1e9,
        "achieved_TFLOPs": achieved / 1e12,
        "matmul_TFLOPs": matmul / 1e12,
        "of_matmul": achieved / matmul,
    }
    if peak:
        out["MFU"] = achieved / (peak * 1e12)
    model.eval()
    for b in nfe_batches:
        x = torch.randn(b, t_a, d_a, device=device)
        t = torch.full((b,), 0.5, device=device)
        c = torch.randn(b, t_v, d_v, device=device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out[f"s_per_NFE_b{b}"] = _time(lambda x=x, t=t, c=c: model.velocity(x, t, c), repeats, device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["small", "dit_s"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--nfe-batches", type=int, nargs="+", default=[1, 32], help="batches timed per NFE")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s, for MFU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for size in args.sizes:
        row = bench(size, device, args.batch, args.repeats, args.peak_tflops, args.nfe_batches)
        print(
            "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
