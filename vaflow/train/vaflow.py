"""What the three VAFlow training stages share: their losses for the Trainer, latent statistics, fixed-draw
validation on the `val` split, and the model each flow stage starts from: a new one, the previous stage's, or an
exported one to fine-tune (`train_flow.init`, `joint_tune.init`) (paper §3.3).

Validation uses the same draws every time (a seeded generator for ε, the frame positions and the prior noise, and a
fixed grid of t at the midpoints of equal bins), so a curve moves only when the weights do and two runs compare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaflow.config.section import jsonable
from vaflow.data import pairs
from vaflow.data.pairs import SplitShards
from vaflow.hashing import weights_hash
from vaflow.models import artifacts
from vaflow.models.align_vae import AlignEncoder, AlignLossWeights, AlignVAE, AlignVAEConfig
from vaflow.models.dit import VelocityDiT, dit_config
from vaflow.models.vaflow import FlowSettings, VAFlow, latent_statistics
from vaflow.train.interface import TrainResult
from vaflow.train.numerics import seed_everything
from vaflow.train.trainer import Trainer

__all__ = [
    "FlowData",
    "FlowStart",
    "align_loss",
    "align_validation",
    "build_vaflow",
    "check_align_fits",
    "check_describes",
    "export",
    "final_metrics",
    "fit",
    "flow_loss",
    "flow_settings",
    "flow_validation",
    "load_init",
    "load_validation",
    "open_flow_data",
    "split_statistics",
    "stage2_start",
    "stage3_start",
    "tuning_settings",
    "validator",
]

_CHUNK = 64  # validation clips per forward pass


def align_loss(module: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Trainer `loss_fn` of stage 1: `module` is an AlignVAE (DDP-wrapped or not); Eq. 7 and its parts."""
    loss, parts = module(batch["feat"])
    return loss, {f"loss_{k}": float(v) for k, v in parts.items()}


