"""The shared trainer: DDP equivalence, exact resume (in-process and after SIGKILL), SIGTERM, NaN guard,
config checks, corrupt checkpoints, batch arithmetic, empty streams, schedules, EMA."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.train.launch import free_port, launch_env
from tests.train.run_toy import train_toy
from tests.train.toy import (
    Crash,
    EpochToyStream,
    ResumableEpochToyStream,
    StatefulToyStream,
    ToyStream,
    make_model,
    toy_loss,
)
from vaflow.config.trainer import TrainerConfig
from vaflow.train.checkpoint import CheckpointError, ConfigMismatchError, read_checkpoint
from vaflow.train.interface import EmptyStreamError, NonFiniteError
from vaflow.train.numerics import EMA, lr_factor, seed_everything
from vaflow.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "run_toy.py"
# DDP all-reduces gradients in a different summation order than one process computes them: equal to float32
# rounding, so the loss trajectories agree to 1e-5 relative (observed: ≤ 2e-7).
DDP_RTOL = 1e-5


def _cfg(**kw) -> TrainerConfig:
    base = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, schedule="cosine", ema_decay=0.9)
    base.update(kw)
    base.setdefault("checkpoint_every", 5)
    base.setdefault("log_every", 1)
    return TrainerConfig(**base)


def _train(tmp: Path, cfg: TrainerConfig, stream_cls=ToyStream, loss=None, stage=None, **kw):
    seed_everything(cfg.seed)
    model = make_model()

    def stream(spec):
        return stream_cls(spec.rank, spec.world_size, spec.batch_size)

    trainer = Trainer(
        model, loss or toy_loss(noisy=True), stream, cfg, tmp, stage_config=stage or {"w": 32}, **kw
    )
    return trainer, trainer.fit()


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------


def test_ddp_two_processes_match_one_process(tmp_path, one_thread):
    """torchrun with 2 gloo ranks (per-rank batch 4) follows the 1-process loss trajectory (batch 8).
    The command is built the way dvc.yaml builds it: `${stage.trainer.launcher} script.py …`."""
    launcher = f"torchrun --nproc-per-node=2 --master-addr=127.0.0.1 --master-port={free_port()}"
    cmd = shlex.split(TrainerConfig(launcher=launcher).launcher)
    cmd += [str(SCRIPT), "--out", str(tmp_path / "ddp"), "--steps", "12"]
    env = launch_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's torchrun
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = train_toy(tmp_path / "one", steps=12)  # meanwhile, in this process
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    ddp = json.loads((tmp_path / "ddp" / "history.json").read_text())["history"]
    assert [h["step"] for h in ddp] == list(range(1, 13))
    for a, b in zip(ddp, single.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=DDP_RTOL), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=DDP_RTOL)
    # Only rank 0 wrote the checkpoint; it records the world size.
    assert read_checkpoint(tmp_path / "ddp" / "ckpt" / "last.pt")["world_size"] == 2


def test_grad_accumulation_matches_full_batch(tmp_path):
    """grad_accum=2 with the same global batch gives the same trajectory as one full batch."""
    _, full = _train(tmp_path / "a", _cfg(), loss=toy_loss())
    # The stream hands out 4-sample micro-batches in the order that makes two of them one 8-sample batch.
    _, acc = _train(tmp_path / "b", _cfg(grad_accum=2), stream_cls=_PairedStream, loss=toy_loss())
    for a, b in zip(acc.history, full.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


class _PairedStream(ToyStream):
    """Micro-batches of 4 that concatenate, two by two, into ToyStream's 8-sample batches."""

    def __init__(self, rank, world, batch_size):
        super().__init__(rank, world, batch_size)
        self.full = ToyStream(rank, world, batch_size * 2)

    def __iter__(self):
        for x, y in self.full:
            yield x[: self.batch_size], y[: self.batch_size]
            yield x[self.batch_size :], y[self.batch_size :]


