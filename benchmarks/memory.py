"""Resident memory of a benchmark process: now, the peak so far, the peak sampled over a block, and a child's peak."""

from __future__ import annotations

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


def own_peak_mb() -> float:
    """This process's peak resident memory since its program started (``VmHWM``; ``ru_maxrss`` off Linux, which
    also counts the parent's memory the process was forked with)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        pass
    return ru_maxrss_mb()


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


def exec_peak_mb(pid: int, parent_cmdline: bytes) -> float | None:
    """A child's peak resident memory since it exec'd its program (``VmHWM``), or None before that exec or after
    its exit. Before the exec the child still is (or shares) this process's memory, which is not its own."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read() == parent_cmdline:
                return None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def run_measured(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL,
                 interval: float = 0.02) -> dict:
    """Run a command to its end; return its wall seconds, exit status and peak resident memory.

    The peak is the high-water mark of the command's own memory (``/proc/PID/status`` ``VmHWM``), read every
    ``interval`` seconds while it runs, so only its last ``interval`` can escape it. ``ru_maxrss`` would not do: a
    child's counts the parent's memory it was forked with.

    Args:
        argv (`list[str]`): the command.
        env (`dict`, *optional*): its environment.
        stdout: where its standard output goes (``subprocess.PIPE`` to keep it, returned as ``stdout``).
        interval (`float`, defaults to 0.02): seconds between reads of the high-water mark.

    Returns:
        `dict`: ``{"wall_s": float, "returncode": int, "peak_rss_mb": float, "stdout": str | None}``
        (``peak_rss_mb`` 0.0 where ``/proc`` cannot be read).

    Example:
        >>> run_measured(["true"])["returncode"]
        0
    """
    with open("/proc/self/cmdline", "rb") as f:
        own = f.read()
    peak, stop = [0.0], threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, text=True)

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], exec_peak_mb(proc.pid, own) or 0.0)
            stop.wait(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    return {"wall_s": wall, "returncode": proc.returncode, "peak_rss_mb": peak[0], "stdout": out}
