"""Reusing unchanged steps across runs: a key per step, and the proof that its outputs still stand.

A step's key is the sha256 of everything that decides its result (its *ingredients*): the
notebook's cells, the source of the installed ``workbench`` package (and of a user's model package),
the parameters the step reads, the sha256 of every artifact it reads from earlier steps, the data's
fingerprint for the steps that read a table, the versions of the libraries that change numbers and,
for training, the kind of device. Outputs, ``store``, ``db`` and ``run_id`` are not ingredients, nor
are ``engine`` and ``dask.*``: they say where prepare and scoring run, not what they compute (both
engines give the same splits and predictions, and the encoding to rounding; the readers read a split
as one file or as parts, and a reused step's copy holds whichever its source wrote), and a cluster's
address changes each time one is started.

When a finished step of an earlier ``workbench run`` in the same store has the same key, and each
artifact it recorded is still there with its recorded size and sha256, the step is not executed:
its artifacts are copied into the new run (a hard link or a server-side copy), its metrics come
along, and it is marked reused. Otherwise the step runs, and a line says which ingredient changed
since the nearest earlier run, by name (``train.lr 0.002 -> 0.01``), never as a bare hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from workbench.config.secrets import mask
from workbench.errors import ParameterError, StoreError
from workbench.storage.base import ArtifactInfo, Store
from workbench.storage.catalog import STEP_ORDER, RunLayout, kernel_log, notebook
from workbench.storage.fingerprints import HashMemo, file_sha256, fingerprint
from workbench.tracking.tracker import Tracker

# The libraries whose versions change a step's numbers; a new version runs the steps again.
LIBRARIES = ("torch", "onnx", "onnxruntime", "mxnet", "numpy", "pandas", "pyarrow", "scikit-learn")
TABLES = {"prepare": "data.source", "score": "score.source"}  # steps that read a table, and its parameter
WHERE_NOT_WHAT = ("engine", "dask")  # parameter sections that say where a step runs (see above)
BUILTIN_MODELS = ("auto", "cnn", "mlp")
SHOWN = 3  # changed ingredients named in one line; the rest are counted
NAMED_FILES = 2_000  # a dataset's files kept as ingredients by name (a larger one is its digest alone)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_sources(root: Path) -> dict[str, str]:
    """``workbench/<file>`` -> sha256 of every ``.py`` file and template of the package at ``root``
    (the code a step's notebook calls is as much the step as its cells are)."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix == ".py" or "templates" in p.relative_to(root).parts)
    )
    return {f"{root.name}/{p.relative_to(root).as_posix()}": _digest(p.read_bytes()) for p in files}


@functools.cache
def installed_sources() -> dict[str, str]:
    """The sources of the package this process runs, which its step kernels import too: read once."""
    return package_sources(Path(__file__).resolve().parents[1])


def _user_package(spec: str, folder: Path) -> dict[str, str]:
    """The source files of a user's model package (``pkg.mod:Class``), found as the step's kernel
    finds it (the notebooks' folder first, then this interpreter's path), without importing it."""
    top = spec.partition(":")[0].split(".")[0]
    found = PathFinder.find_spec(top, [str(folder), *sys.path])
    if found is None:
        return {f"{top} (model package)": "not found"}
    if found.submodule_search_locations:
        base = Path(next(iter(found.submodule_search_locations)))
        files = sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
        return {f"{top}/{p.relative_to(base).as_posix()}": _digest(p.read_bytes()) for p in files}
    origin = Path(found.origin or "")
    return {origin.name: _digest(origin.read_bytes())} if origin.is_file() else {}


def notebook_cells(path: Path) -> str:
    """The sha256 of a notebook's cells as code: types and sources, not outputs or metadata."""
    cells = json.loads(path.read_text())["cells"]
    return _digest(json.dumps([(c["cell_type"], "".join(c["source"])) for c in cells]).encode())


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def device_kind(setting: str) -> str:
    """CPU or CUDA, as training will choose it, without importing torch: ``auto`` trains on CUDA
    where an NVIDIA driver is loaded."""
    if setting != "auto":
        return "cuda" if setting.startswith("cuda") else "cpu"
    return "cuda" if Path("/proc/driver/nvidia/version").exists() else "cpu"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def step_key(ingredients: Mapping[str, str]) -> str:
    return _digest(json.dumps(dict(ingredients), sort_keys=True).encode())


@dataclass
class Decision:
    """What to do with one step: reuse ``source`` (copying ``artifacts``), or run it; ``line`` says why."""

    step: str
    key: str
    ingredients: dict[str, str]
    line: str
    source: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)


