"""Resident memory of a benchmark process: now, the peak so far, the peak sampled over a block, and a child's peak."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time


def rss_mb() -> float:
    """This process's resident set size now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def ru_maxrss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Peak resident set size of this process, sampled in a thread while the ``with`` block runs.

    Example:
        >>> with PeakRSS() as peak:
        ...     data = bytearray(10 * 2**20)
        >>> peak.peak > 10 * 2**20
        True
    """

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def run_measured(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> dict:
    """Run a command to its end; return its wall seconds, exit status and peak resident memory (its own, not its
    siblings': ``os.wait4`` reports the usage of that one child).

    Args:
        argv (`list[str]`): the command.
        env (`dict`, *optional*): its environment.
        stdout: where its standard output goes (``subprocess.PIPE`` to keep it, returned as ``stdout``).

    Returns:
        `dict`: ``{"wall_s": float, "returncode": int, "peak_rss_mb": float, "stdout": str | None}``.

    Example:
        >>> run_measured(["true"])["returncode"]
        0
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, text=True)
    out = proc.stdout.read() if proc.stdout is not None else None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen, so it does not wait again
    return {"wall_s": wall, "returncode": proc.returncode, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}
