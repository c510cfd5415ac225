"""Run a command; measure its wall time and the peak resident set size of its process tree
(and, when asked, its proportional set size)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass

import psutil

# Resident sizes of the known processes are read every POLL seconds (cheap: one
# /proc/PID/statm each); the list of descendants is refreshed every SCAN seconds
# (psutil scans all of /proc for that, which would otherwise take CPU from the
# command being measured on a 2-core machine).
POLL = 0.005
SCAN = 0.05
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measurement:
    wall: float
    peak_rss: int  # bytes, the whole process tree
    code: int
    # bytes: the tree's proportional set size (a page shared by the forked worker, its
    # supervisor and the digest child counted once, not once per process); only when
    # asked for, as reading it costs the kernel a page-table walk per poll
    peak_pss: int | None = None


def tree(proc: psutil.Process) -> list[int]:
    try:
        return [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return [proc.pid]


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


def pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def measure(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    with_pss: bool = False,
) -> Measurement:
    start = time.perf_counter()
    popen = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    proc = psutil.Process(popen.pid)
    peak = peak_pss = 0
    pids = [popen.pid]
    scanned = start
    # Poll the whole tree (children such as a hashing process count too) until the
    # command ends, then take the kernel's exact high-water mark of the command itself
    # (wait4's ru_maxrss), which polling can miss between samples.
    while True:
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            break
        now = time.perf_counter()
        if now - scanned >= SCAN:
            pids, scanned = tree(proc), now
        peak = max(peak, rss(pids))
        if with_pss:
            peak_pss = max(peak_pss, pss(pids))
        time.sleep(POLL)
    wall = time.perf_counter() - start
    popen.returncode = os.waitstatus_to_exitcode(status)
    err = popen.stderr.read().decode(errors="replace") if popen.stderr else ""
    peak = max(peak, int(usage.ru_maxrss) * 1024)
    if popen.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {popen.returncode}: {err[-2000:]}")
    return Measurement(wall, peak, popen.returncode, peak_pss if with_pss else None)


if __name__ == "__main__":
    import sys

    m = measure(sys.argv[1:], with_pss=True)
    assert m.peak_pss is not None
    print(
        f"wall {m.wall:.3f} s, peak RSS {m.peak_rss / 2**20:.1f} MiB, "
        f"peak PSS {m.peak_pss / 2**20:.1f} MiB, exit {m.code}"
    )
