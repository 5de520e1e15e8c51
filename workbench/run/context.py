"""What a stage function gets from its notebook: where to read and write, and where to record.

Steps share nothing but artifacts under ``runs/<run_id>/<step>/`` and rows in the tracking DB,
so any step can be rerun alone, in JupyterLab or under plain papermill, given the same run id.
Stages ask for artifacts by their name in :mod:`workbench.storage.catalog`
(``ctx.save_artifact(SCHEMA, obj)``, ``ctx.load_artifact(ENCODING, run=...)``).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.storage import open_store
from workbench.storage.base import ArtifactInfo, Store
from workbench.storage.catalog import NOTEBOOKS, Artifact, RunLayout, artifact, decode, encode
from workbench.storage.parts import remove_forms
from workbench.tracking.tracker import Tracker

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass
class StepContext:
    run_id: str
    step: str
    store: Store
    tracker: Tracker
    # started from JupyterLab or plain papermill rather than by `workbench run`: exploration,
    # where a changed setting retrains instead of refusing the run's old checkpoint
    interactive: bool = False

    def key(self, name: str | Artifact, step: str | None = None, run: str | None = None) -> str:
        """The store key of a catalog artifact, or of the file ``name`` in ``step``'s folder
        (this step's unless named), in this run unless ``run`` names another."""
        layout = RunLayout(run or self.run_id)
        if isinstance(name, Artifact):
            return layout.key(name)
        return layout.step_key(step or self.step, name)

    def _own(self, name: str | Artifact) -> str:
        if isinstance(name, Artifact) and name.step != self.step:
            raise ValueError(f"artifact {name.name} belongs to step {name.step}, not {self.step}")
        return self.key(name)

    def save(self, name: str | Artifact, data: bytes) -> ArtifactInfo:
        """Write an artifact of this step atomically and record its sha256 and size."""
        info = self.store.write_bytes(self._own(name), data)
        self.tracker.log_artifact(self.run_id, self.step, info)
        return info

    def store_file(self, name: str | Artifact, path: Path) -> ArtifactInfo:
        """Like :meth:`save` for a file too large to hold in memory."""
        info = self.store.put_file(self._own(name), path)
        self.tracker.log_artifact(self.run_id, self.step, info)
        return info

    def discard(self, name: str | Artifact) -> None:
        """Remove the Parquet artifact ``name`` of this step as one file and as parts, and forget
        their records, before the step writes it again (in either form): what an earlier attempt
        wrote with the other engine, or with more partitions, is never read as this attempt's."""
        self.tracker.forget_artifacts(self.run_id, remove_forms(self.store, self._own(name)))

    def save_artifact(self, name: str | Artifact, value: Any) -> ArtifactInfo:
        """Write the catalog artifact ``name`` of this step: a local file (``Path``) or bytes as
        they are, else encoded by the artifact's format (JSON, DataFrame, Figure, arrays)."""
        entry = artifact(name)
        if isinstance(value, Path):
            return self.store_file(entry, value)
        return self.save(entry, encode(entry, value))

    def load_artifact(self, name: str | Artifact, run: str | None = None) -> Any:
        """The catalog artifact ``name`` of this run (or of ``run``), decoded by its format."""
        entry = artifact(name)
        return decode(entry, self.load(entry, run=run), self.store.uri(self.key(entry, run=run)))

    def has_artifact(self, name: str | Artifact, run: str | None = None) -> bool:
        return self.store.exists(self.key(artifact(name), run=run))

    # By file name, for exploring a store from a notebook or a test; stages use the catalog names.

    def save_json(self, name: str, obj: Any) -> ArtifactInfo:
        return self.save(name, json.dumps(obj, indent=2).encode())

    def save_frame(self, name: str, frame: pd.DataFrame) -> ArtifactInfo:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return self.save(name, buf.getvalue())

    def save_figure(self, name: str, fig: Figure) -> ArtifactInfo:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        return self.save(name, buf.getvalue())

    def load(self, name: str | Artifact, step: str | None = None, run: str | None = None) -> bytes:
        """An artifact's bytes: a catalog entry, or a file of ``step``; of this run unless ``run``
        names another (e.g. a trained model)."""
        return self.store.read_bytes(self.key(name, step, run))

    def load_json(self, name: str, step: str, run: str | None = None) -> Any:
        return json.loads(self.load(name, step, run))

    def load_frame(self, name: str, step: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.load(name, step)))

    def log_metrics(self, values: dict[str, float], epoch: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, self.step, values, epoch)


