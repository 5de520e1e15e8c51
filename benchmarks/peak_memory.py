"""Peak resident memory of the calling process alone, for benchmarks that measure it in a child.

Linux carries ``ru_maxrss`` across exec: a child started by a parent holding the benchmark's data
reports the parent's peak when its own is lower, which flattens a memory ratio towards 1. The
kernel's ``VmHWM`` belongs to the process's own address space, so it is the child's alone.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: the best there is
