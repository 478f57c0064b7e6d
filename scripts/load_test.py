"""Load test for `ptune serve`: concurrent clients spread over the served tasks, and one task one request at a time.

    python scripts/load_test.py runs/a runs/b [NAME=DIR ...] [--clients 8] [--requests 200]
    python scripts/load_test.py --demo            # untrained checkpoints on the embedded model (speed only)
    python scripts/load_test.py --tasks-dir /tmp/tasks --count 1000 --baseline-requests 0   # many tasks
    python scripts/load_test.py --tasks-dir /tmp/tasks --count 1 --baseline-requests 0      # the same load, 1 task

The server runs in this process (uvicorn on a background thread, 127.0.0.1, a free port); clients are threads with
their own httpx connection. Everything is bounded: client count, request count and wall time.

Phases: warm-up (``--warmup`` requests by the concurrent clients; by default at least one per task, so every task
has answered once, and four per client), then the measured concurrent phase (``--requests``, the tasks taken in a seeded shuffled order, round robin),
then, unless ``--baseline-requests 0``, one task one request at a time. Reports requests/s, rows/s and latency
percentiles, the server's batching counters and this process's resident memory (after loading, after warm-up, and
the most while measured; the clients' share is the same whatever the task count). ``scripts/make_tasks.py`` writes
many checkpoints cheaply.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

MESSAGES = [
    "My order arrived two weeks late and the box was crushed.",
    "Thanks for the quick reply, all sorted now!",
    "The app logs me out every time I try to pay.",
    "What time does the store open on Sunday?",
    "I was charged twice for the same subscription.",
    "Lovely staff and a very easy return process.",
    "Nobody answers the phone at your support line.",
    "Is the blue jacket available in size medium?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(latencies: list[float], seconds: float, rows_per_request: int, errors: int) -> dict:
    n = len(latencies)
    return {"requests": n, "errors": errors, "seconds": round(seconds, 2),
            "requests_per_s": round(n / seconds, 2) if seconds else 0.0,
            "rows_per_s": round(n * rows_per_request / seconds, 2) if seconds else 0.0,
            **{f"p{int(q * 100)}_ms": round(1000 * percentile(latencies, q), 1) for q in (0.5, 0.9, 0.99)},
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def rss_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class RssSampler:
    """The most resident memory seen while the ``with`` block runs, sampled every ``every`` seconds by ``read``
    (default: this process's, ``rss_mb``)."""

    def __init__(self, every: float = 0.25, read=rss_mb):
        self.every, self.peak, self.read = every, 0.0, read
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.read())
            self.done.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.read())


def demo_checkpoints(folder: Path) -> dict[str, str]:
    """Three untrained checkpoints on the embedded model: two classification tasks and one generation task."""
    from ptune.config import config_from_dict
    from ptune.session import open_session
    from ptune.training.saving import save_inference

    specs = {
        "complaints": {"type": "classification", "template": "[P*8] Message : {text} Complaint ? [TARGET]",
                       "verbalizer": {"complaint": "yes", "no complaint": "no"}},
        "topic": {"type": "classification", "template": "[P*4] {text} [P*4] Topic : [TARGET]",
                  "verbalizer": {"delivery": "delivery", "billing": "billing", "product": "product",
                                 "service": "service"}},
        "reply": {"type": "generation", "template": "[P*8] Customer : {text} Agent : [TARGET]", "max_new_tokens": 8},
    }
    out, base = {}, None
    for name, task in specs.items():
        cfg = config_from_dict({"task": task, "encoder": {"type": "mlp", "hidden_size": 64},
                                "train": {"max_length": 96}})
        session = open_session(cfg, base=base)
        base = session.base
        save_inference(session, session.new_model(), folder / name)
        out[name] = str(folder / name)
    return out


def request_bodies(tasks: dict, rows_per_request: int, max_new_tokens: int) -> dict[str, tuple[str, dict]]:
    """Per task, the (path, body) its clients send."""
    payloads = {}
    for i, (name, task) in enumerate(tasks.items()):
        rows = [{c: MESSAGES[(i + j + k) % len(MESSAGES)] for k, c in enumerate(task.columns)}
                for j in range(rows_per_request)]
        body, path = {"task": name, "rows": rows}, "/v1/classify"
        if task.type == "generation":
            body["max_new_tokens"] = max_new_tokens
            path = "/v1/generate"
        payloads[name] = (path, body)
    return payloads


def concurrent(url: str, schedule: list[tuple[str, dict]], clients: int, time_limit: float) -> tuple[list, int]:
    """Send ``schedule``'s (path, body) requests from ``clients`` threads, each taking the next one when its last is
    answered, for at most ``time_limit`` seconds; (latencies of the answered requests, failures)."""
    import httpx

    lock = threading.Lock()
    issued, failures, latencies = [0], [0], []
    deadline = time.perf_counter() + time_limit

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    if issued[0] >= len(schedule) or time.perf_counter() > deadline:
                        return
                    path, body = schedule[issued[0]]
                    issued[0] += 1
                t = time.perf_counter()
                try:
                    ok = client.post(path, json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t)
                    else:
                        failures[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 130)
    return latencies, failures[0]


