"""Load test for `ptune serve`: concurrent clients with mixed tasks vs one task, one request at a time.

    python scripts/load_test.py runs/a runs/b [NAME=DIR ...] [--clients 8] [--requests 200]
    python scripts/load_test.py --demo            # untrained checkpoints on the embedded model (speed only)

The server runs in this process (uvicorn on a background thread, 127.0.0.1, a free port); clients are threads with
their own httpx connection. Everything is bounded: client count, request count and wall time. Reports requests/s,
rows/s and latency percentiles for both phases, and the server's batching counters.
"""

from __future__ import annotations

import argparse
import json
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


def demo_checkpoints(folder: Path) -> dict[str, str]:
    """Three untrained checkpoints on the embedded model: two classification tasks and one generation task."""
    from ptune.config import config_from_dict
    from ptune.session import open_session
    from ptune.training.trainer import save_inference

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="DIR or NAME=DIR")
    ap.add_argument("--demo", action="store_true", help="build untrained checkpoints on the embedded model")
    ap.add_argument("--tasks", default=None, help="comma-separated task names to mix (default: all)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="requests in the concurrent phase")
    ap.add_argument("--baseline-requests", type=int, default=50)
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--no-mix", action="store_true",
                    help="one model call per task (no mixed-task batches), to compare against")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per phase, at most")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the report here")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64:
        ap.error("--clients must be 1..64")
    if not 1 <= args.requests <= 20000 or not 1 <= args.baseline_requests <= 20000:
        ap.error("--requests and --baseline-requests must be 1..20000")
    if not 1 <= args.rows <= 64:
        ap.error("--rows must be 1..64")
    args.time_limit = min(max(args.time_limit, 1.0), 600.0)

    import httpx

    from ptune.serving.app import create_app
    from ptune.serving.protocol import Limits
    from ptune.serving.tasks import parse_checkpoint_args
    from ptune.serving.thread import ServerThread

    tmp = None
    if args.demo:
        tmp = tempfile.TemporaryDirectory(prefix="ptune-load-")
        checkpoints = demo_checkpoints(Path(tmp.name))
    elif args.checkpoints:
        checkpoints = parse_checkpoint_args(args.checkpoints)
    else:
        ap.error("give checkpoint directories or --demo")
    t0 = time.perf_counter()
    app = create_app(checkpoints, limits=Limits(max_rows=max(64, args.rows), batch_wait_ms=args.batch_wait_ms,
                                                mix_tasks=not args.no_mix))
    print(f"loaded {len(checkpoints)} tasks in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    tasks = app.state.tasks
    payloads = {}
    for i, (name, task) in enumerate(tasks.items()):
        rows = [{c: MESSAGES[(i + j + k) % len(MESSAGES)] for k, c in enumerate(task.columns)} for j in range(args.rows)]
        body = {"task": name, "rows": rows}
        path = "/v1/classify"
        if task.type == "generation":
            body["max_new_tokens"] = args.max_new_tokens
            path = "/v1/generate"
        payloads[name] = (path, body)
    names = list(payloads)
    if args.tasks:
        names = [n.strip() for n in args.tasks.split(",")]
        unknown = [n for n in names if n not in payloads]
        if unknown:
            ap.error(f"--tasks: unknown {unknown}; known: {list(payloads)}")

    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=120) as client:  # warm-up: one request per task
            for name in names:
                client.post(payloads[name][0], json=payloads[name][1]).raise_for_status()

            # baseline: one task, one request at a time
            first = names[0]
            lat, errors = [], 0
            start = time.perf_counter()
            for _ in range(args.baseline_requests):
                if time.perf_counter() - start > args.time_limit:
                    break
                t = time.perf_counter()
                r = client.post(payloads[first][0], json=payloads[first][1])
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1
            baseline = summarize(lat, time.perf_counter() - start, args.rows, errors)
            stats_before = client.get("/health").json()["stats"]

        # concurrent: mixed tasks, bounded count and time
        lock = threading.Lock()
        issued = [0]
        latencies: list[float] = []
        failures = [0]
        deadline = time.perf_counter() + args.time_limit

        def worker(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                while True:
                    with lock:
                        if issued[0] >= args.requests or time.perf_counter() > deadline:
                            return
                        j = issued[0]
                        issued[0] += 1
                    path, body = payloads[names[(j + k) % len(names)]]
                    t = time.perf_counter()
                    try:
                        ok = c.post(path, json=body).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        if ok:
                            latencies.append(time.perf_counter() - t)
                        else:
                            failures[0] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.time_limit + 130)
        concurrent = summarize(latencies, time.perf_counter() - start, args.rows, failures[0])
        with httpx.Client(base_url=url, timeout=30) as client:
            stats_after = client.get("/health").json()["stats"]

    batches = stats_after["batches"] - stats_before["batches"]
    rows = stats_after["rows"] - stats_before["rows"]
    report = {
        "tasks": names, "clients": args.clients, "rows_per_request": args.rows, "batch_wait_ms": args.batch_wait_ms,
        "mix_tasks": not args.no_mix,
        "baseline_one_task_sequential": baseline | {"task": first},
        "concurrent_mixed_tasks": concurrent | {"server_batches": batches,
                                                "mixed_task_batches": stats_after["mixed_batches"]
                                                - stats_before["mixed_batches"],
                                                "mean_rows_per_batch": round(rows / batches, 2) if batches else 0},
        "throughput_ratio": round(concurrent["requests_per_s"] / baseline["requests_per_s"], 2)
        if baseline["requests_per_s"] else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
