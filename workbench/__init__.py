"""workbench: notebook-first pipelines from pandas to PyTorch to ONNX to MXNet.

Notebooks use the names below. They load lazily, so a notebook that only prepares data never
pays for importing torch or mxnet.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_step": "workbench.run.notebooks",
    "Params": "workbench.config.schema",
    "DataParams": "workbench.config.schema",
    "TrainParams": "workbench.config.schema",
    "ExportParams": "workbench.config.schema",
    "ValidateParams": "workbench.config.schema",
    "ScoreParams": "workbench.config.schema",
    "PublishParams": "workbench.config.schema",
    "ServeParams": "workbench.config.schema",
    "step_context": "workbench.run.context",
    "StepContext": "workbench.run.context",
    "prepare_data": "workbench.stages.prepare_data",
    "plot_digits": "workbench.stages.prepare_data",
    "plot_sample": "workbench.stages.prepare_data",
    "read_source": "workbench.storage.sources",
    "load_split": "workbench.ml.dataset",
    "train_model": "workbench.stages.train",
    "plot_history": "workbench.ml.training.job",
    "export_onnx": "workbench.stages.export_onnx",
    "validate_model": "workbench.stages.validate_mxnet",
    "plot_parity": "workbench.stages.validate_mxnet",
    "evaluate_test": "workbench.stages.validate_mxnet",
    "score_batch": "workbench.stages.batch_score",
    "plot_predictions": "workbench.stages.batch_score",
    "load_parameters": "workbench.config.parameters",
    "run_pipeline": "workbench.run.pipeline",
    "render_report": "workbench.run.report",
    "Tracker": "workbench.tracking",
    "open_store": "workbench.storage",
    "WorkbenchError": "workbench.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    attr = "load" if name == "load_parameters" else name
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
