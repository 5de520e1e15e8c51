"""The Jupyter kernel named ``workbench`` that every notebook and papermill run uses.

It is this environment's interpreter registered under a fixed name, so a notebook's kernelspec
means the same thing in JupyterLab, under plain papermill and under ``workbench run``.
"""

from __future__ import annotations

import sys

KERNEL_NAME = "workbench"


def ensure_kernel() -> str:
    """Register the kernel in this environment (idempotent); returns its folder."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and spec.argv[0] == sys.executable:
            return spec.resource_dir
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    return install(kernel_name=KERNEL_NAME, display_name="Python (workbench)", prefix=sys.prefix)
