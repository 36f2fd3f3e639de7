"""Run tracking: one MLflow run per stage execution, plus the metrics files DVC reads (DESIGN §7).

In full: docs/library.md, `vaflow.tracking`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaflow import atomic, cpu
from vaflow.config.section import flatten, jsonable
from vaflow.errors import ERROR_TAG, UserError

log = logging.getLogger("vaflow.tracking")

DEFAULT_EXPERIMENT = "vaflow"
PROBE_TIMEOUT_S = 5.0
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_FAILURES = 3


class TrackingError(RuntimeError, UserError):
    """The tracking backend cannot be used; the message names the URI."""


# --------------------------------------------------------------------------------------------
# Where and what
# --------------------------------------------------------------------------------------------


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def repo_root(cwd: str | Path | None = None) -> Path:
    """`DVC_ROOT`, else the git top level of `cwd`, else `cwd` (default: the working directory)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(cwd or os.getcwd()).resolve()
    top = _git(["rev-parse", "--show-toplevel"], here)
    return Path(top).resolve() if top else here


def default_tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded sqlite store in `root`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def git_revision(cwd: str | Path | None = None) -> str:
    return _git(["rev-parse", "HEAD"], Path(cwd or os.getcwd())) or "unknown"


def params_hash(root: Path) -> str:
    """First 12 hex digits of sha256(params.yaml), or "noparams" when the repo has none."""
    path = root / "params.yaml"
    if not path.is_file():
        return "noparams"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def run_group(revision: str, phash: str) -> str:
    """The `vaflow.group` tag (see the module docstring)."""
    return os.environ.get("VAFLOW_RUN_GROUP") or os.environ.get("DVC_EXP_NAME") or f"{revision[:12]}-{phash}"


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingError naming `uri` when an http(s) tracking server does not answer within `timeout`."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # the server answered (e.g. 404 under a path prefix, 401 with auth): it is reachable
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, or unset "
            "it to use the embedded sqlite store"
        ) from None


def _own_artifacts(db: Path, experiment_id: str, stored: str, location: str) -> None:
    """A checkout's embedded store keeps its artifacts in that checkout: in a copied or moved one, `mlflow.db`
    still names the folder it was made in (MLflow stores it absolute), so the experiment's location and its runs'
    artifact URIs are rewritten to this checkout's `mlartifacts/` (which the copy holds)."""
    if stored == location or not stored.endswith("/mlartifacts/" + location.rpartition("/")[2]):
        return  # already here, or a location chosen by hand
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True)) as con, con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
            (location, int(experiment_id)),
        )
        con.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
            (location, len(stored) + 1, int(experiment_id), len(stored), stored),
        )
    log.warning(
        "MLflow: %s came from another folder; its artifacts are now read from and written to %s", db, location
    )


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def _json_number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN; DVC would reject the file


