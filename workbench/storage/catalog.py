"""The artifact catalog: every file a run writes, in one table, and the one place run keys are built.

Each :class:`Artifact` names what a step produces (``schema``, ``onnx_model``, ...), the step that
produces it, its file name in that step's folder, its format and a one-line description; a figure
also carries its title in the report. Stages ask for artifacts by these names (or the constants
below) through :class:`~workbench.run.context.StepContext`, never by file name, and
:class:`RunLayout` lays out a run's folder::

    runs/<run_id>/<step>/<file>            a step's artifacts (prepare/train.parquet, train/model.pth)
    runs/<run_id>/<NN_notebook>.ipynb      each step's executed notebook
    runs/<run_id>/logs/<step>.kernel.log   each step's kernel stderr
    runs/<run_id>/report/                  the report: one page per notebook and index.html

:func:`encode` and :func:`decode` turn a Python value into an artifact's bytes and back, by format.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from workbench.errors import StoreError

RUNS = "runs"

# The file name suffixes of each format, the first being the usual one.
FORMATS: dict[str, tuple[str, ...]] = {
    "json": (".json",),
    "parquet": (".parquet",),
    "csv": (".csv",),
    "png": (".png",),
    "npz": (".npz",),
    "onnx": (".onnx",),
    "torch": (".pth", ".pt"),
    "tar.gz": (".tar.gz",),
    "ipynb": (".ipynb",),
    "log": (".log",),
    "html": (".html",),
}


def suffix(fmt: str) -> str:
    """The usual file name suffix of a format, e.g. ``.parquet``."""
    return FORMATS[fmt][0]


@dataclass(frozen=True)
class Artifact:
    """One file of a run: who writes it, where, in what format, and what it is."""

    name: str  # what stages ask for, unique in the catalog
    step: str  # the producing step, or ``report`` for the report's pages
    file: str  # path inside its folder, e.g. ``model.pth`` or ``checkpoints/last.pt``
    format: str  # a key of FORMATS
    description: str
    title: str = ""  # a figure's heading in the report
    when: str = ""  # written only when this holds; empty: every successful run of the step writes it
    folder: str | None = None  # under runs/<run_id>/; None: the step's folder

    @property
    def path(self) -> str:
        """Where it lives relative to ``runs/<run_id>/``."""
        folder = self.step if self.folder is None else self.folder
        return f"{folder}/{self.file}" if folder else self.file

    @property
    def is_figure(self) -> bool:
        return self.format == "png"

    @property
    def optional(self) -> bool:
        return bool(self.when)


# --- the steps' own artifacts, in pipeline order -------------------------------------------------

TRAIN_SPLIT = Artifact("train_split", "prepare", "train.parquet", "parquet", "training split, stratified by class")
VAL_SPLIT = Artifact("val_split", "prepare", "val.parquet", "parquet", "validation split, stratified by class")
TEST_SPLIT = Artifact("test_split", "prepare", "test.parquet", "parquet", "test split, stratified by class")
ENCODING = Artifact(
    "encoding",
    "prepare",
    "encoding.json",
    "json",
    "the model's input contract: input columns, types, vocabularies, means and scales, fitted on the training "
    "split, and the target's task, classes or scale",
)
SCHEMA = Artifact(
    "schema", "prepare", "schema.json", "json", "input columns, encoded features, target, task, classes and source"
)

MODEL_STATE = Artifact("model_state", "train", "model.pth", "torch", "trained weights (a PyTorch state_dict)")
MODEL_CONFIG = Artifact(
    "model_config", "train", "model_config.json", "json", "architecture and sizes to rebuild the model"
)
CHECKPOINT = Artifact(
    "checkpoint",
    "train",
    "checkpoints/last.pt",
    "torch",
    "last epoch's model, optimiser, schedule and RNG states, to resume from",
)
SET_ASIDE_CHECKPOINT = Artifact(
    "set_aside_checkpoint",
    "train",
    "checkpoints/set-aside.pt",
    "torch",
    "a checkpoint from other settings, kept once when an interactive run retrains",
    when="an interactive run meets a checkpoint written with other settings (not recorded in the DB)",
)
HISTORY = Artifact("history", "train", "history.csv", "csv", "loss, accuracy and seconds per epoch")
CURVES = Artifact(
    "curves", "train", "curves.png", "png", "loss and accuracy per epoch, train and validation", "Training curves"
)
ENVIRONMENT = Artifact(
    "environment", "train", "environment.json", "json", "device, GPU, CUDA/cuDNN and library versions"
)
TRAIN_METRICS = Artifact("train_metrics", "train", "metrics.json", "json", "final validation metrics of training")
FIT_PLOT = Artifact(
    "fit_plot",
    "train",
    "fit.png",
    "png",
    "validation split: predicted against actual and residuals (a number), or the confusion matrix (classes)",
    "Validation predictions",
)

ONNX_MODEL = Artifact("onnx_model", "export", "model.onnx", "onnx", "the model in ONNX, with run metadata")
EXPORT_INFO = Artifact("export_info", "export", "export.json", "json", "export target, opset and input/output names")
REFERENCE_OUTPUTS = Artifact(
    "reference_outputs", "export", "reference.npz", "npz", "validation inputs, PyTorch's logits and the labels"
)
SAGEMAKER_ARCHIVE = Artifact(
    "sagemaker_archive",
    "export",
    "model.tar.gz",
    "tar.gz",
    "model and inference code for SageMaker's PyTorch serving container",
    when="export.sagemaker is on",
)

PARITY = Artifact(
    "parity", "validate", "parity.json", "json", "verdict, reasons, tolerances and statistics per backend"
)
PARITY_PLOT = Artifact(
    "parity_plot", "validate", "parity.png", "png", "each backend's logits against PyTorch's", "Backends vs PyTorch"
)

# What the held-out test split says of the exported model, beside the baselines (written by validate).
WITH_TEST_ROWS = "the prepare step wrote test rows (data.test_fraction above 0)"
CLASSES_WITH_TEST_ROWS = "classification, and the prepare step wrote test rows"
TEST_SCORE = Artifact(
    "test_score",
    "validate",
    "test.json",
    "json",
    "the exported model's test-split metrics beside gradient boosting's and chance's, and how it compares",
)
PER_CLASS = Artifact(
    "per_class",
    "validate",
    "per_class.csv",
    "csv",
    "test split: precision, recall, F1 and support per class",
    when=CLASSES_WITH_TEST_ROWS,
)
CONFUSION = Artifact(
    "confusion",
    "validate",
    "confusion.csv",
    "csv",
    "test split: confusion matrix, a row per actual class, a column per predicted class",
    when=CLASSES_WITH_TEST_ROWS,
)
TEST_PLOT = Artifact(
    "test_plot",
    "validate",
    "test.png",
    "png",
    "test split: the confusion matrix (classes), or predicted against actual and residuals (a number)",
    "Test predictions",
    when=WITH_TEST_ROWS,
)

PREDICTIONS = Artifact(
    "predictions", "score", "predictions.parquet", "parquet", "predicted class and confidence per row"
)
SCORE_INFO = Artifact("score_info", "score", "model.json", "json", "the model run, backend and source scored")
CLASSES_PLOT = Artifact("classes_plot", "score", "classes.png", "png", "rows per predicted class", "Predicted classes")

SPLIT_ARTIFACTS = {"train": TRAIN_SPLIT, "val": VAL_SPLIT, "test": TEST_SPLIT}

# A Parquet artifact written by the workers of engine: dask is a dataset of parts beside where its
# single file would be: prepare/train/part-00000.parquet, ... (one per source partition, in order).
PART_FILE = "part-{:05d}.parquet"


def parts_prefix(key: str) -> str:
    """The folder of the parts of the Parquet artifact at ``key`` (``.../train.parquet`` -> ``.../train/``)."""
    return key.removesuffix(suffix("parquet")) + "/"


def part_key(key: str, index: int) -> str:
    """The key of part ``index`` of the Parquet artifact at ``key``."""
    return parts_prefix(key) + PART_FILE.format(index)


# Inside model.tar.gz, where templates/sagemaker_inference.py looks: SageMaker's convention.
ARCHIVE_STATE = MODEL_STATE.file
ARCHIVE_META = "code/model.json"

# --- what the pipeline and the report write for every step ---------------------------------------

NOTEBOOKS = {  # step -> its notebook in notebooks/, in pipeline order; executed copies keep the name
    "prepare": "01_prepare_data.ipynb",
    "train": "02_train.ipynb",
    "export": "03_export_onnx.ipynb",
    "validate": "04_validate_mxnet.ipynb",
    "score": "05_batch_score.ipynb",
}
STEP_ORDER = tuple(NOTEBOOKS)


def _run_files(step: str, notebook: str) -> tuple[Artifact, ...]:
    page = notebook.removesuffix(suffix("ipynb")) + suffix("html")
    return (
        Artifact(
            f"{step}_notebook", step, notebook, "ipynb", f"{step} notebook as executed, outputs and errors", folder=""
        ),
        Artifact(
            f"{step}_kernel_log", step, f"{step}.kernel{suffix('log')}", "log", f"{step} kernel's stderr", folder="logs"
        ),
        Artifact(f"{step}_page", "report", page, "html", f"{step} notebook as HTML", folder="report"),
    )


REPORT_INDEX = Artifact("report_index", "report", "index.html", "html", "the run's report", folder="report")

_STEP_ARTIFACTS = (
    TRAIN_SPLIT,
    VAL_SPLIT,
    TEST_SPLIT,
    ENCODING,
    SCHEMA,
    MODEL_STATE,
    MODEL_CONFIG,
    CHECKPOINT,
    SET_ASIDE_CHECKPOINT,
    HISTORY,
    CURVES,
    ENVIRONMENT,
    TRAIN_METRICS,
    FIT_PLOT,
    ONNX_MODEL,
    EXPORT_INFO,
    REFERENCE_OUTPUTS,
    SAGEMAKER_ARCHIVE,
    PARITY,
    PARITY_PLOT,
    TEST_SCORE,
    PER_CLASS,
    CONFUSION,
    TEST_PLOT,
    PREDICTIONS,
    SCORE_INFO,
    CLASSES_PLOT,
)

CATALOG: tuple[Artifact, ...] = (
    *_STEP_ARTIFACTS,
    *(a for step, notebook in NOTEBOOKS.items() for a in _run_files(step, notebook)),
    REPORT_INDEX,
)
_BY_NAME = {a.name: a for a in CATALOG}
assert len(_BY_NAME) == len(CATALOG), "artifact names must be unique"

FIGURES = tuple(a for a in CATALOG if a.is_figure)  # pipeline order: what the report plots


def artifact(name: str | Artifact) -> Artifact:
    """The catalog entry called ``name`` (an :class:`Artifact` is returned as it is)."""
    if isinstance(name, Artifact):
        return name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no artifact {name!r} in the catalog; known: {', '.join(_BY_NAME)}") from None


def of_step(step: str) -> tuple[Artifact, ...]:
    """What ``step`` writes (its notebook and kernel log included), in catalog order."""
    return tuple(a for a in CATALOG if a.step == step)


def notebook(step: str) -> Artifact:
    return _BY_NAME[f"{step}_notebook"]


def kernel_log(step: str) -> Artifact:
    return _BY_NAME[f"{step}_kernel_log"]


def report_page(step: str) -> Artifact:
    return _BY_NAME[f"{step}_page"]


@dataclass(frozen=True)
class RunLayout:
    """The keys of one run's folder, ``runs/<run_id>/...``, in any store."""

    run_id: str

    @property
    def root(self) -> str:
        return f"{RUNS}/{self.run_id}"

    def key(self, item: str | Artifact) -> str:
        """The store key of a catalog artifact (by name or entry)."""
        return f"{self.root}/{artifact(item).path}"

    def step_key(self, step: str, file: str) -> str:
        """The key of any file in a step's folder, catalogued or not."""
        return f"{self.root}/{step}/{file}"

    def relative(self, key: str) -> str:
        """``key`` relative to the run's folder."""
        return key.removeprefix(self.root + "/")

    def find(self, key: str) -> Artifact | None:
        """The catalog entry stored at ``key`` in this run, if any."""
        rel = self.relative(key)
        return next((a for a in CATALOG if a.path == rel), None)


