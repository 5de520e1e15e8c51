"""Run parameters: one schema, YAML files layered in order, ``--set`` overrides on top.

Everything is validated before a run exists, so a typo never costs a half-finished run. Each value
remembers where it came from, so an error can name the file or the ``--set`` to fix.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import ParameterError

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Param:
    key: str
    type: type | tuple[type, ...]
    default: Any
    help: str
    check: Check | None = None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _fraction(v: Any) -> str | None:
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


def _share(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be greater than 0 and at most 1"


def _device(v: str) -> str | None:
    ok = re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)
    return None if ok else "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


def _model(v: str) -> str | None:
    ok = v in ("cnn", "mlp") or re.fullmatch(r"[\w.]+:\w+", v)
    return None if ok else "must be 'cnn', 'mlp' or 'package.module:Class'"


def _seed(v: int) -> str | None:
    # numpy's RandomState and the split take 32-bit seeds; a bigger one would fail mid-run
    return None if 0 <= v <= 2**32 - 1 else "must be between 0 and 4294967295 (2**32-1)"


def _opset(v: int) -> str | None:
    return None if 7 <= v <= 20 else "must be between 7 and 20"


def _one_of(*choices: str) -> Check:
    def check(v: str) -> str | None:
        return None if v in choices else "must be " + " or ".join(repr(c) for c in choices)

    return check


def mask(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ***."""
    return re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1***@", text)


def _no_password(v: str) -> str | None:
    # parameters are written into executed notebooks and reports: secrets must come from elsewhere
    if re.match(r"^[\w+]+://[^/@:]*:[^/@]*@", v):
        return "must not hold a password (it would be written into notebooks and reports); use PGPASSWORD or ~/.pgpass"
    return None


def _db_url(v: str) -> str | None:
    if "://" not in v:
        return "must be a SQLAlchemy URL such as sqlite:///artifacts/workbench.db"
    return _no_password(v)


def _not_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


SOURCE_TYPE = (str, dict)  # a path or URI, or a SQL source {url, query} / {url, table}


def source_problem(v: str | dict) -> str | None:
    """What is wrong with a data source value, if anything."""
    if isinstance(v, str):
        return _not_empty(v)
    keys = set(v)
    if keys not in ({"url", "query"}, {"url", "table"}):
        return "a SQL source needs exactly the keys url and query, or url and table"
    if not all(isinstance(x, str) and x.strip() for x in v.values()):
        return "a SQL source's url, query and table must be non-empty strings"
    return _db_url(v["url"])


SCHEMA: tuple[Param, ...] = (
    Param(
        "store",
        str,
        "artifacts",
        "artifact root: a folder (relative to the project folder) or s3://bucket/prefix",
        _not_empty,
    ),
    Param("db", str, "sqlite:///artifacts/workbench.db", "tracking database, a SQLAlchemy URL", _db_url),
    Param("seed", int, 0, "seed for splits, weight init and shuffling (0 to 2**32-1)", _seed),
    Param(
        "data.source",
        SOURCE_TYPE,
        "bundled:digits",
        "input table: a CSV/CSV.gz/Parquet path or s3:// URI, bundled:digits, "
        "or a database as {url: SQLAlchemy URL, query: SELECT ...} or {url, table}",
        source_problem,
    ),
    Param("data.target", str, "label", "name of the label column", _not_empty),
    Param("data.val_fraction", float, 0.15, "share of rows held out for validation", _fraction),
    Param("data.test_fraction", float, 0.15, "share of rows held out for the final test", _fraction),
    Param("train.model", str, "cnn", "cnn, mlp, or your own nn.Module as package.module:Class", _model),
    Param("train.epochs", int, 30, "passes over the training split", _positive),
    Param("train.batch_size", int, 32, "samples per optimisation step", _positive),
    Param("train.lr", float, 0.002, "Adam learning rate", _positive),
    Param(
        "train.schedule",
        str,
        "cosine",
        "learning-rate schedule: cosine (decay to zero) or constant",
        _one_of("cosine", "constant"),
    ),
    Param(
        "train.patience", int, 0, "stop after this many epochs without a better train.monitor (0: never)", _non_negative
    ),
    Param(
        "train.monitor",
        str,
        "val_loss",
        "early stopping watches val_loss or val_accuracy",
        _one_of("val_loss", "val_accuracy"),
    ),
    Param("train.clip_grad_norm", float, 0.0, "clip gradients to this L2 norm (0: off)", _non_negative),
    Param("train.processes", int, 1, "training processes (torchrun + DistributedDataParallel when > 1)", _positive),
    Param("train.device", str, "auto", "auto (CUDA when present), cpu, cuda or cuda:N", _device),
    Param("train.amp", bool, True, "mixed precision when training on CUDA (bf16 where supported)"),
    Param(
        "export.target",
        str,
        "mxnet",
        "mxnet (importable by MXNet 1.9) or onnxruntime (newer opsets)",
        _one_of("mxnet", "onnxruntime"),
    ),
    Param("export.opset", int, 12, "ONNX opset; at most 12 when export.target is mxnet", _opset),
    Param(
        "export.sagemaker", bool, False, "also write a SageMaker PyTorch model.tar.gz (model.pth + code/inference.py)"
    ),
    Param("export.ort_atol", float, 1e-4, "max abs difference allowed between onnxruntime and PyTorch", _non_negative),
    Param(
        "score.source",
        SOURCE_TYPE,
        "bundled:digits",
        "table to score: CSV/CSV.gz/Parquet path or s3:// URI, bundled:digits, or {url, query} / {url, table}",
        source_problem,
    ),
    Param("score.backend", str, "onnxruntime", "onnxruntime, mxnet or torch", _one_of("onnxruntime", "mxnet", "torch")),
    Param("score.batch_size", int, 1024, "rows per scoring batch (memory grows with it, not with the data)", _positive),
    Param(
        "score.model_run",
        str,
        "latest",
        "run whose model scores: a run id, or latest (newest exported model)",
        _not_empty,
    ),
    Param("publish.url", str, "", "SQLAlchemy URL to publish predictions to; empty: do not publish", _no_password),
    Param("publish.table", str, "predictions", "table for published predictions (created if missing)", _not_empty),
    Param("validate.atol", float, 1e-4, "absolute tolerance, MXNet vs PyTorch logits", _non_negative),
    Param("validate.rtol", float, 1e-3, "relative tolerance, MXNet vs PyTorch logits", _non_negative),
    Param("validate.min_agreement", float, 0.999, "share of rows whose predicted class must agree", _share),
)
SPEC: dict[str, Param] = {p.key: p for p in SCHEMA}
_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    SOURCE_TYPE: "a path or URI, or a mapping {url, query} or {url, table}",
}


