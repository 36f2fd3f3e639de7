"""WaveVAE speed: encode throughput and decode real-time factor, per size, with random weights.

    python benchmarks/bench_wavevae.py [--sizes small sao] [--seconds 2] [--device cpu] [--repeats 3] [--threads N]

Encode throughput is audio seconds encoded per wall-clock second (higher is faster); the decode real-time
factor is wall-clock seconds per audio second decoded (below 1 is faster than real time). Weights are random:
speed does not depend on their values. One warm-up call precedes the timed ones.
"""

from __future__ import annotations

import argparse
import time

import torch

from vaflow.models.wavevae import SIZES, build


def _time(fn, repeats: int, device: torch.device) -> float:
    """Best (minimum) wall-clock seconds of fn() over `repeats` calls, after one warm-up call.

    The minimum, not the mean, because on a shared machine other processes only ever add time.
    """
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(size: str, seconds: float, device: torch.device, repeats: int, batch: int) -> dict:
    """Encode/decode timings of one size on `seconds` of audio per item."""
    config = SIZES[size]
    torch.manual_seed(0)
    model = build(size).to(device).eval()
    n = int(seconds * config.sample_rate) // config.hop * config.hop  # whole latent frames
    audio = torch.randn(batch, config.audio_channels, n, device=device).clamp(-1, 1)
    audio_seconds = batch * n / config.sample_rate
    with torch.inference_mode():
        z = model.encode(audio).mean
        t_encode = _time(lambda: model.encode(audio), repeats, device)
        t_decode = _time(lambda: model.decode(z), repeats, device)
    return {
        "size": size,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "rate": config.sample_rate,
        "ch": config.audio_channels,
        "audio_s": audio_seconds,
        "latent": tuple(z.shape),
        "encode_s": t_encode,
        "encode_x_realtime": audio_seconds / t_encode,
        "decode_s": t_decode,
        "decode_rtf": t_decode / audio_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["small", "sao"], choices=sorted(SIZES))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}"
    )
    header = (
        f"{'size':>6} {'params':>8} {'rate':>6} {'ch':>2} {'audio s':>7} {'latent':>14} "
        f"{'encode s':>9} {'enc ×RT':>8} {'decode s':>9} {'dec RTF':>8}"
    )
    print(header)
    for size in args.sizes:
        r = bench(size, args.seconds, device, args.repeats, args.batch)
        print(
            f"{r['size']:>6} {r['params_M']:>7.2f}M {r['rate']:>6} {r['ch']:>2} {r['audio_s']:>7.2f} "
            f"{str(r['latent']):>14} {r['encode_s']:>9.3f} {r['encode_x_realtime']:>8.1f} "
            f"{r['decode_s']:>9.3f} {r['decode_rtf']:>8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
