"""Peak resident memory of this process, as the kernel counts it."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_kb() -> int:
    """VmHWM from /proc/self/status: the high-water mark of this process image.

    getrusage's ru_maxrss is not used: on Linux it survives exec, so a child started by a
    big parent reports the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
