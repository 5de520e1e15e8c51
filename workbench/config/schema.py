"""The parameter schema: one pydantic model per section, the only place a key is written.

A key's type, default, constraint and help text live here and nowhere else: ``workbench run
--help``, ``parameters/default.yaml``, the README's table and each notebook's parameters cell are
generated from these models (``workbench notebooks --sync``) and checked against them (tests,
``workbench notebooks --check``), and every stage validates what it receives through them, so a
notebook run by plain papermill or in JupyterLab refuses a bad value as ``workbench run`` does.

Values are checked as strictly as a YAML user expects: ``1e-3`` is a number, ``true`` is no
integer, ``2.5`` is no epoch count, ``.inf`` and ``nan`` are refused. Every problem becomes one line
naming the key and where its value came from (see :func:`problem_line`).
"""

from __future__ import annotations

import difflib
import math
import re
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from workbench.config.secrets import holds_password, mask
from workbench.config.sql import query_problem
from workbench.errors import ParameterError


def _refuse(problem: str, value: Any = None, *, shown: bool = True) -> PydanticCustomError:
    """A problem as pydantic carries it; the message is the one line's tail (``must be ..., got x``)."""
    if shown:
        value = mask(value) if isinstance(value, str) else mask(str(value)) if isinstance(value, dict) else value
        problem = f"{problem}, got {value!r}"
    return PydanticCustomError("workbench", problem)


# ---- value types: strict where YAML is loose, loose where YAML is surprising -----------------------

# YAML 1.1 reads 1e-3, 1.0e6 and inf as strings; a numeric key takes them as the numbers they spell
_NUMBER = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?|\.?inf(?:inity)?|\.?nan)", re.IGNORECASE)