# --- encoding by format --------------------------------------------------------------------------


def encode(item: str | Artifact, value: Any) -> bytes:
    """An artifact's bytes: ``bytes`` as they are; else JSON for json, a DataFrame for parquet and
    csv, a matplotlib Figure for png, a dict of arrays for npz."""
    entry = artifact(item)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    fmt = entry.format
    if fmt == "json":
        return json.dumps(value, indent=2).encode()
    if fmt == "csv":
        return value.to_csv(index=False).encode()
    buf = io.BytesIO()
    if fmt == "parquet":
        value.to_parquet(buf, index=False)
    elif fmt == "png":
        value.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    elif fmt == "npz":
        import numpy as np

        np.savez_compressed(buf, **value)
    else:
        raise TypeError(f"artifact {entry.name} ({fmt}) is saved from bytes, not {type(value).__name__}")
    return buf.getvalue()


def decode(item: str | Artifact, data: bytes, where: str = "") -> Any:
    """An artifact's value: parsed JSON, a DataFrame for parquet and csv, a dict of arrays for npz,
    else the bytes (torch, onnx, png, ...: the caller knows how it wants them loaded). JSON that does
    not parse (a file cut short or edited by hand) is one line naming ``where`` (its URI) and the step
    that writes it again."""
    entry = artifact(item)
    fmt = entry.format
    if fmt == "json":
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are no text
            reason = (
                f"{exc.msg}, line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
            )
            raise StoreError(
                f"{where or entry.path} is not valid JSON ({reason}); the file is damaged: run the {entry.step} "
                "step again to write it"
            ) from exc
    if fmt in ("parquet", "csv"):
        import pandas as pd

        read = pd.read_parquet if fmt == "parquet" else pd.read_csv
        return read(io.BytesIO(data))
    if fmt == "npz":
        import numpy as np

        with np.load(io.BytesIO(data)) as npz:
            return {k: npz[k] for k in npz.files}
    return data


# --- key results: the report's cards, one per metric that the run logged -------------------------


@dataclass(frozen=True)
class KeyResult:
    label: str
    metric: str
    spec: str  # a format spec, e.g. ".2%"

    def show(self, value: float) -> str:
        return format(value, self.spec)


KEY_RESULTS = (
    KeyResult("validation accuracy", "val_accuracy", ".2%"),
    KeyResult("validation RMSE", "val_rmse", ".4g"),
    KeyResult("validation R²", "val_r2", ".3f"),
    KeyResult("test accuracy", "test_accuracy", ".2%"),
    KeyResult("test ROC AUC", "test_roc_auc", ".3f"),
    KeyResult("test RMSE", "test_rmse", ".4g"),
    KeyResult("test R²", "test_r2", ".3f"),
    KeyResult("MXNet accuracy", "mxnet_accuracy", ".2%"),
    KeyResult("MXNet max abs error", "mxnet_max_abs_err", ".2e"),
    KeyResult("onnxruntime max abs error", "onnxruntime_max_abs_err", ".2e"),
    KeyResult("training seconds", "train_seconds", ".1f"),
    KeyResult("rows scored", "rows_scored", ",.0f"),
    KeyResult("scoring rows/s", "rows_per_second", ",.0f"),
)