@dataclass
class Parameters:
    """Validated parameter values with the origin (file or ``--set``) of each."""

    values: dict[str, Any]
    origin: dict[str, str] = field(default_factory=dict)
    # keys the user gave on this command line (--set, or a -p file they named), as opposed to
    # schema defaults and the implicit parameters/default.yaml: only these may clash on --resume
    explicit: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        """Keys under ``name.`` without the prefix, as a notebook receives them."""
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    def nested(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding ``parameters/default.yaml``.

    Relative store and SQLite paths are resolved against it, so the same defaults work from a
    JupyterLab kernel in ``notebooks/``, from plain papermill and from the CLI. Outside a project
    the working directory is used.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "parameters" / "default.yaml").is_file():
            return folder
    return here


def _unknown(key: str, origin: str) -> ParameterError:
    hint = difflib.get_close_matches(key, SPEC, n=1)
    tip = f"; did you mean {hint[0]}?" if hint else f"; known keys: {', '.join(SPEC)}"
    return ParameterError(f"unknown parameter {key!r} in {origin}{tip}")


def _flatten(tree: dict[str, Any], origin: str, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if key in SPEC:
            flat[key] = value
        elif isinstance(value, dict) and any(k.startswith(key + ".") for k in SPEC):
            flat.update(_flatten(value, origin, key + "."))
        else:
            raise _unknown(key, origin)
    return flat


# YAML 1.1 reads 1e-3, 1.0e6 and inf as strings; a numeric key takes them as the numbers they spell
_NUMBER = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?|\.?inf(?:inity)?|\.?nan)", re.IGNORECASE)


