"""A SageMaker model archive as its serving container loads it: unpacked, ``code/inference.py`` imported."""

from __future__ import annotations

import importlib
import io
import sys
import tarfile
import types
from pathlib import Path


def import_handler(code: Path) -> types.ModuleType:
    """``inference`` imported as the toolkit does: by name, with code/ first on sys.path."""
    sys.path.insert(0, str(code))
    try:
        for name in ("inference", "architectures"):
            sys.modules.pop(name, None)
        return importlib.import_module("inference")
    finally:
        sys.path.remove(str(code))
        for name in ("inference", "architectures"):
            sys.modules.pop(name, None)


def unpack(archive: bytes, root: Path) -> tuple[types.ModuleType, object]:
    """The archive unpacked at ``root`` (as SageMaker unpacks it at /opt/ml/model): its handler
    module and the model its ``model_fn`` loads."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    handler = import_handler(root / "code")
    return handler, handler.model_fn(str(root))
