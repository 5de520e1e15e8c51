"""The prepared splits as model-ready arrays, from the store or a SageMaker training channel."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError

if TYPE_CHECKING:
    from workbench.run.context import StepContext


@dataclass
class Split:
    """One split as model-ready arrays: normalised float32 features and class indices."""

    x: np.ndarray
    y: np.ndarray


# Inside a SageMaker training job the splits arrive as input channels (local folders).
SAGEMAKER_CHANNELS = {"train": "SM_CHANNEL_TRAIN", "val": "SM_CHANNEL_VALIDATION"}


def prepared_bytes(ctx: StepContext, name: str, split: str = "train") -> bytes:
    """An output of the prepare step: from the SageMaker channel of ``split`` when the job has
    one (the prepare folder uploaded as the channel), else from the run's store."""
    variable = SAGEMAKER_CHANNELS[split]
    channel = os.environ.get(variable)
    if not channel:
        return ctx.load(name, "prepare")
    path = Path(channel) / name
    if not path.is_file():
        raise DataError(f"{variable}={channel} has no {name}; use the prepare step's outputs as the {split} channel")
    return path.read_bytes()


def load_split(ctx: StepContext, name: str) -> Split:
    """Read a split written by the prepare step and apply its normalisation."""
    schema = json.loads(prepared_bytes(ctx, "schema.json"))
    norm = json.loads(prepared_bytes(ctx, "normalization.json"))
    frame = pd.read_parquet(
        io.BytesIO(prepared_bytes(ctx, f"{name}.parquet", name if name in SAGEMAKER_CHANNELS else "train"))
    )
    codes = {c: i for i, c in enumerate(schema["classes"])}
    x = (frame[norm["features"]].to_numpy(dtype=np.float64) - np.asarray(norm["mean"])) / np.asarray(norm["std"])
    y = frame[schema["target"]].map(codes).to_numpy(dtype=np.int64)
    return Split(x.astype(np.float32), y)
