"""The one training loop every stage uses: DDP, autocast, AdamW + schedule, clipping, accumulation, EMA,
atomic checkpoints with exact resume, a NaN/Inf guard, progress and step metrics (DESIGN §7-§9).

In full: docs/library.md, `vaflow.train.trainer`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vaflow.config.section import jsonable
from vaflow.config.trainer import TrainerConfig
from vaflow.train.checkpoint import (
    CheckpointDir,
    CheckpointError,
    check_config,
    rng_state,
    set_rng_state,
)
from vaflow.train.distributed import DistInfo, all_gather_objects, all_reduce_sum, init_distributed
from vaflow.train.interface import (
    EmptyStreamError,
    LossOutput,
    NonFiniteError,
    StepTracker,
    StreamSpec,
    TrainingInterrupted,
    TrainResult,
    split_loss,
    stream_name,
)
from vaflow.train.numerics import EMA, decays, deterministic_algorithms, lr_factor, seed_everything, to_device

log = logging.getLogger("vaflow.train")


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Trainer:
    """Train `model` on `loss_fn` over `data` for `cfg.steps` optimiser steps; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], LossOutput],
        data: Iterable[Any] | Callable[[StreamSpec], Iterable[Any]],
        cfg: TrainerConfig,
        out_dir: str | Path,
        tracker: StepTracker | None = None,
        *,
        stage_config: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        find_unused_parameters: bool = False,
        replay_stream: bool = True,
        validate: Callable[[nn.Module], Mapping[str, float]] | None = None,
        validate_every: int = 0,
    ):
        """`stage_config`: the stage's whole params section (JSON-able); stored in checkpoints and compared on
        resume together with `cfg`. `device`: override the default (CUDA local rank if available, else CPU).
        `find_unused_parameters`: passed to DDP. `replay_stream=False`: on resume, start the next pass of a stream
        without `state_dict` instead of drawing its consumed batches again.
        `validate(ema_module) -> {"val_…": float}`: run on rank 0 at the logging steps that are multiples of
        `validate_every` and at the last step (0: the last step only); its metrics join that step's log."""
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(device)
        self.micro_batch = cfg.per_rank_batch(self.dist.world_size)  # ValueError naming the numbers
        self.loss_fn = loss_fn
        self.replay_stream = replay_stream
        self.validate, self.validate_every = validate, validate_every
        self.tracker = tracker if self.dist.is_main else None
        # Named in a NaN/Inf error: the stage (the tracker's, or DVC's) whose training stopped.
        self.stage = getattr(tracker, "stage", None) or os.environ.get("DVC_STAGE") or "training"
        self.ckpt = CheckpointDir(out_dir, keep=cfg.keep_checkpoints)
        self.config_dict = jsonable(
            {"trainer": cfg.model_dump(mode="json"), "stage": dict(stage_config or {})}
        )
        if cfg.deterministic:
            # Deterministic cuBLAS needs a fixed workspace (torch refuses cuBLAS ops without it). Read when the process
            # makes its first cuBLAS handle: set here, before the trainer computes anything; a stage that multiplies
            # on the GPU before building its Trainer must export it itself.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

        device = self.dist.device
        self.model = model.to(device)
        self.ema = EMA(self.model, cfg.ema_decay)
        if self.dist.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp: nn.Module = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=find_unused_parameters
            )
        else:
            self.ddp = self.model

        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        groups = [
            {"params": [p for n, p in named if decays(n, p)], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
        ]
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            fused=device.type == "cuda",  # one kernel per step on GPU; the foreach path on CPU
        )

        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

        self.spec = StreamSpec(
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            batch_size=self.micro_batch,
            seed=cfg.seed,
        )
        is_factory = callable(data) and not hasattr(data, "__iter__")
        self.stream: Iterable[Any] = data(self.spec) if is_factory else data  # type: ignore[operator]
        self.step = 0
        self.consumed = 0  # per-rank micro-batches drawn from the stream so far
        self.epoch = 0  # the pass of the stream being read
        self.epoch_pos = 0  # batches of that pass consumed (before a resume included)
        self._signal: int | None = None

    # ----------------------------------------------------------------------------------------
    # Data
    # ----------------------------------------------------------------------------------------

    @property
    def _stateful_stream(self) -> bool:
        return hasattr(self.stream, "state_dict") and hasattr(self.stream, "load_state_dict")

    def _epochs(self, epoch: int = 0, pos: int = 0, restored: bool = False) -> Iterator[Any]:
        """Batches forever: pass `epoch`, `epoch + 1`, … of the stream, each begun with `set_epoch` when it has it.

        `restored`: the stream got its position back from `load_state_dict`, `pos` batches into pass `epoch`; that
        first pass continues where the stream stands, without `set_epoch` (which would restart it).
        """
        has_epochs = hasattr(self.stream, "set_epoch")
        while True:
            if has_epochs and not restored:
                self.stream.set_epoch(epoch)  # type: ignore[attr-defined]
            self.epoch, self.epoch_pos = epoch, pos if restored else 0
            n = 0
            for batch in self.stream:
                n += 1
                self.epoch_pos += 1
                yield batch
            # A stream restored at the very end of a pass legitimately yields nothing in that pass.
            if n == 0 and not restored:
                raise EmptyStreamError(
                    f"data stream {stream_name(self.stream)} yielded no batch"
                    + (f" in epoch {epoch}" if epoch else "")
                    + f" on rank {self.dist.rank}: check the shard pattern/paths and that each of the "
                    f"{self.dist.world_size} rank(s) gets at least one batch of {self.micro_batch} samples"
                )
            restored, epoch = False, epoch + 1

    def _next_batch(self, it: Iterator[Any]) -> Any:
        batch = next(it)
        self.consumed += 1
        return to_device(batch, self.dist.device)

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def _save(self, losses: Mapping[str, float]) -> Path | None:
        """Write last.pt (rank 0). Collective: every rank must call it at the same step."""
        rngs = all_gather_objects(rng_state())
        stream_state = self.stream.state_dict() if self._stateful_stream else None  # type: ignore[attr-defined]
        positions = all_gather_objects({"epoch": self.epoch, "pos": self.epoch_pos, "state": stream_state})
        if not self.dist.is_main:
            return None
        return self.ckpt.save(
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "config": self.config_dict,
                "data": {"consumed": self.consumed, "ranks": positions},
                "rng": rngs,
                "world_size": self.dist.world_size,
                "losses": dict(losses),
            }
        )

    def _resume(self) -> tuple[dict[str, Any] | None, Path | None]:
        """Load the newest good checkpoint into model/EMA/optimiser; returns it (None when starting fresh)."""
        if self.dist.is_main:
            self.ckpt.dir.mkdir(parents=True, exist_ok=True)
            self.ckpt.clean_temp()
        if not self.cfg.resume:
            if self.dist.is_main and self.ckpt.exists():
                aside = self.ckpt.set_aside()
                log.info("trainer.resume=false: starting over; the earlier checkpoints moved to %s", aside)
            return None, None
        loaded = self.ckpt.load()
        steps = all_gather_objects(loaded[0]["step"] if loaded else 0)
        if len(set(steps)) > 1:
            raise CheckpointError(
                f"ranks see different checkpoints in {self.ckpt.dir} (steps by rank: {steps}); multi-node "
                "resume needs the checkpoint directory on a filesystem every node shares"
            )
        if loaded is None:
            return None, None
        state, path = loaded
        if int(state["step"]) > self.cfg.steps:
            # A model trained past `steps` is not the model of a `steps`-long run: train that run afresh.
            if self.dist.is_main:
                aside = self.ckpt.set_aside()
                log.warning(
                    "%s is at step %d, past trainer.steps=%d: starting over (earlier checkpoints moved to %s)",
                    path,
                    state["step"],
                    self.cfg.steps,
                    aside,
                )
            return None, None
        check_config(path, state["config"], self.config_dict)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.module.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: does not match this model/optimiser: {err}") from err
        self.step = int(state["step"])
        return state, path

    def _restore_position(self, state: dict[str, Any]) -> Iterator[Any]:
        """The batch iterator placed where the checkpoint left it, and the RNGs restored (stream first: drawing
        its consumed batches again may draw random numbers; the RNG states must be the checkpoint's afterwards)."""
        if state.get("world_size") != self.dist.world_size:
            log.warning(
                "checkpoint was written by %s rank(s), this run has %d: the data stream restarts and "
                "RNGs are re-seeded (weights, optimiser and step are restored)",
                state.get("world_size"),
                self.dist.world_size,
            )
            seed_everything(self.cfg.seed + self.dist.rank + 1000003 * self.step)
            return self._epochs()
        data = state.get("data") or {}
        self.consumed = int(data.get("consumed", 0))
        if "ranks" in data:
            mine = data["ranks"][self.dist.rank]
            epoch, pos, stream_state = int(mine["epoch"]), int(mine["pos"]), mine["state"]
        else:  # written before positions were stored: a stream state, or a replay from the first pass
            states = data.get("state")
            epoch, pos, stream_state = 0, 0, states[self.dist.rank] if states else None
        if self._stateful_stream and stream_state is not None:
            self.stream.load_state_dict(stream_state)  # type: ignore[attr-defined]
            it = self._epochs(epoch, pos, restored=True)
        elif not self.replay_stream:
            it = self._epochs(epoch + 1 if pos else epoch)
        else:
            by_pass = hasattr(self.stream, "set_epoch") and "ranks" in data
            it = self._epochs(epoch) if by_pass else self._epochs()
            n = pos if by_pass else self.consumed
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            if n and self.dist.is_main:
                log.info(
                    "drew %d consumed batches of the data stream again in %.1f s", n, time.perf_counter() - t0
                )
        set_rng_state(state["rng"][self.dist.rank])
        return it

    # ----------------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum  # acted on at the end of the current step, on every rank at the same step

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.autocast_dtype)

    def _grad_norm(self) -> torch.Tensor:
        if self.cfg.clip_grad > 0:
            return nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        grads = [p.grad for p in self.params if p.grad is not None]
        return nn.utils.get_total_norm(grads) if grads else torch.zeros(())

    def _train_step(self, it: Iterator[Any]) -> tuple[float, float, dict[str, float], bool]:
        """One optimiser step over grad_accum micro-batches; returns (loss, grad_norm, extras, stop)."""
        cfg, accum = self.cfg, self.cfg.grad_accum
        loss_sum = torch.zeros((), device=self.dist.device)
        extras: dict[str, float] = {}
        for micro in range(accum):
            batch = self._next_batch(it)
            last = micro == accum - 1
            # Gradients are all-reduced once per optimiser step, on the last micro-batch.
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.ddp.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    loss, extra = split_loss(self.loss_fn(self.ddp, batch))
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v) / accum
        # Mean loss over ranks plus the stop flag in one collective: every rank stops at the same step.
        stop_flag = 1.0 if self._signal is not None else 0.0
        reduced = all_reduce_sum(torch.stack([loss_sum / accum, loss_sum.new_tensor(stop_flag)]))
        loss_total, stop_total = reduced.tolist()  # one device sync for both
        loss_value = loss_total / self.dist.world_size
        step = self.step + 1
        if not math.isfinite(loss_value):
            raise NonFiniteError(
                f"{self.stage}: loss is {loss_value} at step {step}: stopped before applying it; the last good checkpoint "
                f"({self.ckpt.last}) is kept. Lower trainer.lr, raise trainer.warmup_steps or check the data."
            )
        grad_norm = float(self._grad_norm())
        if not math.isfinite(grad_norm):
            raise NonFiniteError(
                f"{self.stage}: gradient norm is {grad_norm} at step {step} (loss {loss_value:.6g}): stopped before applying "
                f"it; the last good checkpoint ({self.ckpt.last}) is kept. Lower trainer.lr or enable "
                "trainer.clip_grad."
            )
        factor = lr_factor(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step = step
        return loss_value, grad_norm, extras, stop_total > 0

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if not self.dist.distributed or not values:
            return values
        keys = sorted(values)
        t = all_reduce_sum(
            torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.dist.device)
        )
        return {k: float(v) / self.dist.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def fit(self) -> TrainResult:
        """Train to `cfg.steps` (resuming when a checkpoint exists); see TrainResult. Raises NonFiniteError,
        EmptyStreamError, ConfigMismatchError, CheckpointError, TrainingInterrupted (after checkpointing)."""
        cfg, main = self.cfg, self.dist.is_main
        if main:
            _ensure_log_handler()
        seed_everything(cfg.seed + self.dist.rank)  # rank r draws its own noise (t, x_0, dropout)
        state, path = self._resume()
        resumed_from = self.step
        it = self._epochs() if state is None else self._restore_position(state)
        losses: dict[str, float] = {}
        if state is not None:
            losses = dict(state.get("losses") or {})
            if main:
                log.info("resumed from %s at step %d", path, self.step)
                if self.step >= cfg.steps:
                    log.info(
                        "the checkpoint is already at step %d >= trainer.steps=%d: nothing to train",
                        self.step,
                        cfg.steps,
                    )
        del state
        if self.tracker is not None:
            self.tracker.start_at(self.step)
            if resumed_from:
                self.tracker.set_tags({"resumed_from_step": resumed_from})

        history: list[dict[str, float]] = []
        window = {"n": 0, "loss": 0.0, "grad_norm": 0.0, "t0": time.perf_counter()}
        window_extra: dict[str, float] = {}
        bar = None
        if main and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        t_start, step_start = time.perf_counter(), self.step
        self.model.train()
        try:
            with self._signals(), deterministic_algorithms(cfg.deterministic):
                while self.step < cfg.steps:
                    loss, grad_norm, extras, stop = self._train_step(it)
                    window["n"] += 1
                    window["loss"] += loss
                    window["grad_norm"] += grad_norm
                    for k, v in extras.items():
                        window_extra[k] = window_extra.get(k, 0.0) + v
                    if bar is not None:
                        bar.update(1)
                    done = self.step >= cfg.steps
                    if self.step % cfg.log_every == 0 or done or stop:
                        n = window["n"]
                        elapsed = time.perf_counter() - window["t0"]
                        extra_means = self._mean_over_ranks({k: v / n for k, v in window_extra.items()})
                        losses = {"loss": window["loss"] / n, **extra_means}
                        metrics = {
                            **losses,
                            "grad_norm": window["grad_norm"] / n,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "samples_per_s": cfg.batch_size * n / max(elapsed, 1e-9),
                        }
                        if main and self._validation_due(done):
                            metrics.update(self._run_validation())
                        history.append({"step": self.step, **metrics})
                        if main:
                            self._report(metrics, bar, t_start, step_start)
                        window = {"n": 0, "loss": 0.0, "grad_norm": 0.0, "t0": time.perf_counter()}
                        window_extra = {}
                    if stop and not done:  # a signal during the last step: just finish normally
                        ckpt = self._save(losses)
                        signum = self._signal if self._signal is not None else signal.SIGTERM
                        if main:
                            log.warning(
                                "%s received: wrote %s at step %d and stopped",
                                signal.Signals(signum).name,
                                ckpt,
                                self.step,
                            )
                        raise TrainingInterrupted(self.step, signum, ckpt)
                    if self.step % cfg.checkpoint_every == 0 or done:
                        self._save(losses)
        finally:
            if bar is not None:
                bar.close()
        return TrainResult(
            step=self.step,
            losses=losses,
            ema=self.ema.module,
            model=self.model,
            checkpoint=self.ckpt.last if main else None,
            resumed_from=resumed_from,
            history=history,
        )

    def _validation_due(self, done: bool) -> bool:
        if self.validate is None:
            return False
        return done or (self.validate_every > 0 and self.step % self.validate_every == 0)

    def _run_validation(self) -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in self.validate(self.ema.module).items()}  # type: ignore[misc]

    def _report(self, metrics: dict[str, float], bar: Any, t_start: float, step_start: int) -> None:
        rate = (self.step - step_start) / max(time.perf_counter() - t_start, 1e-9)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", samples_s=f"{metrics['samples_per_s']:.1f}")
        else:
            eta = (self.cfg.steps - self.step) / rate if rate > 0 else float("inf")
            log.info(
                "step %d/%d  loss %.5g  lr %.3g  grad_norm %.3g  %.1f samples/s  ETA %s",
                self.step,
                self.cfg.steps,
                metrics["loss"],
                metrics["lr"],
                metrics["grad_norm"],
                metrics["samples_per_s"],
                _fmt_eta(eta) if math.isfinite(eta) else "?",
            )
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, self.step)


def _ensure_log_handler() -> None:
    """Progress lines must reach the stage's stderr even when the stage configured no logging."""
    if logging.getLogger().handlers or log.handlers:
        return  # the stage configured logging: its levels decide
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


__all__ = ["Trainer"]