class Tracker:
    """One stage execution's MLflow run and DVC metrics files; a no-op on ranks other than 0.

    Use as a context manager: the run ends FINISHED, KILLED (SIGTERM/SIGINT, KeyboardInterrupt) or FAILED.
    """

    def __init__(
        self,
        stage: str,
        params: Any = None,
        *,
        metrics_dir: str | Path = "metrics",
        experiment: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        root: str | Path | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        mlflow: bool = True,
        metrics_name: str | None = None,
    ):
        """`params`: the config to log (nested mapping or section; `{"flow": cfg.flow}` gives `flow.key=…`).
        `root`: repo root (default `repo_root()`); `rank`/`world_size` default to the RANK/WORLD_SIZE env;
        `mlflow=False` writes only the metrics files; `metrics_name`: stem of the metrics files (default the
        stage name)."""
        self.stage = stage
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        self.enabled = self.rank == 0
        self.metrics_dir = Path(metrics_dir)
        self.final_path = self.metrics_dir / f"{metrics_name or stage}.json"
        self.steps_path = self.metrics_dir / f"{metrics_name or stage}_steps.tsv"
        self.final: dict[str, Any] = {}
        self.client: Any = None
        self.run_id: str | None = None
        self.uri: str | None = None
        self._columns: list[str] | None = None
        self._failures = 0
        self._last_step = 0
        self._sent: dict[str, tuple[int, float]] = {}  # key -> (step, value) last sent to MLflow
        self._started = False
        self._closed = False
        if not self.enabled:
            return
        self.root = Path(root).resolve() if root else repo_root()
        if mlflow:
            self._start_run(params, experiment, tracking_uri, tags or {})

    # -- start ------------------------------------------------------------------------------

    def _start_run(
        self, params: Any, experiment: str | None, uri: str | None, extra: Mapping[str, Any]
    ) -> None:
        self.uri = uri or default_tracking_uri(self.root)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        check_reachable(self.uri)
        name = experiment or os.environ.get("VAFLOW_EXPERIMENT") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        name = name or DEFAULT_EXPERIMENT
        revision = git_revision()
        phash = params_hash(self.root)
        tags = {
            "stage": self.stage,
            "git_revision": revision,
            "git_dirty": str(
                bool(_git(["status", "--porcelain", "--untracked-files=no"], Path.cwd()))
            ).lower(),
            "dvc_experiment": os.environ.get("DVC_EXP_NAME") or "none",
            "dvc_stage": os.environ.get("DVC_STAGE") or self.stage,
            "host": socket.gethostname(),
            "world_size": str(self.world_size),
            **cpu.state(),
            "params_hash": phash,
            "vaflow.group": run_group(revision, phash),
            "mlflow.runName": self.stage,
            **({"mlflow.source.git.commit": revision} if revision != "unknown" else {}),
            **{k: str(v) for k, v in extra.items()},
        }
        try:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)
            exp_id = self._experiment_id(name)
            run = self.client.create_run(exp_id, tags=tags, run_name=self.stage)
        except TrackingError:
            raise
        except Exception as err:
            text = " ".join(re.sub(r"<[^>]*>", " ", str(err)).split())  # one line, even of an HTML error page
            text = text if len(text) <= 200 else text[:199] + "…"
            hint = (
                "; is it an MLflow tracking server?" if self.uri.startswith(("http://", "https://")) else ""
            )
            raise TrackingError(
                f"MLflow at {self.uri}: cannot start a run ({type(err).__name__}: {text}){hint}"
            ) from err
        self.run_id = run.info.run_id
        self.experiment_id = exp_id
        log.info("MLflow run %s (experiment %r, stage %s) at %s", self.run_id, name, self.stage, self.uri)
        if params is not None:
            self.log_params(params)

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        location = None
        if self.uri and self.uri.startswith("sqlite:"):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            location = (self.root / "mlartifacts" / safe).as_uri()
        if exp is not None:
            if location and self.uri == f"sqlite:///{self.root / 'mlflow.db'}":  # this checkout's own store
                _own_artifacts(self.root / "mlflow.db", exp.experiment_id, exp.artifact_location, location)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another stage created it concurrently
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # -- logging ----------------------------------------------------------------------------

    def log_params(self, params: Any) -> None:
        """Log a (nested) config as flat `a.b=value` params."""
        if self.client is None:
            return
        from mlflow.entities import Param

        flat = [Param(k, _param_text(v)) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=flat[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def start_at(self, step: int) -> None:
        """Begin the step log at `step`: rows after it (from a run that died later than its checkpoint) go."""
        if not self.enabled:
            return
        self._started = True
        self._last_step = step
        rows: list[dict[str, str]] = []
        columns: list[str] | None = None
        if step > 0 and self.steps_path.is_file():
            with self.steps_path.open(newline="") as f:
                reader = csv.DictReader(f, delimiter="\t")
                columns = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= step]
        self._rewrite_steps(columns if rows else None, rows)

    def _rewrite_steps(self, columns: list[str] | None, rows: list[dict[str, str]]) -> None:
        self._columns = columns
        if columns is None:
            self.steps_path.unlink(missing_ok=True)
            return
        lines = ["\t".join(columns)] + ["\t".join(r.get(c) or "" for c in columns) for r in rows]
        atomic.write_text(self.steps_path, "\n".join(lines) + "\n")

    def no_steps(self) -> None:
        """A run without training: an empty step log replaces a previous run's (no stale curve in `dvc plots`)."""
        if self.enabled:
            atomic.write_text(self.steps_path, "step\n")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Step metrics: one TSV row and one MLflow batch."""
        if not self.enabled:
            return
        if not self._started:
            self.start_at(0)  # no start_at (not driven by the Trainer): a fresh step log
        self._last_step = step
        values = {k: float(v) for k, v in metrics.items()}
        new = [k for k in values if k not in (self._columns or [])]
        if self._columns is None:
            self._columns = ["step", *values]
            atomic.write_text(self.steps_path, "\t".join(self._columns) + "\n")
        elif new:  # a metric appeared: rewrite the log with the wider header (rare)
            with self.steps_path.open(newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            self._rewrite_steps([*self._columns, *new], rows)
        row = {"step": str(step), **{k: repr(v) for k, v in values.items()}}
        with self.steps_path.open("a") as f:
            f.write("\t".join(row.get(c, "") for c in self._columns) + "\n")
        self._send_metrics(values, step)

    def _send_metrics(self, values: Mapping[str, float], step: int) -> None:
        if self.client is None or self._failures >= MAX_FAILURES:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
            self._failures = 0
            self._sent.update({k: (step, v) for k, v in values.items()})
        except Exception as err:
            self._failures += 1
            log.warning(
                "MLflow at %s: logging step %d failed (%s)%s",
                self.uri,
                step,
                err,
                "; step metrics now go to the TSV only" if self._failures >= MAX_FAILURES else "",
            )

    def log_final(self, metrics: Mapping[str, float], in_file: bool = True) -> None:
        """Final metrics: merged into `<metrics_dir>/<stage>.json` (written atomically when the run ends
        FINISHED, so a failed run keeps the last good file) and logged to MLflow.

        `in_file=False` logs to MLflow only: for figures that differ from run to run (wall-clock times, how much of
        the work a resumed run found done), so that the metrics files of two runs compare byte for byte.
        """
        if not self.enabled:
            return
        if in_file:
            self.final.update({k: _json_number(v) for k, v in metrics.items()})
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [
                Metric(k, float(v), now, self._last_step)
                for k, v in metrics.items()
                if self._sent.get(k) != (self._last_step, float(v))  # already logged as the last step metric
            ]
            if batch:
                self.client.log_batch(self.run_id, metrics=batch)

    def log_provenance(self, provenance: Mapping[str, Any]) -> None:
        """What the final metrics were computed with (ids, hashes, counts, settings): written under
        `provenance` in the metrics file, beside the numbers, and set as `provenance.*` tags of the run."""
        if not self.enabled:
            return
        self.final["provenance"] = jsonable(provenance)  # JSON types, a copy
        self.set_tags(flatten({"provenance": provenance}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or directory to the run's artifacts."""
        if self.client is None:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    # -- end --------------------------------------------------------------------------------

    def close(self, status: str = "FINISHED") -> None:
        """Write the metrics file when `status` is FINISHED; end the MLflow run with `status` (FINISHED, FAILED,
        KILLED). Idempotent."""
        if status == "FINISHED" and self.enabled and self.final and not self._closed:
            atomic.write_text(self.final_path, json.dumps(self.final, indent=2, sort_keys=True) + "\n")
        self._closed = True
        if self.client is None or self.run_id is None:
            return
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as err:
            log.warning("MLflow at %s: could not close run %s (%s)", self.uri, self.run_id, err)
        self.client = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None or (issubclass(exc_type, SystemExit) and exc.code in (0, None)):
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):  # incl. TrainingInterrupted
            status = "KILLED"
        else:
            status = "FAILED"
        if status != "FINISHED" and exc is not None and self.client is not None:
            try:  # what stopped the run, for whoever reads it later (`vaflow tables report` names it)
                self.client.set_tag(self.run_id, ERROR_TAG, f"{exc_type.__name__}: {exc}"[:2000])
            except Exception as err:
                log.warning(
                    "MLflow at %s: could not tag run %s with its error (%s)", self.uri, self.run_id, err
                )
        self.close(status)


__all__ = [
    "DEFAULT_EXPERIMENT",
    "Tracker",
    "TrackingError",
    "check_reachable",
    "default_tracking_uri",
    "git_revision",
    "params_hash",
    "repo_root",
    "run_group",
]
