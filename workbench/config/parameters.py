"""Run parameters: one schema, YAML files layered in order, ``--set`` overrides on top.

Everything is validated before a run exists, so a typo never costs a half-finished run. Each value
remembers where it came from, so an error can name the file or the ``--set`` to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.config.schema import KEYS, SPEC, Params, flat, unknown_key, validate
from workbench.errors import ParameterError

SCHEMA = KEYS  # every key, read off the models in workbench/config/schema.py


@dataclass
class Parameters:
    """Validated parameter values (flat dotted keys, and typed as ``model``) with the origin of each
    (file, ``--set``, notebook parameter, run)."""

    values: dict[str, Any]
    origin: dict[str, str] = field(default_factory=dict)
    # keys the user gave on this command line (--set, or a -p file they named), as opposed to
    # schema defaults and the implicit parameters/default.yaml: only these may clash on --resume
    explicit: frozenset[str] = frozenset()
    model: Params = field(default_factory=Params)  # the same values, typed: params.model.train.epochs

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


def changed_from_defaults(values: Mapping[str, Any]) -> set[str]:
    """The keys of recorded parameter ``values`` that differ from the schema's defaults: what a run
    chose, as opposed to what it inherited. A key this version does not know has no default, so
    it counts as chosen."""
    return {
        key
        for key, value in values.items()
        if key not in SPEC
        or json.dumps(value, sort_keys=True, default=str) != json.dumps(SPEC[key].default, sort_keys=True, default=str)
    }


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


def _inside(section: str) -> list[str]:
    """The keys of ``section`` (none when it is not a section)."""
    return [k for k in SPEC if k.startswith(f"{section}.")]


def _flatten(tree: dict[str, Any], origin: str, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        inside = _inside(key)
        if key in SPEC:
            flat[key] = value
        elif inside and isinstance(value, dict):
            flat.update(_flatten(value, origin, key + "."))
        elif inside and value is None:  # `train:` with nothing under it sets nothing
            continue
        elif inside:
            raise ParameterError(
                f"{key} in {origin} is a section, not a value (got {value!r}); write its keys under it, "
                f"e.g. {key}: {{{inside[0].removeprefix(key + '.')}: ...}}"
            )
        else:
            raise unknown_key(key, origin)
    return flat


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: the last one silently winning would hide
    which value a run took."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _Twice(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Twice(yaml.YAMLError):
    def __init__(self, key: Any, mark: yaml.Mark) -> None:
        super().__init__(f"key {key!r} appears twice")
        self.key, self.problem_mark = key, mark


def load_file(path: Path) -> dict[str, Any]:
    """Read one YAML layer as flat dotted keys (unchecked values)."""
    path = Path(path)
    if path.is_dir():
        raise ParameterError(f"parameter file {path} is a folder; give -p a YAML file, e.g. -p parameters/default.yaml")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ParameterError(f"parameter file {path} not found; check the -p path") from exc
    except OSError as exc:
        raise ParameterError(f"parameter file {path} cannot be read ({exc.strerror}); check the -p path") from exc
    try:
        if b"\0" in data:
            raise UnicodeError
        text = data.decode("utf-8-sig")
    except UnicodeError as exc:
        raise ParameterError(
            f"parameter file {path} is not a text file (binary, or not UTF-8); give -p a YAML parameter file"
        ) from exc
    try:
        tree = yaml.load(text, Loader=_UniqueKeys) or {}  # a SafeLoader that refuses repeated keys
    except _Twice as exc:
        raise ParameterError(
            f"parameter file {path} line {exc.problem_mark.line + 1}: {exc.key!r} is given twice in one section; keep one"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParameterError(f"parameter file {path}{where} is not valid YAML; fix the syntax") from exc
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
        inside = _inside(key)
        if inside:
            raise ParameterError(f"--set {item!r}: {key} is a section; set one of its keys, e.g. --set {inside[0]}=...")
        raise unknown_key(key, f"--set {item}")
    return key, read_text(key, raw)


def read_text(key: str, raw: str) -> Any:
    """A value typed as text (``--set``, ``papermill -p``) as the YAML it would be in a file.

    A string key keeps the text as typed; a source stays a path unless it is ``{url: ..., ...}``.
    """
    kind = SPEC[key].kind
    if kind in ("str", "list"):  # a list's text is read by its own rule: 2024 is a column's name
        return raw
    if kind == "source":  # a path stays as typed; {url: ..., query: ...} becomes a mapping
        if not raw.lstrip().startswith("{"):
            return raw
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not YAML"
            raise ParameterError(
                f"{key} {raw!r} is not a valid mapping ({problem}); write {{url: SQLALCHEMY_URL, table: NAME}} "
                "or {url: ..., query: SELECT ...}"
            ) from exc
        return value if isinstance(value, dict) else raw
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def checked(values: dict[str, Any], origin: dict[str, str], explicit: frozenset[str] = frozenset()) -> Parameters:
    """``values`` validated by the schema (one line naming the key and ``origin[key]`` if not)."""
    model = validate(values, lambda key: origin.get(key, "defaults"))
    return Parameters(flat(model), {k.key: origin.get(k.key, "defaults") for k in KEYS}, explicit, model)


def of_run(run_id: str, stored: dict[str, Any], given: Parameters) -> Parameters:
    """A run's own parameters, for resuming it; keys the schema gained since keep their defaults.

    Only what the user explicitly gave (``--set``, named ``-p`` files) may clash with the run, and
    only outside where the run lives: the implicit ``parameters/default.yaml`` says nothing about
    this run, so its values (say ``train.epochs: 30`` for a run started at 40) are no override.
    """
    for key in stored:
        if key not in SPEC:
            raise ParameterError(
                f"run {run_id} has parameter {key!r}, which this version does not know; resume it with the version that started it"
            )
    run = checked(dict(stored), dict.fromkeys(stored, f"run {run_id}"))
    values = run.values
    for key, value in given.values.items():
        if key not in ("store", "db") and key in given.explicit and value != values[key]:
            raise ParameterError(
                f"{key} in {given.origin[key]}: {value!r} differs from run {run_id}'s {values[key]!r}; "
                "a resumed run keeps its own parameters, so drop the override or start a new run"
            )
    return run


RDZV_PORT = 29400  # torchrun's usual rendezvous port


def sagemaker_hosts(environ: Mapping[str, str]) -> list[str]:
    """The hosts of a SageMaker training job (``SM_HOSTS``, JSON), first host first; [] outside one."""
    return json.loads(environ.get("SM_HOSTS") or "[]")


def sagemaker_nodes(environ: Mapping[str, str]) -> dict[str, Any]:
    """In a SageMaker training job on several hosts, a layer that makes them the training nodes,
    meeting at the first host (every host sees the same ``SM_HOSTS``); empty otherwise."""
    hosts = sagemaker_hosts(environ)
    if len(hosts) < 2:
        return {}
    return {"train.nodes": len(hosts), "train.rdzv_endpoint": f"{hosts[0]}:{RDZV_PORT}"}


def load(files: Iterable[str | Path] = (), sets: Iterable[str] = (), root: Path | None = None) -> Parameters:
    """Schema defaults, then each file in order, then each ``--set``; all validated.

    With no files, ``parameters/default.yaml`` of the project is used when it exists.
    """
    files = [Path(f) for f in files]
    named = bool(files)
    if not files:
        default = project_root(root) / "parameters" / "default.yaml"
        files = [default] if default.is_file() else []
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    explicit: set[str] = set()
    for path in files:
        for key, value in load_file(path).items():
            values[key], origin[key] = value, str(path)
            if named:
                explicit.add(key)
    for key, value in sagemaker_nodes(os.environ).items():
        values[key], origin[key] = value, "SM_HOSTS"
    for item in sets:
        key, value = parse_set(item)
        values[key], origin[key] = value, f"--set {item}"
        explicit.add(key)
    # validated once, as layered: an error names the layer whose value counts
    return checked(values, origin, frozenset(explicit))


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