def sequential(url: str, path: str, body: dict, requests: int, time_limit: float) -> tuple[list, int, float]:
    """One request at a time: (latencies, failures, seconds)."""
    import httpx

    lat, errors = [], 0
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(requests):
            if time.perf_counter() - start > time_limit:
                break
            t = time.perf_counter()
            if client.post(path, json=body).status_code == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1
    return lat, errors, time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="DIR, NAME=DIR, or a folder of checkpoint directories")
    ap.add_argument("--demo", action="store_true", help="build untrained checkpoints on the embedded model")
    ap.add_argument("--tasks-dir", default=None, help="serve the checkpoints in this folder (scripts/make_tasks.py)")
    ap.add_argument("--count", type=int, default=None, help="with --tasks-dir: serve the first COUNT of them")
    ap.add_argument("--tasks", default=None, help="comma-separated task names to send to (default: all)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="requests in the measured concurrent phase")
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up requests (default: the larger of the task count and 4 per client)")
    ap.add_argument("--baseline-requests", type=int, default=50, help="one task, one at a time (0: skip)")
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--no-mix", action="store_true",
                    help="one model call per task (no mixed-task batches), to compare against")
    ap.add_argument("--seed", type=int, default=0, help="seeds the order the tasks are sent to")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per phase, at most")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the report here")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64:
        ap.error("--clients must be 1..64")
    if not 1 <= args.requests <= 20000 or not 0 <= args.baseline_requests <= 20000:
        ap.error("--requests must be 1..20000 and --baseline-requests 0..20000")
    if args.warmup is not None and not 0 <= args.warmup <= 100000:
        ap.error("--warmup must be 0..100000")
    if not 1 <= args.rows <= 64:
        ap.error("--rows must be 1..64")
    if args.count is not None and (args.count < 1 or not args.tasks_dir):
        ap.error("--count needs --tasks-dir and must be at least 1")
    args.time_limit = min(max(args.time_limit, 1.0), 600.0)
    if sum(map(bool, (args.demo, args.tasks_dir, args.checkpoints))) != 1:
        ap.error("give checkpoint directories, --tasks-dir DIR or --demo")
    return args


def checkpoints_to_serve(args, tmp: Path) -> dict[str, str]:
    from ptune.serving.tasks import checkpoints_in, parse_checkpoint_args

    if args.demo:
        return demo_checkpoints(tmp)
    if args.tasks_dir:
        found = checkpoints_in(Path(args.tasks_dir))
        if not found:
            sys.exit(f"no checkpoints in {args.tasks_dir}")
        return dict(list(found.items())[:args.count])
    return parse_checkpoint_args(args.checkpoints)


def run(args, checkpoints: dict[str, str]) -> dict:
    import httpx

    from ptune.serving.app import create_app
    from ptune.serving.protocol import Limits
    from ptune.serving.thread import ServerThread

    t0 = time.perf_counter()
    app = create_app(checkpoints, limits=Limits(max_rows=max(64, args.rows), batch_wait_ms=args.batch_wait_ms,
                                                mix_tasks=not args.no_mix))
    load_s = time.perf_counter() - t0
    print(f"loaded {len(checkpoints)} tasks in {load_s:.1f} s", file=sys.stderr)
    payloads = request_bodies(app.state.tasks, args.rows, args.max_new_tokens)
    names = [n.strip() for n in args.tasks.split(",")] if args.tasks else list(payloads)
    unknown = [n for n in names if n not in payloads]
    if unknown:
        sys.exit(f"--tasks: unknown {unknown[:5]}; known: {list(payloads)[:5]} ...")
    order = random.Random(args.seed).sample(names, len(names))  # spread over all tasks, none twice in a row
    warmup = max(len(names), 4 * args.clients) if args.warmup is None else args.warmup
    report = {"tasks_served": len(checkpoints), "tasks_sent_to": len(names), "clients": args.clients,
              "rows_per_request": args.rows, "batch_wait_ms": args.batch_wait_ms, "mix_tasks": not args.no_mix,
              "load_seconds": round(load_s, 1), "rss_mb_after_load": rss_mb(), "warmup_requests": warmup}
    with ServerThread(app) as url:
        lat, failures = concurrent(url, [payloads[order[j % len(order)]] for j in range(warmup)], args.clients,
                                   args.time_limit * 10)
        report["warmup_errors"] = failures
        report["rss_mb_after_warmup"] = rss_mb()
        with httpx.Client(base_url=url, timeout=30) as client:
            before = client.get("/health").json()["stats"]
        schedule = [payloads[order[(warmup + j) % len(order)]] for j in range(args.requests)]
        with RssSampler() as sampler:
            start = time.perf_counter()
            lat, failures = concurrent(url, schedule, args.clients, args.time_limit)
            measured = summarize(lat, time.perf_counter() - start, args.rows, failures)
        with httpx.Client(base_url=url, timeout=30) as client:
            after = client.get("/health").json()["stats"]
        batches, rows = after["batches"] - before["batches"], after["rows"] - before["rows"]
        report["concurrent"] = measured | {
            "server_batches": batches, "mixed_task_batches": after["mixed_batches"] - before["mixed_batches"],
            "mean_rows_per_batch": round(rows / batches, 2) if batches else 0,
            "model_seconds": round(after["model_seconds"] - before["model_seconds"], 2)}
        report["rss_mb_under_load_max"] = sampler.peak
        if args.baseline_requests:
            lat, errors, seconds = sequential(url, *payloads[names[0]], args.baseline_requests, args.time_limit)
            report["one_task_sequential"] = summarize(lat, seconds, args.rows, errors) | {"task": names[0]}
            base_rate = report["one_task_sequential"]["requests_per_s"]
            report["throughput_ratio_vs_sequential"] = (round(measured["requests_per_s"] / base_rate, 2)
                                                        if base_rate else None)
    return report


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="ptune-load-") as tmp:
        report = run(args, checkpoints_to_serve(args, Path(tmp)))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