def test_batch_not_divisible_names_the_numbers():
    cfg = TrainerConfig(batch_size=10, grad_accum=3)
    with pytest.raises(ValueError, match=r"batch_size=10 .*world_size=1 .*grad_accum=3 = 3"):
        Trainer(make_model(), toy_loss(), [], cfg, "unused")
    assert TrainerConfig(batch_size=12, grad_accum=3).per_rank_batch(2) == 2
    with pytest.raises(ValueError, match="world_size=4"):
        TrainerConfig(batch_size=12, grad_accum=2).per_rank_batch(4)


# --------------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------------


STREAMS = {
    "replayed": ToyStream,  # neither set_epoch nor state: replayed from the first pass
    "stateful": StatefulToyStream,  # state only
    "by_epoch": EpochToyStream,  # set_epoch only: the resumed pass is drawn again up to its position
    "both": ResumableEpochToyStream,  # set_epoch and state: restored, and set_epoch only from the next pass on
}


@pytest.mark.parametrize(
    "every, crash_at, resume_at", [(6, 15, 12), (5, 18, 15)], ids=["pass_end", "mid_pass"]
)
@pytest.mark.parametrize("kind", list(STREAMS))
def test_resume_is_exact(tmp_path, kind, every, crash_at, resume_at):
    """A run that dies after its checkpoint at `resume_at` resumes and ends bitwise equal to an uninterrupted run.
    The noisy loss draws from the torch RNG; the 96-sample stream has 12 batches of 8 per pass, so step 12 ends a
    pass (a restored stream comes back exhausted and must simply start the next pass) and step 15 is mid-pass."""
    stream_cls = STREAMS[kind]
    cfg = _cfg(steps=20, checkpoint_every=every)
    _, full = _train(tmp_path / "full", cfg, stream_cls)
    with pytest.raises(Crash):
        _train(tmp_path / "part", cfg, stream_cls, loss=toy_loss(noisy=True, crash_at=crash_at))
    trainer, second = _train(tmp_path / "part", cfg, stream_cls)
    assert second.resumed_from == resume_at and second.step == 20
    assert _states_equal(second.model.state_dict(), full.model.state_dict())
    assert _states_equal(second.ema.state_dict(), full.ema.state_dict())
    assert [h["loss"] for h in second.history] == [h["loss"] for h in full.history[resume_at:]]
    # What the resume cost in data loading: batches drawn again before the first new one.
    in_pass = resume_at - 12 * (
        (resume_at - 1) // 12
    )  # batches of the interrupted pass consumed before the crash
    replayed = {"replayed": resume_at, "stateful": 0, "by_epoch": in_pass, "both": 0}[kind]
    assert trainer.stream.drawn == replayed + (20 - resume_at)


def test_checkpoint_without_stream_positions_still_resumes_exactly(tmp_path):
    """Checkpoints written before per-rank positions were stored hold data = {"consumed", "state"}: a stream without
    state is then replayed from its first pass, set_epoch before each one, as the trainer did then."""
    cfg = _cfg(steps=20, checkpoint_every=5)
    _, full = _train(tmp_path / "full", cfg, EpochToyStream)
    with pytest.raises(Crash):
        _train(tmp_path / "part", cfg, EpochToyStream, loss=toy_loss(noisy=True, crash_at=18))
    last = tmp_path / "part" / "last.pt"
    old = torch.load(last, weights_only=True)
    old["data"] = {"consumed": old["data"]["consumed"], "state": None}
    torch.save(old, last)
    trainer, second = _train(tmp_path / "part", cfg, EpochToyStream)
    assert second.resumed_from == 15 and trainer.stream.drawn == 20
    assert _states_equal(second.model.state_dict(), full.model.state_dict())


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, one_thread):
    """A run SIGKILLed after its step-5 checkpoint, then rerun, ends bitwise equal to an uninterrupted run."""
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "victim"), "--steps", "24", "--noisy"]
    victim = subprocess.Popen([*cmd, "--sleep", "0.1"], env=launch_env(), stderr=subprocess.DEVNULL)
    try:
        ref = train_toy(tmp_path / "ref", steps=24, noisy=True)  # meanwhile, in this process
        last = tmp_path / "victim" / "ckpt" / "last.pt"
        deadline = time.monotonic() + 60
        while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(last)["step"]
    assert 5 <= killed_at < 24 and not (tmp_path / "victim" / "final.pt").exists()

    resumed = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {killed_at}" in resumed.stderr
    b = torch.load(tmp_path / "victim" / "final.pt", weights_only=True)
    assert _states_equal(ref.model.state_dict(), b["model"]) and _states_equal(ref.ema.state_dict(), b["ema"])


