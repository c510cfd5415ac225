"""Run a command; measure its wall time and the peak resident set size of its process tree."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass

import psutil

POLL = 0.002


@dataclass
class Measurement:
    wall: float
    peak_rss: int  # bytes, the whole process tree
    code: int


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measure(
    cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None
) -> Measurement:
    start = time.perf_counter()
    popen = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    proc = psutil.Process(popen.pid)
    peak = 0
    # Poll the whole tree (children such as a hashing process count too) until the
    # command ends, then take the kernel's exact high-water mark of the command itself
    # (wait4's ru_maxrss), which polling can miss between samples.
    while True:
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss(proc))
        time.sleep(POLL)
    wall = time.perf_counter() - start
    popen.returncode = os.waitstatus_to_exitcode(status)
    err = popen.stderr.read().decode(errors="replace") if popen.stderr else ""
    peak = max(peak, int(usage.ru_maxrss) * 1024)
    if popen.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {popen.returncode}: {err[-2000:]}")
    return Measurement(wall, peak, popen.returncode)


if __name__ == "__main__":
    import sys

    m = measure(sys.argv[1:])
    print(f"wall {m.wall:.3f} s, peak RSS {m.peak_rss / 2**20:.1f} MiB, exit {m.code}")
