"""How many threads to decode with: the physical cores this process may run
on (llama.cpp gains nothing from hyperthreads), one pool for decode and
prefill, so that one engine never oversubscribes the machine.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["physical_cores"]


def physical_cores() -> int:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max((os.cpu_count() or 2) // 2, 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(len(cores), 1)
