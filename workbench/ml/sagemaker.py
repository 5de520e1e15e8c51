"""SageMaker conventions: the model archive the PyTorch serving container expects.

``model.tar.gz`` holds ``model.pth`` at its top and ``code/`` with ``inference.py`` (``model_fn``,
``input_fn``, ``predict_fn``, ``output_fn``), the architectures, the model's metadata and
``requirements.txt``: it serves without the workbench package.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from importlib import resources
from typing import Any

import torch

from workbench.errors import ModelError
from workbench.storage.catalog import ARCHIVE_META, ARCHIVE_STATE


def model_archive(state_bytes: bytes, config: dict[str, Any], normalization: dict[str, Any], classes: list) -> bytes:
    """The bytes of ``model.tar.gz`` for a built-in architecture."""
    from workbench.ml.architectures import BUILTIN

    if config["model"] not in BUILTIN:
        raise ModelError(
            f"export.sagemaker: the archive carries the built-in architectures only, not {config['model']!r}; "
            "package your module with the archive yourself, or turn export.sagemaker off"
        )
    meta = config | {"mean": normalization["mean"], "std": normalization["std"], "classes": classes}
    files = {
        ARCHIVE_STATE: state_bytes,
        "code/inference.py": (resources.files("workbench") / "templates" / "sagemaker_inference.py").read_bytes(),
        "code/architectures.py": (resources.files("workbench") / "ml" / "architectures.py").read_bytes(),
        ARCHIVE_META: json.dumps(meta, indent=2).encode(),
        "code/requirements.txt": f"numpy\ntorch=={torch.__version__.split('+')[0]}\n".encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
