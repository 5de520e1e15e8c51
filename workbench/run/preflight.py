"""What can be known wrong before a run starts, refused then (exit 2, no run) rather than minutes in.

The schema checks each value alone; these checks need the machine, the tracking database or the
data: a CUDA device the machine does not have, a model run for scoring that does not resolve, and a
dataset source (a folder, an S3 prefix, a glob) that matches nothing or cannot be read. They used
to surface only once the step ran, after the earlier steps had spent their time.
"""

from __future__ import annotations

from workbench.config.parameters import Parameters
from workbench.config.secrets import mask
from workbench.errors import DataError, ModelError, ParameterError, TrackingError
from workbench.storage.base import Store
from workbench.storage.catalog import ONNX_MODEL, RunLayout
from workbench.storage.datasets import check_dataset, is_dataset
from workbench.tracking.aliases import is_alias, resolve
from workbench.tracking.tracker import Tracker


def check_before_run(
    params: Parameters, steps: list[str], tracker: Tracker, store: Store, run_id: str | None = None
) -> None:
    """Refuse, in one ParameterError line naming the key and where it came from, what ``steps``
    would fail on: ``train.device`` naming CUDA where none is visible, and a ``score.model_run``
    that names no run with a model (``latest`` where no model passed validation and the run,
    ``run_id`` when resumed, exports none), and a dataset source of a step to run that lists no
    Parquet file, lists others, or whose first file cannot be read."""
    for step, key in (("prepare", "data.source"), ("score", "score.source")):
        if step in steps and is_dataset(params[key]):
            try:
                check_dataset(params[key], key)
            except DataError as exc:
                raise ParameterError(str(exc)) from exc  # it names the key and the source already
    if "train" in steps and str(params["train.device"]).startswith("cuda"):
        from workbench.ml.training.device import choose_device  # imports torch: only for a CUDA device

        try:
            choose_device(params["train.device"])
        except ModelError as exc:
            raise ParameterError(f"{_where(params, 'train.device')}: {str(exc).split(': ', 1)[1]}") from exc
    if "score" in steps:
        spec = str(params["score.model_run"])
        if spec == "latest":
            if "export" not in steps and tracker.latest_model(own=run_id) is None:
                raise ParameterError(
                    f"{_where(params, 'score.model_run')}: 'latest' names no run, since no run in db "
                    f"{mask(tracker.url)!r} has an exported model that passed validation; run every step first, "
                    "or name a run"
                )
        elif is_alias(spec):
            try:  # an alias that names nothing: the one line lists those that do
                resolve(tracker, spec, "score.model_run")
            except TrackingError as exc:
                raise ParameterError(str(exc)) from exc
        elif not tracker.has_run(spec) and not store.exists(RunLayout(spec).key(ONNX_MODEL)):
            raise ParameterError(
                f"{_where(params, 'score.model_run')}: {spec!r} is not a run in db {mask(tracker.url)!r}; "
                "`workbench runs` lists the runs"
            )


def _where(params: Parameters, key: str) -> str:
    return f"{key} in {params.origin.get(key, 'defaults')}"
