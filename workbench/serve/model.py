"""The model a server answers with: found from ``serve.model``, loaded into a backend, checked once.

``serve.model`` names a run (``latest``, a run id, or ``@NAME``, the run an alias names, read from
``store`` and ``db`` like batch scoring reads ``score.model_run``), a run's folder
(``<store>/runs/<id>``), or a SageMaker ``model.tar.gz`` or its unpacked folder (what SageMaker
mounts at ``/opt/ml/model``), each a local path or an ``s3://`` URI. Everything is read and loaded before the server listens, so a model that
cannot serve stops the start with one line instead of failing every request.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from workbench.errors import DataError, ModelError, StoreError, TrackingError
from workbench.ml.encoding import Encoding, Target
from workbench.ml.runtimes import (
    ModelFiles,
    Predict,
    check_exported_weights,
    load_backend,
    load_onnxruntime,
    one_line,
)
from workbench.serve.batching import merge_rows
from workbench.storage import open_store
from workbench.storage.base import Store, verified
from workbench.storage.catalog import (
    ARCHIVE_META,
    ARCHIVE_STATE,
    ENCODING,
    EXPORT_INFO,
    MODEL_CONFIG,
    MODEL_STATE,
    ONNX_MODEL,
    SAGEMAKER_ARCHIVE,
    Artifact,
    RunLayout,
    decode,
    suffix,
)

KEY = "serve.model"
ARCHIVE = suffix(SAGEMAKER_ARCHIVE.format)  # what a SageMaker model archive's name ends with
DEFAULT_VERSION = "1"  # the v2 version of a model that is not a run's (and what older clients ask for)
ARCHIVE_OPSET = 17  # an archive's model exported for onnxruntime at start; MXNet takes 12 at most


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and the encoding that makes its input, with where it came from."""

    encoding: Encoding
    predict: Predict
    backend: str
    source: str  # shown at start: "run <id>" or the archive's path
    resolved: str  # serve.model with latest or @NAME resolved to its run id: what another worker loads
    note: str = ""  # how the backend got the model, when not as stored (an archive exported at start)
    warning: str = ""  # why a run named by id is not vouched for (failed, stale or never validated)
    run: str = ""  # the run whose model this is ("" for an archive or a folder): the v2 version
    merge_rows: int = 1  # the most rows worth merging into one backend call (see batching.merge_rows)

    @property
    def version(self) -> str:
        """The model's version on the v2 routes: its run id, or ``1`` for a model not read from a run."""
        return self.run or DEFAULT_VERSION

    @property
    def target(self) -> Target:
        assert self.encoding.target is not None
        return self.encoding.target


def _is_location(spec: str) -> bool:
    """A path or URI rather than a run id: run ids hold no slash and no dot-suffix of an archive."""
    return "/" in spec or "\\" in spec or spec.endswith(ARCHIVE) or spec in (".", "..") or spec.startswith("~")


def _split_uri(spec: str) -> tuple[Store, str]:
    """The store holding ``spec`` and the key under it: the folder itself (``""``) or an archive's name."""
    if spec.startswith("s3://"):
        bucket_path = spec.rstrip("/")
        if bucket_path.endswith(ARCHIVE):
            parent, _, name = bucket_path.rpartition("/")
            return open_store(parent), name
        return open_store(bucket_path), ""
    if "://" in spec and not spec.startswith("file://"):
        raise StoreError(f"{KEY} {spec!r}: unsupported scheme; use a path, file:// or s3://")
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.is_absolute():
        from workbench.config.parameters import project_root

        path = project_root() / path
    if path.is_file():
        return open_store(str(path.parent)), path.name
    if path.is_dir():
        return open_store(str(path)), ""
    raise StoreError(
        f"{KEY} {spec!r}: no such file or folder ({path}); give a run id, latest, a model.tar.gz or its folder"
    )