def _number(value: Any, want: type) -> int | float:
    """``value`` as the int or float a key wants, refusing non-numbers and non-finite values.

    inf and nan pass every ``> 0`` check by accident (or fail it with a baffling message), and a
    lr of nan only shows as a nan loss minutes into training, so they are refused here.
    """
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value.strip().lower().replace(".inf", "inf").replace(".nan", "nan"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(f"expected {'an integer' if want is int else 'a number'}, got {value!r}", shown=False)
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse("must be a finite number", value)
    if want is int:
        if isinstance(value, float) and not value.is_integer():
            raise _refuse(f"expected an integer, got {value!r}; drop the fraction", shown=False)
        return int(value)
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise _refuse("must be a finite number", value) from None


def _integer(value: Any) -> int:
    return int(_number(value, int))


def _float(value: Any) -> float:
    return float(_number(value, float))


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _refuse(f"expected a string, got {value!r}", shown=False)
    if problem := password_problem(value):
        raise _refuse(problem, value)
    return value


def _names(value: Any) -> list[str]:
    """Column names: a YAML list, or text as ``--set`` and ``papermill -p`` give it (``id,plan`` or ``[id, plan]``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise _refuse("expected a list of column names, e.g. [customer_id, signup_date]", value) from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, int) and not isinstance(value, bool):  # papermill's `-p drop 2024`
        value = [value]
    if isinstance(value, list):  # a header's 2024 is the name "2024", as YAML's [2024] means it
        value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _refuse("expected a list of column names, e.g. [customer_id, signup_date]", value)
    if len(set(value)) < len(value):
        twice = next(v for v in value if value.count(v) > 1)
        raise _refuse(f"names {twice!r} twice", value)
    if problem := next(filter(None, map(password_problem, value)), None):
        raise _refuse(problem, value)
    return list(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse(f"expected true or false, got {value!r}", shown=False)
    return value


def _not_empty(value: str) -> str:
    if not value.strip():
        raise _refuse("must not be empty", value)
    return value


def password_problem(text: str) -> str | None:
    """A URL with a password anywhere in a string value: parameters are written into executed
    notebooks, reports and the tracking database, so secrets must come from elsewhere."""
    if holds_password(text) or re.match(r"^[\w+]+://[^/@:]*:[^/@]*@", text):
        return (
            "must not hold a password (it would be written into notebooks and reports); leave it out of the URL "
            "and use PGPASSWORD, ~/.pgpass or the AWS credential chain"
        )
    return None


def _db_url_problem(url: str) -> str | None:
    if "://" not in url:
        return "must be a SQLAlchemy URL such as sqlite:///artifacts/workbench.db"
    return password_problem(url)


def _no_password(value: str) -> str:
    if problem := password_problem(value):
        raise _refuse(problem, value)
    return value


def _db_url(value: str) -> str:
    if problem := _db_url_problem(value):
        raise _refuse(problem, value)
    return value


def _pattern(regex: str, problem: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(regex, value):
            raise _refuse(problem, value)
        return value

    return check


def source_problem(value: str | dict) -> str | None:
    """What is wrong with a data source value, if anything."""
    if isinstance(value, str):
        return password_problem(value) if value.strip() else "must not be empty"
    keys = set(value) - {"fingerprint"}  # optional: a query whose answer stands for the data (step reuse)
    if keys not in ({"url", "query"}, {"url", "table"}):
        return "a SQL source needs exactly the keys url and query, or url and table (and optionally fingerprint)"
    if not all(isinstance(x, str) and x.strip() for x in value.values()):
        return "a SQL source's url, query, table and fingerprint must be non-empty strings"
    problem = _db_url_problem(value["url"]) or next(filter(None, map(password_problem, value.values())), None)
    if not problem and "fingerprint" in value and (wrong := query_problem(value["fingerprint"])):
        problem = f"its fingerprint: {wrong}"
    return problem or (query_problem(value["query"]) if "query" in value else None)


def _source(value: Any) -> str | dict[str, str]:
    if not isinstance(value, (str, dict)):
        raise _refuse(
            f"expected a path or URI, or a mapping {{url, query}} or {{url, table}}, got {value!r}", shown=False
        )
    if problem := source_problem(value):
        raise _refuse(problem, value)
    return value


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_float)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Str = Annotated[str, BeforeValidator(_string)]
Text = Annotated[str, AfterValidator(_not_empty), BeforeValidator(_string)]
Url = Annotated[str, AfterValidator(_db_url), BeforeValidator(_string)]
Source = Annotated[str | dict[str, str], BeforeValidator(_source)]
Names = Annotated[list[str], BeforeValidator(_names)]
Seed = Annotated[Int, Field(ge=0, le=2**32 - 1)]  # numpy's RandomState and the split take 32-bit seeds

_KIND = {_integer: "int", _float: "float", _boolean: "bool", _string: "str", _source: "source", _names: "list"}


# ---- the sections -------------------------------------------------------------------------------------


class Section(BaseModel):
    """A group of keys (``train.*``): frozen, unknown keys refused, one-line errors when built by hand."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)
    section: typing.ClassVar[str] = ""

    def __init__(self, /, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            prefix = f"{self.section}." if self.section else ""
            raise ParameterError(problem_line(exc, lambda _key: f"{type(self).__name__}({shown})", prefix)) from exc

    # validating a nested section (Params from a dict) skips this __init__, so its errors reach the
    # caller's translation with the keys' real origins
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class DataParams(Section):
    """The prepare step (notebook 01): what to read and how to split it."""

    section = "data"
    source: Source = Field(
        "bundled:digits",
        description="input table: a CSV, CSV.gz or Parquet path (relative to the project folder) or s3:// URI, "
        "a Parquet dataset (a folder, an s3:// prefix ending in /, or a glob), bundled:digits, "
        "or a database as {url: SQLAlchemy URL, query: SELECT ...} or {url: ..., table: ...}",
    )
    target: Text = Field("label", description="column to predict: class labels (text, booleans, integers) or numbers")
    task: Annotated[Literal["auto", "classification", "regression"], BeforeValidator(_string)] = Field(
        "auto",
        description="auto (text, booleans or at most 20 distinct whole numbers classify; other numbers regress), "
        "classification or regression",
    )
    drop: Names = Field([], description="columns left out of the model: IDs, leaks, free text")
    categorical: Names = Field(
        [], description="columns one-hot encoded as categories even when numeric (store numbers, codes)"
    )
    max_categories: Int = Field(
        50,
        gt=0,
        le=10_000,
        description="one-hot columns kept per category column (most frequent), plus missing and other",
    )
    val_fraction: Float = Field(0.15, gt=0, lt=1, description="share of rows held out for validation")
    test_fraction: Float = Field(
        0.15,
        ge=0,
        lt=1,
        description="share of rows held out for the final test (0: none, and no test metrics); "
        "with val_fraction below 0.9",
    )

    @field_validator("test_fraction")
    @classmethod
    def _leaves_training_rows(cls, value: float, info: Any) -> float:
        val = info.data.get("val_fraction")
        if val is not None and val + value >= 0.9:
            raise PydanticCustomError(
                "workbench",
                f"{val + value:g} leaves too few rows to train on; keep the sum below 0.9",
                {"label": "data.val_fraction + data.test_fraction", "also": "val_fraction"},
            )
        return value


class Optimisation(Section):
    """The train keys that shape the optimisation: a checkpoint resumes only under the same values."""

    section = "train"
    epochs: Int = Field(30, gt=0, le=100_000, description="passes over the training split")
    batch_size: Int = Field(32, gt=0, le=1_048_576, description="samples per optimisation step")
    lr: Float = Field(0.002, gt=0, le=10, description="Adam learning rate")
    schedule: Annotated[Literal["cosine", "constant"], BeforeValidator(_string)] = Field(
        "cosine", description="learning-rate schedule: cosine (decay to zero) or constant"
    )
    patience: Int = Field(
        0,
        ge=0,
        le=100_000,
        description="early stopping: stop after this many epochs without a better train.monitor (0: never)",
    )
    monitor: Annotated[Literal["val_loss", "val_accuracy"], BeforeValidator(_string)] = Field(
        "val_loss", description="what early stopping watches: val_loss or val_accuracy; the best epoch is kept"
    )
    clip_grad_norm: Float = Field(0.0, ge=0, le=1_000_000, description="clip gradients to this L2 norm (0: off)")


class TrainParams(Optimisation):
    """The train step (notebook 02): the optimisation, the model and where it runs."""

    model: Annotated[
        Str,
        AfterValidator(_pattern(r"auto|cnn|mlp|[\w.]+:\w+", "must be 'auto', 'cnn', 'mlp' or 'package.module:Class'")),
    ] = Field(
        "auto",
        description="auto (cnn for 8x8 images such as the digits, else mlp), cnn, mlp, or your own nn.Module as "
        "package.module:Class (called with in_features and num_classes, 1 for regression)",
    )
    width: Int = Field(128, gt=0, le=65_536, description="mlp: units per hidden layer")
    depth: Int = Field(2, gt=0, le=1_000, description="mlp: hidden layers")
    processes: Int = Field(
        1,
        gt=0,
        le=1024,
        description="training processes; more than 1: torchrun + DistributedDataParallel (rank 0 writes)",
    )
    device: Annotated[
        Str, AfterValidator(_pattern(r"auto|cpu|cuda(:\d+)?", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"))
    ] = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    amp: Bool = Field(
        True, description="mixed precision when training on CUDA: bf16 where supported, else fp16 with loss scaling"
    )
    max_memory_gb: Float = Field(
        0.0,
        ge=0,
        le=1_048_576,
        description="GiB the splits may take loaded whole, else they stream from Parquet (0: half the free host "
        "and GPU memory)",
    )
    shuffle_buffer: Int = Field(
        65_536,
        gt=0,
        le=100_000_000,
        description="rows shuffled together when a split streams (row-group order is shuffled too)",
    )
    compile: Annotated[Literal["off", "on"], BeforeValidator(_string)] = Field(
        "off",
        description="on: capture the whole training step in a CUDA graph (full batches; CUDA only, "
        "the eager step elsewhere)",
    )
    nodes: Int = Field(
        1,
        gt=0,
        le=1024,
        description="machines training together, each running train.processes workers (see train.rdzv_endpoint)",
    )
    rdzv_endpoint: Str = Field(
        "",
        validate_default=True,
        description="host:port where the nodes meet (torchrun's c10d rendezvous) when train.nodes > 1",
    )

    @field_validator("rdzv_endpoint")
    @classmethod
    def _meeting_point(cls, value: str, info: Any) -> str:
        nodes = info.data.get("nodes") or 1
        if nodes > 1 and not value:
            raise PydanticCustomError(
                "workbench",
                f"{nodes} nodes need train.rdzv_endpoint, the host:port every node reaches, e.g. 10.0.0.5:29400",
                {"label": "train.nodes", "of": "nodes"},
            )
        if value and not re.fullmatch(r"[\w.-]+:\d{1,5}", value):
            raise PydanticCustomError(
                "workbench", f"must be the host:port every node reaches, e.g. 10.0.0.5:29400, got {value!r}"
            )
        return value

    def fit_settings(self, seed: int) -> FitSettings:
        """What shapes the optimisation, with the seed: the settings a checkpoint must match."""
        return FitSettings(**self.model_dump(include=set(Optimisation.model_fields)), seed=seed)


class FitSettings(Optimisation):
    """Everything that shapes the optimisation (the train keys of :class:`Optimisation` and the seed);
    a checkpoint only resumes under the same settings."""

    seed: Seed = 0


class ExportParams(Section):
    """The export step (notebook 03): PyTorch to ONNX."""

    section = "export"
    target: Annotated[Literal["mxnet", "onnxruntime"], BeforeValidator(_string)] = Field(
        "mxnet",
        description="mxnet (opset 12 at most, ops MXNet 1.9 imports) or onnxruntime (newer opsets, skips MXNet)",
    )
    opset: Int = Field(12, ge=7, le=20, description="ONNX opset; at most 12 when export.target is mxnet")
    ort_atol: Float = Field(
        1e-4, ge=0, le=1_000_000, description="max absolute difference allowed between onnxruntime and PyTorch"
    )
    sagemaker: Bool = Field(
        False, description="also write a SageMaker PyTorch model.tar.gz (model.pth + code/inference.py)"
    )

    @field_validator("opset")
    @classmethod
    def _mxnet_opset(cls, value: int, info: Any) -> int:
        if info.data.get("target") == "mxnet" and value > 12:
            raise PydanticCustomError(
                "workbench",
                f"MXNet imports opset 12 at most, got {value}; lower it or set export.target=onnxruntime",
            )
        return value


class ValidateParams(Section):
    """The validate step (notebook 04): parity tolerances."""

    section = "validate"
    atol: Float = Field(
        1e-4, ge=0, le=1_000_000, description="absolute tolerance, MXNet and onnxruntime vs PyTorch logits"
    )
    rtol: Float = Field(
        1e-3, ge=0, le=1_000_000, description="relative tolerance, MXNet and onnxruntime vs PyTorch logits"
    )
    min_agreement: Float = Field(0.999, gt=0, le=1, description="share of rows whose predicted class must agree")


class ScoreParams(Section):
    """Batch scoring (notebook 05), a workflow of its own: workbench run --steps score."""

    section = "score"
    source: Source = Field(
        "split:test",
        description="table to score: split:test (the model run's held-out test rows), split:val or split:train, "
        "or a table shaped like the training data: a CSV/CSV.gz/Parquet path or s3:// URI, a Parquet dataset "
        "(a folder, an s3:// prefix ending in /, or a glob), bundled:digits, "
        "or {url: ..., query: ...} / {url: ..., table: ...}",
    )
    backend: Annotated[Literal["onnxruntime", "mxnet", "torch"], BeforeValidator(_string)] = Field(
        "onnxruntime", description="onnxruntime, mxnet or torch"
    )
    batch_size: Int = Field(
        1024, gt=0, le=10_000_000, description="rows per scoring batch (memory grows with it, not with the data)"
    )
    model_run: Text = Field(
        "latest",
        description="run whose model scores: a run id, @NAME (the run an alias names, e.g. @champion), or latest "
        "(this run's model, else the newest that passed validation)",
    )


class PublishParams(Section):
    """Where the validate and score steps publish their rows and metrics."""

    section = "publish"
    url: Annotated[Str, AfterValidator(_no_password)] = Field(
        "", description="SQLAlchemy URL to publish predictions to; empty: do not publish"
    )
    table: Text = Field(
        "predictions", description="table for published predictions (created if missing); metrics go to <table>_metrics"
    )


class ServeParams(Section):
    """workbench serve: one model over HTTP, SageMaker's hosting contract and the Open Inference Protocol v2."""

    section = "serve"
    model: Text = Field(
        "latest",
        description="what to serve: latest (newest run in store/db whose exported model passed validation), a run id, @NAME (the run "
        "an alias names, followed as it moves), a run's folder, or a SageMaker model.tar.gz or its unpacked folder "
        "(/opt/ml/model); paths or s3:// URIs",
    )
    reload_s: Float = Field(
        30.0,
        ge=0,
        le=86400,
        description="with serve.model=@NAME: seconds between checks of the alias; when it has moved, the new model is "
        "loaded beside the old one and swapped in between two backend calls (0: never)",
    )
    backend: Annotated[Literal["onnxruntime", "mxnet", "torch"], BeforeValidator(_string)] = Field(
        "onnxruntime",
        description="onnxruntime, mxnet or torch (a model.tar.gz holds torch weights: exported to ONNX in "
        "memory at start for the other two)",
    )
    host: Text = Field("127.0.0.1", description="address to listen on: 0.0.0.0 for every interface (a container)")
    port: Int = Field(
        8080, ge=0, le=65535, description="TCP port (SageMaker: 8080; 0: any free port, printed at start)"
    )
    workers: Int = Field(
        1, gt=0, le=1024, description="server processes sharing the port, each with its own model and batcher"
    )
    max_batch: Int = Field(
        1024,
        gt=0,
        le=1_048_576,
        description="most rows per backend call (a larger request is split); concurrent requests are merged "
        "up to this or to the size measured at start, whichever is smaller",
    )
    max_delay_ms: Float = Field(
        2.0, ge=0, le=60_000, description="how long a batch may wait for requests still arriving, in milliseconds"
    )
    max_queue: Int = Field(
        128,
        gt=0,
        le=1_000_000,
        description="prediction requests in the server at once per worker; more are answered 429",
    )
    max_body_mb: Float = Field(
        16.0, gt=0, le=4096, description="largest request body in MiB; larger ones are answered 413"
    )
    access_log: Annotated[Literal["off", "common", "json"], BeforeValidator(_string)] = Field(
        "off",
        description="a line per answered request: off, common (Common Log Format) or json; errors are logged "
        "either way",
    )
    read_timeout_s: Float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a client has to send a request's headers, and each part of its body; a slower "
        "one is answered 408 and its connection closed",
    )
    name: Annotated[
        Str, AfterValidator(_pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "must be letters, digits, '_', '.' or '-'"))
    ] = Field("workbench", description="the model's name on the v2 routes: /v2/models/<name>/infer")


DASK_SCHEDULER = re.compile(r"local:[1-9][0-9]{0,3}|tcp://[^\s/:@]+:[0-9]{1,5}")


def scheduler_problem(value: str) -> str | None:
    """What is wrong with a ``dask.scheduler`` value, if anything."""
    if DASK_SCHEDULER.fullmatch(value):
        return None
    return "must be local:N (N worker processes on this machine, 1 to 9999) or tcp://HOST:PORT (a running scheduler)"


def _scheduler(value: str) -> str:
    if problem := scheduler_problem(value):
        raise _refuse(problem, value)
    return value


class DaskParams(Section):
    """The Dask cluster prepare and batch scoring run on with engine: dask."""

    section = "dask"
    scheduler: Annotated[Str, AfterValidator(_scheduler)] = Field(
        "local:2",
        description="local:N (a cluster of N worker processes on this machine, started for the step) or "
        "tcp://HOST:8786 (a running Dask scheduler: EC2, ECS, Kubernetes, Coiled)",
    )


class UIParams(Section):
    """workbench ui: a read-only web app over the tracking database and the runs' stores."""

    section = "ui"
    host: Text = Field(
        "127.0.0.1", description="address to listen on: 0.0.0.0 lets other machines in (the app has no login)"
    )
    port: Int = Field(8090, ge=0, le=65535, description="TCP port (0: any free port, printed at start)")


with warnings.catch_warnings():  # the section "validate" shadows BaseModel.validate, deprecated since pydantic 2
    warnings.filterwarnings("ignore", r'Field name "validate"', UserWarning)

    class Params(Section):
        """All parameters of a run: four top-level keys and one model per section."""

        store: Text = Field(
            "artifacts",
            description="artifact root: a folder (relative paths start at the project folder) or s3://bucket/prefix",
        )
        db: Url = Field("sqlite:///artifacts/workbench.db", description="tracking database, any SQLAlchemy URL")
        seed: Seed = Field(0, description="seed for splits, weight init and shuffling (0 to 2**32-1)")
        engine: Annotated[Literal["local", "dask"], BeforeValidator(_string)] = Field(
            "local",
            description="what runs prepare and batch scoring: local (this process) or dask (the partitions of a "
            "Parquet dataset on the workers of dask.scheduler; needs workbench[dask])",
        )
        data: DataParams = DataParams()
        train: TrainParams = TrainParams()
        export: ExportParams = ExportParams()
        validate: ValidateParams = ValidateParams()  # type: ignore[assignment]  # shadows BaseModel.validate
        score: ScoreParams = ScoreParams()
        publish: PublishParams = PublishParams()
        serve: ServeParams = ServeParams()
        ui: UIParams = UIParams()
        dask: DaskParams = DaskParams()


SECTIONS: dict[str, type[Section]] = {
    name: info.annotation
    for name, info in Params.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, Section)
}

# ---- the flat view: dotted keys, as files, --set, the CLI help and the docs name them ----------------


@dataclass(frozen=True)
class Key:
    """One dotted key, read off the models."""

    key: str
    section: str  # "" for store, db, seed
    name: str
    default: Any
    help: str
    kind: str  # int, float, bool, str or source: how a --set value is read
    constraint: str  # e.g. "greater than 0", "'cosine' or 'constant'", "" when any value of the kind goes


def _kind(info: FieldInfo) -> str:
    for item in info.metadata:
        kind = _KIND.get(getattr(item, "func", None))  # type: ignore[arg-type]
        if kind:
            return kind
    return "str"  # a Literal of strings


def _choices(info: FieldInfo) -> tuple[Any, ...]:
    annotation = info.annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _bounds(info: FieldInfo) -> dict[str, Any]:
    return {
        b: getattr(m, b) for m in info.metadata for b in ("gt", "ge", "lt", "le") if getattr(m, b, None) is not None
    }


def _show(bound: Any) -> str:
    return f"{bound} (2**32-1)" if bound == 2**32 - 1 else f"{bound:g}" if isinstance(bound, float) else str(bound)


def constraint(info: FieldInfo) -> str:
    """The field's range or choices in words, as its error and docs state them."""
    if choices := _choices(info):
        shown = [repr(c) for c in choices]
        return " or ".join(shown) if len(shown) < 3 else f"{', '.join(shown[:-1])} or {shown[-1]}"
    b = {k: _show(v) for k, v in _bounds(info).items()}
    if "ge" in b and "le" in b:
        return f"between {b['ge']} and {b['le']}"
    if "gt" in b and "lt" in b:
        return f"between {b['gt']} and {b['lt']} (exclusive)"
    if "gt" in b and "le" in b:
        return f"greater than {b['gt']} and at most {b['le']}"
    if "ge" in b and "lt" in b:
        return f"{b['ge']} or more, below {b['lt']}"
    if "gt" in b:
        return f"greater than {b['gt']}"
    if "ge" in b:
        return f"{b['ge']} or more"
    return ""


def _keys() -> Iterator[Key]:
    for name, info in Params.model_fields.items():
        if name in SECTIONS:
            for leaf, inner in SECTIONS[name].model_fields.items():
                yield Key(
                    f"{name}.{leaf}",
                    name,
                    leaf,
                    inner.default,
                    inner.description or "",
                    _kind(inner),
                    constraint(inner),
                )
        else:
            yield Key(name, "", name, info.default, info.description or "", _kind(info), constraint(info))


KEYS: tuple[Key, ...] = tuple(_keys())
SPEC: dict[str, Key] = {k.key: k for k in KEYS}
_FIELDS: dict[str, FieldInfo] = {
    k.key: (SECTIONS[k.section].model_fields[k.name] if k.section else Params.model_fields[k.name]) for k in KEYS
}


def defaults() -> dict[str, Any]:
    return {k.key: k.default for k in KEYS}


def unknown_key(key: str, origin: str) -> ParameterError:
    hint = difflib.get_close_matches(key, SPEC, n=1)
    tip = f"; did you mean {hint[0]}?" if hint else f"; known keys: {', '.join(SPEC)}"
    return ParameterError(f"unknown parameter {key!r} in {origin}{tip}")


def problem_line(exc: ValidationError, origin: Callable[[str], str], prefix: str = "") -> str:
    """The first of pydantic's errors as one line: ``<key> in <origin>: <problem>, got <value>``.

    ``origin(key)`` says where a dotted key's value came from; ``prefix`` makes a section's field
    names dotted keys (``train.``) when the section was validated alone.
    """
    error = exc.errors(include_url=False)[0]
    parts = [str(p) for p in error["loc"]]
    key = prefix + ".".join(parts)
    for end in range(len(parts), 0, -1):  # drop what pydantic adds below a key (union branches)
        if prefix + ".".join(parts[:end]) in SPEC:
            key = prefix + ".".join(parts[:end])
            break
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden" or key not in SPEC:
        return str(unknown_key(key, origin(key)))
    if kind == "workbench":
        label, where = ctx.get("label", key), origin(key)
        if of := ctx.get("of"):  # the problem is another key's value (which this key must then follow)
            where = origin(key.rsplit(".", 1)[0] + "." + of)
        if also := ctx.get("also"):
            other = key.rsplit(".", 1)[0] + "." + also
            where = next((w for w in (origin(key), origin(other)) if w != "defaults"), where)
        return mask(f"{label} in {where}: {error['msg']}")
    if kind == "missing":
        return f"{key} in {origin(key)}: missing"
    # a pydantic constraint (gt, ge, le, lt, a Literal's choices): stated as the docs state it
    return mask(f"{key} in {origin(key)}: must be {constraint(_FIELDS[key])}, got {error['input']!r}")


def validate(values: dict[str, Any], origin: Callable[[str], str]) -> Params:
    """Flat dotted ``values`` (any subset of the keys) as a :class:`Params`, or one ParameterError line."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SPEC:
            raise unknown_key(key, origin(key))
        section = SPEC[key].section
        (tree.setdefault(section, {}) if section else tree)[SPEC[key].name] = value
    try:
        params = Params.model_validate(tree)
    except ValidationError as exc:
        raise ParameterError(problem_line(exc, origin)) from exc
    if params.data.task == "regression" and params.train.monitor == "val_accuracy":  # known before a run starts
        raise ParameterError(
            f"train.monitor in {origin('train.monitor')}: val_accuracy needs class labels, and data.task in "
            f"{origin('data.task')} is regression; watch val_loss"
        )
    return params


def flat(params: Params) -> dict[str, Any]:
    """``params`` as dotted keys in schema order."""
    dumped = params.model_dump()
    return {k.key: dumped[k.section][k.name] if k.section else dumped[k.name] for k in KEYS}