def test_sigterm_writes_a_final_checkpoint(tmp_path):
    """SIGTERM mid-run: a checkpoint of the current step is written and the process exits with 128+15."""
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--out",
        str(tmp_path),
        "--steps",
        "500",
        "--checkpoint-every",
        "1000",
    ]
    proc = subprocess.Popen([*cmd, "--sleep", "0.02"], env=launch_env(), stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "step 3/500" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + rest
    assert "SIGTERM received" in rest
    step = read_checkpoint(tmp_path / "ckpt" / "last.pt")["step"]
    assert 3 <= step < 500


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError, match=r"^training: loss is nan at step 4"):
        _train(tmp_path, _cfg(checkpoint_every=1), loss=toy_loss(nan_at=4))
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 3
    assert read_checkpoint(tmp_path / "last.pt.prev")["step"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_nonfinite_gradient_stops(tmp_path):
    def loss_fn(model, batch):
        s = model(batch[0]).sum()
        return (s - s.detach()).sqrt()  # value 0, gradient inf

    with pytest.raises(NonFiniteError, match=r"gradient norm is (inf|nan) at step 1"):
        _train(tmp_path, _cfg(checkpoint_every=1), loss=loss_fn)
    assert not (tmp_path / "last.pt").exists()


def test_resume_with_different_config_names_keys(tmp_path):
    _train(tmp_path, _cfg(steps=3))
    with pytest.raises(ConfigMismatchError) as err:
        _train(tmp_path, _cfg(steps=6, lr=2e-2, log_every=2), stage={"w": 64})
    msg = str(err.value)
    assert "trainer.lr: 0.01 -> 0.02" in msg and "stage.w: 32 -> 64" in msg
    assert "steps" not in msg and "log_every" not in msg  # allowed to change
    # The same config with more steps resumes.
    _, result = _train(tmp_path, _cfg(steps=6, log_every=2))
    assert result.resumed_from == 3 and result.step == 6


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, caplog):
    _train(tmp_path, _cfg(steps=4, checkpoint_every=2))
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="vaflow.train"):
        _, result = _train(tmp_path, _cfg(steps=6, checkpoint_every=2))
    assert result.resumed_from == 2 and result.step == 6
    assert (
        f"{last}: unreadable checkpoint" in caplog.text
        and "resuming from the previous checkpoint" in caplog.text
    )
    # The unreadable file was set aside, not rotated into last.pt.prev.
    assert (tmp_path / "last.pt.corrupt").exists()
    assert read_checkpoint(tmp_path / "last.pt.prev")["step"] == 4


def test_truncated_checkpoint_without_previous_is_an_error(tmp_path):
    _train(tmp_path, _cfg(steps=2, checkpoint_every=2))
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{last}: unreadable checkpoint"):
        _train(tmp_path, _cfg(steps=4))


def test_resume_false_starts_over_and_keep_checkpoints(tmp_path):
    _train(tmp_path, _cfg(steps=3))
    _, result = _train(tmp_path, _cfg(steps=5, resume=False, checkpoint_every=1, keep_checkpoints=2))
    assert result.resumed_from == 0
    assert read_checkpoint(tmp_path / "previous-run" / "last.pt")["step"] == 3  # set aside, not rotated in
    assert read_checkpoint(tmp_path / "last.pt.prev")["step"] == 4
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000004.pt", "step-00000005.pt"]
    assert read_checkpoint(tmp_path / "step-00000004.pt")["step"] == 4
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["trainer"]["betas"] == [0.9, 0.999]  # stored as plain JSON types