def _archive_files(data: bytes, spec: str) -> dict[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            wanted = {ARCHIVE_STATE, ARCHIVE_META}
            files = {}
            for member in tar.getmembers():
                name = str(PurePosixPath(member.name))
                if name in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[name] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelError(f"{KEY} {spec!r} is not a readable model.tar.gz ({one_line(exc)})") from exc
    return files


def _from_archive(files: dict[str, bytes], spec: str, backend: str) -> tuple[Encoding, ModelFiles, str]:
    """A SageMaker archive: torch weights and ``code/model.json`` (the model config plus the encoding)."""
    missing = [name for name in (ARCHIVE_STATE, ARCHIVE_META) if name not in files]
    if missing:
        raise ModelError(
            f"{KEY} {spec!r} lacks {missing[0]}; it is not a model.tar.gz written by export.sagemaker "
            "(model.pth at the top, code/model.json)"
        )
    try:
        meta = json.loads(files[ARCHIVE_META])
    except ValueError as exc:
        raise ModelError(f"{KEY} {spec!r}: {ARCHIVE_META} is not valid JSON ({exc}); export the model again") from exc
    if "encoding" not in meta:
        raise ModelError(f"{KEY} {spec!r}: {ARCHIVE_META} has no encoding; export the model again")
    encoding = Encoding.from_json(meta.pop("encoding"))
    config, state = meta, files[ARCHIVE_STATE]

    def onnx_bytes() -> bytes:
        from workbench.ml.models import load_model, read_state
        from workbench.ml.onnx_export import check_mxnet_ops, to_onnx

        model = load_model(config, read_state(state, ARCHIVE_STATE))
        target = "mxnet" if backend == "mxnet" else "onnxruntime"
        proto = to_onnx(model, config["in_features"], 12 if target == "mxnet" else ARCHIVE_OPSET, target)
        if target == "mxnet":
            check_mxnet_ops(proto, config["model"])
        return proto.SerializeToString()

    note = "" if backend == "torch" else f"the archive's torch weights exported to ONNX at start for {backend}"
    return encoding, ModelFiles(onnx=onnx_bytes, torch=lambda: (config, state)), note


def _from_run(
    store: Store, folder: str, shown: str, recorded: Callable[[str], str | None] | None = None
) -> tuple[Encoding, ModelFiles]:
    """A run's artifacts under ``folder`` of ``store`` (``runs/<id>/``, or ``""`` for the run's own folder);
    with ``recorded`` (an artifact key's sha256 in the tracking db), a model file that is not the
    one the run wrote is refused."""

    @functools.cache  # model.pth is read for the export check and again by the torch backend
    def read(item: Artifact) -> bytes:
        data = store.read_bytes(folder + item.path)
        if recorded is None or item not in (ONNX_MODEL, MODEL_STATE):
            return data
        return verified(data, recorded(folder + item.path), store.uri(folder + item.path))

    if not store.exists(folder + ONNX_MODEL.path) or not store.exists(folder + ENCODING.path):
        where = f"{store.root}/{folder}".rstrip("/")
        raise TrackingError(
            f"{KEY} {shown!r}: no exported model ({ONNX_MODEL.path} and {ENCODING.path}) in {where}; "
            "`workbench runs` lists the runs"
        )
    if store.exists(folder + EXPORT_INFO.path) and store.exists(folder + MODEL_STATE.path):
        check_exported_weights(decode(EXPORT_INFO, read(EXPORT_INFO)), read(MODEL_STATE), shown)
    encoding = Encoding.from_json(decode(ENCODING, read(ENCODING), store.uri(folder + ENCODING.path)))
    files = ModelFiles(
        onnx=lambda: read(ONNX_MODEL),
        torch=lambda: (decode(MODEL_CONFIG, read(MODEL_CONFIG)), read(MODEL_STATE)),
    )
    return encoding, files


def _run_id(spec: str, db: str) -> tuple[str, str]:
    """The run ``latest``, ``@NAME`` or a run id names, and why its model is not vouched for ("" when it is).

    ``latest`` is the newest run whose export finished and whose parity verdict passed; a run named
    by id is served whatever its verdict, with a warning; so is the run an alias names (an alias is
    set only on a vouched-for model, but its parity may have gone stale since)."""
    from workbench.tracking.aliases import is_alias, resolve
    from workbench.tracking.tracker import Tracker, display_url

    if is_alias(spec):
        tracker = Tracker(db, create=False)
        spec = resolve(tracker, spec, key=KEY)
        return spec, tracker.model_doubts([spec])[spec] or ""
    if spec != "latest":
        try:
            tracker = Tracker(db, create=False)
        except TrackingError as exc:  # the store alone can serve a run; its verdict lives in the db
            return spec, f"its parity verdict cannot be read ({exc})"
        return spec, (tracker.model_doubts([spec])[spec] or "") if tracker.has_run(spec) else ""
    found = Tracker(db, create=False).latest_model()
    if found is None:
        raise TrackingError(
            f"{KEY} 'latest': no run in db {display_url(db)!r} has an exported model that passed validation; run "
            "`workbench run` with every step, or set serve.model to a run id (served with a warning), a run "
            "folder or a model.tar.gz"
        )
    return found, ""


def _recorded(db: str) -> Callable[[str], str | None]:
    """The sha256 the tracking db recorded for an artifact key; None for every key when there is no db."""
    from workbench.tracking.tracker import Tracker

    try:
        return Tracker(db, create=False).recorded_sha256
    except TrackingError:  # the store alone can serve a run
        return lambda key: None


def _locate(spec: str, store_uri: str, db: str, backend: str) -> tuple[Encoding, ModelFiles, str, str, str, str]:
    """The encoding and model files ``spec`` names, where they are, ``spec`` resolved, how the
    files reach the backend, and why a run's model is not vouched for."""
    if not _is_location(spec):
        spec, doubt = _run_id(spec, db)
        encoding, files = _from_run(open_store(store_uri), RunLayout(spec).root + "/", spec, _recorded(db))
        warning = f"{KEY} {spec}: {doubt}; served because it is named (latest skips such a model)" if doubt else ""
        return encoding, files, f"run {spec}", spec, "", warning
    store, name = _split_uri(spec)
    if name:
        encoding, files, note = _from_archive(_archive_files(store.read_bytes(name), spec), spec, backend)
        return encoding, files, spec, spec, note, ""
    if store.exists(ARCHIVE_META):  # an unpacked archive, as SageMaker mounts it
        files_read = {n: store.read_bytes(n) for n in (ARCHIVE_STATE, ARCHIVE_META) if store.exists(n)}
        encoding, files, note = _from_archive(files_read, spec, backend)
        return encoding, files, spec, spec, note, ""
    if store.exists(ENCODING.path):  # a run's folder: <store>/runs/<id>
        encoding, files = _from_run(store, "", spec)
        return encoding, files, spec, spec, "", ""
    raise ModelError(
        f"{KEY} {spec!r} holds neither {ARCHIVE_META} (an unpacked model.tar.gz) nor {ENCODING.path} (a run's folder)"
    )


def backend_threads(workers: int) -> int:
    """Threads for one backend call: the machine's cores shared by the workers. They sleep when idle
    (see :func:`_onnxruntime`), so the event loop gets a core back whenever a call is done."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def _onnxruntime(files: ModelFiles, threads: int) -> Predict:
    """onnxruntime on the fast form, its ``threads`` sleeping when idle: by default they spin a while
    after each call, taking the cores the event loop needs to read the next requests."""
    return load_onnxruntime(files.onnx(), threads=threads, sleep_when_idle=True)


def load_model(spec: str, backend: str, store: str, db: str, threads: int = 1) -> ServedModel:
    """The model ``spec`` names, loaded into ``backend`` (``threads`` per call) and run once on a row of zeros.

    The trial run catches a model whose outputs do not fit its target (a wrong archive, a renamed
    file) at start rather than on every request. Then calls of growing size find how many rows are
    worth merging into one call (:func:`~workbench.serve.batching.merge_rows`).
    """
    encoding, files, source, resolved, note, warning = _locate(spec, store, db, backend)
    if encoding.target is None:
        raise DataError(f"{KEY} {spec!r}: the encoding has no target; run the prepare step again")
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    try:
        predict = _onnxruntime(files, threads) if backend == "onnxruntime" else load_backend(backend, files)
    except ModelError as exc:  # model.pth cut short or not weights, a class that cannot be built: which model
        raise ModelError(f"{KEY} {spec!r}: {exc}") from exc
    try:
        outputs = np.asarray(predict(np.zeros((2, len(encoding.features)), dtype=np.float32)))
    except Exception as exc:  # broad on purpose: each backend fails in its own way on a model it cannot run
        raise ModelError(f"{KEY} {spec!r}: {backend} cannot run the model ({one_line(exc)})") from exc
    width = encoding.target.outputs
    if outputs.ndim != 2 or outputs.shape != (2, width):
        raise ModelError(
            f"{KEY} {spec!r}: the model answers shape {list(outputs.shape[1:])} per row but its "
            f"{encoding.target.task} target {encoding.target.name!r} needs {width}"
        )
    run = "" if _is_location(spec) else resolved
    merge = merge_rows(predict, len(encoding.features))
    return ServedModel(encoding, predict, backend, source, resolved, note, warning, run, merge)
