"""Notebooks and the schema: each notebook's parameters cell is generated from it, and what a
notebook receives is validated by it.

``open_step`` is the first call of every notebook: it checks the notebook's parameters (injected
by ``workbench run``, by plain papermill, or as typed in JupyterLab) through the same schema as
``workbench run``, so ``papermill 02_train.ipynb out.ipynb -p schedule cosin`` fails with the same
one line, naming ``train.schedule`` and the notebook parameter.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.config.docs import default_yaml, readme_with_table
from workbench.config.parameters import checked, project_root, read_text
from workbench.config.schema import SPEC, Params, flat
from workbench.errors import ParameterError, WorkbenchError
from workbench.run.notebook_errors import show_user_errors_briefly
from workbench.run.pipeline import STEPS, StepSpec

if TYPE_CHECKING:
    from workbench.run.context import StepContext

RUN_ID = ("dev", "`workbench run` injects the pipeline's run id")
# a run id names a folder under runs/ and a key in the tracking db: no path separators, no ../
PLAIN_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def notebook_names(step: StepSpec) -> dict[str, str]:
    """The notebook's parameter names and the dotted keys they stand for, as
    :meth:`StepSpec.parameters` injects them (``run_id`` is no key and is not listed)."""
    names = {"store": "store", "db": "db"} | {key: key for key in step.shared}
    for section in (step.section, *step.extra):
        prefix = "" if section == step.section else f"{section}_"
        names |= {prefix + k.name: k.key for k in SPEC.values() if k.section == section}
    return names


def _step(name: str) -> StepSpec:
    for step in STEPS:
        if step.name == name:
            return step
    raise ParameterError(f"unknown step {name!r}; steps are {', '.join(s.name for s in STEPS)}")


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def parameters_cell(step: StepSpec) -> str:
    """The source of the step notebook's ``parameters`` cell: every name at its schema default,
    commented with its help, so the notebook runs as it is in JupyterLab (run id ``dev``)."""
    lines = [f"run_id = {_literal(RUN_ID[0])}  # {RUN_ID[1]}"]
    for name, key in notebook_names(step).items():
        lines.append(f"{name} = {_literal(SPEC[key].default)}  # {SPEC[key].help}")
    return "\n".join(lines)


def notebook_parameters(step: str, namespace: Mapping[str, Any]) -> Params:
    """The step's parameters from a notebook's namespace, validated; names it lacks keep their
    defaults. A bad value is one ParameterError line naming the key and the notebook parameter."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, key in notebook_names(_step(step)).items():
        if name in namespace:
            given = namespace[name]
            # papermill -p passes what it cannot read as a number or bool as text
            values[key] = read_text(key, given) if isinstance(given, str) else given
            origin[key] = f"notebook parameter {name}={given!r}"
    return checked(values, origin).model


INJECTED = "# Parameters\n"  # how papermill's Python translator opens the cell it injects


def injected_names(namespace: Mapping[str, Any]) -> set[str]:
    """The names papermill gave this kernel (``papermill -p``, a scheduler's papermill operator).

    papermill adds an ``injected-parameters`` cell after the parameters cell, opened by its
    translator's ``# Parameters`` line; a kernel sees no cell tags, but IPython keeps the source of
    every cell it ran in ``In``. Outside papermill (JupyterLab, a plain interpreter) there is none.
    """
    history = namespace.get("In")
    for source in reversed(history if isinstance(history, list) else []):
        if isinstance(source, str) and source.startswith(INJECTED):
            try:
                body = ast.parse(source).body
            except SyntaxError:
                return set()
            return {
                t.id for node in body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
            }
    return set()


def open_step(step: str, namespace: Mapping[str, Any]) -> tuple[StepContext, Params]:
    """Validate a step notebook's parameters, then open its context: ``ctx, params = wb.open_step("train", globals())``.

    Nothing is recorded for a notebook whose parameters are wrong, as ``workbench run`` creates
    no run for a bad ``--set``. A run started from a notebook records the notebook's validated
    parameters, each with its origin: ``papermill`` for an injected value, ``notebook`` for the
    parameters cell's own. From here on a user error in the notebook shows as its one line
    (:mod:`workbench.run.notebook_errors`), this one's first.
    """
    from workbench.run.context import step_context

    show_user_errors_briefly()
    params = notebook_parameters(step, namespace)
    run_id = namespace.get("run_id", RUN_ID[0])
    if not isinstance(run_id, str) or not PLAIN_RUN_ID.fullmatch(run_id):
        raise ParameterError(
            f"run_id in notebook parameter run_id={run_id!r}: expected a run id, a plain name of letters, digits, "
            "'.', '_' and '-' (at most 64), e.g. 'dev'; it names the run's folder under the store's runs/"
        )
    names = notebook_names(_step(step))
    injected = injected_names(namespace)
    values = flat(params)
    recorded = {key: values[key] for key in names.values()}
    origin = {key: "papermill" if name in injected else "notebook" for name, key in names.items()}
    ctx = step_context(step, run_id=run_id, store=params.store, db=params.db, parameters=recorded, origin=origin)
    return ctx, params


@dataclass(frozen=True)
class Drift:
    """One generated text that differs from what is committed."""

    path: Path
    what: str
    diff: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what} differs from workbench/config/schema.py\n{self.diff}"


def _diff(committed: str, generated: str, name: str) -> str:
    lines = difflib.unified_diff(
        committed.splitlines(), generated.splitlines(), f"{name} (committed)", f"{name} (from the schema)", lineterm=""
    )
    return "\n".join(lines)


def _parameters_cell_of(nb: Any, path: Path) -> Any:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise WorkbenchError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def _expected(root: Path) -> list[tuple[Path, str, str, str]]:
    """(path, what, committed, generated) for every text generated from the schema."""
    import nbformat

    if not (root / "notebooks").is_dir() or not (root / "README.md").is_file():
        raise WorkbenchError(f"no notebooks/ and README.md in {root}; run workbench from the project folder")
    found = []
    yaml_path = root / "parameters" / "default.yaml"
    found.append((yaml_path, "text", yaml_path.read_text() if yaml_path.exists() else "", default_yaml()))
    readme = root / "README.md"
    text = readme.read_text()
    try:
        found.append((readme, "parameter table", text, readme_with_table(text)))
    except ValueError as exc:
        raise WorkbenchError(f"{readme}: {exc}") from exc
    for step in STEPS:
        path = root / "notebooks" / step.notebook
        cell = _parameters_cell_of(nbformat.read(path, as_version=4), path)
        found.append((path, "parameters cell", cell.source, parameters_cell(step)))
    return found


def check_generated(root: Path | None = None) -> list[Drift]:
    """What differs between the committed files and what the schema generates."""
    root = root or project_root()
    return [
        Drift(path.relative_to(root), what, _diff(committed, generated, path.name))
        for path, what, committed, generated in _expected(root)
        if committed != generated
    ]


def sync_generated(root: Path | None = None) -> list[Path]:
    """Rewrite what differs: ``default.yaml``, the README table, each notebook's parameters cell
    (other cells and all outputs are kept). Returns the files written."""
    import nbformat

    root = root or project_root()
    written = []
    for path, _what, committed, generated in _expected(root):
        if committed == generated:
            continue
        if path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            _parameters_cell_of(nb, path).source = generated
            nbformat.write(nb, path)
        else:
            path.write_text(generated)
        written.append(path.relative_to(root))
    return written
