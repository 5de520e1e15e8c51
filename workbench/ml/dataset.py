"""The prepared splits as model-ready arrays, from the store or a SageMaker training channel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import DataError
from workbench.ml.features import Normalization
from workbench.storage.catalog import NORMALIZATION, SCHEMA, SPLIT_ARTIFACTS, Artifact, decode

if TYPE_CHECKING:
    from workbench.run.context import StepContext


@dataclass
class Split:
    """One split as model-ready arrays: normalised float32 features and class indices."""

    x: np.ndarray
    y: np.ndarray


# Inside a SageMaker training job the splits arrive as input channels (local folders).
SAGEMAKER_CHANNELS = {"train": "SM_CHANNEL_TRAIN", "val": "SM_CHANNEL_VALIDATION"}


def prepared_bytes(ctx: StepContext, item: Artifact, split: str = "train") -> bytes:
    """An output of the prepare step: from the SageMaker channel of ``split`` when the job has
    one (the prepare folder uploaded as the channel), else from the run's store."""
    variable = SAGEMAKER_CHANNELS[split]
    channel = os.environ.get(variable)
    if not channel:
        return ctx.load(item)
    path = Path(channel) / item.file
    if not path.is_file():
        raise DataError(
            f"{variable}={channel} has no {item.file}; use the prepare step's outputs as the {split} channel"
        )
    return path.read_bytes()


def prepared(ctx: StepContext, item: Artifact, split: str = "train") -> Any:
    """:func:`prepared_bytes`, decoded by the artifact's format."""
    return decode(item, prepared_bytes(ctx, item, split))


def load_split(ctx: StepContext, name: str) -> Split:
    """Read a split written by the prepare step and apply its normalisation."""
    schema = prepared(ctx, SCHEMA)
    norm = Normalization.from_json(prepared(ctx, NORMALIZATION))
    frame = prepared(ctx, SPLIT_ARTIFACTS[name], name if name in SAGEMAKER_CHANNELS else "train")
    codes = {c: i for i, c in enumerate(schema["classes"])}
    x = norm.apply(frame[norm.features].to_numpy(dtype=np.float64))
    y = frame[schema["target"]].map(codes).to_numpy(dtype=np.int64)
    return Split(x, y)
