"""workbench: notebook-first pipelines from pandas to PyTorch to ONNX to MXNet.

Notebooks use the names below. They load lazily, so a notebook that only prepares data never
pays for importing torch or mxnet.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "step_context": "workbench.context",
    "StepContext": "workbench.context",
    "prepare_data": "workbench.data",
    "plot_digits": "workbench.data",
    "plot_sample": "workbench.data",
    "read_source": "workbench.sources",
    "load_split": "workbench.data",
    "train_model": "workbench.train",
    "plot_history": "workbench.train",
    "export_onnx": "workbench.export",
    "validate_model": "workbench.validate",
    "plot_parity": "workbench.validate",
    "score_batch": "workbench.score",
    "plot_predictions": "workbench.score",
    "load_parameters": "workbench.params",
    "run_pipeline": "workbench.pipeline",
    "render_report": "workbench.report",
    "Tracker": "workbench.tracking",
    "open_store": "workbench.store",
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
