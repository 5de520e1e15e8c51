"""SageMaker conventions: the model archive the PyTorch serving container expects.

``model.tar.gz`` holds ``model.pth`` at its top and ``code/`` with ``inference.py`` (``model_fn``,
``input_fn``, ``predict_fn``, ``output_fn``), the architectures and ``model.json`` (the model's config
and the fitted encoding, which ``inference.py`` applies to raw rows with its own copy of the encoding
code): it serves without the workbench package.

There is no ``code/requirements.txt``: the serving toolkit pip-installs one at every container start
when it exists (and skips it when absent), and the container already has all the handler imports
(numpy, pandas, torch). Pinning torch there would reinstall it in a container with another torch, and
fail the start of one without internet.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from importlib import resources
from typing import Any

from workbench.errors import ModelError
from workbench.storage.catalog import ARCHIVE_META, ARCHIVE_STATE


def model_archive(state_bytes: bytes, config: dict[str, Any], encoding: dict[str, Any]) -> bytes:
    """The bytes of ``model.tar.gz`` for a built-in architecture and the encoding it was trained with.

    The config and encoding are checked against each other here, where a mismatch is the exporter's
    bug, rather than at the endpoint, where it would surface as a 500 on every request.
    """
    from workbench.ml.architectures import BUILTIN

    if config["model"] not in BUILTIN:
        raise ModelError(
            f"export.sagemaker: the archive carries the built-in architectures only, not {config['model']!r}; "
            "package your module with the archive yourself, or turn export.sagemaker off"
        )
    target = encoding.get("target")
    if not target:
        raise ModelError("export.sagemaker: the encoding has no target, so the endpoint could not name its predictions")
    features = len(encoding["features"])
    if config["in_features"] != features:
        raise ModelError(
            f"export.sagemaker: the model takes {config['in_features']} features but the encoding makes {features}"
        )
    outputs = 1 if target["task"] == "regression" else len(target["classes"] or [])
    if config["num_classes"] != outputs:
        raise ModelError(
            f"export.sagemaker: the model has {config['num_classes']} outputs but the {target['task']} target "
            f"{target['name']!r} needs {outputs}"
        )
    meta = config | {"encoding": encoding}
    files = {
        ARCHIVE_STATE: state_bytes,
        "code/inference.py": (resources.files("workbench") / "templates" / "sagemaker_inference.py").read_bytes(),
        "code/architectures.py": (resources.files("workbench") / "ml" / "architectures.py").read_bytes(),
        ARCHIVE_META: json.dumps(meta, indent=2).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
