"""Generation speed: seconds to turn one clip's visual features into a waveform, split into the alignment-VAE
encoder (x_v → x_0), the flow (the guided Euler solve, paper Eq. 10) and the WaveVAE decoder, at 8 and 25 Euler
steps, with the real-time factor (wall-clock seconds per second of audio: below 1 is faster than real time).

    python benchmarks/bench_sample.py [--presets cpu paper] [--steps 8 25] [--cfg 1.0] [--batch 1]
                                      [--device cpu|cuda] [--repeats 3] [--threads N]

Presets: `cpu` is the embedded default (DiT `small`, WaveVAE `small`: 2 s at 16 kHz, x_v (8, 64), x_a (125, 16));
`paper` is the paper's setup (DiT `dit_s`, the 142M model, and Stable Audio Open's VAE: 10 s of 44.1 kHz stereo,
x_v = CLIP at 10 fps (100, 768), x_a (215, 64)). γ = 1.0, the `sample` stage's default, makes each function
evaluation one batched call of 2·batch rows; `--cfg 0` times the plain conditional field. With `--batch B` the
figures are per clip (the batch's time / B). Weights are random: speed does not depend on their values. Each part
is the best of `--repeats` timed calls after one warm-up (bench_flow's `_time`).
"""

from __future__ import annotations

import argparse

import torch
from bench_flow import _time, build

from vaflow import flow
from vaflow.models.wavevae import build as build_wavevae

# preset -> (DiT size, WaveVAE size); the DiT size picks bench_flow's shapes (`small`: cpu, `dit_s`: paper).
PRESETS = {"cpu": ("small", "small"), "paper": ("dit_s", "sao")}


@torch.inference_mode()
def bench(
    preset: str, steps: list[int], cfg: float, batch: int, device: torch.device, repeats: int
) -> list[dict]:
    """One row per step count: per-clip seconds of each part, their sum, the audio's length and the RTF."""
    dit_size, vae_size = PRESETS[preset]
    model, (t_a, d_a, t_v, d_v) = build(dit_size, device)
    model.eval()
    vae = build_wavevae(vae_size, device).eval()
    if vae.latent_dim != d_a:
        raise SystemExit(
            f"preset {preset}: WaveVAE {vae_size} has {vae.latent_dim} latent channels, the flow {d_a}"
        )
    bf16 = device.type == "cuda"
    x_v = torch.randn(batch, t_v, d_v, device=device)
    eps = torch.randn(batch, t_a, d_a, device=device)
    x_0 = model.draw_prior(x_v, eps.shape, eps=eps)  # (B, T_a, D_a)
    audio_s = t_a * vae.hop / vae.config.sample_rate

    def encoder():
        return model.draw_prior(x_v, eps.shape, eps=eps)

    def decoder():
        return vae.decode(x_0.transpose(1, 2))  # (B, D_a, T_a) -> (B, C, T_a·hop)

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        t_enc = _time(encoder, repeats, device) / batch
        t_dec = _time(decoder, repeats, device) / batch
        rows = []
        for n in steps:

            def solve(n=n):
                return flow.sample(model.velocity, x_0, cond=x_v, solver="euler", steps=n, cfg=cfg)

            t_flow = _time(solve, repeats, device) / batch
            total = t_enc + t_flow + t_dec
            rows.append({
                "preset": preset, "euler_steps": n, "cfg": cfg, "batch": batch, "encoder_s": t_enc,
                "flow_s": t_flow, "decoder_s": t_dec, "total_s": total, "audio_s": audio_s, "RTF": total / audio_s,
                "flow_share": t_flow / total, "decoder_share": t_dec / total,
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["cpu"])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 25], help="Euler steps (NFE) timed")
    parser.add_argument("--cfg", type=float, default=1.0, help="γ of Eq. 10 (0: one model call per NFE)")
    parser.add_argument(
        "--batch", type=int, default=1, help="clips generated together (figures are per clip)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for preset in args.presets:
        for row in bench(preset, args.steps, args.cfg, args.batch, device, args.repeats):
            print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
