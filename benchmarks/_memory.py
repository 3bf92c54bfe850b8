"""Resident memory of this process: now, and its peak since this program started.

On Linux the peak is ``VmHWM`` from ``/proc/self/status``, which starts afresh
with each program. ``getrusage``'s ``ru_maxrss`` would not do there: Linux
carries it across ``execve``, so a child started by a big parent reports the
parent's peak as its own. Elsewhere ``ru_maxrss`` is the best there is.
"""

from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_mib(field: str) -> float | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10  # the kernel writes kB
    return None


def _max_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_rss_mib() -> float | None:
    """The most resident memory this program has used so far, in MiB (None if unknown)."""
    found = _status_mib("VmHWM")
    return found if found is not None else _max_rss_mib()


def current_rss_mib() -> float | None:
    """Resident memory now, in MiB; where only the peak is known, the peak."""
    found = _status_mib("VmRSS")
    return found if found is not None else _max_rss_mib()
