"""Where training runs: device choice, mixed precision, and what is recorded about the machine."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.errors import ModelError


def choose_device(name: str) -> torch.device:
    """``auto`` takes the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"train.device {name!r}: no CUDA device is visible here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"train.device {name!r}: only {torch.cuda.device_count()} CUDA device(s); pick a lower index"
            )
    return device


def check_processes(processes: int, device: str, gpus: int) -> None:
    """Refuse, before torchrun starts, more CUDA workers than visible GPUs (one GPU per process).

    Otherwise NCCL fails inside the workers and the user reads torchrun's ChildFailedError.
    """
    on_cuda = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if processes > 1 and on_cuda and processes > gpus:
        raise ModelError(
            f"train.processes {processes}: only {gpus} CUDA device(s) visible here, one per process; "
            f"set train.processes to {gpus or 1} or less, or train.device=cpu for gloo workers"
        )


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16; none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def environment(device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: device, GPU, library versions."""
    info: dict[str, Any] = {
        "device": str(device),
        "amp": str(amp).replace("torch.", "") if amp else "off",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info