def test_checkpoint_past_the_requested_steps_trains_afresh(tmp_path, one_thread):
    _train(tmp_path / "ref", _cfg(steps=4, schedule="constant"))
    _train(tmp_path / "run", _cfg(steps=8, schedule="constant"))
    trainer, result = _train(tmp_path / "run", _cfg(steps=4, schedule="constant"))
    assert result.resumed_from == 0 and result.step == 4
    assert read_checkpoint(tmp_path / "run" / "previous-run" / "last.pt")["step"] == 8
    reference = read_checkpoint(tmp_path / "ref" / "last.pt")["model"]
    assert _states_equal(trainer.model.state_dict(), reference), "a 4-step run, not the 8-step model"


# --------------------------------------------------------------------------------------------
# Data, schedule, EMA
# --------------------------------------------------------------------------------------------


def test_empty_stream_is_an_error(tmp_path):
    with pytest.raises(EmptyStreamError, match="yielded no batch"):
        Trainer(make_model(), toy_loss(), [], _cfg(), tmp_path).fit()

    class Shards:
        pattern = "data/shards/train-{000000..000009}.tar"

        def __iter__(self):
            return iter(())

    with pytest.raises(EmptyStreamError, match=r"train-\{000000\.\.000009\}\.tar"):
        Trainer(make_model(), toy_loss(), lambda spec: Shards(), _cfg(), tmp_path / "b").fit()


def test_stream_factory_gets_rank_world_and_per_rank_batch(tmp_path):
    seen = []

    def factory(spec):
        seen.append(spec)
        return ToyStream(spec.rank, spec.world_size, spec.batch_size)

    Trainer(make_model(), toy_loss(), factory, _cfg(batch_size=12, grad_accum=3, seed=5), tmp_path)
    assert [(s.rank, s.world_size, s.batch_size, s.seed) for s in seen] == [(0, 1, 4, 5)]


def test_lr_schedules():
    cfg = TrainerConfig(steps=110, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0) and lr_factor(cfg, 60) == pytest.approx(0.55)
    assert lr_factor(cfg, 110) == pytest.approx(0.1) and lr_factor(cfg, 500) == pytest.approx(0.1)
    step = TrainerConfig(warmup_steps=0, schedule="step", schedule_step_every=5, schedule_gamma=0.5)
    assert [lr_factor(step, s) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(TrainerConfig(warmup_steps=0), 10**6) == 1.0


def test_ema_tracks_parameters_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.75)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model(torch.randn(8, 3))  # updates BatchNorm running stats
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, before + 1.0)  # 0.75·w + 0.25·(w + 4)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_is_the_average_of_the_run(tmp_path):
    """After n steps the EMA is d^n·θ_0 + Σ_k (1−d)·d^(n−k)·θ_k over the weights θ_k after each step k: recorded here
    through the loss, which sees θ_(k−1) at step k. At d = 0.7 over 6 steps every θ_k weighs in (θ_0 by 0.12)."""
    decay, steps = 0.7, 6
    seen: list[dict[str, torch.Tensor]] = []
    inner = toy_loss(noisy=True)

    def loss_fn(model, batch):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return inner(model, batch)

    _, result = _train(tmp_path, _cfg(steps=steps, ema_decay=decay), loss=loss_fn)
    thetas = [*seen, result.model.state_dict()]  # θ_0 … θ_n
    assert len(thetas) == steps + 1
    for name, got in result.ema.state_dict().items():
        want = decay**steps * thetas[0][name]
        for k in range(1, steps + 1):
            want = want + (1 - decay) * decay ** (steps - k) * thetas[k][name]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.allclose(got, thetas[-1][name]), f"{name}: the EMA is just the last weights"
    assert math.isfinite(result.losses["loss"]) and "mae" in result.losses