def flow_loss(module: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Trainer `loss_fn` of stages 2-3: `module` is a VAFlow; Eq. 8 (stage 2) or Eq. 9 (stage 3)."""
    loss, parts = module(batch["mean"], batch["std"], batch["feat"])
    return loss, {f"loss_{k}": float(v) for k, v in parts.items()}


def split_statistics(split: SplitShards) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (D_a,) of the latent samples x_a = μ + σ·ε of a split, in one streaming pass."""
    if split.latents is None:
        raise ValueError(f"split {split.split!r} was opened without latents")
    sum_x = sum_x2 = None
    count = 0
    for sample in split.samples():
        mean = torch.from_numpy(sample["mean"]).double()  # (T_a, D_a)
        std = torch.from_numpy(sample["std"]).double()  # (T_a, D_a)
        x, x2 = mean.sum(0), (mean.square() + std.square()).sum(0)  # (D_a,)
        sum_x = x if sum_x is None else sum_x + x
        sum_x2 = x2 if sum_x2 is None else sum_x2 + x2
        count += mean.shape[0]
    return latent_statistics(sum_x, sum_x2, count)


def load_validation(split: SplitShards | None, clips: int) -> dict[str, torch.Tensor] | None:
    """The first `clips` clips of the val split as float32 tensors {"feat" [, "mean", "std"]} (memory bounded by
    `clips`), or None when there is no val split or `clips` is 0."""
    if split is None or clips == 0:
        return None
    rows: dict[str, list[torch.Tensor]] = {}
    for i, sample in enumerate(split.samples()):
        if i == clips:
            break
        for key, value in sample.items():
            if key != "id":
                rows.setdefault(key, []).append(torch.from_numpy(value).float())
    return {k: torch.stack(v) for k, v in rows.items()}


def _chunks(data: Mapping[str, torch.Tensor], device: torch.device):
    n = len(data["feat"])
    for start in range(0, n, _CHUNK):
        yield {k: v[start : start + _CHUNK].to(device) for k, v in data.items()}


def align_validation(data: Mapping[str, torch.Tensor], seed: int) -> Callable[[nn.Module], dict[str, float]]:
    """`validate(ema)` for stage 1: Eq. 7 and its parts on the val clips with fixed draws."""

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        n = 0
        for i, chunk in enumerate(_chunks(data, device)):
            g = torch.Generator(device).manual_seed(seed * 7919 + i)
            loss, parts = model(chunk["feat"], generator=g)
            b = len(chunk["feat"])
            for k, v in {"loss": loss, **parts}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * b
            n += b
        return {f"val_{k}": v / n for k, v in totals.items()}

    return validate


def flow_validation(
    data: Mapping[str, torch.Tensor], times: int, seed: int
) -> Callable[[nn.Module], dict[str, float]]:
    """`validate(ema)` for stages 2-3: the objective averaged over a fixed t grid, with fixed latent and prior
    draws and the condition always visible (no dropout): `val_loss` and its parts (`val_flow`, `val_kl`)."""
    grid = (torch.arange(times, dtype=torch.float32) + 0.5) / times  # midpoints of `times` equal bins

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        n = 0
        for i, chunk in enumerate(_chunks(data, device)):
            g = torch.Generator(device).manual_seed(seed * 7919 + i)
            mean, std, feat = chunk["mean"], chunk["std"], chunk["feat"]
            b = len(mean)
            cond = feat if model.dit.config.cross_attention else None
            for t in grid.tolist():
                eps_a = torch.randn(mean.shape, generator=g, device=device)
                eps_0 = torch.randn(mean.shape, generator=g, device=device)
                tt = torch.full((b,), t, device=device)
                loss, parts = model.loss_at(mean, std, feat, tt, eps_a, eps_0, cond)
                for k, v in {"loss": loss, **parts}.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * b / times
            n += b
        return {f"val_{k}": v / n for k, v in totals.items()}

    return validate


def validator(
    data: Mapping[str, torch.Tensor] | None, val: Any, objective: str
) -> Callable[[nn.Module], dict[str, float]] | None:
    """A stage's `validate(ema)` from its `val` section (`seed`, and `times` for the flow objective): Eq. 7 for
    `objective` "align" (stage 1), Eq. 8/9 for "flow" (stages 2-3); None when there are no val clips."""
    if data is None:
        return None
    if objective == "align":
        return align_validation(data, val.seed)
    if objective == "flow":
        return flow_validation(data, val.times, val.seed)
    raise ValueError(f"unknown validation objective {objective!r}: 'align' or 'flow'")


def flow_settings(flow_cfg: Any, kl_weight: float = 0.0, tune_encoder: bool = False) -> FlowSettings:
    """The training settings of the `flow` params section (stage 2: no KL, encoder frozen)."""
    return FlowSettings(
        prior=flow_cfg.prior,
        objective=flow_cfg.objective,
        cond_dropout=flow_cfg.cond_dropout,
        time_sampling=flow_cfg.time_sampling,
        time_loc=flow_cfg.time_loc,
        time_scale=flow_cfg.time_scale,
        kl_weight=kl_weight,
        tune_encoder=tune_encoder,
    )


def tuning_settings(stored: FlowSettings, kl_weight: float) -> FlowSettings:
    """Stage 3's settings for a model trained under `stored`: the video prior's encoder learns with Eq. 9's
    λ_KL = `kl_weight`; a Gaussian-prior model has no encoder, so no KL."""
    video = stored.prior == "video"
    return dataclasses.replace(stored, kl_weight=kl_weight if video else 0.0, tune_encoder=video)


def build_vaflow(
    flow_cfg: Any,
    align: AlignVAE | None,
    feature_dim: int,
    latent_dim: int,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    kl_weight: float = 0.0,
    tune_encoder: bool = False,
) -> VAFlow:
    """A fresh VAFlow for stage 2 from the `flow` params section and the trained alignment VAE (its encoder only;
    the decoder is dropped, §3.3). The Gaussian prior keeps no encoder."""
    settings = flow_settings(flow_cfg, kl_weight, tune_encoder)
    encoder: AlignEncoder | None = None
    if flow_cfg.prior == "video":
        if align is None:
            raise ValueError("prior 'video' needs the trained alignment VAE")
        encoder = align.encoder
    dit = VelocityDiT(dit_config(flow_cfg.size, latent_dim, feature_dim, flow_cfg.cross_attention))
    return VAFlow(encoder, dit, latent_mean, latent_std, settings)


@dataclass
class FlowData:
    """The paired data a flow stage trains on, with the identities its exported model records."""

    features: dict[str, Any]  # visual-encoder identity (artifacts.feature_identity)
    wavevae: dict[str, Any]  # WaveVAE identity (artifacts.wavevae_identity)
    train: SplitShards
    val: dict[str, torch.Tensor] | None
    latent_length: int  # T_a
    latent_dim: int  # D_a
    feature_length: int  # T_v
    feature_dim: int  # D_v


def open_flow_data(
    features: str | Path, latents: str | Path, val_clips: int, ids: Collection[str] | None = None
) -> FlowData:
    """Open the train split (paired) and the first `val_clips` val clips, of the clips `ids` only when given; every
    clip's shapes are checked against the latent spec's (T_a, D_a) and the first feature clip's (T_v, D_v)."""
    f_spec, a_spec = pairs.read_spec(features, pairs.FEATURES), pairs.read_spec(latents, pairs.LATENTS)
    t_a, d_a = int(a_spec["latent_length"]), int(a_spec["latent_dim"])
    expect: dict[str, tuple[int, ...]] = {"mean": (t_a, d_a), "std": (t_a, d_a)}
    train = pairs.open_split(features, "train", latents, expect, ids)
    t_v, d_v = train.shapes["feat"]
    expect["feat"] = (t_v, d_v)
    val = load_validation(pairs.optional_split(features, "val", latents, expect, ids), val_clips)
    return FlowData(
        artifacts.feature_identity(f_spec), artifacts.wavevae_identity(a_spec), train, val, t_a, d_a, t_v, d_v
    )


def check_align_fits(align: AlignVAE, data: FlowData, where: Path) -> None:
    """The alignment VAE's shapes must be the data's: x_v (T_v, D_v) in, x_v^AE (T_a, D_a) out."""
    c = align.config
    got = (c.feature_length, c.feature_dim, c.latent_length, c.latent_dim)
    want = (data.feature_length, data.feature_dim, data.latent_length, data.latent_dim)
    if got != want:
        raise artifacts.ModelMismatchError(
            f"{where}: the alignment VAE maps (T_v, D_v) = {got[:2]} to (T_a, D_a) = {got[2:]}, but the shards hold "
            f"features {want[:2]} and latents {want[2:]}: rerun train_align on the current features (dvc repro)"
        )


# ----------------------------------------------------------------------------------------------------------------
# Where stages 2 and 3 start: a new model, the previous stage's, or an exported one to fine-tune (`init`)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FlowStart:
    """The model a flow stage trains from, the training history its export continues, and the identity of its
    starting weights (a key of the stage's checkpoint run: other weights never resume this run)."""

    model: VAFlow
    trained: list[dict[str, Any]]  # the starting model's card's `trained` ([] for a new model)
    origin: dict[str, str]  # {"align" | "flow_model" | "init": weights hash}


def check_describes(card: Mapping[str, Any], flow_cfg: Any, data: FlowData, where: Path) -> None:
    """The `flow` params section must describe the exported model of `card` (prior, objective, the DiT its size
    and cross-attention build at the data's D_a and D_v): ModelMismatchError naming both sides and the keys to
    set. The section is logged with the stage's run (the paper-style tables group runs by it) and names its
    checkpoints, so it must not contradict the model."""
    stored = card["settings"]
    got = {"prior": stored["prior"], "objective": stored["objective"], "dit": card["dit"]}
    dit = dit_config(flow_cfg.size, data.latent_dim, data.feature_dim, flow_cfg.cross_attention)
    want = {"prior": flow_cfg.prior, "objective": flow_cfg.objective, "dit": dit.to_dict()}
    got, want = jsonable(got), jsonable(want)
    if got != want:
        keys = sorted(k for k in got if got[k] != want[k])
        raise artifacts.ModelMismatchError(
            f"{where} is a model with {', '.join(f'{k} {got[k]}' for k in keys)} but the flow section builds "
            f"{', '.join(f'{k} {want[k]}' for k in keys)}: set flow.prior / flow.objective / flow.size / "
            f"flow.cross_attention to the exported model's (the preset it was trained with)"
        )


def load_init(
    init: str | Path,
    key: str,
    data: FlowData,
    flow_cfg: Any,
    settings: Callable[[FlowSettings], FlowSettings],
) -> tuple[VAFlow, dict[str, Any]]:
    """The exported VAFlow folder `init` (the `key` param) to fine-tune on `data`, and its card; trained under
    `settings(its stored settings)`. Checked before anything trains: its card names the data's visual encoder and
    WaveVAE (else ModelMismatchError naming both identities) and `flow_cfg` describes it (`check_describes`).
    It keeps its own latent statistics: its weights (estimator output, prior) live in that normalised space."""
    where = Path(init)
    if not (where / artifacts.FLOW.card).is_file():
        raise artifacts.MissingModelFileError(
            f"{key}: {where} holds no {artifacts.FLOW.card}; give a model folder that train_flow or joint_tune "
            f"exported (vaflow.safetensors + vaflow.json, e.g. data/models/vaflow of a finished run)"
        )
    card = artifacts.read_card(where, artifacts.FLOW)
    artifacts.check_identity("visual features", card["features"], data.features, where)
    artifacts.check_identity("WaveVAE", card["wavevae"], data.wavevae, where)
    check_describes(card, flow_cfg, data, where)
    chosen = settings(FlowSettings(**card["settings"]))
    return artifacts.load_vaflow(where, data.features, data.wavevae, chosen)


def _origin(model_dir: str | Path, folder: artifacts.Folder, key: str) -> dict[str, str]:
    return {key: weights_hash(Path(model_dir) / folder.weights)}


def stage2_start(flow_cfg: Any, cfg: Any, data: FlowData, align_dir: str | Path) -> FlowStart:
    """Stage 2's model, from a `train_flow` section `cfg`: `cfg.init`'s exported model (estimator, alignment-VAE
    encoder and latent statistics; `align_dir` is not read) under the `flow` section's settings, or else a new
    estimator (seeded by `cfg.trainer.seed`) on the frozen encoder of train_align's model in `align_dir`."""
    if cfg.init:
        model, card = load_init(
            cfg.init, "train_flow.init", data, flow_cfg, lambda _: flow_settings(flow_cfg)
        )
        parts = "estimator, " + ("alignment-VAE encoder (frozen), " if model.encoder is not None else "")
        print(f"train_flow.init: fine-tuning {cfg.init} (trained by {_stages(card)}): its {parts}latent "
              f"statistics, under the flow section's settings with a fresh optimiser for {cfg.trainer.steps} steps; "
              f"train_align's {align_dir} is not used")  # fmt: skip
        return FlowStart(model, list(card["trained"]), _origin(cfg.init, artifacts.FLOW, "init"))
    align, _ = artifacts.load_align_vae(align_dir, data.features)
    check_align_fits(align, data, Path(align_dir))
    mean, std = split_statistics(data.train)
    seed_everything(cfg.trainer.seed)  # before building the model: the same initial weights every run
    model = build_vaflow(flow_cfg, align, data.feature_dim, data.latent_dim, mean, std)
    prior = f"the frozen encoder of train_align's {align_dir}" if model.encoder is not None else "N(0, I)"
    print(f"train_flow: a new estimator (seed {cfg.trainer.seed}) from {prior}")
    return FlowStart(model, [], _origin(align_dir, artifacts.ALIGN, "align"))


def stage3_start(flow_cfg: Any, cfg: Any, data: FlowData, flow_dir: str | Path) -> FlowStart:
    """Stage 3's model, from a `joint_tune` section `cfg`: `cfg.init`'s exported model (`flow_dir` is not read),
    or else train_flow's model in `flow_dir`; each under its own stored settings with Eq. 9's KL added."""
    if cfg.init:
        model, card = load_init(cfg.init, "joint_tune.init", data, flow_cfg,
                                lambda stored: tuning_settings(stored, cfg.kl_weight))  # fmt: skip
        print(f"joint_tune.init: tuning {cfg.init} (trained by {_stages(card)}) with a fresh optimiser for "
              f"{cfg.trainer.steps} steps instead of train_flow's {flow_dir}, which is not used")  # fmt: skip
        return FlowStart(model, list(card["trained"]), _origin(cfg.init, artifacts.FLOW, "init"))
    stored = FlowSettings(**artifacts.read_card(flow_dir, artifacts.FLOW)["settings"])
    model, card = artifacts.load_vaflow(
        flow_dir, data.features, data.wavevae, tuning_settings(stored, cfg.kl_weight)
    )
    return FlowStart(model, list(card["trained"]), _origin(flow_dir, artifacts.FLOW, "flow_model"))


def _stages(card: Mapping[str, Any]) -> str:
    """The training history of a VAFlow card in a few words: `train_flow 1200 steps, joint_tune 300 steps`."""
    done = [f"{t.get('stage')} {t.get('steps')} steps" for t in card.get("trained", [])]
    return ", ".join(done) or "no recorded stage"


def fit(
    model: VAFlow,
    data: FlowData,
    cfg: Any,
    compile_dit: bool,
    checkpoints: Path,
    tracker: Any,
    sections: Mapping[str, Any],
) -> TrainResult | None:
    """Train `model` on `data` with a stage section `cfg` (`trainer`, `val`) through the shared Trainer; returns
    the result on rank 0 and None on the others."""
    trainer = Trainer(
        model,
        flow_loss,
        lambda spec: pairs.ClipStream(data.train, spec.batch_size, spec.rank, spec.world_size, spec.seed),
        cfg.trainer,
        checkpoints,
        tracker,
        stage_config=sections,
        validate=validator(data.val, cfg.val, "flow"),
        validate_every=cfg.val.every,
    )
    if compile_dit:
        trainer.model.dit.compile()  # in place: parameter names (and so checkpoints and exports) are unchanged
    result = trainer.fit()
    return result if trainer.dist.is_main else None


def final_metrics(
    result: TrainResult, validate: Callable[[nn.Module], dict[str, float]] | None
) -> dict[str, float]:
    """The last logging window's training losses (`train_…`) and the validation of the exported EMA weights
    (`val_…`), computed here rather than read from this run's log: a run that resumed a finished checkpoint
    logged nothing, and its metrics must still be the complete ones."""
    final = {f"train_{k}": v for k, v in result.losses.items()}
    if validate is not None:
        final.update(validate(result.ema))
    return final


def export(
    result: TrainResult, data: FlowData, val: Any, out: str | Path, trained: list[dict], tracker: Any
) -> None:
    """Write the EMA model (the one evaluated and shipped), log final metrics (`val`: the stage's validation
    settings) and the model card."""
    out = Path(out)
    model = result.ema
    artifacts.save_vaflow(model, out, data.latent_length, data.features, data.wavevae, trained)
    final = final_metrics(result, validator(data.val, val, "flow"))
    final["params_dit"] = sum(p.numel() for p in model.dit.parameters())
    tracker.log_final(final)
    tracker.log_artifact(out / artifacts.FLOW.card)
    print(f"{out}: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))


def align_config(
    cfg: Any, feature_shape: tuple[int, int], latent_dim: int, latent_length: int
) -> AlignVAEConfig:
    """The alignment VAE of a `train_align` section `cfg` for features (T_v, D_v) and latents (T_a, D_a)."""
    t_v, d_v = feature_shape
    return AlignVAEConfig(feature_dim=d_v, feature_length=t_v, latent_dim=latent_dim, latent_length=latent_length,
                          channels=cfg.channels, blocks=cfg.blocks, kernel=cfg.kernel)  # fmt: skip


def align_weights(cfg: Any) -> AlignLossWeights:
    """Eq. 4-7's loss weights, clip length and temperature of a `train_align` section `cfg`."""
    return AlignLossWeights(cfg.kl_weight, cfg.rec_weight, cfg.con_weight, cfg.clip_frames, cfg.temperature)