def step_context(
    step: str,
    run_id: str,
    store: str,
    db: str,
    parameters: dict[str, Any] | None = None,
    origin: dict[str, str] | None = None,
) -> StepContext:
    """Open the store and tracking DB for one step of ``run_id``.

    A run id the DB has not seen (a notebook opened in JupyterLab, run by plain papermill or by a
    scheduler's papermill operator) is created on the spot, and such a run's step status and
    duration follow the notebook's cells, so it is listed like a `workbench run`; it records the
    step's ``parameters`` (by dotted key, with their ``origin``), which `workbench run` recorded
    for its own runs before any step.
    """
    artifact_store = open_store(store)
    tracker = Tracker(db)
    interactive = tracker.ensure_run(run_id, artifact_store.root)
    if interactive:
        tracker.record_parameters(run_id, parameters or {}, origin or {})
        tracker.notebook_step(run_id, step, "running")
        _follow_cells(tracker, run_id, step)
    return StepContext(run_id, step, artifact_store, tracker, interactive)


def _follow_cells(tracker: Tracker, run_id: str, step: str) -> None:
    """In a Jupyter kernel, record after every cell whether the step stands finished or failed,
    and whether it wrote outputs unlike those its later steps read.

    papermill stops at the first failing cell, so the last record is the notebook's outcome.
    The step's seconds are the time its cells ran, from the context being opened on: a notebook
    left open in JupyterLab between two cells does not count the wait. A cell that rewrote an
    output with other bytes (training that ran again) marks the later finished steps stale and says
    so under the cell; a rerun that wrote the same bytes, or nothing, leaves them as they are. The
    hooks replace those an earlier context in this kernel installed.
    """
    from workbench.progress import in_kernel

    if not in_kernel():
        return
    from IPython import get_ipython

    shell = get_ipython()
    seen = _hashes(tracker.step_outputs(run_id, step))  # what later steps may have read
    began, ran = time.monotonic(), 0.0  # this cell's start (the context opens inside one); seconds run

    def before_cell(_info: Any) -> None:
        nonlocal began
        began = time.monotonic()

    def after_cell(result: Any) -> None:
        nonlocal seen, ran
        ran += time.monotonic() - began
        now_there = _hashes(tracker.step_outputs(run_id, step))
        changed = [key.rsplit(f"/{step}/", 1)[-1] for key, digest in now_there.items() if seen.get(key) != digest]
        seen = now_there
        marked = tracker.outputs_changed(run_id, step, changed)
        if marked:
            print(stale_line(step, marked, run_id), flush=True)
        error = result.error_in_exec or result.error_before_exec
        if error is None:
            tracker.notebook_step(run_id, step, "finished", seconds=ran)
        else:
            line = (str(error).strip().splitlines() or [""])[0]
            tracker.notebook_step(run_id, step, "failed", f"{type(error).__name__}: {line}", seconds=ran)

    for event, hook in (("pre_run_cell", before_cell), ("post_run_cell", after_cell)):
        previous = getattr(shell, f"_workbench_{event}", None)
        if previous is not None:
            shell.events.unregister(event, previous)
        shell.events.register(event, hook)
        setattr(shell, f"_workbench_{event}", hook)


def _hashes(outputs: dict[str, tuple[int, str | None]]) -> dict[str, str | None]:
    return {key: digest for key, (_order, digest) in outputs.items()}


def stale_line(step: str, marked: list[str], run_id: str) -> str:
    """What a notebook says when its step wrote new outputs: which later steps to run again."""
    numbers = [NOTEBOOKS[name].split("_", 1)[0] for name in marked if name in NOTEBOOKS]
    notebooks = f"notebook{'s' if len(numbers) > 1 else ''} {_listed(numbers)}"
    return (
        f"{step} wrote new outputs, so {_listed(marked)} of run {run_id} must run again ({notebooks}): "
        "what they made came from the earlier ones and is marked stale"
    )


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
