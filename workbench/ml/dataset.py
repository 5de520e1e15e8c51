"""The prepared splits as model-ready arrays, from the store or a SageMaker training channel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import DataError
from workbench.ml.encoding import Encoding, Target
from workbench.storage.catalog import ENCODING, SPLIT_ARTIFACTS, Artifact, decode

if TYPE_CHECKING:
    from workbench.run.context import StepContext


@dataclass
class Split:
    """One split as model-ready arrays: encoded float32 features, and class indices or the
    standardised number to predict (float32)."""

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


def prepared_encoding(ctx: StepContext) -> Encoding:
    """The encoding prepare fitted (with its target): the model's input contract."""
    return Encoding.from_json(prepared(ctx, ENCODING))


def prepared_target(encoding: Encoding) -> Target:
    if encoding.target is None:
        raise DataError("the prepare step's encoding has no target; run prepare again")
    return encoding.target


def load_split(ctx: StepContext, name: str) -> Split:
    """Read a split written by the prepare step and apply its encoding."""
    encoding = prepared_encoding(ctx)
    target = prepared_target(encoding)
    item = SPLIT_ARTIFACTS[name]
    if os.environ.get(SAGEMAKER_CHANNELS.get(name, SAGEMAKER_CHANNELS["train"])):
        frame = prepared(ctx, item, name if name in SAGEMAKER_CHANNELS else "train")
    else:  # one file, or the parts engine dask wrote
        from workbench.storage.parts import read_table

        frame = read_table(ctx.store, ctx.key(item)).to_pandas()
    return Split(encoding.apply(frame), target.model_target(frame[target.name]))