def _number(key: str, value: Any, origin: str) -> int | float:
    """``value`` as the int or float ``key`` wants, refusing non-numbers and non-finite values.

    inf and nan pass every ``> 0`` check by accident (or fail it with a baffling message), and a
    lr of nan only shows as a nan loss minutes into training, so they are refused here.
    """
    want = SPEC[key].type
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value.strip().lower().replace(".inf", "inf").replace(".nan", "nan"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"{key} in {origin}: expected {_TYPE_NAMES[want]}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"{key} in {origin}: must be a finite number, got {value!r}")
    if want is int:
        if isinstance(value, float) and not value.is_integer():
            raise ParameterError(f"{key} in {origin}: expected an integer, got {value!r}; drop the fraction")
        return int(value)
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise ParameterError(f"{key} in {origin}: must be a finite number, got {value!r}") from None


def _coerce(key: str, value: Any, origin: str) -> Any:
    spec = SPEC[key]
    want = spec.type
    if want in (int, float):
        value = _number(key, value, origin)
    elif not isinstance(value, want):
        raise ParameterError(f"{key} in {origin}: expected {_TYPE_NAMES[want]}, got {value!r}")
    if spec.check and (problem := spec.check(value)):
        shown = mask(value) if isinstance(value, str) else mask(str(value)) if isinstance(value, dict) else value
        raise ParameterError(f"{key} in {mask(origin)}: {problem}, got {shown!r}")
    return value


def load_file(path: Path) -> dict[str, Any]:
    """Read one YAML layer as flat dotted keys (unchecked values)."""
    path = Path(path)
    if path.is_dir():
        raise ParameterError(f"parameter file {path} is a folder; give -p a YAML file, e.g. -p parameters/default.yaml")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ParameterError(f"parameter file {path} not found; check the -p path") from None
    except OSError as exc:
        raise ParameterError(f"parameter file {path} cannot be read ({exc.strerror}); check the -p path") from None
    try:
        if b"\0" in data:
            raise UnicodeError
        text = data.decode("utf-8-sig")
    except UnicodeError:
        raise ParameterError(
            f"parameter file {path} is not a text file (binary, or not UTF-8); give -p a YAML parameter file"
        ) from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParameterError(f"parameter file {path}{where} is not valid YAML; fix the syntax") from None
    if not isinstance(tree, dict):
        raise ParameterError(f"parameter file {path} must hold a mapping of keys, not {type(tree).__name__}")
    return _flatten(tree, str(path))


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML so numbers stay numbers."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParameterError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    if key not in SPEC:
        raise _unknown(key, f"--set {item}")
    if SPEC[key].type is str:
        return key, raw
    try:
        if SPEC[key].type is SOURCE_TYPE:  # a path stays as typed; {url: ..., query: ...} becomes a mapping
            value = yaml.safe_load(raw) if raw.lstrip().startswith("{") else raw
            return key, value if isinstance(value, dict) else raw
        return key, yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return key, raw


def of_run(run_id: str, stored: dict[str, Any], given: Parameters) -> Parameters:
    """A run's own parameters, for resuming it; keys the schema gained since keep their defaults.

    Only what the user explicitly gave (``--set``, named ``-p`` files) may clash with the run, and
    only outside where the run lives: the implicit ``parameters/default.yaml`` says nothing about
    this run, so its values (say ``train.epochs: 30`` for a run started at 40) are no override.
    """
    values = {p.key: p.default for p in SCHEMA}
    origin = {p.key: "defaults" for p in SCHEMA}
    for key, value in stored.items():
        if key not in SPEC:
            raise ParameterError(
                f"run {run_id} has parameter {key!r}, which this version does not know; resume it with the version that started it"
            )
        values[key], origin[key] = _coerce(key, value, f"run {run_id}"), f"run {run_id}"
    for key, value in given.values.items():
        if key not in ("store", "db") and key in given.explicit and value != values[key]:
            raise ParameterError(
                f"{key} in {given.origin[key]}: {value!r} differs from run {run_id}'s {values[key]!r}; "
                "a resumed run keeps its own parameters, so drop the override or start a new run"
            )
    return Parameters(values, origin)


def load(files: Iterable[str | Path] = (), sets: Iterable[str] = (), root: Path | None = None) -> Parameters:
    """Schema defaults, then each file in order, then each ``--set``; all validated.

    With no files, ``parameters/default.yaml`` of the project is used when it exists.
    """
    files = [Path(f) for f in files]
    named = bool(files)
    if not files:
        default = project_root(root) / "parameters" / "default.yaml"
        files = [default] if default.is_file() else []
    values = {p.key: p.default for p in SCHEMA}
    origin = {p.key: "defaults" for p in SCHEMA}
    explicit: set[str] = set()
    for path in files:
        for key, value in load_file(path).items():
            values[key] = _coerce(key, value, str(path))
            origin[key] = str(path)
            if named:
                explicit.add(key)
    for item in sets:
        key, value = parse_set(item)
        values[key] = _coerce(key, value, f"--set {item}")
        origin[key] = f"--set {item}"
        explicit.add(key)
    if values["export.target"] == "mxnet" and values["export.opset"] > 12:
        where = origin["export.opset"]
        raise ParameterError(
            f"export.opset in {where}: MXNet imports opset 12 at most, got {values['export.opset']}; "
            "lower it or set export.target=onnxruntime"
        )
    held_out = values["data.val_fraction"] + values["data.test_fraction"]
    if held_out >= 0.9:
        where = origin["data.val_fraction"]
        raise ParameterError(
            f"data.val_fraction + data.test_fraction in {where}: {held_out:g} leaves too few rows "
            "to train on; keep the sum below 0.9"
        )
    return Parameters(values, origin, frozenset(explicit))


# a step that reads what an earlier step of the same run wrote (score reads an earlier run's model)
NEEDS = {"train": "prepare", "export": "train", "validate": "export"}


def steps_problem(names: Sequence[str], order: Sequence[str]) -> str | None:
    """Why a NEW run of these steps (in pipeline ``order``) cannot work, if it cannot.

    A new run's folder starts empty, so ``--steps train`` alone would fail only after a kernel
    start and a run row; saying so first costs nothing.
    """
    for name in names:
        step, missing = NEEDS.get(name), []
        while step and step not in names:
            missing.insert(0, step)
            step = NEEDS.get(step)
        if missing:
            example = ",".join(s for s in order if s in names or s in missing)
            return (
                f"{name} needs {NEEDS[name]}'s outputs of the same run; add {', '.join(missing)} "
                f"(e.g. --steps {example}), or score an earlier run's model with --steps score"
            )
    return None
