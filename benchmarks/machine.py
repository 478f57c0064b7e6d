"""The machine a benchmark ran on: CPU model, the instruction-set flags that decide matmul speed, cores, torch's
version and threads, and the measured float32 and bfloat16 matmul rates. Every benchmark prints this beside its
figures, since a speed is meaningless without the machine that produced it.

    python benchmarks/machine.py            # one JSON line
"""

from __future__ import annotations

import math
import os
import platform
import time

# the flags that decide how fast a CPU multiplies float32 and bfloat16 matrices
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def read_cpuinfo(text: str | None = None) -> dict:
    """The CPU's model name and the flags in ``MATMUL_FLAGS`` it has, from ``/proc/cpuinfo`` text.

    Args:
        text (`str`, *optional*): cpuinfo text; read from ``/proc/cpuinfo`` when omitted (empty off Linux).

    Returns:
        `dict`: ``{"cpu_model": str, "cpu_flags": [flag, ...]}`` (flags in ``MATMUL_FLAGS`` order).

    Example:
        >>> read_cpuinfo("model name : Some CPU\\nflags : fpu avx2 fma\\n")["cpu_flags"]
        ['avx2', 'fma']
    """
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            text = ""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"cpu_model": model or platform.processor() or "unknown",
            "cpu_flags": [f for f in MATMUL_FLAGS if f in flags]}


def best_matmul_seconds(dtype_name: str, n: int, seconds: float, min_runs: int = 3) -> float:
    """Best time of one n x n matmul in the given dtype, timed repeatedly for about ``seconds`` and at least
    ``min_runs`` times."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: first-call allocations and kernel selection
    sync()
    best, runs, end = math.inf, 0, time.perf_counter() + seconds
    while runs < min_runs or time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        sync()
        best, runs = min(best, time.perf_counter() - t0), runs + 1
    return best


def matmul_rate(dtype_name: str, max_n: int = 2048, seconds: float = 1.0) -> tuple[float, int]:
    """FLOP/s of a square matmul in the given dtype on the benchmark's device, and the side it was measured at.

    The side doubles from 256 up to ``max_n`` while one matmul takes under a quarter of ``seconds``: a CPU without
    fast bfloat16 (no AVX-512 BF16 or AMX) runs a 2048 bf16 matmul for tens of seconds, so the rate is then taken
    at the largest side that fits the time.

    Args:
        dtype_name (`str`): a torch dtype name, ``"float32"`` or ``"bfloat16"``.
        max_n (`int`, defaults to 2048): the largest matrix side.
        seconds (`float`, defaults to 1.0): how long to time at the chosen side.

    Returns:
        `tuple[float, int]`: (2 * n**3 / best seconds per matmul, n).

    Example:
        >>> rate, n = matmul_rate("float32", max_n=256, seconds=0.1)
        >>> rate > 0, n
        (True, 256)
    """
    n, probe = 256, seconds / 20
    t = best_matmul_seconds(dtype_name, n, probe, min_runs=1)
    while n < max_n and t * 8 < seconds / 4:  # the next side (x8 the work) still takes under a quarter of the time
        n *= 2
        t = best_matmul_seconds(dtype_name, n, probe, min_runs=1)
    return 2 * n ** 3 / best_matmul_seconds(dtype_name, n, seconds), n


def describe(measure: bool = True, seconds: float = 1.0) -> dict:
    """The machine, as one JSON-ready dict: CPU, flags, cores, load, torch, and (if ``measure``) matmul rates.

    Args:
        measure (`bool`, defaults to True): time float32 and bfloat16 matmuls (a few seconds; see ``matmul_rate``).
        seconds (`float`, defaults to 1.0): timing per dtype.

    Returns:
        `dict`: ``cpu_model``, ``cpu_flags``, ``logical_cpus``, ``physical_cores``, ``usable_cpus``, ``load_average``,
        ``torch``, ``torch_threads``, ``mkldnn_bf16`` (torch's own test for fast bf16 on this CPU), ``cuda`` (device
        name or None), ``date``, and with ``measure`` ``matmul_fp32_gflops``, ``matmul_bf16_gflops`` and the matrix
        sides they were measured at (``matmul_fp32_side``, ``matmul_bf16_side``).

    Example:
        >>> sorted(describe(measure=False))[:3]
        ['cpu_flags', 'cpu_model', 'cuda']
    """
    import psutil
    import torch

    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    out = dict(read_cpuinfo())
    out.update(logical_cpus=os.cpu_count(), physical_cores=psutil.cpu_count(logical=False),
               usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
               load_average=[round(x, 2) for x in os.getloadavg()], torch=torch.__version__,
               torch_threads=torch.get_num_threads(), mkldnn_bf16=bf16,
               cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               date=time.strftime("%Y-%m-%d %H:%M %Z"))
    if measure:
        max_n = 8192 if torch.cuda.is_available() else 2048  # a 2048 matmul leaves a data-centre GPU half idle
        for dtype, key in (("float32", "fp32"), ("bfloat16", "bf16")):
            rate, n = matmul_rate(dtype, max_n=max_n, seconds=seconds)
            out[f"matmul_{key}_gflops"], out[f"matmul_{key}_side"] = round(rate / 1e9, 3), n
    return out


def summary_line(machine: dict) -> str:
    """One human line for a table's header, e.g. ``AMD EPYC (avx2 fma), 2 cpus, torch 2.13.0, fp32 95 GFLOP/s``."""
    rates = ""
    if "matmul_fp32_gflops" in machine:
        rates = f", matmul fp32 {machine['matmul_fp32_gflops']:.0f} / bf16 {machine['matmul_bf16_gflops']:.0f} GFLOP/s"
    flags = " ".join(machine["cpu_flags"]) or "no avx2"
    gpu = f"{machine['cuda']} beside " if machine.get("cuda") else ""
    return (f"{gpu}{machine['cpu_model']} ({flags}), {machine['usable_cpus']} cpus, torch {machine['torch']} "
            f"{machine['torch_threads']} threads, load {machine['load_average'][0]}{rates}")


if __name__ == "__main__":
    import json

    print(json.dumps(describe()))
