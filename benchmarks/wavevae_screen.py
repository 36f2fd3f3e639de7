"""Screening WaveVAE variants fast: architectures and optimiser settings the params cannot express, trained
in-process for a few hundred steps and judged by the `audio_vae` stage's figures.

    OMP_NUM_THREADS=1 python benchmarks/wavevae_screen.py --steps 300 --arch '{"strides": [4, 4, 4, 4]}' --name s4444

`benchmarks/wavevae_recipe.py` runs the stage itself (the trainer, its checkpoints, MLflow) with params overrides;
this script trades that fidelity for reach: `--arch` overrides WaveVAEConfig fields of the `small` size (JSON),
`--cfg` AudioVAEConfig fields (loss weights, segment), and the optimiser, the init of the residual branches and of
Snake's α, and a learning-rate multiplier for the weight-norm gains are flags; `--istft` trains the frame-rate
STFT/iSTFT VAE of `istft_vae.py` in the Oobleck's place (the config's hop and latent width), `--bands M` runs the
`--arch` Oobleck on M pseudo-QMF sub-bands (`pqmf_vae.py`), `--adv` adds the multi-resolution STFT discriminators
of `adversarial_vae.py` for the later steps, `--focus` draws a share of the crops by their level. The loop is the
trainer's minus its machinery: AdamW (decay as `trainer.decays`), linear warm-up then cosine to 0 (the stage stops
at 0.1·lr) or `--schedule constant`, gradient clipping only with `--clip`, EMA weights judged. Figures: test mel L1
(also per class), loudness error, oracle pitch correlation and onset F1 (vaflow.eval.reconstruction) on the test
split of `--prepared` (a default run's `data/prepared`), one JSON line printed and appended to `--out`.
Deterministic per thread count.

On another machine (a GPU, no ffmpeg): `--save-bank FILE` writes the decoded clips and ground truths here, `--bank
FILE` reads them there, `--device cuda` trains and judges on the GPU, `--eval-at 2400,4800` judges the EMA weights
along the way (one JSON line each) and `--max-seconds` bounds the training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import adversarial_vae
import istft_vae
import pqmf_vae
import torch

from vaflow import config
from vaflow.config import AudioVAEConfig
from vaflow.config.sizes import wavevae_small
from vaflow.data.prepare import load_manifest
from vaflow.eval import reconstruction
from vaflow.eval.oracle import read_truth, truth_dir
from vaflow.models.wavevae import ResidualUnit, SnakeBeta, build
from vaflow.train import wavevae as training
from vaflow.train.numerics import EMA, decays

KEYS = ("test_mel_l1", "test_loudness_db", "oracle_pitch_corr", "oracle_onset_f1", "test_silence_dbfs")


def param_groups(model: torch.nn.Module, weight_decay: float, gain_lr: float) -> list[dict]:
    """The trainer's groups (decay on matrices only) with the weight-norm gains and Snake's α, β apart; "scale"
    multiplies the group's lr."""
    groups = {k: [] for k in ("decay", "plain", "snake", "gain")}
    for name, p in model.named_parameters():
        if name.endswith(("alpha", "beta")):
            groups["snake"].append(p)
        elif name.endswith("weight_g"):
            groups["gain"].append(p)
        else:
            groups["decay" if decays(name, p) else "plain"].append(p)
    return [
        {"params": groups["decay"], "weight_decay": weight_decay, "scale": 1.0},
        {"params": groups["plain"], "weight_decay": 0.0, "scale": 1.0},
        {"params": groups["snake"], "weight_decay": 0.0, "scale": 1.0},
        {"params": groups["gain"], "weight_decay": 0.0, "scale": gain_lr},
    ]


@torch.no_grad()
def reinit(vae: torch.nn.Module, res_init: float, snake_alpha: float) -> None:
    """Scale every residual branch's output gain by `res_init` (0: each unit starts as the identity) and start
    every Snake α at `snake_alpha` (1: the default)."""
    for m in vae.modules():
        if isinstance(m, ResidualUnit) and res_init != 1.0:
            m.layers[3].weight_g.mul_(res_init)
        elif isinstance(m, SnakeBeta) and snake_alpha != 1.0:
            m.alpha.fill_(math.log(snake_alpha))