class Reuse:
    """Decides, step by step, whether a run's step is reused from an earlier run, and copies it.

    ``enabled`` False (``--no-reuse``) and the steps in ``rerun`` (``--rerun``, with every step
    after them) always run; their keys are still recorded, so later runs can reuse them.
    """

    def __init__(
        self,
        tracker: Tracker,
        store: Store,
        run_id: str,
        notebooks: Path,
        enabled: bool = True,
        rerun: tuple[str, ...] = (),
        resolve_model: Callable[[str], str | None] | None = None,
        query: Callable[[Mapping[str, str], str], str] | None = None,
    ) -> None:
        self.tracker, self.store, self.run_id, self.notebooks = tracker, store, run_id, notebooks
        self.enabled, self.rerun = enabled, rerun
        self.resolve_model = resolve_model
        self.query = query
        self.memo: HashMemo = tracker  # local data files' hashes, remembered in the tracking database

    # ingredients ------------------------------------------------------------------------------
    def ingredients(self, step: str, notebook_file: str, params: Mapping[str, Any]) -> dict[str, str]:
        """Everything that decides ``step``'s result, by name (see the module's docstring)."""
        found = {"notebook": notebook_cells(self.notebooks / notebook_file)}
        found |= {f"code:{name}": digest for name, digest in installed_sources().items()}
        found |= {
            f"param:{key}": _text(value) for key, value in params.items() if key.partition(".")[0] not in WHERE_NOT_WHAT
        }
        found |= {f"lib:{name}": version for name, version in library_versions().items()}
        if step == "train":
            found["device"] = device_kind(str(params.get("train.device", "auto")))
            model = params.get("train.model")
            if model and model not in BUILTIN_MODELS:
                found |= {f"model code:{name}": d for name, d in _user_package(str(model), self.notebooks).items()}
        if step in TABLES:
            key = TABLES[step]
            source = params[key]
            if isinstance(source, str) and source.startswith("split:"):  # the model run's split: one of its inputs
                found[f"data:{key}"] = source
            else:
                data = fingerprint(source, key, self.memo, self.query)
                found[f"data:{key}"] = data.value if data.value is not None else f"none: {data.why}"
                if len(data.files) <= NAMED_FILES:  # so the rerun line names the file that changed
                    found |= {f"data file:{name}": value for name, value in data.files.items()}
        if step == "score":
            spec = str(params.get("score.model_run", "latest"))
            model_run = self.resolve_model(spec) if self.resolve_model else spec
            found["model run"] = model_run or f"unresolved: {spec}"
            if model_run:
                found |= self._inputs(model_run, ("prepare", "train", "export"), "model")
        else:
            earlier = STEP_ORDER[: STEP_ORDER.index(step)] if step in STEP_ORDER else ()
            found |= self._inputs(self.run_id, tuple(s for s in earlier if s != "score"), "input")
        return found

    def _inputs(self, run_id: str, steps: tuple[str, ...], label: str) -> dict[str, str]:
        """The sha256 of what ``steps`` of ``run_id`` recorded, but their notebooks and kernel logs."""
        layout = RunLayout(run_id)
        skipped = {layout.key(notebook(s)) for s in steps} | {layout.key(kernel_log(s)) for s in steps}
        return {
            f"{label}:{layout.relative(a['key'])}": a["sha256"]
            for a in self.tracker.step_artifacts(run_id, steps)
            if a["key"] not in skipped
        }

    # deciding ---------------------------------------------------------------------------------
    def decide(self, step: str, notebook_file: str, params: Mapping[str, Any], publishes: str = "") -> Decision:
        """Whether ``step`` can be reused, and the line that says what happens and why."""
        found = self.ingredients(step, notebook_file, params)
        decision = Decision(step, step_key(found), found, "")
        forced = self._forced(step)
        unkeyed = next(
            (v.partition(": ")[2] for k, v in found.items() if k.startswith("data:") and v.startswith("none:")), None
        )
        if forced:
            decision.line = f"{step} runs: {forced}"
        elif publishes:
            decision.line = f"{step} runs: it publishes to {mask(publishes)}, which a reused step would skip"
        elif unkeyed:
            decision.line = f"{step} runs: {unkeyed}"
        else:
            problems = []
            for source in self.tracker.reuse_candidates(step, decision.key, self.store.root, self.run_id):
                artifacts = self.tracker.step_artifacts(source, (step,))
                problem = self._check(source, artifacts)
                if problem is None:
                    decision.source, decision.artifacts = source, artifacts
                    decision.line = f"{step} reused from {source} (same data, parameters and code)"
                    return decision
                problems.append(problem)
            decision.line = f"{step} runs: {problems[0]}" if problems else f"{step} runs: {self._changed(step, found)}"
        return decision

    def _forced(self, step: str) -> str | None:
        if not self.enabled:
            return "--no-reuse"
        if self.rerun:
            first = min(STEP_ORDER.index(s) for s in self.rerun if s in STEP_ORDER)
            if step in STEP_ORDER and STEP_ORDER.index(step) >= first:
                return f"--rerun {','.join(self.rerun)}"
        return None

    def _check(self, source: str, artifacts: list[dict[str, Any]]) -> str | None:
        """Why the artifacts a source step recorded no longer stand, or None when each is still
        there with its recorded size and sha256."""
        layout = RunLayout(source)
        for item in artifacts:
            shown = layout.relative(item["key"])
            stat = self.store.stat(item["key"])
            if stat is None:
                return f"run {source}'s {shown} is gone from the store"
            if stat.bytes != item["bytes"]:
                return f"run {source}'s {shown} was altered (size {item['bytes']} -> {stat.bytes})"
            digest = stat.sha256
            if digest is None and stat.path is not None:
                digest = file_sha256(stat.path, self.memo)
            if digest is None:
                return f"run {source}'s {shown} carries no sha256 to confirm it"
            if digest != item["sha256"]:
                return f"run {source}'s {shown} was altered (sha256 {item['sha256'][:8]}... -> {digest[:8]}...)"
        return None

    def _changed(self, step: str, found: Mapping[str, str]) -> str:
        """What differs from the nearest earlier run of ``step``, in words."""
        last = self.tracker.last_keyed_step(step, self.run_id)
        if last is None:
            return "no earlier run of it to reuse"
        source, before = last
        if before == found:
            return f"run {source} had the same inputs, but its artifacts are in another store"
        return f"{describe_changes(before, found)} since {source}"

    # reusing ----------------------------------------------------------------------------------
    def apply(self, decision: Decision) -> float:
        """Copy the source step's artifacts into this run, then record the step as reused, at once
        (a copy that fails leaves the step unrecorded: it runs again on resume). Returns seconds."""
        assert decision.source is not None
        began = time.perf_counter()
        source, target = RunLayout(decision.source), RunLayout(self.run_id)
        copies: list[ArtifactInfo] = []
        for item in decision.artifacts:
            key = f"{target.root}/{source.relative(item['key'])}"
            try:
                copies.append(self.store.copy(item["key"], key, item["sha256"]))
            except StoreError as exc:
                raise StoreError(
                    f"reusing {decision.step} from run {decision.source}: copying {self.store.uri(item['key'])} failed: {exc}"
                ) from exc
        executed = target.key(notebook(decision.step))
        uri = next((c.uri for c in copies if c.key == executed), None)
        self.tracker.set_step_key(self.run_id, decision.step, decision.key, decision.ingredients, decision.line)
        seconds = time.perf_counter() - began
        self.tracker.record_reuse(self.run_id, decision.step, decision.source, copies, uri, seconds)
        return seconds

    def record(self, decision: Decision) -> None:
        """The key of a step that runs, recorded as it starts, so a later run can reuse it."""
        self.tracker.set_step_key(self.run_id, decision.step, decision.key, decision.ingredients, decision.line)