def test_two_cpu_runs_are_bit_identical(tmp_path):
    """The same config twice in one process gives the same weights to the bit, whatever the global RNGs held before
    `fit` (it seeds them from trainer.seed): CPU runs need no `deterministic` switch."""

    def run(out: Path, disturb: bool):
        model = make_model()
        if disturb:  # whatever ran before in the process must not leak into the run
            torch.rand(3), np.random.rand(), random.random()
        stream = lambda spec: ToyStream(spec.rank, spec.world_size, spec.batch_size)  # noqa: E731
        return Trainer(model, toy_loss(noisy=True), stream, _cfg(steps=8), out, stage_config={"w": 32}).fit()

    a, b = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert _states_equal(a.model.state_dict(), b.model.state_dict())
    assert _states_equal(a.ema.state_dict(), b.ema.state_dict())


def test_deterministic_option_holds_for_the_run_only(tmp_path, monkeypatch):
    """trainer.deterministic turns torch's deterministic algorithms on inside `fit` (and the cuBLAS workspace
    setting on) and restores the process's settings afterwards; on CPU it changes no bit of the result."""
    monkeypatch.setenv(
        "CUBLAS_WORKSPACE_CONFIG", ""
    )  # recorded, so that the test leaves the variable as it was
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    seen = []
    inner = toy_loss()

    def loss_fn(model, batch):
        seen.append((torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return inner(model, batch)

    before = torch.are_deterministic_algorithms_enabled()
    _, det = _train(tmp_path / "det", _cfg(steps=3, deterministic=True), loss=loss_fn)
    assert seen == [(True, ":4096:8")] * 3
    assert torch.are_deterministic_algorithms_enabled() == before
    seen.clear()
    _, free = _train(tmp_path / "free", _cfg(steps=3), loss=loss_fn)
    assert [on for on, _ in seen] == [before] * 3
    assert _states_equal(det.model.state_dict(), free.model.state_dict())


def test_bf16_autocast_runs_on_cpu(tmp_path):
    """precision=bf16 autocasts the forward (the CUDA default, exercised here on CPU)."""
    seen = []

    def loss_fn(model, batch):
        out = model(batch[0])
        seen.append(out.dtype)
        return ((out.float() - batch[1]) ** 2).mean()

    _, result = _train(tmp_path, _cfg(steps=3, precision="bf16"), loss=loss_fn)
    assert seen == [torch.bfloat16] * 3 and math.isfinite(result.losses["loss"])
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights stay fp32


def test_run_dir_ignores_resumable_trainer_keys_only():
    from vaflow.train.checkpoint import run_dir

    base = {"flow": {"width": 64, "trainer": TrainerConfig(steps=10)}}
    longer = {"flow": {"width": 64, "trainer": TrainerConfig(steps=20, log_every=3)}}
    other_lr = {"flow": {"width": 64, "trainer": TrainerConfig(steps=10, lr=3e-4)}}
    assert run_dir("ck", "flow", base) == run_dir("ck", "flow", longer)
    assert run_dir("ck", "flow", base) != run_dir("ck", "flow", other_lr)
    assert run_dir("ck", "flow", base).parent == Path("ck") and run_dir("ck", "flow", base).name.startswith(
        "flow-"
    )


def test_weight_decay_skips_biases_and_weight_norm_gains(tmp_path):
    """Kernels decay; biases, Snake's α/β and the weight-norm gains `weight_g` ((C, 1, 1), a kernel's shape) do not."""
    from vaflow.models.wavevae import build

    vae = build("tiny")
    trainer = Trainer(vae, toy_loss(), [], _cfg(weight_decay=0.1), tmp_path)
    decayed, plain = trainer.optimizer.param_groups
    names = {id(p): n for n, p in vae.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert decayed_names == {n for n in names.values() if n.endswith("weight_v")}
    assert {n for n in names.values() if n.endswith("weight_g")} <= plain_names
    assert decayed_names | plain_names == set(names.values())