def focused(batches, audio: torch.Tensor, segment: int, share: float, seed: int, stride: int = 64):
    """The crop stream with `share` of each batch's crops replaced by crops drawn in proportion to their RMS (starts
    every `stride` samples, any clip): events and tones are seen more often than the noise floor between them."""
    cum = torch.nn.functional.pad(audio.double().pow(2).cumsum(1), (1, 0))  # (N, n + 1)
    starts = torch.arange(0, audio.shape[1] - segment + 1, stride)  # (S,)
    rms = ((cum[:, starts + segment] - cum[:, starts]) / segment).sqrt().float()  # (N, S)
    g = torch.Generator().manual_seed(seed + 7)
    offsets = torch.arange(segment)
    for batch in batches:
        k = round(share * len(batch))
        pick = torch.multinomial(rms.flatten(), k, replacement=True, generator=g)  # (k,)
        clip, start = pick // rms.shape[1], starts[pick % rms.shape[1]]
        batch = batch.clone()
        batch[:k] = audio[clip[:, None], start[:, None] + offsets]
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="")
    parser.add_argument("--params", default="params.yaml", help="its `clip` section cuts the clips")
    parser.add_argument("--prepared", default="data/prepared", help="a default run's prepared data")
    parser.add_argument("--arch", default="{}", help="WaveVAEConfig overrides of the small size (JSON)")
    parser.add_argument("--cfg", default="{}", help="AudioVAEConfig overrides, e.g. loss weights (JSON)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--betas", default="0.9,0.999")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--schedule", choices=("cosine", "constant"), default="cosine", help="after the warm-up"
    )
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=0.0, help="max gradient norm (0: none)")
    parser.add_argument("--gain-lr", type=float, default=1.0, help="lr multiplier of the weight-norm gains")
    parser.add_argument("--res-init", type=float, default=1.0, help="initial scale of the residual branches")
    parser.add_argument("--snake-alpha", type=float, default=1.0, help="initial Snake α")
    parser.add_argument(
        "--istft",
        default=None,
        help="train istft_vae.ISTFTVAE instead, with these ISTFTOptions (JSON, '{}': defaults)",
    )
    parser.add_argument(
        "--bands",
        type=int,
        default=1,
        help="train pqmf_vae.SubbandVAE: the --arch Oobleck on this many PQMF bands (its strides give hop / bands)",
    )
    parser.add_argument(
        "--adv",
        default=None,
        help="add adversarial_vae's discriminators from AdvOptions.start on, with these AdvOptions (JSON)",
    )
    parser.add_argument(
        "--focus", type=float, default=0.0, help="share of crops drawn in proportion to their RMS"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to train and judge (cpu, cuda)")
    parser.add_argument(
        "--eval-at", default="", help="also judge the EMA weights after these steps (1200,2400)"
    )
    parser.add_argument("--max-seconds", type=float, default=math.inf, help="stop training after this long")
    parser.add_argument(
        "--bank", default="", help="read the decoded clips from this file instead of --prepared"
    )
    parser.add_argument("--save-bank", default="", help="write the decoded clips of --prepared to this file")
    parser.add_argument("--out", default="", help="a JSONL file to append the result to")
    args = parser.parse_args()

    if args.bands < 1:
        parser.error(f"--bands must be ≥ 1, got {args.bands}")
    if args.bands > 1 and args.istft is not None:
        parser.error("--bands splits the Oobleck's input into sub-bands; it does not apply to --istft")
    clip = config.load(args.params).clip
    vae_config = dataclasses.replace(wavevae_small(), **json.loads(args.arch))
    hop = args.bands * vae_config.hop
    cfg = AudioVAEConfig(**json.loads(args.cfg))
    data = load_data(args, clip, hop)
    train_audio, test_audio, test_labels, truths = data["train"], data["test"], data["labels"], data["truths"]
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    segment = training.segment_samples(cfg.segment, clip.sample_rate, hop, train_audio.shape[1])
    if args.bands > 1:
        vae = training.narrow_posterior(pqmf_vae.SubbandVAE(vae_config, args.bands))
    elif args.istft is None:
        vae = training.narrow_posterior(build(vae_config))
    else:
        vae = istft_vae.narrow_posterior(
            istft_vae.ISTFTVAE(vae_config, istft_vae.ISTFTOptions(**json.loads(args.istft)))
        )
    model = training.WaveVAELoss(vae, cfg, segment).to(device)
    reinit(model.vae, args.res_init, args.snake_alpha)
    betas = tuple(float(b) for b in args.betas.split(","))
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay, args.gain_lr), lr=args.lr, betas=betas
    )
    ema = EMA(model, args.ema)

    def lr_factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        if args.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))

    batches = iter(training.CropStream(train_audio, args.batch, segment, seed=args.seed))
    if args.focus:
        batches = focused(batches, train_audio, segment, args.focus, args.seed)
    mean_spectrum = reconstruction.mean_log_mel(train_audio, clip.sample_rate)

    judging_s = 0.0  # seconds spent judging, left out of train_s

    def judge(steps: int, train_s: float) -> None:
        """Print (and append to --out) the figures of the EMA weights after `steps` steps."""
        nonlocal judging_s
        began = time.perf_counter()
        vae = ema.module.vae.eval()
        figures = reconstruction.evaluate_reconstruction(
            vae, test_audio, mean_spectrum, test_labels, truths, None, 8, 8
        )
        train_s -= judging_s
        result = {"name": args.name, "train_s": round(train_s, 1), "steps": steps, "batch": args.batch}
        if args.istft is not None:
            result["magnitude_kept"] = round(vae.magnitude_kept(test_audio[:16].to(device)), 3)
        result |= {k: round(figures[k], 4) for k in KEYS if k in figures}
        result |= {
            k: round(v, 3) for k, v in figures.items() if k.startswith(("test_mel_l1_", "test_loudness_db_"))
        }
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result | {"argv": sys.argv[1:]}) + "\n")
        vae.train()
        judging_s += time.perf_counter() - began

    adversary, seen = None, {}
    if args.adv is not None:
        adversary = adversarial_vae.Adversary(adversarial_vae.AdvOptions(**json.loads(args.adv))).to(device)
        # The WaveVAE's input and reconstruction (B, 1, N) of each step, for the discriminators.
        model.vae.register_forward_hook(
            lambda _, inputs, out: seen.update(real=inputs[0], fake=out.reconstruction)
        )

    eval_at = {int(s) for s in args.eval_at.split(",") if s}
    start, step = time.perf_counter(), 0
    for step in range(args.steps):
        if time.perf_counter() - start - judging_s > args.max_seconds:
            print(f"stopped at step {step}: --max-seconds {args.max_seconds} reached", file=sys.stderr)
            break
        batch = next(batches, None)
        if batch is None:  # a new epoch: the stream of the next seed
            batches = iter(training.CropStream(train_audio, args.batch, segment, seed=args.seed + step))
            if args.focus:
                batches = focused(batches, train_audio, segment, args.focus, args.seed + step)
            batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step) * group["scale"]
        loss, parts = model(batch.to(device))
        if getattr(model.vae, "aux_loss", None) is not None:  # istft_vae's spectral supervision
            loss, parts = loss + model.vae.aux_loss, parts | {"aux": model.vae.aux_loss.detach()}
        adversarial = adversary is not None and step >= adversary.opts.start
        if adversarial:
            real, fake = seen["real"][:, 0], seen["fake"][:, 0]  # (B, N)
            g_loss, g_parts = adversary.generator_loss(real, fake)
            loss, parts = loss + g_loss, parts | g_parts
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        ema.update(model)
        if adversarial:
            parts["disc"] = adversary.discriminator_step(real, fake)
        if step % 100 == 0:
            shown = {k: round(float(v), 3) for k, v in parts.items()}
            print(
                f"step {step} loss {float(loss.detach()):.3f} {shown} {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
        if step + 1 in eval_at and step + 1 < args.steps:
            judge(step + 1, time.perf_counter() - start)
    else:
        step = args.steps
    judge(step, time.perf_counter() - start)


def load_data(args: argparse.Namespace, clip: config.ClipConfig, hop: int) -> dict:
    """Train audio (N, n), test audio (M, n), test labels and ground truths: from `--bank` (a file `--save-bank`
    wrote, for a machine without ffmpeg or the prepared folder), else decoded from `--prepared`."""
    if args.bank:
        return torch.load(args.bank, weights_only=False)  # a file this script wrote
    prepared = Path(args.prepared)
    manifest = load_manifest(prepared / "manifest.csv")
    train = training.load_bank(manifest[manifest["split"] == "train"], clip, hop, progress=False)
    test_rows = manifest[manifest["split"] == "test"]
    test = training.load_bank(test_rows, clip, hop, progress=False)
    labels = dict(zip(test_rows["id"], test_rows["label"].astype(str), strict=True))
    folder = truth_dir(prepared)
    data = {
        "train": train.audio,
        "test": test.audio,
        "labels": [labels[c] for c in test.ids],
        "truths": [read_truth(folder, c) for c in test.ids] if folder is not None else None,
    }
    if args.save_bank:
        torch.save(data, args.save_bank)
    return data


if __name__ == "__main__":
    main()