def _short(value: str, width: int = 24) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def _fingerprint_change(before: str, after: str) -> str:
    kind_b, _, old = before.partition(" ")
    kind_a, _, new = after.partition(" ")
    if kind_b == kind_a == "sha256":
        return f"sha256 {old[:8]}... -> {new[:8]}..."
    if kind_b == kind_a == "dataset":  # "dataset <sha256> <n> files"
        count_b, count_a = old.split(" ", 1)[1], new.split(" ", 1)[1]
        return f"{count_b} -> {count_a}" if count_b != count_a else count_a
    return f"{_short(before, 40)} -> {_short(after, 40)}"


def describe_changes(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """Which ingredients differ, in words, the most telling first: parameters, data, the notebook,
    libraries and device, then files (code, inputs) by name, e.g. ``train.lr 0.002 -> 0.01``."""
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    words: dict[str, list[str]] = {"param": [], "data": [], "notebook": [], "lib": []}
    files: dict[str, list[str]] = {"data file": [], "code": [], "model code": [], "input": [], "model": []}
    for name in changed:
        kind, _, what = name.partition(":")
        old, new = before.get(name), after.get(name)
        if kind == "param":
            words["param"].append(f"{what} {_short(old or 'unset')} -> {_short(new or 'unset')}")
        elif kind == "data":
            words["data"].append(f"{what} changed ({_fingerprint_change(old or '', new or '')})")
        elif kind == "notebook":
            words["notebook"].append("its notebook's cells changed")
        elif kind in ("lib", "device", "model run"):
            label = {"lib": what, "device": "device", "model run": "score.model_run"}[kind]
            words["lib"].append(f"{label} {old} -> {new}")
        else:  # a dataset's files, code, model code, input and model artifacts: named by file, counted past a few
            state = "added" if old is None else "removed" if new is None else "changed" if kind == "data file" else ""
            files.setdefault(kind, []).append(f"{what} {state}".strip())
    said = [w for group in words.values() for w in group]
    labels = (("data file", "data files: "), ("code", ""), ("model code", "model package: "), ("input", ""))
    for kind, label in (*labels, ("model", "model run's ")):
        names = files[kind]
        if names:
            more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
            said.append(f"{label}{', '.join(names[:SHOWN])}{more}{'' if kind == 'data file' else ' changed'}")
    return "; ".join(said) if said else "its inputs changed"


def check_rerun(names: str | None, known: tuple[str, ...]) -> tuple[str, ...]:
    """``--rerun`` as step names in pipeline order; one line naming an unknown step."""
    if names is None:
        return ()
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        problem = f"unknown step {', '.join(unknown)}" if unknown else "names no step"
        raise ParameterError(f"--rerun {names!r}: {problem}; this run's steps are {', '.join(known)}")
    return tuple(s for s in known if s in wanted)
