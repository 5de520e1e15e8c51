"""Checkpoints: written after every epoch, read back to resume exactly, refused when foreign."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import torch

from workbench.config.schema import TrainParams
from workbench.errors import ModelError
from workbench.ml.models import UNREADABLE
from workbench.ml.training.loop import Trainer
from workbench.storage.catalog import CHECKPOINT as LAST
from workbench.storage.catalog import SET_ASIDE_CHECKPOINT

if TYPE_CHECKING:
    from workbench.run.context import StepContext


# their file names in the train folder (the catalog's entries are what the code asks for)
CHECKPOINT = LAST.file


SET_ASIDE = SET_ASIDE_CHECKPOINT.file  # an interactive run's checkpoint from other settings, kept once


_CHECKPOINT_PARTS = {"config", "settings", "trainer"}


def _read_checkpoint(ctx: StepContext) -> tuple[dict[str, Any], bytes] | None:
    """This run's last checkpoint and its bytes, or None when there is none.

    Only a file that cannot be a checkpoint is reported as unreadable, with the advice to delete
    it: a store that cannot be reached or read (S3 down, no permission) raises its own error,
    because deleting a good checkpoint over a network fault would throw training away.
    """
    if not ctx.has_artifact(LAST):
        return None
    data = ctx.load(LAST)
    reason = "not a training checkpoint"
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except UNREADABLE as exc:  # truncated, corrupted, foreign
        saved, reason = None, type(exc).__name__
    if not (isinstance(saved, dict) and saved.keys() >= _CHECKPOINT_PARTS):
        raise ModelError(f"checkpoint {ctx.store.uri(ctx.key(LAST))} is unreadable ({reason}); delete it to start over")
    return saved, data


def checkpoint_data(ctx: StepContext, settings: dict[str, Any]) -> dict[str, str] | None:
    """How this run's last checkpoint read its splits (``{"train": "streamed", ...}``) when it was
    written under these settings (so :func:`resume` continues it), else None."""
    try:
        found = _read_checkpoint(ctx)
    except ModelError:
        return None  # resume() says so
    if found is None or found[0].get("settings") != settings:
        return None
    data = found[0].get("data")
    return data if isinstance(data, dict) else None


def _changed(ours: dict[str, dict[str, Any]], theirs: dict[str, Any]) -> list[str]:
    """What differs between this step's config/settings and a checkpoint's, named as the user set
    it: the parameter key (``train.epochs``, ``seed``) where there is one, else ``model KEY`` (a size
    the data decided, such as ``in_features``)."""

    def name(part: str, key: str) -> str:
        if key in TrainParams.model_fields:
            return f"train.{key}"
        return key if part == "settings" else f"model {key}"

    return sorted(
        {
            name(part, key)
            for part in ours
            for key in set(ours[part]) | set(theirs.get(part) or {})
            if ours[part].get(key) != (theirs.get(part) or {}).get(key)
        }
    )


def resume(ctx: StepContext, trainer: Trainer, config: dict[str, Any], rank: int = 0) -> int:
    """Continue from this run's last checkpoint, if any; returns the epochs already done.

    A checkpoint written under other settings or another config cannot be continued. Under
    `workbench run` that is refused (resuming must give the numbers an uninterrupted run gives);
    in an interactive run (JupyterLab, plain papermill, run id ``dev``) changing a parameter and
    rerunning is the point, so the old checkpoint is copied to :data:`SET_ASIDE` and training
    starts afresh, overwriting it after the first epoch.
    """
    found = _read_checkpoint(ctx)
    if found is None:
        return 0
    saved, data = found
    changed = _changed({"config": config, "settings": trainer.settings.model_dump()}, saved)
    if changed:
        what = f"checkpoint {ctx.store.uri(ctx.key(LAST))} was written with different {', '.join(changed)}"
        if not ctx.interactive:
            raise ModelError(f"{what}; start a new run, or delete the checkpoint to retrain this one")
        if rank == 0:  # every rank decides the same; one keeps the copy and says so
            ctx.store.write_bytes(ctx.key(SET_ASIDE_CHECKPOINT), data)  # a copy, not a step output
            ctx.tracker.clear_history(ctx.run_id, ctx.step)  # the curves start again with the training
            print(f"{what}; training afresh (the old one is kept as {SET_ASIDE})", flush=True)
        return 0
    trainer.load_state_dict(saved["trainer"])
    return trainer.epoch
