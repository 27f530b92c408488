"""``mlflow``: each run as an MLflow run (the optional extra ``pystematic[mlflow]``).

At the start: the MLflow experiment named after the pystematic experiment
(created when missing), a run named after the run id, every parameter, and tags
(``pystematic.run_id``, ``pystematic.experiment``, ``pystematic.run_dir``,
``pystematic.tags``, and MLflow's own ``mlflow.source.git.commit`` and
``mlflow.user``). Each batch of committed steps goes out in as few ``log_batch``
calls as MLflow's limit of 1,000 metrics a call allows (one per step at most,
never one per scalar). At the end: FINISHED, FAILED or KILLED for completed,
failed or interrupted. A resumed run continues its MLflow run (found by its
``pystematic.run_id`` tag); MLflow cannot delete metric values, so steps the
earlier attempt recorded after the checkpoint stay there beside the new ones.

The tracking URI: ``MLFLOW_TRACKING_URI``, else the config's ``[mlflow]
tracking_uri`` (a relative ``sqlite:///`` or file path is taken from the
project root), else MLflow's default. ``mlflow`` is imported when a run starts.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ParameterError
from .base import Backend, RunInfo, StepRecord

INSTALL_HINT = "pip install 'pystematic[mlflow]'"
#: MLflow's status for each end status of a run.
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_METRICS_PER_CALL = 1000  # MLflow's limits for one log_batch request
_PARAMS_PER_CALL = 100
_PARAM_LENGTH = 6000


def resolve_uri(uri: str, root: Path | None) -> str:
    """A config URI with a relative local path made absolute against ``root``."""
    if root is None:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///") :]
        if rest and rest != ":memory:":
            return "sqlite:///" + str((root / rest).resolve())
        return uri
    if "://" not in uri and not Path(uri).is_absolute():
        return str((root / uri).resolve())
    return uri


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:_PARAM_LENGTH]
    return flat


class MlflowBackend(Backend):
    """Logs a run's parameters, tags, scalars and status to MLflow."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, root: str | Path | None = None) -> None:
        if tracking_uri is not None and not isinstance(tracking_uri, str):
            raise ConfigError(f"[mlflow] tracking_uri must be a string, got {tracking_uri!r}")
        self._config_uri = tracking_uri
        self._root = Path(root) if root is not None else None
        self._client: Any = None
        self._run_id: str | None = None

    @property
    def tracking_uri(self) -> str | None:
        """The URI runs go to (``None``: MLflow's default)."""
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        if self._config_uri:
            return resolve_uri(self._config_uri, self._root)
        return None

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id, once started."""
        return self._run_id

    def open(self, output_dir: Path) -> None:
        pass

    def start_run(self, run: RunInfo) -> None:
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param, RunTag
        except ImportError as e:
            raise ParameterError(
                f"the 'mlflow' recorder backend needs mlflow: {INSTALL_HINT}"
            ) from e
        client = self._client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_id = self._experiment_id(run.experiment or "Default")
        tags = {
            "pystematic.run_id": run.run_id,
            "pystematic.experiment": run.experiment,
            "pystematic.run_dir": str(Path(run.run_dir).resolve()),
            "pystematic.tags": ",".join(run.tags),
            "mlflow.user": getpass.getuser(),
        }
        if run.git_commit:
            tags["mlflow.source.git.commit"] = run.git_commit
        params = _flatten(run.params)
        existing = self._find_run(experiment_id, run.run_id) if run.resumed else None
        if existing is None:
            self._run_id = client.create_run(
                experiment_id, start_time=int(run.start_time * 1000), tags=tags, run_name=run.run_id
            ).info.run_id
        else:  # a resume continues the same MLflow run; its logged params cannot change
            self._run_id = existing.info.run_id
            client.update_run(self._run_id, status="RUNNING")
            client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            params = {k: v for k, v in params.items() if k not in existing.data.params}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_CALL):
            client.log_batch(self._run_id, params=items[i : i + _PARAMS_PER_CALL])

    def _experiment_id(self, name: str) -> str:
        client = self._client
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name))
        except Exception:  # another run created it in the meantime
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _find_run(self, experiment_id: str, run_id: str) -> Any:
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`pystematic.run_id` = '{run_id}'", max_results=1
        )
        return runs[0] if runs else None

    def write_steps(self, records: Sequence[StepRecord]) -> None:
        if self._run_id is None:
            return  # a standalone recorder without start_run(): nothing to log into
        from mlflow.entities import Metric

        metrics: list[Any] = []
        for step, wall, scalars, _ in records:
            if len(metrics) + len(scalars) > _METRICS_PER_CALL:
                self._log(metrics)
                metrics = []
            ms = int(wall * 1000)
            for tag, value in scalars.items():
                metrics.append(Metric(tag, value, ms, step))
                if len(metrics) == _METRICS_PER_CALL:  # a step with more scalars than that
                    self._log(metrics)
                    metrics = []
        self._log(metrics)

    def write_step(self, record: StepRecord) -> None:
        self.write_steps([record])

    def _log(self, metrics: list[Any]) -> None:
        if metrics:
            self._client.log_batch(self._run_id, metrics=metrics)

    def end_run(self, status: str) -> None:
        if self._run_id is not None:
            self._client.set_terminated(self._run_id, status=MLFLOW_STATUS[status])
