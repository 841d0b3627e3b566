"""How many cores this process may use: the one answer training's workers and serving's
slices both size themselves by.

    usable_cores()    # 2 on a 2-core machine; 1 in a pod limited to 1 CPU on a 16-core node

The CPU affinity mask (taskset, cpusets) says which cores the process may run on; a cgroup
CPU quota (a Kubernetes CPU limit) caps how much of them it gets, and the mask does not show
it. A thread per core beyond the quota only waits for its turn.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores() -> int:
    """The CPU affinity's core count, capped by a cgroup v2 or v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1
    for path, read in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()[:2]),
                       ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), Path(
                           "/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()])):
        try:
            quota, period = read(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            return max(1, min(cores, math.ceil(int(quota) / int(period))))
        break
    return cores
